"""Observability overhead ([observability]): the warm-exchange cost of metrics + tracing.

Every piece is its own process, talking over loopback:

- the dev OIDC issuer and the GitHub emulator (0 ms latency), started by ``DevStack``;
- three STS replicas (``octo-sts serve``, one worker each), one per mode, all running for
  the whole bench (idle while another mode is measured):

  =========  ===================================================================
  ``bare``   metric recording is a no-op (``Metrics`` methods replaced, this
             bench only) and no tracer provider (no-op tracer). The stage and
             RPC scaffolding (timing, request id, context managers) remains: it
             is not switchable, and it is in every mode.
  ``metrics`` the default without ``OTEL_*``: Prometheus metrics recorded (the
             ``/metrics`` port is open, not scraped), tracing off.
  ``full``   metrics + tracing on through the real ``OTEL_*`` path (sampler:
             the standard default ``parentbased_always_on``, so every exchange
             is traced), BatchSpanProcessor -> OTLP/gRPC to a sink process
             that counts and discards the spans.
  ``sampled`` as ``full`` with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` and
             ``OTEL_TRACES_SAMPLER_ARG=0.1``: the knob for operators who need
             lower cost (callers' sampled ``traceparent`` are still followed).
  =========  ===================================================================

- the load generator ``h2load`` (C; gRPC as HTTP/2 POSTs of one framed
  ``ExchangeRequest``), closed loop, so the client does not compete with the
  replica for a Python interpreter.

Every exchange is warm: the same OIDC token (verified-token, installation and
policy caches hit), one token mint at the emulator. Each replica is warmed
first; then ``--rounds`` rounds run every mode for ``--seconds`` each, the
order reversed every other round (A B C, C B A, ...) so drift cancels.

Two figures per round and mode:

- throughput (exchanges/s reported by h2load);
- the replica's CPU time per exchange (user + system of the process, all its
  threads, read from ``/proc``), measured until the replica is quiet again so
  the span exporter's background work is counted. This is the cost the
  service pays; throughput also depends on the other processes sharing the
  machine's cores.

Overheads are computed per round (modes measured minutes apart would mix in
drift) and summarised by median and range. The target (< 10 %) is judged on
``full`` vs ``bare`` CPU per exchange; throughput is reported beside it.
Writes the ``"observability"`` key of bench/results.json, prints a table, and
exits 0 whether or not the target is met (a report, not a test).

    .venv/bin/python bench/overhead.py [--seconds S] [--rounds R] [--clients C]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table

from octosts._gen.octosts.v1 import sts_pb2
from octosts.dev.envoy import free_port
from octosts.dev.processes import stop_process
from octosts.dev.stack import APP_ID, DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
EXCHANGE_PATH = "/octosts.v1.SecurityTokenService/Exchange"
MODES = ("bare", "metrics", "full", "sampled")
TARGET_PERCENT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN_ENV = "OCTOSTS_OVERHEAD_BENCH_CPU"  # read by ``--replica`` only


# -- child process roles ------------------------------------------------------------------


def serve_replica(mode: str) -> int:
    """``--replica MODE``: ``octo-sts serve`` (settings from the environment) in this process.

    ``bare`` swaps the service's ``Metrics`` for one whose recording methods do
    nothing, before the app is built; everything else is the production path.
    """
    cpu = os.environ.get(PIN_ENV)
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})  # before any thread starts: all inherit it
    if mode == "bare":
        from octosts import app  # noqa: PLC0415 - patched before the CLI imports it
        from octosts.observability.metrics import Metrics  # noqa: PLC0415

        class SilentMetrics(Metrics):
            def _silent(self, *_args: object, **_kwargs: object) -> None:
                return None

            exchange = stage = cache_request = github_request = _silent
            rate_limit_remaining = ext_authz_decision = audit_dropped = grpc = _silent

        app.Metrics = SilentMetrics  # type: ignore[misc]  # bench only: see the docstring
    from octosts.cli import main as cli_main  # noqa: PLC0415

    return cli_main(["serve"])


class DiscardingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that only counts spans."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, _context: Any) -> Any:  # noqa: N802 - gRPC method name
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve_receiver() -> int:
    """``--receiver``: the OTLP sink, in its own process as a collector would be.

    Prints its port, then the span count when stdin closes.
    """
    receiver = DiscardingReceiver()
    sink = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, sink)
    port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    sink.stop(2).wait()
    print(receiver.spans, flush=True)
    return 0


# -- the processes, from the bench's side ---------------------------------------------------


class _Upstreams(DevStack):
    """The dev issuer and GitHub emulator processes only (no replicas, no Envoy).

    The bench starts its own replicas (one per mode) and calls them directly.
    """

    def _start_envoy(self, timeout: float) -> None:  # noqa: ARG002 - DevStack's signature
        return None


def _poll(what: str, check: Any, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)  # poll interval; the deadline decides


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Replica:
    mode: str
    port: int
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the replica process (all threads) so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def quiet_cpu_seconds(self, *, settle: float = 0.4, limit: float = 5.0) -> float:
        """CPU so far, once no CPU was used for ``settle`` s (background export done)."""
        deadline = time.monotonic() + limit
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(settle)  # a measurement window, not a readiness wait
            now = self.cpu_seconds()
            if now == last:
                return now
            last = now
        return last

    def stop(self) -> None:
        stop_process(self.popen, 10)
        self.log.close()


def start_replica(
    stack: DevStack, mode: str, sink_port: int, workdir: Path, cpu: int | None
) -> Replica:
    port = free_port()
    env = {
        **os.environ,
        "STS_DOMAIN": stack.domain,
        "GITHUB_APP_ID": str(APP_ID),
        "GITHUB_APP_PRIVATE_KEY_FILE": str(stack.app_key),
        "GITHUB_BASE_URL": stack.github_url,
        "OCTOSTS_GRPC_ADDR": f"127.0.0.1:{port}",
        "OCTOSTS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "OCTOSTS_INSECURE_ISSUERS": stack.issuer_url,
        "OCTOSTS_LOG_FORMAT": "json",
        "OCTOSTS_SHUTDOWN_GRACE_SECONDS": "2",
    }
    for name in list(env):  # whatever the caller's shell has, only ``full`` traces
        if name.startswith("OTEL_"):
            del env[name]
    if cpu is not None:
        env[PIN_ENV] = str(cpu)
    if mode in {"full", "sampled"}:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
        env["OTEL_SERVICE_NAME"] = "octo-sts"
    if mode == "sampled":
        # The operator's knob when full tracing costs too much: keep 1 new trace in 10
        # (callers' sampled traceparents are still followed).
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = "0.1"
    log = (workdir / f"replica-{mode}.log").open("wb")
    popen = subprocess.Popen(
        [sys.executable, __file__, "--replica", mode],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    replica = Replica(mode, port, popen, log)
    try:
        _poll(f"replica {mode}", lambda: _serving(port), popen)
    except BaseException:
        replica.stop()
        raise
    return replica


# -- load --------------------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Round:
    mode: str
    requests: int
    rps: float
    mean_ms: float
    cpu_ms_per_exchange: float
    mints: int
    failed_upstream: int


def _emulator_calls(stack: DevStack) -> list[dict[str, Any]]:
    reply = httpx.get(f"{stack.github_url}/_emulator/calls", timeout=10)
    reply.raise_for_status()
    calls: list[dict[str, Any]] = reply.json()
    return calls


def _reset_emulator(stack: DevStack) -> None:
    # Fresh call log and rate-limit budgets: a round mints thousands of tokens.
    httpx.post(f"{stack.github_url}/_emulator/reset", timeout=10).raise_for_status()


_FINISHED = re.compile(r"finished in .*?, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_LATENCY = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b")


def h2load(port: int, token: str, body: Path, *, seconds: float, clients: int) -> dict[str, float]:
    cmd = [
        "h2load",
        f"--duration={round(seconds * 1000)}ms",
        "--warm-up-time=200ms",
        f"--clients={clients}",
        "--max-concurrent-streams=1",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--header=authorization: Bearer {token}",
        f"--data={body}",
        f"http://127.0.0.1:{port}{EXCHANGE_PATH}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-500:]}")
    finished = _FINISHED.search(done.stdout)
    counts = _REQUESTS.search(done.stdout)
    latency = _LATENCY.search(done.stdout)
    if finished is None or counts is None or latency is None:
        raise RuntimeError(f"unexpected h2load output:\n{done.stdout[-1500:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)]
    return {
        "rps": float(finished.group(1)),
        "requests": int(counts.group(2)),
        "succeeded": int(counts.group(3)),
        "mean_ms": float(latency.group(1)) * scale,
    }


def measure(
    stack: DevStack, replica: Replica, token: str, body: Path, *, seconds: float, clients: int
) -> Round:
    _reset_emulator(stack)
    cpu_before = replica.quiet_cpu_seconds()
    load = h2load(replica.port, token, body, seconds=seconds, clients=clients)
    cpu_after = replica.quiet_cpu_seconds()
    calls = _emulator_calls(stack)
    mints = sum(1 for c in calls if c["method"] == "POST" and c["path"].endswith("/access_tokens"))
    # 404 is an answer (an org without a trusted-issuers file), not a failure.
    failed = sum(1 for c in calls if c["status"] >= 400 and c["status"] != 404)
    # h2load's HTTP status is always 200 for gRPC; a failed exchange mints nothing.
    if load["succeeded"] != load["requests"] or failed or mints < load["requests"]:
        raise RuntimeError(
            f"{replica.mode}: {load['requests']} requests, {load['succeeded']} HTTP ok, "
            f"{mints} tokens minted, {failed} failed GitHub calls; replica log:\n"
            + replica.log_tail()
        )
    # All of the replica's CPU in the window (warm-up and the requests in flight at the
    # end included) over all exchanges it served (= tokens minted).
    return Round(
        mode=replica.mode,
        requests=int(load["requests"]),
        rps=load["rps"],
        mean_ms=load["mean_ms"],
        cpu_ms_per_exchange=(cpu_after - cpu_before) * 1000 / mints,
        mints=mints,
        failed_upstream=failed,
    )


# -- report ------------------------------------------------------------------------------------


def _pct(base: float, value: float, *, higher_is_cost: bool) -> float:
    return ((value - base) if higher_is_cost else (base - value)) / base * 100


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def summarise(rounds: list[dict[str, Round]]) -> dict[str, Any]:
    per_mode = {
        mode: {
            "rps": _spread([r[mode].rps for r in rounds]),
            "cpu_ms_per_exchange": _spread([r[mode].cpu_ms_per_exchange for r in rounds]),
            "mean_latency_ms": _spread([r[mode].mean_ms for r in rounds]),
        }
        for mode in MODES
    }
    comparisons = {}
    for name, base, test in (
        ("full_vs_bare", "bare", "full"),
        ("metrics_vs_bare", "bare", "metrics"),
        ("full_vs_metrics", "metrics", "full"),
        ("sampled_vs_bare", "bare", "sampled"),
    ):
        comparisons[name] = {
            "cpu_percent": _spread(
                [
                    _pct(
                        r[base].cpu_ms_per_exchange,
                        r[test].cpu_ms_per_exchange,
                        higher_is_cost=True,
                    )
                    for r in rounds
                ]
            ),
            "throughput_percent": _spread(
                [_pct(r[base].rps, r[test].rps, higher_is_cost=False) for r in rounds]
            ),
        }
    return {"modes": per_mode, "overhead": comparisons}


def _pinning(enabled: bool) -> int | None:  # noqa: FBT001
    """The replicas' CPU; this process (and every other child) keeps the rest.

    A replica alone on its core measures its own cost rather than its
    neighbours' (the emulator and h2load otherwise migrate onto its core).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, set(cpus[:-1]))
    return cpus[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    replica_cpu = _pinning(args.pin)
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdin is not None
    assert receiver.stdout is not None
    spans = 0
    replicas: dict[str, Replica] = {}
    rounds: list[dict[str, Round]] = []
    try:
        sink_port = int(receiver.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="octo-sts-overhead-") as tmp:
            workdir = Path(tmp)
            stack = _Upstreams(workdir=workdir, ports=StackPorts.free(replicas=0))
            with stack:
                for mode in MODES:
                    replicas[mode] = start_replica(stack, mode, sink_port, workdir, replica_cpu)
                token = stack.token(SUB, ttl=3600, workflow_ref=WORKFLOW)
                body = workdir / "exchange.bin"
                request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
                body.write_bytes(grpc_frame(request.SerializeToString()))
                try:
                    for mode in MODES:  # warm caches, connections and code paths
                        measure(
                            stack, replicas[mode], token, body, seconds=1.0, clients=args.clients
                        )
                    for index in range(args.rounds):
                        order = MODES if index % 2 == 0 else tuple(reversed(MODES))
                        rounds.append(
                            {
                                mode: measure(
                                    stack,
                                    replicas[mode],
                                    token,
                                    body,
                                    seconds=args.seconds,
                                    clients=args.clients,
                                )
                                for mode in order
                            }
                        )
                        print(
                            f"round {index + 1}/{args.rounds}: "
                            + ", ".join(
                                f"{m} {rounds[-1][m].rps:.0f}/s "
                                f"{rounds[-1][m].cpu_ms_per_exchange:.3f} ms CPU"
                                for m in MODES
                            ),
                            flush=True,
                        )
                finally:
                    for replica in replicas.values():
                        replica.stop()
    finally:
        if receiver.stdin is not None:
            receiver.stdin.close()
        try:
            spans = int(receiver.stdout.readline() or 0)
            receiver.wait(10)
        except (ValueError, subprocess.TimeoutExpired):
            receiver.kill()
            receiver.wait(5)
    summary = summarise(rounds)
    headline = summary["overhead"]["full_vs_bare"]
    cpu = headline["cpu_percent"]["median"]
    return {
        **summary,
        "target_percent": TARGET_PERCENT,
        "target_measure": "full vs bare, replica CPU per warm exchange, median of rounds",
        "overhead_percent": cpu,
        "within_target": cpu < TARGET_PERCENT,
        "spans_exported": spans,
        "rounds": [
            {
                m: {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(r[m]).items()}
                for m in MODES
            }
            for r in rounds
        ],
        "setup": {
            "rounds": args.rounds,
            "seconds_per_round": args.seconds,
            "h2load_clients": args.clients,
            "processes": "h2load -> 1 STS replica per mode (octo-sts serve, 1 worker) -> "
            "GitHub emulator (0 ms); dev issuer; OTLP sink (full)",
            "modes": {
                "bare": "metric recording no-op (bench only), no tracer provider",
                "metrics": "Prometheus metrics recorded, tracing off (no OTEL_*)",
                "full": "metrics + tracing, OTLP/gRPC BatchSpanProcessor, default sampler",
                "sampled": "as full with OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1",
            },
            "cpus": os.cpu_count(),
            "replica_pinned_to_cpu": replica_cpu,
        },
    }


def _range(figures: dict[str, float], fmt: str) -> str:
    median, low, high = (fmt.format(figures[k]) for k in ("median", "min", "max"))
    return f"{median} [{low} .. {high}]"


def report(result: dict[str, Any]) -> str:
    rows = [("mode", "exchanges/s median [min-max]", "replica CPU ms/exchange", "mean latency ms")]
    for mode in MODES:
        m = result["modes"][mode]
        rows.append(
            (
                mode,
                _range(m["rps"], "{:.1f}"),
                _range(m["cpu_ms_per_exchange"], "{:.3f}"),
                f"{m['mean_latency_ms']['median']}",
            )
        )
    lines = [table(rows), ""]
    rows = [("overhead (per round)", "CPU/exchange % median [min-max]", "throughput % median")]
    for name, figures in result["overhead"].items():
        c, t = figures["cpu_percent"], figures["throughput_percent"]
        rows.append((name, _range(c, "{:+.1f}"), _range(t, "{:+.1f}")))
    lines += [table(rows), ""]
    verdict = "MET" if result["within_target"] else "NOT MET"
    lines.append(
        f"target < {TARGET_PERCENT:.0f} % ({result['target_measure']}): "
        f"{result['overhead_percent']} % -> {verdict}; spans exported: {result['spans_exported']}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=8, help="h2load connections")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the replicas to their own CPU",
    )
    parser.add_argument("--replica", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        return serve_replica(args.replica)
    if args.receiver:
        return serve_receiver()
    result = run(args)
    save("observability", result)
    print(report(result))
    return 0  # a report, not a test: the verdict is printed and saved


if __name__ == "__main__":
    raise SystemExit(main())
