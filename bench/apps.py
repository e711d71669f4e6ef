"""GitHub App quota routing ([fleet]): exchanges sustainable with 1 vs 3 Apps.

Real processes (``DevStack``): the dev issuer, the GitHub emulator serving N GitHub Apps each
with a small primary rate limit of its own (``--rate-limit L --rate-window W``: L requests per W
seconds per App, and per installation), one ``octo-sts serve`` replica minting with those Apps
(``GITHUB_APPS``) and Envoy. Exchanges are offered at a fixed rate, above what one App allows,
straight to the replica over gRPC for ``--seconds``; what is measured per N:

- exchanges that got a token, per second and scaled to an hour;
- callers refused with RESOURCE_EXHAUSTED (the service answers those itself once an App's
  budget is spent, with Retry-After), and any other failure;
- GitHub calls GitHub refused (403/429): the service should stop at each App's last request;
- tokens minted per App (the emulator's ledger).

The default scale is GitHub's 5,000 requests/hour shrunk to 20 per 20 s (60/min) so a run takes
about a minute and a half; the ratio 3 Apps / 1 App is the figure that carries over.

    .venv/bin/python bench/apps.py [--limit 20] [--window 20] [--seconds 40] [--rate 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from octosts.dev.github import token_sha256
from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"


async def _offer(port: int, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """Exchanges at ``rate`` per second (open loop) for ``seconds``; outcomes and tokens."""
    codes: collections.Counter[str] = collections.Counter()
    tokens: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)

        async def one() -> None:
            try:
                reply = await stub.Exchange(
                    sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                return
            codes["OK"] += 1
            tokens.append(reply.token)

        started = time.monotonic()
        tasks = []
        for sent in range(int(rate * seconds)):
            # Open loop: the next call leaves on schedule whatever the last one's fate.
            await asyncio.sleep(max(started + sent / rate - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return {"codes": dict(codes), "tokens": tokens}


def _run(apps: int, limit: int, window: int, seconds: float, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="octo-sts-bench-apps-") as tmp:
        github_args = ("--rate-limit", str(limit), "--rate-window", str(window))
        stack = DevStack(
            workdir=Path(tmp), ports=StackPorts.free(1), apps=apps, github_args=github_args
        )
        with stack:
            token = stack.token(SUB, workflow_ref=WORKFLOW, ttl=3600)
            offered = asyncio.run(_offer(stack.ports.grpc[0], token, rate, seconds))
            emulator = stack.github_url + "/_emulator"
            ledger = httpx.get(f"{emulator}/tokens", timeout=10).json()["tokens"]
            calls = httpx.get(f"{emulator}/calls", timeout=10).json()
    by_sha = {line["token_sha256"]: line["app_id"] for line in ledger}
    minted = collections.Counter(by_sha[token_sha256(t)] for t in offered["tokens"])
    codes = offered["codes"]
    ok = codes.get("OK", 0)
    return {
        "apps": apps,
        "ok": ok,
        "resource_exhausted": codes.get("RESOURCE_EXHAUSTED", 0),
        "other_errors": sum(
            n for code, n in codes.items() if code not in {"OK", "RESOURCE_EXHAUSTED"}
        ),
        "ok_per_second": round(ok / seconds, 2),
        "exchanges_per_hour": round(ok / seconds * 3600),
        "github_calls": len(calls),
        "github_refused": sum(1 for c in calls if c["status"] in {403, 429}),
        "minted_per_app": {str(app): n for app, n in sorted(minted.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20, help="requests per window per App")
    parser.add_argument("--window", type=int, default=20, help="the limit's window (seconds)")
    parser.add_argument("--seconds", type=float, default=40.0, help="load per run")
    parser.add_argument("--rate", type=float, default=5.0, help="exchanges offered per second")
    args = parser.parse_args()
    runs = {str(n): _run(n, args.limit, args.window, args.seconds, args.rate) for n in (1, 3)}
    ratio = runs["3"]["ok"] / runs["1"]["ok"] if runs["1"]["ok"] else float("nan")
    results = {
        "setup": {
            "path": "gRPC client -> 1 STS replica (1 worker) -> GitHub emulator with N Apps",
            "per_app_limit": args.limit,
            "window_seconds": args.window,
            "per_app_limit_per_hour": round(args.limit * 3600 / args.window),
            "offered_per_second": args.rate,
            "seconds": args.seconds,
        },
        "runs": runs,
        "ratio_3_to_1": round(ratio, 2),
    }
    save("apps", results)
    rows = [("Apps", "ok", "429", "other", "ok/s", "exchanges/h", "GitHub 403s", "minted per App")]
    rows += [
        (str(run["apps"]), str(run["ok"]), str(run["resource_exhausted"]),
         str(run["other_errors"]), str(run["ok_per_second"]), str(run["exchanges_per_hour"]),
         str(run["github_refused"]), str(run["minted_per_app"]))
        for run in runs.values()
    ]  # fmt: skip
    print(table(rows))
    print(
        f"\nper App: {args.limit} requests / {args.window} s"
        f" (= {results['setup']['per_app_limit_per_hour']}/h); 3 Apps / 1 App = {ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
