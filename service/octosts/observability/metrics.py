"""Prometheus metrics of Octo STS, on a registry the caller owns.

Every metric lives on the ``CollectorRegistry`` given to ``Metrics`` (never the
global ``REGISTRY``: tests would leak into each other). Label values are
bounded: each label admits a fixed number of distinct values and folds the
rest into ``"other"``, so a bug that passes a subject or scope as a label
cannot blow up the time-series count. Nothing that identifies a caller
(subject, scope, token) is ever a label.

Several worker processes
------------------------
prometheus-client's multi-process mode is chosen when ``prometheus_client`` is
first imported, from ``PROMETHEUS_MULTIPROC_DIR``. So the process that starts
the workers must, BEFORE any worker imports ``prometheus_client``:

1. ``run_dir = prepare_multiprocess_dir()`` (a fresh per-run directory, set in
   ``os.environ`` so the workers inherit it);
2. start the workers (each builds its own ``Metrics(CollectorRegistry())``;
   values go to per-process files in ``run_dir``);
3. serve ``/metrics`` once, from the parent, with
   ``start_metrics_server(exposition_registry(run_dir), host, port)`` which
   aggregates all workers' files;
4. call ``mark_worker_dead(pid, run_dir)`` when a worker exits and remove the
   directory at shutdown (``shutil.rmtree``).

``Metrics`` refuses to start (``MetricsSetupError``) when the environment asks
for multi-process mode but ``prometheus_client`` was imported before it was set,
because the values would silently stay in one process.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client import values as _prom_values

from octosts.domain import errors

if TYPE_CHECKING:
    from collections.abc import MutableMapping

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond (cache hits, policy matching) up to GitHub/issuer round trips
# bounded by their timeouts.
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OTHER = "other"
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.:/-]")
_MAX_LABEL_LEN = 64


class MetricsSetupError(RuntimeError):
    """Multi-process metrics were asked for too late (see the module docstring)."""


class _BoundedLabel:
    """Admits at most ``limit`` distinct values; later newcomers become ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        # raw value -> label, so the hot path (a known value) is one dict lookup, no regex.
        self._memo: dict[str | int, str] = {}

    def __call__(self, value: str | int) -> str:
        memo = self._memo.get(value)
        if memo is not None:
            return memo
        text = _LABEL_SAFE.sub("_", str(value))[:_MAX_LABEL_LEN] or "none"
        label = self._admit(text)
        if label != OTHER and len(self._memo) < 4 * self._limit:
            self._memo[value] = label
        return label

    def _admit(self, text: str) -> str:
        if text in self._seen:
            return text
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(text)
        return text


def _all_reasons() -> frozenset[str]:
    reasons: set[str] = set()
    todo: list[type[errors.StsError]] = [errors.StsError]
    while todo:
        cls = todo.pop()
        reasons.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return frozenset(reasons)


def error_family(exc: BaseException) -> str:
    """The stable family of an error (``StsError.family``), or ``error`` for a foreign one."""
    return exc.family if isinstance(exc, errors.StsError) else "error"


def exchange_outcome(exc: BaseException | None) -> tuple[str, str]:
    """``(result, reason)`` labels for one exchange or Check.

    ``result`` is ``ok``, ``denied`` (``StsError.caller_fault``: bad request,
    token or policy) or ``error`` (ours or upstream: what the error-rate alert
    watches).
    """
    if exc is None:
        return "ok", "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "error", "cancelled"
    if isinstance(exc, errors.StsError):
        return ("denied" if exc.caller_fault else "error"), exc.reason
    return "error", "internal"


class Metrics:
    """All Octo STS metrics, registered on ``registry``.

    Raises MetricsSetupError when ``PROMETHEUS_MULTIPROC_DIR`` is set but
    prometheus_client was imported before it (values would stay per-process).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        if os.environ.get(MULTIPROC_ENV) and not multiprocess_active():
            raise MetricsSetupError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported; "
                "set it before starting the worker processes"
            )
        self.registry = registry
        known_reasons = len(_all_reasons()) + 16
        self._reason = _BoundedLabel(known_reasons)
        self._authz_reason = _BoundedLabel(known_reasons)
        self._stage = _BoundedLabel(32)
        self._refusal = _BoundedLabel(16)
        self._cache = _BoundedLabel(16)
        self._endpoint = _BoundedLabel(16)
        self._installation = _BoundedLabel(1000)
        self._app = _BoundedLabel(64)  # configured GitHub App ids: a few
        self._rpc = _BoundedLabel(64)
        self._redis_op = _BoundedLabel(32)
        self._shared = _BoundedLabel(24)  # second-level cache names and results
        # Label children by (metric, *labels), one cache per metric type (see _child).
        self._c: dict[tuple[object, ...], Counter] = {}
        self._h: dict[tuple[object, ...], Histogram] = {}
        self._g: dict[tuple[object, ...], Gauge] = {}

        self.exchanges = Counter(
            "octo_sts_exchanges",
            "Token exchanges (Exchange and Check), by result and reason.",
            ["result", "reason"],
            registry=registry,
        )
        self.stage_duration = Histogram(
            "octo_sts_stage_duration_seconds",
            "Time spent in each validation stage, by outcome.",
            ["stage", "outcome"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.cache_requests = Counter(
            "octo_sts_cache_requests",
            "Cache look-ups by cache and result (hit, miss, stale, ...).",
            ["cache", "result"],
            registry=registry,
        )
        self.github_requests = Counter(
            "octo_sts_github_requests",
            "GitHub API requests by endpoint and HTTP status (or 'error').",
            ["endpoint", "status"],
            registry=registry,
        )
        self.github_request_duration = Histogram(
            "octo_sts_github_request_duration_seconds",
            "GitHub API request latency by endpoint.",
            ["endpoint"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.github_rate_limit_remaining = Gauge(
            "octo_sts_github_rate_limit_remaining",
            "Last x-ratelimit-remaining GitHub sent, per budget (installation id; app, or app:ID"
            " with several GitHub Apps).",
            ["installation"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.github_rate_limited_until = Gauge(
            "octo_sts_github_rate_limited_until",
            "Until when (Unix time) GitHub's rate limit holds calls on a budget (installation id;"
            " app, or app:ID with several GitHub Apps): while it is in the future, calls on it are"
            " refused without calling GitHub.",
            ["installation"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.github_app_mints = Counter(
            "octo_sts_github_app_mints",
            "Tokens minted for callers (exchanges, egress), by the GitHub App that minted them.",
            ["app"],
            registry=registry,
        )
        self.github_orphan_tokens = Counter(
            "octo_sts_github_orphan_tokens",
            "Tokens GitHub minted after their requester stopped waiting, by what became of them"
            " (revoked, revoke_failed, unknown).",
            ["outcome"],
            registry=registry,
        )
        self.ext_authz_decisions = Counter(
            "octo_sts_ext_authz_decisions",
            "ext_authz Check decisions (allow/deny) by reason.",
            ["decision", "reason"],
            registry=registry,
        )
        self.audit_events_dropped = Counter(
            "octo_sts_audit_events_dropped",
            "Audit CloudEvents not delivered (queue full, sink failure, shutdown).",
            ["reason"],
            registry=registry,
        )
        self.refusals = Counter(
            "octo_sts_refusals",
            "Inputs refused for what they would cost to process, by stage and reason: issuer "
            "keys (per key, when a JWKS is read), tokens matching more keys than are tried.",
            ["stage", "reason"],
            registry=registry,
        )
        self.issuer_audits = Counter(
            "octo_sts_issuer_audit",
            "Exchanges allowed only because the org's trusted-token-issuers file is in audit mode.",
            registry=registry,
        )
        self.shed_calls = Counter(
            "octo_sts_shed",
            "Calls answered at once without being handled: overloaded (admission control) "
            "or shutting_down (still running when the drain's grace period ended).",
            ["reason"],
            registry=registry,
        )
        self.rpcs_in_flight = Gauge(
            "octo_sts_rpcs_in_flight",
            "Exchange and Check calls being handled now (summed over workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.redis_requests = Counter(
            "octo_sts_redis_requests",
            "Calls to the fleet's Redis by operation and result (ok, error, timeout,"
            " breaker_open: not made; refused: a value or message failing its check).",
            ["op", "result"],
            registry=registry,
        )
        self.redis_breaker_open = Gauge(
            "octo_sts_redis_breaker_open",
            "1 while the Redis circuit breaker is open (calls are not made; local caches"
            " and upstreams serve).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.shared_cache = Counter(
            "octo_sts_shared_cache",
            "Second-level (Redis) cache reads after a local miss, by cache and result (hit;"
            " waited: another process fetched it; miss: fetched here; lock_timeout; unusable:"
            " a value failing its checks; unavailable: Redis did not answer).",
            ["cache", "result"],
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            ["grpc_service", "grpc_method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    # Recording helpers: they bound label values so callers cannot forget to. Children
    # are cached per label tuple: ``.labels()`` validates and sorts on every call, which
    # was the largest part of recording. The tuples are of bounded values, so the caches
    # are bounded by the label cardinalities.

    def exchange(self, result: str, reason: str) -> None:
        _child(self._c, self.exchanges, result, self._reason(reason)).inc()

    def stage(self, stage: str, outcome: str, seconds: float) -> None:
        _child(self._h, self.stage_duration, self._stage(stage), outcome).observe(seconds)

    def cache_request(self, cache: str, result: str) -> None:
        _child(self._c, self.cache_requests, self._cache(cache), self._cache(result)).inc()

    def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        endpoint = self._endpoint(endpoint)
        _child(self._c, self.github_requests, endpoint, _status_label(status)).inc()
        _child(self._h, self.github_request_duration, endpoint).observe(seconds)

    def rate_limit_remaining(self, installation: int | str, remaining: float) -> None:
        label = self._installation(installation)
        _child(self._g, self.github_rate_limit_remaining, label).set(remaining)

    def rate_limited_until(self, installation: int | str, until: float) -> None:
        label = self._installation(installation)
        _child(self._g, self.github_rate_limited_until, label).set(until)

    def app_minted(self, app_id: int) -> None:
        _child(self._c, self.github_app_mints, self._app(str(app_id))).inc()

    def orphan_token(self, outcome: str) -> None:
        _child(self._c, self.github_orphan_tokens, outcome).inc()

    def ext_authz_decision(self, decision: str, reason: str) -> None:
        reason = self._authz_reason(reason)
        _child(self._c, self.ext_authz_decisions, decision, reason).inc()

    def refused(self, stage: str, reason: str, count: int) -> None:
        label = self._stage(stage), self._refusal(reason)
        _child(self._c, self.refusals, *label).inc(count)

    def issuer_audit(self) -> None:
        self.issuer_audits.inc()

    def audit_dropped(self, reason: str) -> None:
        self.audit_events_dropped.labels(reason=reason).inc()

    def shed(self, reason: str) -> None:
        _child(self._c, self.shed_calls, reason).inc()

    def in_flight(self, calls: int) -> None:
        self.rpcs_in_flight.set(calls)

    def redis_request(self, op: str, result: str, /) -> None:
        _child(self._c, self.redis_requests, self._redis_op(op), self._redis_op(result)).inc()

    def redis_breaker(self, *, is_open: bool) -> None:
        self.redis_breaker_open.set(1 if is_open else 0)

    def shared_cache_request(self, cache: str, result: str, /) -> None:
        _child(self._c, self.shared_cache, self._shared(cache), self._shared(result)).inc()

    def grpc(self, service: str, method: str, code: str, seconds: float) -> None:
        service, method = self._rpc(service), self._rpc(method)
        _child(self._c, self.grpc_handled, service, method, code).inc()
        _child(self._h, self.grpc_handling_seconds, service, method).observe(seconds)


_M = TypeVar("_M", Counter, Gauge, Histogram)


def _child(cache: dict[tuple[object, ...], _M], metric: _M, *labels: str) -> _M:
    """``metric.labels(*labels)``, memoised in ``cache`` (keyed by the metric too)."""
    key = (id(metric), *labels)
    child = cache.get(key)
    if child is None:
        # Label values positionally, in the metric's declared order (as every caller does).
        child = cache[key] = metric.labels(*labels)
    return child


def _status_label(status: int | str) -> str:
    if isinstance(status, int) and 100 <= status <= 599:
        return str(status)
    return "error"


def multiprocess_active() -> bool:
    """Whether prometheus_client writes values to the multi-process directory."""
    return bool(getattr(_prom_values.ValueClass, "_multiprocess", False))


def prepare_multiprocess_dir(
    environ: MutableMapping[str, str] | None = None, base: str | None = None
) -> Path:
    """Create a fresh per-run directory and export it as ``PROMETHEUS_MULTIPROC_DIR``.

    Call in the parent before starting workers. ``environ`` defaults to
    ``os.environ`` (which the workers inherit); a fresh directory per run means
    files of an earlier run never add to this run's counters.
    """
    target = os.environ if environ is None else environ
    run_dir = Path(tempfile.mkdtemp(prefix="octo-sts-metrics-", dir=base))
    target[MULTIPROC_ENV] = str(run_dir)
    return run_dir


def exposition_registry(multiproc_dir: str | os.PathLike[str]) -> CollectorRegistry:
    """A registry that aggregates every worker's values from ``multiproc_dir``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    return registry


def mark_worker_dead(pid: int, multiproc_dir: str | os.PathLike[str]) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    multiprocess.mark_process_dead(pid, path=str(multiproc_dir))  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class MetricsServer:
    """A running ``/metrics`` HTTP server; ``close()`` stops it and joins its thread."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- stdlib name
        pass  # scrapes are not worth a log line each


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    ``port`` 0 picks a free port (read it back from ``.port``). Raises OSError
    when the address cannot be bound.
    """
    server_class = _Server6 if ":" in host else _Server
    httpd: WSGIServer = make_server(
        host, port, make_wsgi_app(registry), server_class, _QuietHandler
    )
    # A short poll interval so close() returns promptly.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics", daemon=True
    )
    thread.start()
    return MetricsServer(host=host, port=int(httpd.server_port), _httpd=httpd, _thread=thread)
