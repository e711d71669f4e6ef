"""The choice of GitHub App ([fleet]): ``choose_app`` over quota snapshots, a pure function."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octosts.adapters.github_apps import (
    Candidate,
    Choice,
    choose_app,
    is_pinned,
    pinned_app_order,
)

NOW = 1_800_000_000.0


def app(app_id: int, remaining: int | None = None, **kw: object) -> Candidate:
    return Candidate(app_id, remaining=remaining, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param([app(1, 10), app(2, 30), app(3, 20)], Choice(2), id="most-left"),
        pytest.param([app(1, 10), app(2), app(3, 20)], Choice(2), id="unknown-counts-as-full"),
        pytest.param([app(1, 7), app(2, 7), app(3, 7)], Choice(1), id="ties-go-to-the-first"),
        pytest.param([app(1), app(2), app(3)], Choice(1), id="nothing-known-yet"),
        pytest.param(
            [app(1, 10), app(2, 90, installed=False), app(3, 20)], Choice(3), id="not-installed"
        ),
        pytest.param(
            [app(1, 10), app(2, 90, held_until=NOW + 5), app(3, 20)], Choice(3), id="held"
        ),
        pytest.param(
            [app(1, 10), app(2, 90, held_until=NOW), app(3, 20)], Choice(2), id="hold-over-now"
        ),
        pytest.param(
            [app(1, 0, held_until=NOW + 300), app(2, 0, held_until=NOW + 120), app(3, 0)],
            Choice(3),
            id="zero-left-is-still-a-choice-when-not-held",
        ),
        pytest.param(
            [
                app(1, 0, held_until=NOW + 300),
                app(2, 0, held_until=NOW + 120),
                app(3, 0, held_until=NOW + 200),
            ],
            Choice(None, 120.0, 2),
            id="all-held-earliest-lift",
        ),
        pytest.param(
            [app(1, held_until=NOW + 60, installed=False), app(2, held_until=NOW + 90)],
            Choice(None, 90.0, 2),
            id="a-held-app-not-installed-does-not-count",
        ),
        pytest.param(
            [app(1, installed=False), app(2, installed=False)], Choice(), id="none-installed"
        ),
        pytest.param([], Choice(), id="no-apps"),
    ],
)
def test_choice(candidates: list[Candidate], expected: Choice) -> None:
    assert choose_app(candidates, NOW) == expected


candidates = st.lists(
    st.builds(
        Candidate,
        app_id=st.integers(1, 10**6),
        installed=st.sampled_from([True, False, None]),
        remaining=st.none() | st.integers(0, 5000),
        held_until=st.none() | st.floats(NOW - 3600, NOW + 3600),
    ),
    max_size=6,
    unique_by=lambda c: c.app_id,
)


def left(candidate: Candidate) -> float:
    return math.inf if candidate.remaining is None else candidate.remaining


def free(candidate: Candidate) -> bool:
    held = candidate.held_until is not None and candidate.held_until > NOW
    return candidate.installed is not False and not held


@given(candidates)
def test_the_chosen_app_is_installed_free_and_has_the_most_left(apps: list[Candidate]) -> None:
    choice = choose_app(apps, NOW)
    usable = [c for c in apps if free(c)]
    if not usable:
        assert choice.app_id is None
        return
    [chosen] = [c for c in apps if c.app_id == choice.app_id]
    assert free(chosen)
    assert left(chosen) == max(left(c) for c in usable)
    # Of the Apps with as much left, the first listed.
    assert chosen == next(c for c in usable if left(c) == left(chosen))
    assert choice.retry_after is None


@given(candidates)
def test_when_none_is_free_callers_wait_for_the_first_hold_to_lift(apps: list[Candidate]) -> None:
    choice = choose_app(apps, NOW)
    if any(free(c) for c in apps):
        return
    held = [c for c in apps if c.installed is not False and c.held_until is not None]
    if not held:
        assert choice == Choice()  # not installed anywhere: not a rate limit
        return
    first = min(c.held_until for c in held if c.held_until is not None)
    assert choice.app_id is None
    assert choice.retry_after == pytest.approx(first - NOW)
    assert choice.retry_after is not None
    assert choice.retry_after > 0
    assert [c.held_until for c in held if c.app_id == choice.lifts_first] == [first]


@given(candidates, st.randoms(use_true_random=False))
def test_the_order_only_breaks_ties(apps: list[Candidate], rng: object) -> None:
    shuffled = list(apps)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    one, other = choose_app(apps, NOW), choose_app(shuffled, NOW)
    by_id = {c.app_id: c for c in apps}
    if one.app_id is None:
        assert (other.app_id, other.retry_after) == (None, one.retry_after)
    else:
        assert other.app_id is not None
        assert left(by_id[one.app_id]) == left(by_id[other.app_id])


@pytest.mark.parametrize(
    ("permissions", "pinned"),
    [
        ({"checks": "write"}, True),
        ({"contents": "read", "checks": "write"}, True),
        ({"checks": "read"}, False),
        ({"contents": "write", "statuses": "write"}, False),
        ({}, False),
    ],
)
def test_only_check_run_writers_are_pinned_to_one_app(
    permissions: dict[str, str], *, pinned: bool
) -> None:
    assert is_pinned(permissions) is pinned


def test_the_pinned_app_is_the_checks_app_then_the_others_as_listed() -> None:
    assert pinned_app_order((1, 2, 3), checks_app=2) == (2, 1, 3)
    assert pinned_app_order((1, 2, 3), checks_app=1) == (1, 2, 3)
    assert pinned_app_order((5,), checks_app=5) == (5,)
