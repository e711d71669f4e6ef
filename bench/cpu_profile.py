"""Where a replica's CPU goes: py-spy samples of one replica under load, in shares per layer.

A measurement aid for [perf-2]'s closing note (bench/README.md), not a benchmark: py-spy
(``pip install py-spy`` into the venv; not a dependency of the service) samples one replica of
this tree, with native frames, while it serves ``--count`` requests of one kind:

- ``exchange``: warm gRPC exchanges with fresh OIDC tokens (one mint each), as bench/perf.py's
  replica CPU figure;
- ``deny``: ext_authz Checks of a token with the issuer's ``kid`` and another key (the edge's
  deny path when every token goes to ext_authz).

Each busy sample (threads waiting in epoll/poll are left out) goes to the first layer found
walking from the innermost frame outwards (see ``LAYERS``).

    .venv/bin/python bench/cpu_profile.py [--kind exchange|deny] [--count 3000] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table
from perf import (
    AFTER_ROOT,
    _grpc_exchanges,
    _Upstreams,
    fresh_tokens,
    start_replica,
)

from octosts.dev.issuer import generate_key, load_state, mint_token
from octosts.dev.stack import StackPorts

# (layer, substrings of a frame "function (file:line)"): a sample goes to the first layer found
# walking from the innermost frame outwards, the event loop only when no other layer is on the
# stack (then the loop is doing its own work, not running ours).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pyjwt + cryptography", ("jwt/", "cryptography", "libcrypto")),
    ("aiohttp (GitHub calls)", ("aiohttp/", "yarl/", "multidict/", "aiohappyeyeballs")),
    ("httpx (issuer fetches)", ("httpx/", "httpcore/", "anyio/")),
    (
        "observability (audit, stages, metrics, logs, traces)",
        ("octosts/observability/", "structlog/", "prometheus_client/", "opentelemetry/"),
    ),
    ("transport: servicers, ext_authz, interceptors (ours)", ("octosts/transport/",)),
    ("domain (ours)", ("octosts/domain/",)),
    ("adapters (ours)", ("octosts/adapters/",)),
    ("protobuf", ("google/protobuf/", "upb", "_message")),
    ("gRPC (core, cygrpc, grpc.aio)", ("grpc/", "cygrpc", "grpc_core")),
)
EVENT_LOOP = ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "epoll"))
# Leaf frames of a thread that waits (the event loop's epoll, gRPC's poller, the metrics
# server's poll): not CPU, left out of the shares.
_WAITS = ("epoll_wait", "poll (libc", "pthread_cond_wait", "pthread_cond_timedwait", "nanosleep")
_IDLE_THREADS = ("serve_forever",)  # the metrics endpoint's thread, between scrapes


def layer_of(stack: list[str]) -> str | None:
    """The layer a sample (frames outermost first) counts for; None for a waiting thread."""
    if any(w in stack[-1] for w in _WAITS) or any(
        i in frame for frame in stack for i in _IDLE_THREADS
    ):
        return None
    for frame in reversed(stack):
        for layer, marks in LAYERS:
            if any(mark in frame for mark in marks):
                return layer
    if any(mark in frame for frame in stack for mark in EVENT_LOOP[1]):
        return EVENT_LOOP[0]
    return "other (interpreter, libc)"


def shares(raw: Path) -> tuple[int, list[tuple[str, float]]]:
    """(busy samples, [(layer, % of them)]) from py-spy's raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        layer = layer_of(frames.split(";"))
        if layer is not None:
            counts[layer] += int(count)
    total = sum(counts.values())
    return total, [(k, 100 * v / total) for k, v in counts.most_common()] if total else []


async def _checks(port: int, token: str, count: int, clients: int) -> int:
    from envoy.config.core.v3 import base_pb2  # noqa: F401, PLC0415  (registers the types)
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: PLC0415

    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["mode"] = "verify"
    http = request.attributes.request.http
    http.path = "/sts/exchange?scope=octo-org/demo&identity=ci"
    http.headers["authorization"] = f"Bearer {token}"
    remaining = count
    denied = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def client() -> None:
            nonlocal remaining, denied
            while remaining > 0:
                remaining -= 1
                reply = await stub.Check(request, timeout=30)
                denied += reply.status.code != 0

        await asyncio.gather(*(client() for _ in range(clients)))
    return denied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("exchange", "deny"), default="exchange")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw profile here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy (measurement only)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="octosts-bench-profile-") as tmp:
        workdir = Path(tmp)
        upstreams = _Upstreams(
            workdir=workdir / "upstreams",
            ports=StackPorts.free(replicas=0),
            github_args=("--rate-limit", "10000000"),
        )
        with upstreams:
            replica = start_replica("profile", AFTER_ROOT, upstreams, workdir, {})
            try:
                state = load_state(upstreams.workdir / "dev-issuer")
                assert state is not None
                if args.kind == "exchange":
                    tokens = fresh_tokens(
                        upstreams.workdir, upstreams.domain, 200 + args.count, "p"
                    )
                    asyncio.run(_grpc_exchanges(replica.port, tokens[:200], args.clients))
                    load = functools.partial(
                        _grpc_exchanges, replica.port, tokens[200:], args.clients
                    )
                else:
                    impostor = generate_key("rsa", kid=state.key.kid)
                    claims = {
                        "sub": "repo:octo-org/demo:ref:refs/heads/main",
                        "aud": upstreams.domain,
                    }
                    bad = mint_token(impostor, state.issuer_url, claims, ttl=3600)
                    asyncio.run(_checks(replica.port, bad, 200, args.clients))
                    load = functools.partial(_checks, replica.port, bad, args.count, args.clients)
                raw = workdir / "profile.txt"
                recorder = subprocess.Popen(
                    [spy, "record", "--pid", str(replica.pid), "--native", "--format", "raw",
                     "--rate", str(args.rate), "--output", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)  # py-spy attaches; samples before the load are idle frames
                started = time.monotonic()
                asyncio.run(load())
                seconds = time.monotonic() - started
                recorder.send_signal(2)  # SIGINT: py-spy writes the profile and exits
                recorder.wait(60)
            finally:
                replica.stop()
        total, rows = shares(raw)
        if args.raw is not None:
            shutil.copyfile(raw, args.raw)
    print(f"{args.kind}: {args.count} requests in {seconds:.1f} s, {total} samples")
    print(table([("layer", "share of samples %"), *((k, f"{v:.1f}") for k, v in rows)]))
    print(json.dumps({"kind": args.kind, "samples": total, "shares": dict(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
