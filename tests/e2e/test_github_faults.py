"""[resilience], GitHub's half, through the real stack: what callers and GitHub see when GitHub
rate-limits, fails or is slow.

Real processes (``DevStack``): the dev issuer, the GitHub emulator (driven over its fault-rule
API, as an operator or the bench would), two ``octo-sts serve`` replicas and Envoy over TLS.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Literal

import grpc
import httpx
import pytest

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.client import AsyncClient, Client, RateLimited, RetryPolicy
from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack
from tests.e2e.test_clients_live import CLIENTS, build_typescript, live_env, toolchain
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    assert_token_json,
    bearer,
    grpc_channel,
    http,
    metric_sum,
    replica_metric,
    repo_token,
)
from tests.polling import eventually

pytestmark = pytest.mark.e2e

MINT_PREFIX = "/app/installations/"  # POST /app/installations/{id}/access_tokens


def add_fault(stack: DevStack, **rule: object) -> int:
    resp = httpx.post(f"{stack.github_url}/_emulator/faults", json=rule, timeout=5)
    resp.raise_for_status()
    return int(resp.json()["id"])


def github_calls(stack: DevStack, method: str, prefix: str, since: float) -> int:
    calls = httpx.get(
        f"{stack.github_url}/_emulator/calls", params={"since": since}, timeout=5
    ).json()
    return sum(1 for c in calls if c["method"] == method and c["path"].startswith(prefix))


async def test_rate_limit_is_429_with_retry_after_and_github_hears_no_more(
    own_stack: DevStack,
) -> None:
    stack = own_stack
    token = repo_token(stack)
    async with http(stack) as client, grpc_channel(stack) as channel:
        for _ in range(2):  # both replicas warm (installation, policy, contents token)
            assert_token_json(await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)))
        since = time.time()
        add_fault(stack, kind="primary_rate_limit", reset_in=300, path_prefix=MINT_PREFIX)
        answers = [
            await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)) for _ in range(12)
        ]
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sts.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=tuple(bearer(token).items()),
                timeout=15,
            )
    for resp in answers:
        assert resp.status_code == 429, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert 290 <= int(resp.headers["retry-after"]) <= 301
        assert "grpc-status" not in resp.headers
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.value.trailing_metadata() or ())
    assert 290 <= int(trailers["retry-after"]) <= 301
    # Each replica asked GitHub once, learned the limit, and asked no more.
    assert github_calls(stack, "POST", MINT_PREFIX, since) <= 2
    assert metric_sum(stack, "octo_sts_exchanges_total", reason="rate_limited_primary") == 13
    held = [
        replica_metric(stack, i, "octo_sts_github_rate_limited_until", installation="app")
        for i in range(2)
    ]
    assert any(until > time.time() + 250 for until in held)


def ledger(stack: DevStack) -> list[dict[str, object]]:
    tokens: list[dict[str, object]] = httpx.get(
        f"{stack.github_url}/_emulator/tokens", timeout=5
    ).json()["tokens"]
    return tokens


async def test_callers_giving_up_on_a_slow_github_leave_no_live_token(stack: DevStack) -> None:
    token = repo_token(stack)
    request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
    metadata = tuple(bearer(token).items())
    async with grpc_channel(stack) as channel:
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        for _ in range(2):  # both replicas warm: the exchange's mint is its only GitHub call
            await sts.Exchange(request, metadata=metadata, timeout=15)
        first = 1 + max(int(str(t["id"])) for t in ledger(stack))
        rule = add_fault(
            stack, kind="latency", latency_ms=2000, path_prefix=MINT_PREFIX, method="POST"
        )
        try:
            codes = set()
            for _ in range(6):
                with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                    await sts.Exchange(request, metadata=metadata, timeout=0.5)
                codes.add(gave_up.value.code())
        finally:
            httpx.delete(f"{stack.github_url}/_emulator/faults/{rule}", timeout=5)
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}

    def settled() -> list[dict[str, object]] | None:
        minted = [t for t in ledger(stack) if int(str(t["id"])) >= first]
        done = len(minted) == 6 and all(t["state"] == "revoked" for t in minted)
        return minted if done else None

    await eventually(settled, lambda: f"6 revoked tokens since #{first}: {ledger(stack)}")
    assert metric_sum(stack, "octo_sts_github_orphan_tokens_total", outcome="revoked") >= 6


async def test_when_github_is_slow_the_excess_is_shed_at_once_with_retry_after(
    tmp_path: Path,
) -> None:
    # Two connections to GitHub, each busy 3 s per mint: of six exchanges at once, two are
    # served and four shed after the 0.1 s pool wait, with 429 + Retry-After instead of
    # queueing until everything in flight times out (and not retried by Envoy).
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "stack",
        replicas=1,
        extra_env={
            "OCTOSTS_GITHUB_MAX_CONNECTIONS": "2",
            "OCTOSTS_GITHUB_POOL_WAIT_SECONDS": "0.1",
        },
    )
    try:
        token = repo_token(stack)
        async with http(stack) as client:
            assert_token_json(await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)))
            since = time.time()
            add_fault(stack, kind="latency", latency_ms=3000, path_prefix=MINT_PREFIX)
            answers = await asyncio.gather(
                *(client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)) for _ in range(6))
            )
        mints = github_calls(stack, "POST", MINT_PREFIX, since)
    finally:
        await asyncio.to_thread(stack.stop)
    served = [a for a in answers if a.status_code == 200]
    shed = [a for a in answers if a.status_code != 200]
    assert len(served) == 2, [a.text for a in answers]
    for answer in shed:
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "1"
        assert "github_busy" in answer.json()["message"]
    assert mints == 2  # the shed calls never reached GitHub


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_the_python_client_waits_out_a_short_limit_and_reports_a_long_one(
    own_stack: DevStack, transport: Literal["http", "grpc"]
) -> None:
    # A 1 s secondary limit: the service answers 429 + Retry-After: 1 at once; the client
    # waits that second (not its 0.2 s backoff) and gets the token on its one retry. A 60 s
    # limit does not fit the client's 20 s deadline: raised at once, with retry_after set.
    stack = own_stack
    token = repo_token(stack)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    policy = RetryPolicy(max_attempts=3, deadline=20.0)
    async with AsyncClient(
        stack.gateway_url, transport=transport, ca_file=stack.ca_cert, retry=policy, sleep=sleep
    ) as client:
        await client.exchange("octo-org/demo", "ci", token=token)  # warm: installation, policy
        add_fault(
            stack,
            kind="secondary_rate_limit",
            status=429,
            retry_after=1,
            path_prefix=MINT_PREFIX,
            times=1,
        )
        result = await client.exchange("octo-org/demo", "ci", token=token)
        assert result.token
        assert sleeps == [1.0]
        # GitHub did refuse once (the rule is used up) and the retry was minted.
        faults = httpx.get(f"{stack.github_url}/_emulator/faults", timeout=5).json()["faults"]
        assert faults == []
        sleeps.clear()
        add_fault(
            stack, kind="secondary_rate_limit", status=429, retry_after=60, path_prefix=MINT_PREFIX
        )
        with pytest.raises(RateLimited) as limited:
            await client.exchange("octo-org/demo", "ci", token=token)
    assert sleeps == []
    # 60 s, or 120 s on a replica whose 1 s limit above had no good answer after it (repeats
    # back off exponentially, GitHub's rule): past the deadline either way.
    assert limited.value.retry_after in (60, 120)
    assert "retry_after=" in str(limited.value)


def test_the_go_and_typescript_clients_wait_out_a_short_limit_and_report_a_long_one(
    own_stack: DevStack,
) -> None:
    # The Python test above, for the Go client (gRPC: the retry-after trailer) and the
    # TypeScript client (gRPC trailer and HTTP header): their own tests
    # (clients/go/limits_live_test.go, clients/typescript/test/limits.test.ts) make the calls
    # and check the waits; this one sets GitHub's limits in between.
    stack = own_stack
    go = toolchain("go")
    node, _ = build_typescript()
    env = {**os.environ, **live_env(stack)}
    runs = {
        "go grpc": ([go, "test", "-count=1", "-run", "^TestStackRateLimit$", "-v", "."], "go"),
        "ts grpc": ([node, "--test", "dist/test/limits.test.js"], "typescript"),
        "ts http": ([node, "--test", "dist/test/limits.test.js"], "typescript"),
    }

    def run(name: str, limit: str) -> None:
        argv, where = runs[name]
        proc = subprocess.run(
            argv,
            cwd=CLIENTS / where,
            env={**env, "OCTO_STS_LIVE_LIMIT": limit, "OCTO_STS_LIVE_TRANSPORT": name[3:]},
            capture_output=True,
            text=True,
            timeout=55,
            check=False,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{name} {limit}: {out}"
        passed = "--- PASS: TestStackRateLimit" if where == "go" else "# pass 1"
        assert passed in out, out

    with Client(stack.gateway_url, ca_file=stack.ca_cert) as client:  # warm: installation, policy
        client.exchange("octo-org/demo", "ci", token=repo_token(stack))
    for name in runs:
        add_fault(
            stack,
            kind="secondary_rate_limit",
            status=429,
            retry_after=1,
            path_prefix=MINT_PREFIX,
            times=1,
        )
        run(name, "short")
        # GitHub refused once (the rule is used up) and the retry was minted.
        assert httpx.get(f"{stack.github_url}/_emulator/faults", timeout=5).json()["faults"] == []
    add_fault(
        stack, kind="secondary_rate_limit", status=429, retry_after=60, path_prefix=MINT_PREFIX
    )
    for name in runs:
        run(name, "long")
