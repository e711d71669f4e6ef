"""What ext_authz's deny path costs for a forged token of an ordinary issuer ([operator-kit]).

Pinned keys made Exchange read a request's policy before it can verify some tokens; the edge
(``Exchanger.verify_at_edge``, ``GET /sts/exchange?scope=...&identity=...``) must still judge
forged tokens of the issuers in use without any GitHub call and about as fast as the plain
verification every request had before (``POST /sts/exchange``: ``TokenVerifier.verify``).

One in-process replica (``tests.integration.service_harness``), the dev issuer and the GitHub
emulator on loopback; ``Check`` over gRPC; every token distinct (no cache hides a check), its
signature altered. Prints, per round: the median and p90 ms per ``Check`` for each path and the
GitHub calls each made; first, the GitHub calls of one forged token on a replica that has not
fetched the issuer yet. A report, not a test (tests/unit/test_pinned_keys.py holds the counts).

    .venv/bin/python bench/edge_deny.py [--tokens 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.service_harness import running, servers

PATHS = {
    "POST (plain verification)": "/sts/exchange",
    "GET ?scope&identity (verify_at_edge)": "/sts/exchange?scope=octo-org/demo&identity=ci",
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


async def main(tokens: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (issuer, github):
        async with running(issuer, github) as stack:
            stub = external_auth_pb2_grpc.AuthorizationStub(stack.channel)
            before = len(github.calls())
            cold = forged(stack.token(jti="cold"))
            await stub.Check(check(cold, PATHS["GET ?scope&identity (verify_at_edge)"]))
            print(f"cold replica, one forged GET: {len(github.calls()) - before} GitHub calls")
            for rnd in range(rounds + 1):  # round 0 warms up
                for name, path in PATHS.items():
                    times, before = [], len(github.calls())
                    for i in range(tokens):
                        bearer = forged(stack.token(jti=f"{rnd}-{name}-{i}"))
                        start = time.perf_counter()
                        reply = await stub.Check(check(bearer, path))
                        times.append((time.perf_counter() - start) * 1e3)
                        assert reply.status.code != 0, "a forged token was allowed"
                    if rnd:
                        p90 = sorted(times)[int(tokens * 0.9)]
                        calls = len(github.calls()) - before
                        median = statistics.median(times)
                        print(
                            f"{rnd} {name:38s} median {median:.3f} ms  p90 {p90:.3f} ms  "
                            f"GitHub calls {calls}"
                        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.rounds))
