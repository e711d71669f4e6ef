"""What ext_authz's deny path costs for a forged token of an ordinary issuer ([operator-kit]).

Pinned keys made Exchange read a request's policy before it can verify some tokens; the edge
(``Exchanger.verify_at_edge``, ``GET /sts/exchange?scope=...&identity=...``) must still judge
forged tokens of the issuers in use without any GitHub call and about as fast as the plain
verification every request had before (``POST /sts/exchange``: ``TokenVerifier.verify``).

One in-process replica (``tests.integration.service_harness``), the dev issuer and the GitHub
emulator on loopback; ``Check`` over gRPC; every token distinct (no cache hides a check), its
signature altered. Prints, per round: the median and p90 ms per ``Check`` for each path and the
GitHub calls each made; first, the GitHub calls of one forged token on a replica that has not
fetched the issuer yet. Then a table over all rounds (median, p90, GitHub calls, GET/POST) and
writes the ``"edge_deny"`` key of bench/results.json, with the load average before and after
(latency is read from the wall clock: compare runs at a similar load). Logs as a replica logs by
default (info, JSON: no line per denied ``Check``). A report, not a test
(tests/unit/test_pinned_keys.py holds the counts).

    .venv/bin/python bench/edge_deny.py [--tokens 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import load_average, save, table

from octosts.observability.logging import configure_logging
from tests.integration.service_harness import running, servers

POST = "POST (plain verification)"
GET = "GET ?scope&identity (verify_at_edge)"
PATHS = {
    POST: "/sts/exchange",
    GET: "/sts/exchange?scope=octo-org/demo&identity=ci",
}


def check(bearer: str, path: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.path = path
    http.method = "GET" if "?" in path else "POST"
    http.headers["authorization"] = f"Bearer {bearer}"
    request.attributes.context_extensions["mode"] = "verify"
    return request


def forged(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{head}.{body}.{('A' if sig[0] != 'A' else 'B') + sig[1:]}"


def p90(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.9)]


async def measure(tokens: int, rounds: int) -> dict[str, Any]:
    """Check latencies (ms) and GitHub calls per path and round; round 0 (warm-up) dropped."""
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (issuer, github):
        async with running(issuer, github) as stack:
            stub = external_auth_pb2_grpc.AuthorizationStub(stack.channel)
            before = len(github.calls())
            cold = forged(stack.token(jti="cold"))
            await stub.Check(check(cold, PATHS[GET]))
            cold_calls = len(github.calls()) - before
            print(f"cold replica, one forged GET: {cold_calls} GitHub calls")
            for rnd in range(rounds + 1):  # round 0 warms up
                for name, path in PATHS.items():
                    times: list[float] = []
                    before = len(github.calls())
                    for i in range(tokens):
                        bearer = forged(stack.token(jti=f"{rnd}-{name}-{i}"))
                        start = time.perf_counter()
                        reply = await stub.Check(check(bearer, path))
                        times.append((time.perf_counter() - start) * 1e3)
                        assert reply.status.code != 0, "a forged token was allowed"
                    if rnd:
                        calls = len(github.calls()) - before
                        median = statistics.median(times)
                        print(
                            f"{rnd} {name:38s} median {median:.3f} ms  p90 {p90(times):.3f} ms  "
                            f"GitHub calls {calls}"
                        )
                        per_round[name].append(
                            {"median_ms": median, "p90_ms": p90(times), "github_calls": calls}
                        )
    return {"cold_replica_github_calls": cold_calls, "rounds": per_round}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    # A replica's default (info, JSON): unconfigured, structlog prints each Check's debug line.
    configure_logging(level="info", fmt="json")
    load_before = load_average()
    run = asyncio.run(measure(args.tokens, args.rounds))
    load_after = load_average()
    paths: dict[str, Any] = {}
    for name, rounds in run["rounds"].items():
        medians = [r["median_ms"] for r in rounds]
        paths[name] = {
            "median_ms": round(statistics.median(medians), 3),
            "median_ms_per_round": [round(m, 3) for m in medians],
            "p90_ms": round(statistics.median(r["p90_ms"] for r in rounds), 3),
            "github_calls": sum(int(r["github_calls"]) for r in rounds),
        }
    ratio = round(paths[GET]["median_ms"] / paths[POST]["median_ms"], 2)
    lines = [("path", "median ms", "p90 ms", "GitHub calls", "x POST")]
    for name, fig in paths.items():
        lines.append(
            (
                name,
                f"{fig['median_ms']:.3f}",
                f"{fig['p90_ms']:.3f}",
                str(fig["github_calls"]),
                f"{fig['median_ms'] / paths[POST]['median_ms']:.2f}",
            )
        )
    print(table(lines))
    print(f"cold replica, first forged GET: {run['cold_replica_github_calls']} GitHub calls")
    print(f"load average before {load_before}, after {load_after}")
    save(
        "edge_deny",
        {
            "paths": paths,
            "get_over_post": ratio,
            "cold_replica_github_calls": run["cold_replica_github_calls"],
            "measured": {
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "tokens_per_round": args.tokens,
                "rounds": args.rounds,
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
