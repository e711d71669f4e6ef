"""GitHub rate limits are remembered per budget: callers are answered at once, with Retry-After,
and GitHub hears nothing more until the limit lifts (issue [resilience], defect 1).

A real service over gRPC, the GitHub emulator over sockets with its fault rules; the service's
clock is moved forward instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts.app import GITHUB_HEALTH
from tests.emulator import real_time_clock
from tests.integration.service_harness import Stack, running, servers

MINT_PREFIX = "/app/installations/"
C = grpc.StatusCode


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The service and the emulator on one clock: limits can last minutes, not the test."""
    clock = real_time_clock()
    with servers(tmp_path, clock) as backends:
        async with running(*backends, clock=clock) as running_stack:
            yield running_stack


async def refused(stack: Stack) -> tuple[grpc.StatusCode, int | None, str]:
    """(code, retry-after seconds, details) of an exchange that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.exchange()
    trailers = dict(info.value.trailing_metadata() or ())
    retry_after = trailers.get("retry-after")
    return (
        info.value.code(),
        None if retry_after is None else int(retry_after),
        info.value.details(),
    )


def held_until(stack: Stack) -> float | None:
    return stack.app.metrics.registry.get_sample_value(
        "octo_sts_github_rate_limited_until", {"installation": "app"}
    )


async def test_primary_limit_is_answered_at_once_until_its_reset(stack: Stack) -> None:
    assert (await stack.exchange()).token  # warm: installation, policy, contents token
    rule = stack.github.force_primary_limit(reset_in=120, path_prefix=MINT_PREFIX)
    mints = stack.github.count("POST", MINT_PREFIX)
    code, retry_after, details = await refused(stack)
    assert code == C.RESOURCE_EXHAUSTED
    assert retry_after is not None
    assert retry_after in {120, 121}  # x-ratelimit-reset is whole seconds
    assert "rate_limited_primary" in details
    # Twenty more callers at once: answered without a single call to GitHub.
    answers = await asyncio.gather(*(refused(stack) for _ in range(20)))
    assert {a[0] for a in answers} == {C.RESOURCE_EXHAUSTED}
    assert all(a[1] is not None and a[1] <= retry_after for a in answers)
    assert stack.github.count("POST", MINT_PREFIX) == mints + 1
    assert held_until(stack) == pytest.approx(stack.clock.now() + retry_after, abs=1)
    # GitHub lifts the limit at its reset; so does the service.
    stack.github.remove_fault(rule)
    stack.clock.advance(retry_after + 1)
    assert (await stack.exchange()).token
    assert stack.github.count("POST", MINT_PREFIX) == mints + 2


async def test_secondary_limits_back_off_exponentially(stack: Stack) -> None:
    assert (await stack.exchange()).token
    # No retry-after header: GitHub says to wait at least a minute.
    rule = stack.github.force_secondary_limit(
        status=429, retry_after=None, times=100, path_prefix=MINT_PREFIX
    )
    mints = stack.github.count("POST", MINT_PREFIX)
    waits = []
    for _ in range(3):
        code, retry_after, _ = await refused(stack)
        assert code == C.RESOURCE_EXHAUSTED
        assert retry_after is not None
        waits.append(retry_after)
        for _ in range(5):
            assert (await refused(stack))[0] == C.RESOURCE_EXHAUSTED
        stack.clock.advance(retry_after + 1)
    assert waits == [60, 120, 240]  # limited again each time it lifted
    assert stack.github.count("POST", MINT_PREFIX) == mints + 3
    stack.github.remove_fault(rule)
    assert (await stack.exchange()).token
    # A good answer ends the episode: the next limit waits what GitHub asks again.
    stack.github.force_secondary_limit(retry_after=5, times=1, path_prefix=MINT_PREFIX)
    assert (await refused(stack))[1] == 5


async def test_one_installations_limit_does_not_hold_back_the_app(stack: Stack) -> None:
    assert (await stack.exchange()).token
    # Policy reads spend the installation's budget; mints the App's.
    stack.github.force_primary_limit(reset_in=300, path_prefix="/repos/")
    stack.clock.advance(11)  # the cached policy needs revalidating
    assert (await stack.exchange()).token  # the last good policy is served while limited
    reads = stack.github.count("GET", "/repos/")
    stack.clock.advance(11)
    assert (await stack.exchange()).token
    assert stack.github.count("GET", "/repos/") == reads  # held: not asked again
    assert held_until(stack) is None
    assert stack.app.metrics.registry.get_sample_value(
        "octo_sts_github_rate_limited_until", {"installation": "1001"}
    ) == pytest.approx(stack.clock.now() + 300 - 22, abs=1)


async def health(stack: Stack, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def test_health_detail_says_when_github_rate_limits_the_app(stack: Stack) -> None:
    assert await health(stack, GITHUB_HEALTH) == "SERVING"
    stack.github.force_secondary_limit(retry_after=30, times=1, path_prefix=MINT_PREFIX)
    assert (await refused(stack))[0] == C.RESOURCE_EXHAUSTED
    assert await health(stack, GITHUB_HEALTH) == "NOT_SERVING"
    # The replica itself stays in rotation: every replica shares the App's limit.
    assert await health(stack, "") == "SERVING"
    assert await health(stack, "octosts.v1.SecurityTokenService") == "SERVING"
    stack.clock.advance(31)
    assert await health(stack, GITHUB_HEALTH) == "SERVING"
    assert (await stack.exchange()).token
