"""Each App's remaining count shared by the fleet ([fleet]): which count wins, what is read back.

Pure parts only; tests/integration/test_shared_quota.py runs replicas on a real redis-server.
"""

from __future__ import annotations

import pytest

from octosts.adapters.github_rest import Budget, RateLimits
from octosts.adapters.shared_quota import decode, encode

NOW = 1_800_000_000.0
APP = Budget(app_id=7)
RESET = NOW + 600


def limits(remaining: int | None = None, reset: float = RESET) -> RateLimits:
    rate_limits = RateLimits(maxsize=10)
    if remaining is not None:
        headers = {"x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(int(reset))}
        rate_limits.record(APP, headers)
    return rate_limits


@pytest.mark.parametrize(
    ("ours", "theirs", "taken", "after"),
    [
        pytest.param(limits(), (40, RESET), True, 40, id="we-knew-nothing"),
        pytest.param(limits(50), (40, RESET), True, 40, id="lower-in-the-same-window"),
        pytest.param(limits(30), (40, RESET), False, 30, id="ours-is-fresher"),
        pytest.param(limits(30), (30, RESET), False, 30, id="the-same"),
        pytest.param(limits(3), (90, RESET + 3600), True, 90, id="a-later-window"),
        pytest.param(limits(90, RESET + 3600), (3, RESET), False, 90, id="an-earlier-window"),
    ],
)
def test_a_count_is_taken_when_it_is_fresher(
    ours: RateLimits, theirs: tuple[int, float], *, taken: bool, after: int
) -> None:
    assert ours.adopt_count(APP, *theirs) is taken
    assert ours.quota(APP, NOW).remaining == after
    assert ours.quota(Budget(app_id=8), NOW).remaining is None  # another App, another count


def test_a_count_without_a_reset_is_kept_as_ours() -> None:
    ours = RateLimits(maxsize=10)
    ours.record(APP, {"x-ratelimit-remaining": "50"})
    assert ours.adopt_count(APP, 10, RESET) is False
    assert ours.last_count(APP) == (50, None)


def test_a_count_round_trips() -> None:
    assert decode(encode((12, RESET)), NOW) == (12, RESET)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"remaining": -1, "reset": 1800000600}',
        b'{"remaining": true, "reset": 1800000600}',
        b'{"remaining": "12", "reset": 1800000600}',
        b'{"remaining": 12, "reset": 1e300}',
        b'{"remaining": 12, "reset": NaN}',
        b'{"remaining": 12, "reset": 1900000000}',  # not a window of this hour
        b'{"remaining": 12, "reset": 1799999999}',  # a window that is over
        b'{"remaining": 12}',
        b'{"remaining": 99999999, "reset": 1800000600}',
    ],
)
def test_a_count_from_redis_is_checked_like_a_github_answer(body: bytes) -> None:
    assert decode(body, NOW) is None
