"""Observability overhead ([observability]): warm exchanges/s with metrics + tracing ON vs OFF.

The service is built by ``build_app`` (the production wiring) in this process
and called over real gRPC on loopback; the dev OIDC issuer and the GitHub
emulator (0 ms latency) are real local HTTP servers. Every exchange is warm
(same token: verified-token, installation and policy caches hit; one token
mint at the emulator).

- ON: Prometheus metrics, and tracing through the real ``OTEL_*`` path
  (BatchSpanProcessor -> OTLP/gRPC exporter) to a local OTLP receiver that
  discards the spans.
- OFF: tracing off (no provider: no-op tracer) and every metric call a no-op.
  The interceptor and stage scaffolding stay: they are not switchable.

Modes alternate for ``--rounds`` rounds of ``--seconds`` each; the median
rate per mode is compared. Target: overhead < 10 %. Writes the
``"observability"`` key of bench/results.json and prints a table.

    .venv/bin/python bench/overhead.py [--seconds S] [--rounds R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.app import App, build_app
from octosts.dev.github_emulator import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.observability.logging import configure_logging
from octosts.observability.tracing import build_tracer_provider, settings_from_env
from octosts.settings import Settings

DOMAIN = "octo-sts.bench"
SUB = "repo:octo-org/demo:ref:refs/heads/main"
APP_ID = 1
METRIC_CALLS = (
    "exchange",
    "stage",
    "cache_request",
    "github_request",
    "rate_limit_remaining",
    "ext_authz_decision",
    "audit_dropped",
    "grpc",
)


class DiscardingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that only counts spans."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, _context: Any) -> Any:  # noqa: N802 - gRPC method name
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _no_op(*_args: object, **_kwargs: object) -> None:
    return None


def build(settings: Settings, *, observed: bool, otlp_endpoint: str) -> App:
    if not observed:
        app = build_app(settings, registry=CollectorRegistry(), environ={})
        for name in METRIC_CALLS:
            setattr(app.metrics, name, _no_op)
        return app
    provider = build_tracer_provider(
        settings_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_endpoint})
    )
    return build_app(settings, registry=CollectorRegistry(), tracer_provider=provider, environ={})


async def measure(app: App, token: str, seconds: float, concurrency: int) -> dict[str, float]:
    port = await app.start()
    done = errors = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)  # type: ignore[no-untyped-call]
            request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
            metadata = (("authorization", f"Bearer {token}"),)
            for _ in range(20):  # warm every cache and the connection
                await stub.Exchange(request, metadata=metadata, timeout=10)
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done, errors
                while time.perf_counter() < deadline:
                    try:
                        await stub.Exchange(request, metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    else:
                        done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        await app.stop()
    return {"rps": done / elapsed, "requests": done, "errors": errors}


def upstreams() -> tuple[DevIssuer, GitHubEmulator, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    issuer = DevIssuer().start()
    issuer.add_key("rsa")
    github = GitHubEmulator(app_public_key=key.public_key(), app_id=APP_ID).start()
    github.add_owner("octo-org")
    github.add_repo("octo-org", "demo")
    policy = f"issuer: {issuer.url}\nsubject: {SUB}\npermissions:\n  contents: read\n"
    github.set_file("octo-org", "demo", ".github/chainguard/ci.sts.yaml", policy.encode())
    return issuer, github, pem


def serve_receiver() -> int:
    """``--receiver``: the OTLP sink, in its own process as a collector would be.

    Prints its port, then the span count when stdin closes.
    """
    receiver = DiscardingReceiver()
    sink = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, sink)  # type: ignore[no-untyped-call]
    port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    sink.stop(2).wait()
    print(receiver.spans, flush=True)
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # Same logging in both modes; warnings only so audit lines do not swamp the terminal.
    configure_logging(level="warning", fmt="json")
    # Started before the loop does any work: a blocking Popen here costs nothing measured.
    receiver = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "--receiver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdin is not None
    assert receiver.stdout is not None
    sink_port = int(receiver.stdout.readline())
    spans = 0
    issuer, github, pem = upstreams()
    try:
        settings = Settings(
            sts_domain=DOMAIN,
            github_app_id=APP_ID,
            github_app_private_key=pem,
            grpc_addr="127.0.0.1:0",
            github_base_url=github.url,
            insecure_issuers=(issuer.url,),
        )
        token = issuer.mint({"sub": SUB, "aud": DOMAIN}, ttl=3600)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                github.reset()  # fresh rate-limit budgets: thousands of mints per round
                app = build(
                    settings, observed=mode == "on", otlp_endpoint=f"http://127.0.0.1:{sink_port}"
                )
                result = await measure(app, token, args.seconds, args.concurrency)
                if result["errors"]:
                    raise SystemExit(f"{mode}: {result['errors']} failed exchanges")
                rates[mode].append(result["rps"])
    finally:
        github.stop()
        issuer.stop()
        receiver.stdin.close()
        try:
            spans = int(receiver.stdout.readline() or 0)
            receiver.wait(10)
        except (ValueError, subprocess.TimeoutExpired):
            receiver.kill()
            receiver.wait(5)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    overhead = (off - on) / off * 100
    return {
        "warm_rps_off": round(off, 1),
        "warm_rps_on": round(on, 1),
        "overhead_percent": round(overhead, 2),
        "target_percent": 10,
        "within_target": overhead < 10,
        "rounds_rps": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "spans_exported": spans,
        "seconds_per_round": args.seconds,
        "concurrency": args.concurrency,
        "setup": "in-process service over loopback gRPC, real issuer + GitHub emulator (0 ms)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        return serve_receiver()
    result = asyncio.run(run(args))
    save("observability", result)
    print(
        table(
            [
                ("mode", "warm exchanges/s (median)", "rounds"),
                ("off", str(result["warm_rps_off"]), str(result["rounds_rps"]["off"])),
                ("on", str(result["warm_rps_on"]), str(result["rounds_rps"]["on"])),
            ]
        )
    )
    print(
        f"\noverhead: {result['overhead_percent']} % (target < 10 %), "
        f"spans exported: {result['spans_exported']}"
    )
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
