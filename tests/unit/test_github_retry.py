"""One retry of a transient GitHub failure, inside the caller's deadline (``GitHubRest.send``).

Retried once, after a short random pause: a 5xx answer or a dropped connection on a repeatable
call (an idempotent method, or one its endpoint marks repeatable: a mint); a connection never
made on any call (nothing was sent). Never: a timeout, a rate limit, a 5xx to another POST (a
check run made twice), or when the caller's deadline leaves no time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from octosts.adapters.github_rest import (
    Budget,
    Dropped,
    GitHubRest,
    NotConnected,
    Request,
    RestConfig,
    TimedOut,
)
from octosts.domain.deadline import reset_deadline, set_deadline, time_left
from octosts.domain.errors import GitHubUnavailable
from tests.fakes import FakeClock, HandlerPool

GET_LOOKUP = Request("GET", "/orgs/o/installation", "Bearer jwt", "installation_lookup", "lookup")
MINT_PATH = "/app/installations/1/access_tokens"
POST_MINT = Request("POST", MINT_PATH, "Bearer jwt", "token_mint", "mint")
NO_PAUSE = RestConfig(retry_jitter=(0.0, 0.0))


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


def reply(status: int) -> httpx.Response:
    return httpx.Response(status, stream=_Body(json.dumps({"id": 1}).encode()))


Outcome = httpx.Response | type[Exception]


class GitHub:
    """Answers with the given outcomes in turn (then 200), counting what was sent."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        outcome = self.outcomes.pop(0) if self.outcomes else reply(200)
        if isinstance(outcome, httpx.Response):
            return outcome
        raise outcome("injected")


async def send(
    github: Callable[[httpx.Request], object], request: Request, config: RestConfig = NO_PAUSE
) -> int:
    async with HandlerPool(github) as http:
        rest = GitHubRest(config, http=http, clock=FakeClock())
        return (await rest.send(request)).status


@contextmanager
def caller_deadline(seconds: float) -> Iterator[None]:
    token = set_deadline(seconds)
    try:
        yield
    finally:
        reset_deadline(token)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_to_a_get_is_tried_once_more(status: int) -> None:
    github = GitHub(reply(status))
    assert await send(github, GET_LOOKUP) == 200
    assert github.sent == 2


async def test_only_once() -> None:
    github = GitHub(reply(502), reply(503), reply(200))
    assert await send(github, GET_LOOKUP) == 503  # the endpoint judges the second answer
    assert github.sent == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422, 501])
async def test_other_failures_are_final(status: int) -> None:
    github = GitHub(reply(status))
    assert await send(github, GET_LOOKUP) == status
    assert github.sent == 1


async def test_a_rate_limit_is_never_retried() -> None:
    limited = httpx.Response(429, headers={"retry-after": "9"}, stream=_Body(b"{}"))
    github = GitHub(limited)
    request = Request("GET", "/x", "token t", "contents_read", "read", budget=Budget(3))
    assert await send(github, request) == 429
    assert github.sent == 1


async def test_a_5xx_to_a_post_is_retried_only_when_its_endpoint_says_it_may_be() -> None:
    # A check run created twice is two check runs: not repeated.
    github = GitHub(reply(502))
    assert await send(github, POST_MINT) == 502
    assert github.sent == 1
    # A mint is (GitHubAppClient): a token GitHub made without answering is lost either way.
    github = GitHub(reply(502))
    assert await send(github, dataclasses.replace(POST_MINT, repeatable=True)) == 200
    assert github.sent == 2


async def test_a_connection_never_made_is_retried_for_a_mint_too() -> None:
    github = GitHub(NotConnected)
    assert await send(github, POST_MINT) == 200
    assert github.sent == 2


async def test_a_dropped_connection_is_retried_only_when_idempotent() -> None:
    dropped = Dropped
    github = GitHub(dropped)
    assert await send(github, GET_LOOKUP) == 200
    assert github.sent == 2
    github = GitHub(dropped)
    with pytest.raises(GitHubUnavailable, match="unreachable on mint"):
        await send(github, POST_MINT)
    assert github.sent == 1


async def test_a_timeout_is_not_retried() -> None:
    github = GitHub(TimedOut)
    with pytest.raises(GitHubUnavailable, match="timed out"):
        await send(github, GET_LOOKUP)
    assert github.sent == 1


async def test_no_retry_when_the_callers_deadline_leaves_no_time() -> None:
    github = GitHub(reply(502))
    with caller_deadline(0.3):  # a pause of up to 0.25 s would leave < MIN_RETRY_TIME
        status = await send(github, GET_LOOKUP, RestConfig(retry_jitter=(0.0, 0.25)))
    assert (status, github.sent) == (502, 1)
    github = GitHub(reply(502))
    with caller_deadline(5.0):
        status = await send(github, GET_LOOKUP, RestConfig(retry_jitter=(0.0, 0.25)))
    assert (status, github.sent) == (200, 2)


async def test_the_retry_pauses_a_random_moment_within_the_jitter() -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    github = GitHub(*(reply(502) for _ in range(20)))
    config = RestConfig(retry_jitter=(0.05, 0.25))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", recording_sleep)
        for _ in range(10):
            await send(github, GET_LOOKUP, config)
    assert len(pauses) == 10
    assert all(0.05 <= p <= 0.25 for p in pauses)
    assert len(set(pauses)) > 1  # spread, not one fixed delay


async def test_no_attempt_outlives_the_callers_deadline() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return reply(200)

    with caller_deadline(0.2), pytest.raises(GitHubUnavailable, match=r"deadline 0\.\d+ s"):
        await send(slow, GET_LOOKUP, RestConfig(request_timeout=10))
    sent = GitHub()
    with caller_deadline(-1.0), pytest.raises(GitHubUnavailable, match="no time left"):
        await send(sent, GET_LOOKUP)
    assert sent.sent == 0


async def test_an_explicit_timeout_ignores_the_callers_deadline() -> None:
    async def late(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return reply(201)

    late_answer = Request(POST_MINT.method, POST_MINT.target, "Bearer jwt", "m", "m", timeout=5)
    with caller_deadline(0.1):
        assert await send(late, late_answer) == 201
        assert time_left() is not None
