"""Orphan tokens (issue [resilience], defect 4): a token GitHub mints after the exchange gave up
(our timeout, the caller's deadline, shutdown) is revoked in the background, counted, and
audited. The emulator's ledger is the proof: every token it made is either held by a caller or
revoked.

A real service over gRPC, the GitHub emulator over sockets, its fault rules for the slowness.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import pytest
import structlog

from octosts._gen.octosts.v1 import sts_pb2
from octosts.dev.github import Fault, GitHubEmulator
from octosts.dev.github import token_sha256 as ledger_sha256
from octosts.dev.issuer import DevIssuer
from octosts.observability.audit import token_sha256 as audit_sha256
from tests.integration.service_harness import Stack, running
from tests.polling import eventually

MINT_PREFIX = "/app/installations/"


def slow_mints(github: GitHubEmulator, ms: int) -> int:
    """Mints answer after ``ms`` (other calls are not slowed); returns the rule id."""
    return github.add_fault(Fault(None, latency_ms=ms, path_prefix=MINT_PREFIX, method="POST"))


def fired(github: GitHubEmulator, rule: int) -> int:
    """How many requests the fault rule has caught (counted when they arrive)."""
    return next(int(r["fired"]) for r in github.faults.rules() if r["id"] == rule)


def tokens_since(github: GitHubEmulator, first_id: int) -> list[dict[str, Any]]:
    return [t for t in github.tokens() if t["id"] >= first_id]


def next_token_id(github: GitHubEmulator) -> int:
    return max((t["id"] for t in github.tokens()), default=0) + 1


def orphan_count(stack: Stack, outcome: str) -> float:
    value = stack.app.metrics.registry.get_sample_value(
        "octo_sts_github_orphan_tokens_total", {"outcome": outcome}
    )
    return value or 0.0


async def failed_exchange(
    stack: Stack, timeout: float | None = None
) -> tuple[grpc.StatusCode, str]:
    """(code, request id) of an exchange that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Exchange(
            sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=(("authorization", f"Bearer {stack.token()}"),),
            timeout=timeout,
        )
    trailers = dict(info.value.trailing_metadata() or ())
    return info.value.code(), str(trailers.get("x-request-id", ""))


async def all_revoked(github: GitHubEmulator, first_id: int, count: int) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        tokens = tokens_since(github, first_id)
        done = len(tokens) == count and all(t["state"] == "revoked" for t in tokens)
        return tokens if done else None

    return await eventually(settled, lambda: f"{count} revoked tokens in {github.tokens()}")


async def test_a_mint_answered_after_our_timeout_is_revoked_and_audited(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*backends, outbound_timeout_seconds=0.5) as stack:
        assert (await stack.exchange()).token  # warm: only the exchange's own mint is left
        first = next_token_id(stack.github)
        slow_mints(stack.github, 1500)
        with structlog.testing.capture_logs() as logs:
            outcomes = await asyncio.gather(*(failed_exchange(stack) for _ in range(5)))
            assert {code for code, _ in outcomes} == {grpc.StatusCode.UNAVAILABLE}
            revoked = await all_revoked(stack.github, first, 5)
            await eventually(lambda: orphan_count(stack, "revoked") == 5, "5 orphans counted")
        events = [e for e in logs if e["event"] == "orphan_token" and "result" in e]
    # Live: the warm-up's tokens (its exchange's and the cached contents:read one) only.
    assert all(t["id"] < first for t in stack.github.tokens("live"))
    assert sorted(e["token_sha256"] for e in events) == sorted(t["token_sha256"] for t in revoked)
    assert {e["request_id"] for e in events} == {rid for _, rid in outcomes}
    for event in events:
        assert (event["result"], event["reason"]) == ("revoked", "orphan_token_revoked")
        assert event["installation_id"] == 1001
        assert event["permissions"] == {"contents": "read"}
        assert event["repositories"] == ["demo"]


async def test_a_caller_giving_up_leaves_no_live_token(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*backends, outbound_timeout_seconds=5.0) as stack:
        assert (await stack.exchange()).token
        first = next_token_id(stack.github)
        rule = slow_mints(stack.github, 1000)
        calls = [
            stack.stub.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=(("authorization", f"Bearer {stack.token()}"),),
            )
            for _ in range(4)
        ]
        await eventually(lambda: fired(stack.github, rule) == 4, "4 mints at GitHub")
        for call in calls:
            call.cancel()  # the callers hang up while GitHub is still minting
        await all_revoked(stack.github, first, 4)
        await eventually(lambda: orphan_count(stack, "revoked") == 4, "4 orphans counted")


async def test_shutdown_settles_the_mints_it_cut_off(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    github = backends[1]
    async with running(
        *backends, outbound_timeout_seconds=3.0, shutdown_grace_seconds=0.2
    ) as stack:
        assert (await stack.exchange()).token
        first = next_token_id(github)
        rule = slow_mints(github, 1000)
        pending = asyncio.ensure_future(failed_exchange(stack))
        await eventually(lambda: fired(github, rule) == 1, "the mint at GitHub")
        await stack.app.stop()  # grace 0.2 s: the exchange is cut; its token must not outlive it
        await pending
        [token] = tokens_since(github, first)
        assert token["state"] == "revoked"


def test_the_ledger_names_tokens_as_audit_events_do() -> None:
    token = "ghs_" + "a" * 36
    assert ledger_sha256(token) == audit_sha256(token) == hashlib.sha256(token.encode()).hexdigest()
