"""Exchange benchmark ([core-2]): gRPC straight to one STS replica, GitHub emulator behind it.

Reports warm exchanges/s and p50/p99 with the emulator at 0 ms and at 50 ms
latency, and how many GitHub calls a cold and a warm exchange make. Real
processes (``DevStack``), loopback only, bounded request counts.

    .venv/bin/python bench/exchange.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, summary, table

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
ORG_SUB = "repo:octo-org/demo:environment:production"


async def _exchange(
    stub: sts_pb2_grpc.SecurityTokenServiceStub, token: str, scope: str, identity: str
) -> None:
    await stub.Exchange(
        sts_pb2.ExchangeRequest(scope=scope, identity=identity),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=10,
    )


# A load over several connections must not share one subchannel (grpc's global pool would):
# workers of one replica share its port (SO_REUSEPORT), and the kernel spreads connections.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


async def _load(
    port: int, tokens: list[str], concurrency: int, connections: int = 1
) -> dict[str, float]:
    """``concurrency`` exchanges at a time over ``connections`` connections, each token once."""
    latencies: list[float] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    errors = 0
    target = f"127.0.0.1:{port}"
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(connections)
    ]
    try:
        stubs = [sts_pb2_grpc.SecurityTokenServiceStub(channel) for channel in channels]
        await _exchange(stubs[0], tokens[0], "octo-org/demo", "ci")  # warm every cache

        async def worker(stub: sts_pb2_grpc.SecurityTokenServiceStub) -> None:
            nonlocal errors
            while not queue.empty():
                token = queue.get_nowait()
                started = time.perf_counter()
                try:
                    await _exchange(stub, token, "octo-org/demo", "ci")
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        for channel in channels:
            await channel.channel_ready()
        started = time.perf_counter()
        await asyncio.gather(*(worker(stubs[i % connections]) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return {**summary(latencies, elapsed), "errors": errors}


def _github_calls(stack: DevStack) -> int:
    reply = httpx.get(f"{stack.github_url}/_emulator/calls", timeout=5)
    return len(reply.json())


async def _call_budget(stack: DevStack) -> dict[str, int]:
    port = stack.ports.grpc[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        before = _github_calls(stack)
        await _exchange(stub, stack.token(SUB, workflow_ref=WORKFLOW), "octo-org/demo", "ci")
        first = _github_calls(stack) - before
        before = _github_calls(stack)
        await _exchange(stub, stack.token(ORG_SUB), "octo-org", "deploy")
        cold_known = _github_calls(stack) - before
        before = _github_calls(stack)
        await _exchange(stub, stack.token(SUB, workflow_ref=WORKFLOW), "octo-org/demo", "ci")
        warm = _github_calls(stack) - before
    return {"first_ever": first, "cold_installation_known": cold_known, "warm": warm}


def _run_scenario(latency_ms: int, requests: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="octo-sts-bench-") as tmp:
        ports = StackPorts.free(replicas=1)
        github_args = ("--latency-ms", str(latency_ms)) if latency_ms else ()
        with DevStack(workdir=Path(tmp), ports=ports, github_args=github_args) as stack:
            budget = asyncio.run(_call_budget(stack))
            same = [stack.token(SUB, workflow_ref=WORKFLOW)] * requests
            fresh = [stack.token(SUB, workflow_ref=WORKFLOW, jti=str(i)) for i in range(requests)]
            warm_same = asyncio.run(_load(ports.grpc[0], same, concurrency))
            warm_fresh = asyncio.run(_load(ports.grpc[0], fresh, concurrency))
    return {
        "emulator_latency_ms": latency_ms,
        "github_calls_per_exchange": budget,
        "warm_same_token": warm_same,
        "warm_fresh_tokens": warm_fresh,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    results = {
        "setup": {
            "path": "gRPC client -> 1 STS replica (1 worker) -> GitHub emulator",
            "requests": args.requests,
            "concurrency": args.concurrency,
        },
        "latency_0ms": _run_scenario(0, args.requests, args.concurrency),
        "latency_50ms": _run_scenario(50, max(200, args.requests // 5), args.concurrency),
    }
    save("exchange", results)
    rows = [
        ("scenario", "tokens", "rps", "p50 ms", "p99 ms", "errors", "GitHub calls first/cold/warm")
    ]
    for key in ("latency_0ms", "latency_50ms"):
        scenario = results[key]
        budget = scenario["github_calls_per_exchange"]
        calls = f"{budget['first_ever']}/{budget['cold_installation_known']}/{budget['warm']}"
        for label in ("warm_same_token", "warm_fresh_tokens"):
            s = scenario[label]
            rows.append(
                (key, label.removeprefix("warm_"), str(s["rps"]), str(s["p50_ms"]),
                 str(s["p99_ms"]), str(s["errors"]), calls)
            )  # fmt: skip
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
