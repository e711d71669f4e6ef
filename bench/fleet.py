"""Fleet benchmark ([fleet]): GitHub calls per exchange for R replicas, with and without Redis.

For R = 1, 2, 4 replicas (one worker each; a worker is a process like a replica), with and
without the shared Redis (``OCTOSTS_REDIS_URL``), the same workload runs against the
``DevStack`` (dev issuer, GitHub emulator, R ``octo-sts serve`` replicas; gRPC straight to
the replicas, spread evenly):

* cold: ``--burst`` concurrent exchanges on empty caches;
* steady: ``--seconds`` of exchanges (``--concurrency`` at a time) with policies fresh for
  1 s (``OCTOSTS_POLICY_FRESH_SECONDS=1``), so revalidations happen all along.

Reported per phase: GitHub calls per exchange (the emulator's call log), of which the
exchange's own mint is always one; the calls besides those mints (installation lookups,
contents:read token mints, policy and issuers-file reads and revalidations) and their ratio
without/with Redis; and the issuer fetches (discovery + JWKS, the dev issuer's counts).

    .venv/bin/python bench/fleet.py [--burst 100] [--seconds 4] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.issuer import REQUEST_COUNTS_PATH
from octosts.dev.redis import RedisServer
from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
ISSUER_PATHS = ("/.well-known/openid-configuration", "/.well-known/jwks")
REPLICAS = (1, 2, 4)


def _counts(stack: DevStack) -> dict[str, int]:
    calls = httpx.get(f"{stack.github_url}/_emulator/calls", timeout=5).json()
    issuer = httpx.get(stack.issuer_url + REQUEST_COUNTS_PATH, timeout=5).json()
    return {"github": len(calls), "issuer": sum(issuer.get(path, 0) for path in ISSUER_PATHS)}


def _delta(after: dict[str, int], before: dict[str, int], exchanges: int) -> dict[str, Any]:
    github = after["github"] - before["github"]
    return {
        "exchanges": exchanges,
        "github_calls": github,
        "github_calls_per_exchange": round(github / exchanges, 3),
        # Every exchange mints its token: what the caches save is everything else.
        "github_calls_besides_mints": github - exchanges,
        "issuer_fetches": after["issuer"] - before["issuer"],
    }


async def _exchange(stub: sts_pb2_grpc.SecurityTokenServiceStub, token: str) -> None:
    await stub.Exchange(
        sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=30,
    )


async def _measure(stack: DevStack, burst: int, seconds: float, concurrency: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in stack.ports.grpc]
    stubs = [sts_pb2_grpc.SecurityTokenServiceStub(c) for c in channels]
    token = stack.token(SUB, workflow_ref=WORKFLOW, ttl=3600)
    try:
        start = _counts(stack)
        await asyncio.gather(*(_exchange(stubs[i % len(stubs)], token) for i in range(burst)))
        cold = _delta(_counts(stack), start, burst)
        start = _counts(stack)
        done = 0
        turn = itertools.count()
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await _exchange(stubs[next(turn) % len(stubs)], token)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        steady = _delta(_counts(stack), start, done)
    finally:
        for channel in channels:
            await channel.close()
    return {"cold": cold, "steady": steady}


def _run(replicas: int, *, redis: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="octo-sts-bench-fleet-") as tmp:
        env = {"OCTOSTS_POLICY_FRESH_SECONDS": "1", "OCTOSTS_LOG_LEVEL": "warning"}
        server = RedisServer(Path(tmp) / "redis").start() if redis else None
        try:
            if server is not None:
                env |= {"OCTOSTS_REDIS_URL": server.url, "OCTOSTS_REDIS_HMAC_KEY": "b" * 32}
            stack = DevStack(
                workdir=Path(tmp) / "stack",
                ports=StackPorts.free(replicas),
                extra_env=env,
                base_id=(os.getpid() % 10_000) * 10 + replicas + (5 if redis else 0),
            )
            with stack:
                return asyncio.run(_measure(stack, args.burst, args.seconds, args.concurrency))
        finally:
            if server is not None:
                server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "setup": {
            "path": "gRPC client -> R STS replicas (1 worker each) -> GitHub emulator",
            "burst": args.burst,
            "steady_seconds": args.seconds,
            "concurrency": args.concurrency,
            "policy_fresh_seconds": 1,
        }
    }
    rows = [
        (
            "replicas", "phase", "calls/exchange (no Redis)", "(Redis)",
            "besides mints (no Redis)", "(Redis)", "ratio", "issuer fetches", "(Redis)",
        )
    ]  # fmt: skip
    for replicas in REPLICAS:
        alone = _run(replicas, redis=False, args=args)
        shared = _run(replicas, redis=True, args=args)
        results[f"r{replicas}"] = {"without_redis": alone, "with_redis": shared}
        for phase in ("cold", "steady"):
            a, s = alone[phase], shared[phase]
            ratio = (
                a["github_calls_besides_mints"] / s["github_calls_besides_mints"]
                if s["github_calls_besides_mints"]
                else float("nan")
            )
            rows.append(
                (
                    str(replicas), phase,
                    str(a["github_calls_per_exchange"]), str(s["github_calls_per_exchange"]),
                    str(a["github_calls_besides_mints"]), str(s["github_calls_besides_mints"]),
                    f"{ratio:.1f}", str(a["issuer_fetches"]), str(s["issuer_fetches"]),
                )
            )  # fmt: skip
    save("fleet", results)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
