"""Workers per replica ([perf-2] lever): OCTOSTS_WORKERS=1 beside =2 on this box, same run.

One replica (the supervisor and its workers), gRPC straight to it, GitHub emulator behind it,
fresh OIDC tokens, warm caches. Sides are interleaved round by round. Reports exchanges/s,
p50/p99 and the replica's CPU per exchange (user + system of the supervisor and every worker,
read from ``/proc``), and whether more workers than one is worth being the default here.

    .venv/bin/python bench/workers.py [--requests 1500] [--concurrency 16] [--rounds 3] \
        [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _common import cpu_seconds, load_average, save, table
from exchange import CHANNEL_OPTIONS, ORG_SUB, SUB, WORKFLOW, _exchange, _load

from octosts._gen.octosts.v1 import sts_pb2_grpc
from octosts.dev.stack import DevStack, StackPorts

SIDES = (1, 2)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """CPU of ``pids`` so far; a worker that has gone counts nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def _warm(port: int, stack: DevStack, workers: int) -> None:
    """Every worker's caches warm: exchanges over many fresh connections."""
    for _ in range(8 * workers):
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
            await _exchange(stub, stack.token(SUB, workflow_ref=WORKFLOW), "octo-org/demo", "ci")
            await _exchange(stub, stack.token(ORG_SUB), "octo-org", "deploy")


def _one(workers: int, requests: int, concurrency: int, conns: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="octo-sts-bench-") as tmp:
        ports = StackPorts.free(replicas=1)
        env = {"OCTOSTS_WORKERS": str(workers)}
        with DevStack(workdir=Path(tmp), ports=ports, extra_env=env) as stack:
            port = ports.grpc[0]
            asyncio.run(_warm(port, stack, workers))
            tokens = [stack.token(SUB, workflow_ref=WORKFLOW) for _ in range(requests)]
            pids = _tree(stack.pids()["sts-0"])
            before = _cpu_seconds(pids)
            result = asyncio.run(_load(port, tokens, concurrency, conns))
            cpu = _cpu_seconds(pids) - before
    served = max(1, int(result["requests"]))
    return {**result, "processes": len(pids), "cpu_ms_per_exchange": round(cpu / served * 1e3, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    rounds: dict[int, list[dict[str, float]]] = {w: [] for w in SIDES}
    for _ in range(args.rounds):
        for workers in SIDES:
            rounds[workers].append(_one(workers, args.requests, args.concurrency, args.connections))

    def median(workers: int, key: str) -> float:
        return round(statistics.median(r[key] for r in rounds[workers]), 3)

    figures = {
        str(w): {k: median(w, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_exchange")}
        | {"errors": sum(r["errors"] for r in rounds[w])}
        for w in SIDES
    }
    one, two = figures["1"], figures["2"]
    results = {
        "setup": {
            "path": "gRPC client -> 1 replica (OCTOSTS_WORKERS 1 or 2) -> GitHub emulator",
            "cores": os.cpu_count(),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "rounds": args.rounds,
            "load_average": load_average(),
        },
        "workers": figures,
        "rps_2_over_1": round(two["rps"] / one["rps"], 3) if one["rps"] else None,
        "cpu_2_over_1": round(two["cpu_ms_per_exchange"] / one["cpu_ms_per_exchange"], 3),
        "rounds": {str(w): rounds[w] for w in SIDES},
    }
    save("workers", results)
    rows = [("workers", "rps", "p50 ms", "p99 ms", "CPU ms/exchange", "errors")]
    for w in SIDES:
        f = figures[str(w)]
        rows.append(
            (str(w), str(f["rps"]), str(f["p50_ms"]), str(f["p99_ms"]),
             str(f["cpu_ms_per_exchange"]), str(f["errors"]))
        )  # fmt: skip
    print(table(rows))
    print(f"2 workers / 1: rps x{results['rps_2_over_1']}, CPU x{results['cpu_2_over_1']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
