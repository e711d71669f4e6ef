"""Tracing settings from OTEL_* variables, provider building, W3C extraction."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from octosts.observability.tracing import (
    TracingConfigError,
    _otlp_exporter,
    build_tracer_provider,
    current_trace_id,
    extract_trace_context,
    make_tracer,
    settings_from_env,
)
from tests.polling import eventually_blocking

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_off_unless_configured() -> None:
    settings = settings_from_env({})
    assert not settings.enabled
    assert build_tracer_provider(settings) is None
    assert isinstance(make_tracer(None), trace.NoOpTracer)


@pytest.mark.parametrize(
    ("env", "exporter", "endpoint", "insecure"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
            "otlp",
            "http://collector:4317",
            True,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4317",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces:4317",
            },
            "otlp",
            "https://traces:4317",
            False,
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp", "http://localhost:4317", True),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console", "http://localhost:4317", True),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1"},
            "none",
            "http://c:1",
            True,
        ),
        (
            {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
            "none",
            "http://localhost:4317",
            True,
        ),
    ],
)
def test_settings_from_env(
    env: dict[str, str], exporter: str, endpoint: str, insecure: bool
) -> None:
    settings = settings_from_env(env)
    assert (settings.exporter, settings.endpoint, settings.insecure) == (
        exporter,
        endpoint,
        insecure,
    )


def test_settings_details_and_secret_headers_not_in_repr() -> None:
    settings = settings_from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
            "OTEL_SERVICE_NAME": "sts-a",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=infra",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        }
    )
    assert settings.timeout_s == 0.5
    assert settings.service_name == "sts-a"
    assert settings.resource_attributes == {"deployment.environment": "prod", "team": "infra"}
    assert settings.sampler_arg == 0.25
    assert settings.max_queue_size == 100
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_SDK_DISABLED": "maybe"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "2"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_RESOURCE_ATTRIBUTES": "novalue"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_MAX_QUEUE_SIZE": "0"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError):
        settings_from_env(env)


def test_provider_uses_service_name_and_exports_in_batches() -> None:
    settings = settings_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "sts-x"})
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(settings, exporter=exporter)
    assert provider is not None
    with make_tracer(provider).start_as_current_span("rpc"):
        assert len(current_trace_id()) == 32
    assert current_trace_id() == ""
    assert provider.force_flush(5000)
    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "sts-x"
    provider.shutdown()


def test_dead_collector_never_slows_spans() -> None:
    # A port with nothing listening: the exporter fails, requests must not notice.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "200",
            "OTEL_BSP_MAX_QUEUE_SIZE": "64",
            "OTEL_BSP_SCHEDULE_DELAY": "10",
        }
    )
    exporter = _ThreadRecorder(_otlp_exporter(settings))  # the real OTLP exporter, watched
    provider = build_tracer_provider(settings, exporter=exporter)
    assert provider is not None
    tracer = make_tracer(provider)
    for _ in range(500):  # far beyond the 64-span queue: the excess is dropped, not waited for
        with tracer.start_as_current_span("rpc"), tracer.start_as_current_span("stage"):
            pass
    eventually_blocking(lambda: exporter.threads, "an export attempt to the dead collector")
    # Exports (and their failures, retries and timeouts) run on the processor's own thread only.
    assert threading.current_thread() not in exporter.threads
    # Shutdown gives up on the dead collector: the outer bound turns a hang into a failure.
    stopping = threading.Thread(target=provider.shutdown)
    stopping.start()
    stopping.join(timeout=30)
    assert not stopping.is_alive()


class _ThreadRecorder(SpanExporter):
    """Delegates to ``inner``, remembering the thread of every export."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.threads: list[threading.Thread] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.threads.append(threading.current_thread())
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def test_traceparent_is_extracted_from_metadata() -> None:
    ctx = extract_trace_context([("TraceParent", TRACEPARENT), ("x-other", "1"), ("b-bin", b"\0")])
    span_context = trace.get_current_span(ctx).get_span_context()
    assert span_context.is_valid
    assert f"{span_context.trace_id:032x}" == TRACE_ID
    assert span_context.is_remote


@pytest.mark.parametrize("value", ["garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", ""])
def test_bad_traceparent_starts_a_new_trace(value: str) -> None:
    ctx = extract_trace_context([("traceparent", value)])
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    assert not trace.get_current_span(extract_trace_context(None)).get_span_context().is_valid
