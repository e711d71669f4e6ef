"""Remembered GitHub rate limits (``github_rest.RateLimits`` and ``GitHubRest.send``).

GitHub's rules (REST docs, "Rate limits for the REST API"): after a primary limit, no call
before ``x-ratelimit-reset``; after a secondary one, none for ``retry-after`` seconds, else at
least a minute, and exponentially longer when it comes back. Continuing to call while limited
"may result in the banning of your integration", so while a limit lasts nothing is sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from octosts.adapters.github_rest import (
    APP_BUDGET,
    MAX_HOLD,
    Budget,
    GitHubRest,
    GitHubTelemetry,
    Hold,
    RateLimit,
    RateLimits,
    Request,
    RestConfig,
    error_for,
)
from octosts.domain.errors import RateLimited
from tests.fakes import FakeClock, HandlerPool

APP = APP_BUDGET
INSTALLATION = Budget(7)
NOW = 1_800_000_000.0
SECONDARY = {"message": "You have exceeded a secondary rate limit."}


def test_primary_limit_holds_until_the_reset() -> None:
    limits = RateLimits(maxsize=10)
    hold = limits.limited(APP, RateLimit("primary", 90), NOW)
    assert (hold.kind, hold.until) == ("primary", NOW + 90)
    assert limits.hold_of(APP, NOW + 89.9) == hold
    assert limits.hold_of(APP, NOW + 90) is None
    assert limits.hold_of(INSTALLATION, NOW) is None  # budgets are apart
    assert limits.hold_of(Budget(app_id=2), NOW) is None  # and so are Apps


def test_secondary_limits_back_off_exponentially_until_a_good_answer() -> None:
    limits = RateLimits(maxsize=10)
    waits = []
    now = NOW
    for _ in range(4):
        hold = limits.limited(APP, RateLimit("secondary", 60), now)
        waits.append(hold.until - now)
        now = hold.until  # the hold ran out; the next call is limited again
    assert waits == [60, 120, 240, 480]
    limits.answered(APP, now)
    assert limits.limited(APP, RateLimit("secondary", 60), now).until == now + 60


def test_answers_to_calls_sent_before_the_hold_are_the_same_episode() -> None:
    limits = RateLimits(maxsize=10)
    first = limits.limited(APP, RateLimit("secondary", 60), NOW)
    # 50 calls were in flight when the first limit came back: no strike each (a later
    # answer's own 60 s still count from when it came).
    for _ in range(50):
        assert limits.limited(APP, RateLimit("secondary", 60), NOW) == first
    again = limits.limited(APP, RateLimit("secondary", 60), NOW + 1)
    assert (again.until, again.strikes) == (NOW + 61, 1)
    # A good answer sent before the limit does not lift it either.
    limits.answered(APP, NOW + 2)
    assert limits.hold_of(APP, NOW + 2) == again
    # A later reset than the one held extends the hold, never shortens it.
    assert limits.limited(APP, RateLimit("primary", 300), NOW + 3).until == NOW + 303
    assert limits.limited(APP, RateLimit("secondary", 1), NOW + 4).until == NOW + 303


def test_holds_are_clamped_and_bounded() -> None:
    limits = RateLimits(maxsize=2)
    assert limits.limited(APP, RateLimit("primary", 0), NOW).until == NOW + 1  # reset passed
    assert limits.limited(INSTALLATION, RateLimit("primary", 10**9), NOW).until == NOW + MAX_HOLD
    limits.limited(Budget(8), RateLimit("primary", 50), NOW)
    assert set(limits.holds(NOW)) == {INSTALLATION, Budget(8)}  # oldest dropped


def test_a_good_answer_spending_the_last_request_holds_until_the_reset() -> None:
    limits = RateLimits(maxsize=10)
    reset = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 120)}
    hold = limits.exhausted(INSTALLATION, reset, NOW)
    assert hold is not None
    assert (hold.kind, hold.until) == ("primary", NOW + 120)
    assert limits.exhausted(APP, {**reset, "x-ratelimit-remaining": "1"}, NOW) is None
    assert limits.exhausted(APP, {**reset, "x-ratelimit-reset": str(int(NOW))}, NOW) is None


class _Body(httpx.AsyncByteStream):
    """Streamed like a network body (httpx pre-reads ``json=``, which the core's cap refuses)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


def reply(
    status: int, headers: dict[str, str] | None = None, body: object = None
) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=_Body(json.dumps(body or {}).encode()))


class Telemetry:
    def __init__(self) -> None:
        self.until: list[tuple[int | str, float]] = []

    def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        pass

    def rate_limit_remaining(self, installation: int | str, remaining: float) -> None:
        pass

    def rate_limited_until(self, installation: int | str, until: float) -> None:
        self.until.append((installation, until))


def github_answering(
    answers: list[httpx.Response],
) -> tuple[HandlerPool, list[str]]:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answers.pop(0) if answers else reply(200)

    return HandlerPool(handler), sent


def request(budget: Budget = APP, target: str = "/app/installations/1/access_tokens") -> Request:
    return Request("POST", target, "Bearer jwt", "token_mint", "mint", budget=budget)


async def send_and_judge(rest: GitHubRest, req: Request) -> int:
    resp = await rest.send(req)
    if resp.status >= 400:
        raise error_for(resp, req.what)
    return resp.status


@pytest.mark.parametrize(
    ("answer", "kind", "wait"),
    [
        (
            lambda: reply(
                403,
                {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 45)},
                {"message": "API rate limit exceeded"},
            ),
            "primary",
            45,
        ),
        (lambda: reply(429, {"retry-after": "30"}, SECONDARY), "secondary", 30),
        (lambda: reply(403, None, SECONDARY), "secondary", 60),
    ],
)
async def test_while_held_nothing_is_sent_and_callers_learn_when_to_retry(
    answer: Callable[[], httpx.Response], kind: str, wait: int
) -> None:
    clock = FakeClock(NOW)
    http, sent = github_answering([answer()])
    telemetry = Telemetry()
    _: GitHubTelemetry = telemetry
    rest = GitHubRest(RestConfig(), http=http, clock=clock, telemetry=telemetry)
    with pytest.raises(RateLimited) as first:
        await send_and_judge(rest, request())
    assert (first.value.reason, first.value.retry_after) == (f"rate_limited_{kind}", wait)
    clock.advance(wait / 3)
    for _ in range(20):
        with pytest.raises(RateLimited) as held:
            await send_and_judge(rest, request())
        assert held.value.reason == f"rate_limited_{kind}"
        assert held.value.retry_after == pytest.approx(wait * 2 / 3)
        assert "not sent" in held.value.detail
    assert len(sent) == 1
    assert telemetry.until == [("app", NOW + wait)]
    # Another budget is not held back.
    assert await send_and_judge(rest, request(INSTALLATION, "/repos/o/r/contents/p")) == 200
    clock.advance(wait * 2 / 3)
    assert await send_and_judge(rest, request()) == 200
    assert len(sent) == 3
    await http.aclose()


async def test_a_held_call_is_counted_nowhere_as_a_github_request() -> None:
    clock = FakeClock(NOW)
    http, sent = github_answering([reply(429, {"retry-after": "5"})])
    calls: list[tuple[str, int | str]] = []

    class Counting(Telemetry):
        def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
            calls.append((endpoint, status))

    rest = GitHubRest(RestConfig(), http=http, clock=clock, telemetry=Counting())
    for _ in range(3):
        with pytest.raises(RateLimited):
            await send_and_judge(rest, request())
    assert calls == [("token_mint", 429)]
    assert sent == ["/app/installations/1/access_tokens"]
    await http.aclose()


def test_a_hold_heard_from_the_fleet_is_kept_unless_ours_lasts_longer() -> None:
    limits = RateLimits(maxsize=10)
    heard = limits.adopt(APP, Hold("secondary", NOW + 60, 2), NOW)
    assert heard == Hold("secondary", NOW + 60, 2)
    assert limits.hold_of(APP, NOW + 59) == heard
    assert limits.adopt(APP, Hold("secondary", NOW + 30), NOW) is None  # ours lasts longer
    assert limits.adopt(APP, Hold("primary", NOW - 1), NOW) is None  # already over
    # Whatever a message says, a hold lasts at most MAX_HOLD (a forged one included).
    capped = limits.adopt(INSTALLATION, Hold("primary", NOW + 10 * MAX_HOLD), NOW)
    assert capped is not None
    assert capped.until == NOW + MAX_HOLD
