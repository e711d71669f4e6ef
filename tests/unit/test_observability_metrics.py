"""Metrics definitions, label bounding, outcome tables and the stage observer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry, generate_latest

from octosts.domain import errors
from octosts.domain.ports import StageObserver
from octosts.observability.metrics import (
    MULTIPROC_ENV,
    OTHER,
    Metrics,
    MetricsSetupError,
    error_family,
    exchange_outcome,
    prepare_multiprocess_dir,
)
from octosts.observability.stages import TelemetryObserver

EXPECTED_FAMILIES = {
    "octo_sts_exchanges": "counter",
    "octo_sts_stage_duration_seconds": "histogram",
    "octo_sts_cache_requests": "counter",
    "octo_sts_github_requests": "counter",
    "octo_sts_github_request_duration_seconds": "histogram",
    "octo_sts_github_rate_limit_remaining": "gauge",
    "octo_sts_github_rate_limited_until": "gauge",
    "octo_sts_github_app_mints": "counter",
    "octo_sts_github_orphan_tokens": "counter",
    "octo_sts_ext_authz_decisions": "counter",
    "octo_sts_audit_events_dropped": "counter",
    "octo_sts_refusals": "counter",
    "octo_sts_issuer_audit": "counter",
    "octo_sts_shed": "counter",
    "octo_sts_rpcs_in_flight": "gauge",
    "octo_sts_redis_requests": "counter",
    "octo_sts_redis_breaker_open": "gauge",
    "octo_sts_shared_cache": "counter",
    "grpc_server_handled": "counter",
    "grpc_server_handling_seconds": "histogram",
}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_every_metric_is_on_the_given_registry_only(metrics: Metrics) -> None:
    families = {m.name: m.type for m in metrics.registry.collect()}
    assert families == EXPECTED_FAMILIES
    # A second instance on its own registry does not clash (no global state).
    other = Metrics(CollectorRegistry())
    other.exchange("ok", "ok")
    assert (
        metrics.registry.get_sample_value(
            "octo_sts_exchanges_total", {"result": "ok", "reason": "ok"}
        )
        is None
    )


def test_exposition_after_recording(metrics: Metrics) -> None:
    metrics.exchange("denied", "policy_denied")
    metrics.stage("jwks", "ok", 0.0002)
    metrics.github_request("access_tokens", 201, 0.3)
    metrics.github_request("contents", "timeout", 5.0)
    metrics.rate_limit_remaining(1234, 4999)
    metrics.ext_authz_decision("deny", "token_expired")
    metrics.audit_dropped("queue_full")
    metrics.grpc("octosts.v1.SecurityTokenService", "Exchange", "OK", 0.004)
    text = generate_latest(metrics.registry).decode()
    for line in (
        'octo_sts_exchanges_total{reason="policy_denied",result="denied"} 1.0',
        'octo_sts_stage_duration_seconds_bucket{le="0.00025",outcome="ok",stage="jwks"} 1.0',
        'octo_sts_stage_duration_seconds_bucket{le="0.0001",outcome="ok",stage="jwks"} 0.0',
        'octo_sts_github_requests_total{endpoint="access_tokens",status="201"} 1.0',
        'octo_sts_github_requests_total{endpoint="contents",status="error"} 1.0',
        'octo_sts_github_rate_limit_remaining{installation="1234"} 4999.0',
        'octo_sts_ext_authz_decisions_total{decision="deny",reason="token_expired"} 1.0',
        'octo_sts_audit_events_dropped_total{reason="queue_full"} 1.0',
        (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Exchange",'
            'grpc_service="octosts.v1.SecurityTokenService"} 1.0'
        ),
    ):
        assert line in text, line


def test_label_values_are_bounded_and_sanitised(metrics: Metrics) -> None:
    for n in range(40):
        metrics.stage(f"stage-{n}", "ok", 0.001)
    stages = {
        s.labels["stage"]
        for m in metrics.registry.collect()
        if m.name == "octo_sts_stage_duration_seconds"
        for s in m.samples
    }
    assert len(stages) == 33
    assert OTHER in stages
    metrics.cache_request('jwks"\n{evil}' + "x" * 200, "hit")
    caches = {
        s.labels["cache"]
        for m in metrics.registry.collect()
        if m.name == "octo_sts_cache_requests"
        for s in m.samples
    }
    (label,) = caches
    assert len(label) <= 64
    assert '"' not in label
    assert "\n" not in label


@pytest.mark.parametrize(
    ("exc", "family", "outcome"),
    [
        (None, None, ("ok", "ok")),
        (errors.TokenExpired(), "unauthenticated", ("denied", "token_expired")),
        (errors.PolicyDenied(), "permission_denied", ("denied", "policy_denied")),
        (errors.InvalidRequest(), "invalid_request", ("denied", "invalid_request")),
        (errors.RateLimited(retry_after=60), "rate_limited", ("error", "rate_limited")),
        (errors.IssuerUnavailable(), "upstream_unavailable", ("error", "issuer_unavailable")),
        (errors.StsError(), "internal", ("error", "internal")),
        (errors.PolicyDenied("x", reason="custom"), "permission_denied", ("denied", "custom")),
        (KeyError("x"), "error", ("error", "internal")),
    ],
)
def test_outcome_tables(
    exc: BaseException | None, family: str | None, outcome: tuple[str, str]
) -> None:
    assert exchange_outcome(exc) == outcome
    if exc is not None:
        assert error_family(exc) == family


def test_multiprocess_env_set_too_late_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "/nonexistent")
    with pytest.raises(MetricsSetupError, match="before starting the worker"):
        Metrics(CollectorRegistry())


def test_prepare_multiprocess_dir_makes_a_fresh_directory(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    first = prepare_multiprocess_dir(env, base=str(tmp_path))
    second = prepare_multiprocess_dir(env, base=str(tmp_path))
    assert first.is_dir()
    assert first != second
    assert env[MULTIPROC_ENV] == str(second)


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_observer_satisfies_the_port_and_derives_metrics(metrics: Metrics) -> None:
    provider, exporter = _provider()
    observer: StageObserver = TelemetryObserver(metrics, provider.get_tracer("t"))
    with observer.stage("installation_lookup") as stage:
        stage.annotate("github.status", 200)
        stage.annotate("cache", "stale")
        stage.annotate("cache.name", "installations")
        stage.annotate("note", "ghs_abcdefghijklmnopqrstuvwxyz0123456789")
    value = metrics.registry.get_sample_value
    assert value("octo_sts_cache_requests_total", {"cache": "installations", "result": "stale"})
    # GitHub call metrics have one feed, the REST core: an annotation is a span attribute only.
    assert not [s for m in metrics.registry.collect() if "github" in m.name for s in m.samples]
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["note"] == "[REDACTED_GITHUB_TOKEN]"
    assert span.attributes["github.status"] == 200
    provider.shutdown()


def test_observer_outcomes(metrics: Metrics) -> None:
    observer = TelemetryObserver(metrics, NoOpTracer())
    with pytest.raises(errors.TokenSignatureInvalid), observer.stage("signature_verify"):
        raise errors.TokenSignatureInvalid
    with pytest.raises(asyncio.CancelledError), observer.stage("jwks"):
        raise asyncio.CancelledError
    with pytest.raises(ZeroDivisionError), observer.stage("policy_match"):
        _ = 1 / 0
    with observer.stage("token_parse"):
        pass
    count = metrics.registry.get_sample_value
    name = "octo_sts_stage_duration_seconds_count"
    assert count(name, {"stage": "signature_verify", "outcome": "unauthenticated"}) == 1
    assert count(name, {"stage": "jwks", "outcome": "cancelled"}) == 1
    assert count(name, {"stage": "policy_match", "outcome": "error"}) == 1
    assert count(name, {"stage": "token_parse", "outcome": "ok"}) == 1
