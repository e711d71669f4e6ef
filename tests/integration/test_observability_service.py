"""Observability of the real service: audit events, metrics, spans, request ids, Prometheus.

The service is built by ``build_app`` (the wiring used in production) and runs
in-process on a real port with the real dev issuer and GitHub emulator.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.app import App, build_app
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.observability.audit import AUDIT_LOGGER, CLOUDEVENT_TYPE
from octosts.observability.metrics import start_metrics_server
from tests.fakes import FakeClock
from tests.integration.service_harness import DOMAIN, SUBJECT, settings_for
from tests.integration.test_observability_audit import Sink
from tests.integration.test_observability_prometheus import query, real_prometheus
from tests.polling import eventually

CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
USER_AGENT = "octo-sts-test/1.0"


@dataclass
class Service:
    issuer: DevIssuer
    github: GitHubEmulator
    app: App
    port: int
    clock: FakeClock
    channel: grpc.aio.Channel
    exporter: InMemorySpanExporter

    def token(self, **claims: Any) -> str:
        body: dict[str, Any] = {"sub": SUBJECT, "aud": DOMAIN, **claims}
        return self.issuer.mint(body, iat=int(self.clock.now()), ttl=600)

    async def exchange(
        self,
        scope: str = "octo-org/demo",
        identity: str = "ci",
        *,
        token: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[sts_pb2.ExchangeResponse | grpc.aio.AioRpcError, dict[str, str]]:
        """(response or the RPC error, its metadata) of one Exchange.

        The metadata is the initial metadata and the trailers together: an error is
        trailers-only, so its x-request-id is in the trailers.
        """
        stub = sts_pb2_grpc.SecurityTokenServiceStub(self.channel)  # type: ignore[no-untyped-call]
        bearer = self.token() if token is None else token
        call = stub.Exchange(
            sts_pb2.ExchangeRequest(scope=scope, identity=identity),
            metadata=(("authorization", f"Bearer {bearer}"), *metadata),
            timeout=10,
        )
        try:
            answer: sts_pb2.ExchangeResponse | grpc.aio.AioRpcError = await call
        except grpc.aio.AioRpcError as exc:
            answer = exc
        sent = (*(await call.initial_metadata() or ()), *(await call.trailing_metadata() or ()))
        return answer, {k: str(v) for k, v in sent}

    def sample(self, name: str, labels: dict[str, str]) -> float:
        return self.app.metrics.registry.get_sample_value(name, labels) or 0.0

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@asynccontextmanager
async def running_service(
    issuer: DevIssuer, github: GitHubEmulator, **overrides: Any
) -> AsyncIterator[Service]:
    """The service with an in-memory span exporter; stopped (and flushed) on exit."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock(start=time.time())
    app = build_app(
        settings_for(issuer, github, **overrides),
        clock=clock,
        registry=CollectorRegistry(),
        tracer_provider=provider,
        environ={},
    )
    port = await app.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.primary_user_agent", USER_AGENT)]
    )
    try:
        yield Service(issuer, github, app, port, clock, channel, exporter)
    finally:
        await channel.close()
        await app.stop()


def audit_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("logger") == AUDIT_LOGGER]


async def test_one_audit_event_per_exchange_names_caller_and_token_hash(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running_service(*backends) as svc:
        with structlog.testing.capture_logs() as logs:
            answer, initial = await svc.exchange(
                metadata=(("traceparent", TRACEPARENT), ("x-request-id", "req-ok-1"))
            )
    assert isinstance(answer, sts_pb2.ExchangeResponse)
    assert initial["x-request-id"] == "req-ok-1"
    (event,) = audit_events(logs)
    assert event["request_id"] == "req-ok-1"
    assert event["trace_id"] == CALLER_TRACE_ID
    assert event["result"] == "ok"
    assert event["reason"] == "ok"
    assert event["actor"]["iss"] == svc.issuer.url
    assert event["actor"]["sub"] == SUBJECT
    assert event["actor"]["claims"] == {"iss": svc.issuer.url, "sub": SUBJECT}
    assert event["scope"] == "octo-org/demo"
    assert event["identity"] == "ci"
    assert event["installation_id"] == svc.github.installation_id("octo-org")
    assert event["permissions"] == {"contents": "read"}
    assert event["repositories"] == ["demo"]
    assert event["token_sha256"] == hashlib.sha256(answer.token.encode()).hexdigest()
    assert event["user_agent"].startswith(USER_AGENT)
    assert event["rpc"] == "octosts.v1.SecurityTokenService/Exchange"
    assert answer.token not in repr(logs)


async def test_failed_exchange_is_audited_counted_once_and_carries_the_callers_request_id(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running_service(*backends) as svc:
        with structlog.testing.capture_logs() as logs:
            answer, initial = await svc.exchange(identity="nope")
            bad_token, _ = await svc.exchange(token="not-a-jwt")
        denied = svc.sample(
            "octo_sts_exchanges_total", {"result": "denied", "reason": "policy_not_found"}
        )
        malformed = svc.sample(
            "octo_sts_exchanges_total", {"result": "denied", "reason": "token_malformed"}
        )
        total = sum(
            s.value
            for m in svc.app.metrics.registry.collect()
            if m.name == "octo_sts_exchanges"
            for s in m.samples
            if s.name == "octo_sts_exchanges_total"
        )
    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.PERMISSION_DENIED
    # No x-request-id from the caller: the generated one is the same everywhere.
    rid = initial["x-request-id"]
    assert f"request_id: {rid}" in (answer.details() or "")
    first, second = audit_events(logs)
    assert first["request_id"] == rid
    assert (first["result"], first["reason"]) == ("denied", "policy_not_found")
    assert first["actor"]["sub"] == SUBJECT  # the caller was verified before the policy failed
    assert first["token_sha256"] == ""
    assert first["permissions"] == {}
    assert isinstance(bad_token, grpc.aio.AioRpcError)
    assert second["actor"] is None
    assert (second["result"], second["reason"]) == ("denied", "token_malformed")
    assert (denied, malformed, total) == (1.0, 1.0, 2.0)


async def test_every_cache_reports_hits_and_misses(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running_service(*backends) as svc:
        token = svc.token()
        for _ in range(2):
            answer, _ = await svc.exchange(token=token)
            assert isinstance(answer, sts_pb2.ExchangeResponse)
        cache_samples = {
            (s.labels["cache"], s.labels["result"]): s.value
            for m in svc.app.metrics.registry.collect()
            if m.name == "octo_sts_cache_requests"
            for s in m.samples
            if s.name == "octo_sts_cache_requests_total"
        }
        ok = svc.sample("octo_sts_exchanges_total", {"result": "ok", "reason": "ok"})
        github = svc.sample(
            "octo_sts_github_requests_total", {"endpoint": "token_mint", "status": "201"}
        )
    for cache in ("verified_token_cache", "installation_lookup", "policy_fetch"):
        assert cache_samples.get((cache, "miss")) == 1.0, (cache, cache_samples)
        assert cache_samples.get((cache, "hit")) == 1.0, (cache, cache_samples)
    assert cache_samples.get(("jwks", "miss")) == 1.0, cache_samples
    assert cache_samples.get(("contents_token_cache", "miss")) == 1.0, cache_samples
    assert ok == 2.0
    assert github == 2.0


async def test_stage_spans_nest_under_the_rpc_span_in_the_callers_trace(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running_service(*backends) as svc:
        answer, initial = await svc.exchange(metadata=(("traceparent", TRACEPARENT),))
        spans = svc.spans()
    assert isinstance(answer, sts_pb2.ExchangeResponse)
    (rpc,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert rpc.name == "octosts.v1.SecurityTokenService/Exchange"
    assert rpc.context is not None
    assert rpc.parent is not None
    assert f"{rpc.context.trace_id:032x}" == CALLER_TRACE_ID
    assert f"{rpc.parent.span_id:016x}" == CALLER_SPAN_ID
    assert rpc.attributes is not None
    assert rpc.attributes["octosts.request_id"] == initial["x-request-id"]
    children = {s.name for s in spans if s.parent and s.parent.span_id == rpc.context.span_id}
    assert {
        "token_parse",
        "issuer_validate",
        "discovery",
        "jwks",
        "signature_verify",
        "claims_validate",
        "installation_lookup",
        "policy_fetch",
        "policy_match",
        "token_mint",
    } <= children, children
    assert all(f"{s.context.trace_id:032x}" == CALLER_TRACE_ID for s in spans if s.context)


async def test_audit_events_reach_the_cloudevents_sink_and_stop_flushes_them(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    sink = Sink()
    try:
        async with running_service(*backends, audit_sink_url=sink.url) as svc:
            answer, initial = await svc.exchange()
            await svc.exchange(identity="nope")
        # app.stop() has flushed the queue: no polling needed.
        assert isinstance(answer, sts_pb2.ExchangeResponse)
        bodies = sorted((b for _, b in sink.received), key=lambda b: b["data"]["result"])
        assert [b["data"]["result"] for b in bodies] == ["denied", "ok"]
        ok = bodies[1]
        assert ok["type"] == CLOUDEVENT_TYPE
        assert ok["subject"] == "octo-org/demo"
        assert ok["data"]["request_id"] == initial["x-request-id"]
        assert ok["data"]["token_sha256"] == hashlib.sha256(answer.token.encode()).hexdigest()
        assert answer.token not in repr(bodies)
    finally:
        sink.stop()


async def test_real_prometheus_scrapes_the_real_service(
    backends: tuple[DevIssuer, GitHubEmulator], tmp_path: Path
) -> None:
    async with running_service(*backends) as svc:
        # What `octo-sts serve` does with OCTOSTS_METRICS_ADDR.
        metrics_server = start_metrics_server(svc.app.metrics.registry, "127.0.0.1", 0)
        svc.app.metrics_server = metrics_server
        answer, _ = await svc.exchange()
        assert isinstance(answer, sts_pb2.ExchangeResponse)
        target = f"127.0.0.1:{metrics_server.port}"
        with real_prometheus(tmp_path, target) as url:

            def exchanges() -> list[Any]:
                found: list[Any] = query(url, 'octo_sts_exchanges_total{result="ok"}')["data"][
                    "result"
                ]
                return found

            (sample,) = await eventually(
                exchanges, "the exchange counter to be scraped", timeout=20
            )
            assert sample["metric"]["reason"] == "ok"
            assert sample["value"][1] == "1"
            buckets = query(
                url, 'sum by (stage) (octo_sts_stage_duration_seconds_bucket{le="+Inf"})'
            )["data"]["result"]
            stages = {r["metric"]["stage"] for r in buckets}
            assert {"signature_verify", "policy_match", "token_mint"} <= stages, stages
            handled = query(url, 'grpc_server_handled_total{grpc_method="Exchange",grpc_code="OK"}')
            assert [r["value"][1] for r in handled["data"]["result"]] == ["1"]
