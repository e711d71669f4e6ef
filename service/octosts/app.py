"""The one wiring module: settings -> adapters -> domain -> transport.

Nothing else in the package constructs clients, caches or servers from
configuration; tests build the same object graph through ``build_app`` with
their own clock, registry or tracer provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry

from octosts.adapters.github import GitHubAppClient, GitHubConfig
from octosts.adapters.github_apps import GitHubApps
from octosts.adapters.github_rest import GitHubRest, RestConfig, http_client
from octosts.adapters.held_tokens import HeldTokenCache
from octosts.adapters.oidc import OidcConfig, OidcVerifier, make_http_client
from octosts.adapters.org_files import CeilingStore, OrgFileConfig
from octosts.adapters.policy_store import PolicyCacheConfig, PolicyStore
from octosts.adapters.redis_state import RedisConfig, RedisState
from octosts.adapters.shared_cache import Fleet, SharedCache, SharedDeliveries
from octosts.adapters.shared_quota import SharedQuota
from octosts.adapters.signer import build_signer
from octosts.adapters.trusted_issuers import TrustedIssuersConfig, TrustedIssuersStore
from octosts.adapters.unverified import UnverifiedBudget, UnverifiedConfig
from octosts.adapters.verified_cache import CachingVerifier
from octosts.domain.egress import Egress
from octosts.domain.exchange import Exchanger
from octosts.domain.issuers import compile_allowlist
from octosts.domain.ports import Clock, SystemClock
from octosts.observability.audit import AuditLog, CloudEventSink
from octosts.observability.egress import EgressEvents
from octosts.observability.exchanges import ExchangeEvents
from octosts.observability.logging import configure_logging
from octosts.observability.metrics import (
    Metrics,
    exposition_registry,
    mark_worker_dead,
    prepare_multiprocess_dir,
    start_metrics_server,
)
from octosts.observability.stages import TelemetryObserver
from octosts.observability.tracing import (
    build_tracer_provider,
    follows_parent,
    make_tracer,
    settings_from_env,
)
from octosts.transport import ext_authz, sts
from octosts.transport.admission import Admission, AdmissionInterceptor
from octosts.transport.interceptors import ObservabilityInterceptor
from octosts.transport.server import GrpcServer, Readiness
from octosts.webhook.github_checks import GitHubChecks
from octosts.webhook.handler import (
    LocalDeliveries,
    WebhookConfig,
    WebhookHandler,
    delivery_cache,
)
from octosts.webhook.server import WebhookServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.sdk.trace import TracerProvider

    from octosts.observability.metrics import MetricsServer
    from octosts.settings import Settings

_log = structlog.get_logger("octosts")
EXT_AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
# Health detail (docs/observability.md): NOT_SERVING while GitHub rate-limits the App.
GITHUB_HEALTH = "octosts.github"
# NOT_SERVING while the Redis circuit breaker is open (only with OCTOSTS_REDIS_URL).
REDIS_HEALTH = "octosts.redis"


def outbound_tls(settings: Settings) -> ssl.SSLContext | bool:
    """System trust, plus the operator's extra CA (GHES, in-cluster issuers, dev CA)."""
    if not settings.outbound_ca_file:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=settings.outbound_ca_file)
    return context


@dataclass
class App:
    """A built service: start it, stop it."""

    settings: Settings
    server: GrpcServer
    metrics: Metrics
    tracer_provider: TracerProvider | None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    metrics_server: MetricsServer | None = None
    audit: AuditLog | None = None
    webhook: WebhookServer | None = None
    webhook_port: int | None = None
    egress_events: EgressEvents | None = None
    fleet: Fleet | None = None
    shared_quota: SharedQuota | None = None

    async def start(self) -> int:
        if self.fleet is not None:
            self.fleet.start()  # subscribes in the background: Redis may be down
        if self.shared_quota is not None:
            self.shared_quota.start()
        if self.audit is not None:
            self.audit.start()  # the sink's senders live in this event loop
        if self.egress_events is not None:
            self.egress_events.start()
        port = await self.server.start()
        if self.webhook is not None:
            self.webhook_port = await self.webhook.start()
        _log.info(
            "serving",
            grpc_port=port,
            webhook_port=self.webhook_port,
            sts_domain=self.settings.sts_domain,
        )
        return port

    async def stop(self) -> None:
        if self.webhook is not None:
            await self.webhook.stop()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        if self.fleet is not None:
            await self.fleet.close()
        if self.shared_quota is not None:
            await self.shared_quota.close()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()
        if self.egress_events is not None:
            await self.egress_events.close()  # the pending reuse counts, before the audit log
        if self.audit is not None:
            # After the server: in-flight exchanges have recorded their events.
            await self.audit.close(flush_within=self.settings.shutdown_grace_seconds)
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    environ: dict[str, str] | None = None,
) -> App:
    """Build every component from settings. Raises ValueError/StsError on bad config."""
    clock = clock or SystemClock()
    registry = registry if registry is not None else CollectorRegistry()
    if tracer_provider is None:
        tracer_provider = build_tracer_provider(
            settings_from_env(os.environ if environ is None else environ)
        )
    metrics = Metrics(registry)
    tracer = make_tracer(tracer_provider)
    observer = TelemetryObserver(metrics, tracer, follows_parent=follows_parent(tracer_provider))
    tls = outbound_tls(settings)
    redis = _redis(settings, metrics)

    def shared(name: str) -> SharedCache | None:
        if redis is None:
            return None
        # A waiter waits as long as the fetch it waits for may take (two GitHub calls).
        wait = redis.config.lock_ttl
        return SharedCache(redis, name, clock=clock, telemetry=metrics, lock_wait=wait)

    insecure_issuers = frozenset(settings.insecure_issuers)
    oidc_config = OidcConfig(
        insecure_issuers=insecure_issuers,
        allowlist=compile_allowlist(
            settings.issuer_allowlist, settings.issuer_patterns, insecure_issuers=insecure_issuers
        ),
        leeway_seconds=settings.oidc_leeway_seconds,
        read_timeout=settings.outbound_timeout_seconds,
        cache_maxsize=min(settings.cache_max_entries, 1024),
    )
    issuer_http = make_http_client(oidc_config, verify=tls)
    readiness = Readiness(settings.local_fault_unready_seconds)
    oidc = OidcVerifier(
        oidc_config,
        http=issuer_http,
        clock=clock,
        observer=observer,
        replica=readiness,
        shared=shared("issuer_keys"),
    )
    verifier = CachingVerifier(
        oidc,
        clock=clock,
        maxsize=settings.cache_max_entries,
        failure_maxsize=settings.cache_max_entries,
        observer=observer,
    )

    github_http = http_client(verify=tls, max_connections=settings.github_max_connections)
    github_rest = GitHubRest(
        RestConfig(
            base_url=settings.github_base_url,
            request_timeout=settings.outbound_timeout_seconds,
            pool_wait=settings.github_pool_wait_seconds,
            budgets_tracked=settings.cache_max_entries,
        ),
        http=github_http,
        clock=clock,
        telemetry=metrics,
        replica=readiness,
    )
    audit = AuditLog(
        sink=CloudEventSink(settings.audit_sink_url, metrics=metrics, source=settings.sts_domain)
        if settings.audit_sink_url
        else None
    )
    events = ExchangeEvents(metrics, audit, clock)
    apps = settings.apps()
    # What signs each App's JWTs: its PEM key, or a KMS (docs/kms.md).
    signers = [
        build_signer(entry.signer, clock=clock, timeout=settings.outbound_timeout_seconds)
        for entry in apps
    ]
    # One client per GitHub App, routed by quota (docs/github-apps.md); one App: just it.
    github = GitHubApps(
        [
            GitHubAppClient(
                GitHubConfig(
                    app_id=entry.app_id,
                    installation_ttl=settings.installation_ttl_seconds,
                    installation_negative_ttl=settings.installation_missing_seconds,
                    installation_cache_size=settings.cache_max_entries,
                    contents_token_cache_size=settings.cache_max_entries,
                    pooled=len(apps) > 1,
                ),
                rest=github_rest,
                signer=signer,
                clock=clock,
                observer=observer,
                orphans=events,
                shared=shared("installations"),
            )
            for entry, signer in zip(apps, signers, strict=True)
        ],
        rate_limits=github_rest.rate_limits,
        clock=clock,
        checks_app=next(entry.app_id for entry in apps if entry.checks),
        telemetry=metrics,
        max_installations=settings.cache_max_entries,
    )
    # With Redis, every process routes on each App's quota as the fleet knows it.
    shared_quota = (
        SharedQuota(
            redis, github_rest.rate_limits, github.budgets(), clock=clock, telemetry=metrics
        )
        if redis is not None
        else None
    )
    policies = PolicyStore(
        github,
        clock=clock,
        observer=observer,
        config=PolicyCacheConfig(
            fresh_seconds=settings.policy_fresh_seconds,
            stale_seconds=settings.policy_stale_seconds,
            missing_seconds=settings.policy_missing_seconds,
            max_entries=settings.cache_max_entries,
        ),
        shared=shared("policy"),
    )
    trusted_issuers = TrustedIssuersStore(
        github,
        clock=clock,
        observer=observer,
        org_policy_repo=settings.org_policy_repo,
        insecure_issuers=insecure_issuers,
        config=TrustedIssuersConfig(
            fresh_seconds=settings.issuers_fresh_seconds,
            stale_seconds=settings.issuers_stale_seconds,
            max_entries=settings.cache_max_entries,
        ),
        shared=shared("trusted_issuers"),
    )
    ceilings = CeilingStore(
        github,
        clock=clock,
        observer=observer,
        org_policy_repo=settings.org_policy_repo,
        config=OrgFileConfig(
            fresh_seconds=settings.ceiling_fresh_seconds,
            stale_seconds=settings.ceiling_stale_seconds,
            max_entries=settings.cache_max_entries,
        ),
        shared=shared("permission_ceiling"),
    )
    # With Redis, a push invalidates every process's entries (adapters.shared_cache.Fleet).
    fleet = (
        Fleet(
            redis,
            policies=policies,
            org_files=(trusted_issuers, ceilings),
            holds=github_rest,
        )
        if redis is not None
        else None
    )
    exchanger = Exchanger(
        verifier=verifier,
        github=github,
        policies=policies,
        observer=observer,
        domain=settings.sts_domain,
        org_policy_repo=settings.org_policy_repo,
        trusted_issuers=trusted_issuers,
        # Pinned keys are checked by the verifier itself, never through the verified-token
        # cache: a token one policy's keys verified is not verified for anything else.
        pinned=oidc,
        ceilings=ceilings,
        unverified=UnverifiedBudget(
            clock=clock,
            config=UnverifiedConfig(
                per_minute=settings.unverified_lookups_per_minute,
                max_entries=settings.cache_max_entries,
            ),
        ),
    )
    webhook = None
    if settings.webhook_addr:
        handler = WebhookHandler(
            WebhookConfig(
                secrets=tuple(s.encode() for s in settings.webhook_secrets),
                org_policy_repo=settings.org_policy_repo,
                insecure_issuers=insecure_issuers,
                checks_app_id=github.checks_app.app_id,
            ),
            # Check runs stay on the App whose webhook delivers the events.
            checks=GitHubChecks(github.checks_app, rest=github_rest),
            policies=policies if fleet is None else fleet.policies,
            issuers=trusted_issuers if fleet is None else fleet.org_file(trusted_issuers.name),
            clock=clock,
            deliveries=_deliveries(redis, clock),
            ceilings=ceilings,
            ceiling_invalidator=None if fleet is None else fleet.org_file(ceilings.name),
        )
        webhook = WebhookServer(
            settings.webhook_addr,
            handler,
            max_body=settings.webhook_max_body_bytes,
            reuse_port=settings.workers > 1,
        )
    # The egress gateway (docs/egress.md): Exchange's checks per request, minted tokens held.
    egress_events = EgressEvents(events, audit, clock)
    held = HeldTokenCache(clock=clock, maxsize=settings.cache_max_entries, observer=observer)
    authz = ext_authz.AuthorizationServicer(
        verifier,
        ext_authz.ExtAuthzOptions(verbose=settings.verbose_errors),
        on_decision=metrics.ext_authz_decision,
        egress=ext_authz.EgressCheck(Egress(exchanger, held), egress_events),
        verify_for=exchanger.verify_at_edge,
    )
    admission = Admission(settings.max_concurrent_rpcs)
    server = GrpcServer(
        settings.grpc_addr,
        [
            lambda s: sts.add_to_server(s, exchanger, events, verbose=settings.verbose_errors),
            lambda s: ext_authz.add_to_server(s, authz),
        ],
        service_names=(*sts.SERVICE_NAMES, EXT_AUTHZ_SERVICE),
        # Outermost first: shed and cut calls are counted, traced and carry the request id.
        interceptors=[
            ObservabilityInterceptor(metrics, tracer),
            AdmissionInterceptor(admission, metrics),
        ],
        reuse_port=settings.workers > 1,
        readiness=readiness,
        health_details={
            GITHUB_HEALTH: lambda: not github.app_rate_limited(),
            **({REDIS_HEALTH: redis.healthy} if redis is not None else {}),
        },
        admission=admission,
    )
    return App(
        settings=settings,
        server=server,
        metrics=metrics,
        tracer_provider=tracer_provider,
        # Closed last to first: orphan tokens are settled while the pool is still open.
        closers=[
            *([redis.close] if redis is not None else []),
            issuer_http.aclose,
            github_http.aclose,
            *(signer.aclose for signer in signers),
            # A mint sent just before the stop gets at least one outbound timeout to answer.
            lambda: _settled(
                github, max(settings.shutdown_grace_seconds, settings.outbound_timeout_seconds)
            ),
        ],
        audit=audit,
        webhook=webhook,
        egress_events=egress_events,
        fleet=fleet,
        shared_quota=shared_quota,
    )


def _redis(settings: Settings, metrics: Metrics) -> RedisState | None:
    """The fleet's Redis client (``OCTOSTS_REDIS_URL``), or None: every process on its own."""
    if not settings.redis_url:
        return None
    config = RedisConfig(
        url=settings.redis_url,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout_seconds,
        hmac_key=settings.redis_hmac_key.encode() or None,
        # Held while one process makes the fetch (two GitHub calls at most) for the fleet.
        lock_ttl=2 * settings.outbound_timeout_seconds + 1.0,
    )
    if config.hmac_key is None:
        _log.warning(
            "redis_unsigned",
            effect="values in Redis are trusted as written: set OCTOSTS_REDIS_HMAC_KEY",
        )
    return RedisState(config, telemetry=metrics)


def _deliveries(redis: RedisState | None, clock: Clock) -> LocalDeliveries | SharedDeliveries:
    local = LocalDeliveries(delivery_cache(clock))
    return local if redis is None else SharedDeliveries(redis, local)


async def _settled(github: GitHubApps, within: float) -> None:
    await github.settle(within)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain: NOT_SERVING, stop(grace), close clients."""
    app = build_app(settings)
    if settings.metrics_addr:
        host, _, port = settings.metrics_addr.rpartition(":")
        app.metrics_server = start_metrics_server(app.metrics.registry, host, int(port))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await app.start()
    # Everything built so far (modules, settings, servers, clients) lives as long as the
    # process: out of the collector's sight, a collection walks only what calls allocate
    # (measured: ~5-10 % less CPU per exchange).
    gc.collect()
    gc.freeze()
    await stopping.wait()
    _log.info("shutting_down", grace_seconds=settings.shutdown_grace_seconds)
    await app.stop()


def _worker(settings: Settings, supervisor: int) -> None:
    """Entry point of one worker process (spawned: a fresh interpreter)."""
    exit_with_parent(supervisor)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    asyncio.run(run(dataclasses.replace(settings, metrics_addr="")))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent: int) -> None:
    """Get SIGTERM (a graceful drain) when process ``parent`` dies, even by SIGKILL.

    A supervisor killed with SIGKILL cannot forward anything: without this its workers
    keep serving the port, and a restarted replica shares it with them. Linux:
    ``prctl(PR_SET_PDEATHSIG)`` (it fires when the thread that spawned us exits: the
    supervisor's main thread, which lives as long as it does); elsewhere a thread watches
    ``getppid()``. A parent already gone before that was set up means exit now.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # pragma: no cover - the tests run on Linux
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        raise SystemExit(0)


def _watch_parent(parent: int) -> None:  # pragma: no cover - non-Linux only
    while os.getppid() == parent:
        time.sleep(1.0)  # poll: no portable way to be told
    os.kill(os.getpid(), signal.SIGTERM)


def serve(settings: Settings) -> int:
    """Run the service: in this process, or as N workers sharing the port (SO_REUSEPORT).

    With several workers, this process only supervises: it exports the
    Prometheus multi-process directory before any worker starts, serves the
    aggregated ``/metrics`` and forwards SIGTERM/SIGINT to the workers. A worker
    that dies on its own takes the others down (exit 1): a restart by the
    orchestrator beats a replica quietly running on fewer workers. A supervisor
    that dies, even by SIGKILL, takes its workers with it (``exit_with_parent``).
    """
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    if settings.workers == 1:
        asyncio.run(run(settings))
        return 0
    run_dir = prepare_multiprocess_dir()
    context = multiprocessing.get_context("spawn")
    # Signal handlers first: a SIGTERM while workers are still being started is forwarded,
    # not the supervisor's own death (which would leave them to PR_SET_PDEATHSIG).
    supervisor = _Supervisor(run_dir)
    for _ in range(settings.workers):
        if supervisor.stopping:
            break
        supervisor.start(context.Process(target=_worker, args=(settings, os.getpid())))
    metrics_server = None
    if settings.metrics_addr:
        host, _, port = settings.metrics_addr.rpartition(":")
        metrics_server = start_metrics_server(exposition_registry(run_dir), host, int(port))
    try:
        return supervisor.wait()
    finally:
        if metrics_server is not None:
            metrics_server.close()
        shutil.rmtree(run_dir, ignore_errors=True)


class _Supervisor:
    """The worker processes: SIGTERM/SIGINT forwarded to them, their exits watched."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._signum: int | None = None
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)

    @property
    def stopping(self) -> bool:
        return self._signum is not None

    def start(self, process: multiprocessing.process.BaseProcess) -> None:
        process.start()
        self._workers.append(process)
        if self._signum is not None and process.pid is not None:
            os.kill(process.pid, self._signum)  # the signal came while it was being started

    def _forward(self, signum: int, _frame: object) -> None:
        self._signum = signum
        for process in self._workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def wait(self) -> int:
        """Wait for every worker. Returns 1 if any failed."""
        failed = 0
        running = list(self._workers)
        while running:
            for sentinel in multiprocessing.connection.wait([p.sentinel for p in running]):
                process = next(p for p in running if p.sentinel == sentinel)
                process.join()
                running.remove(process)
                mark_worker_dead(process.pid or 0, self._run_dir)
                # A worker still starting up when we forward SIGTERM dies of the signal
                # itself (its handlers are not installed yet): the shutdown we asked for.
                asked = self.stopping and process.exitcode in (-signal.SIGTERM, -signal.SIGINT)
                failed += process.exitcode != 0 and not asked
                if not self.stopping:
                    # A worker died on its own: stop the rest and exit non-zero, so the
                    # orchestrator restarts a whole, healthy replica instead of a partial one.
                    _log.error("worker_exited", pid=process.pid, exitcode=process.exitcode)
                    self._forward(signal.SIGTERM, None)
        return 1 if failed else 0
