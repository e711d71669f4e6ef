"""The fast OTLP encoder writes the same ExportTraceServiceRequest as the stock one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from octosts.observability.otlp import FastOTLPSpanExporter, Unsupported, encode_request


def _provider(
    exporter: InMemorySpanExporter, resource: Resource, limits: SpanLimits | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _spans() -> Sequence[ReadableSpan]:
    exporter = InMemorySpanExporter()
    first = _provider(exporter, Resource.create({"service.name": "octo-sts", "n": 3}))
    other = Resource({"service.name": "other"}, "https://schema")
    second = _provider(exporter, other, SpanLimits(max_attributes=2))
    tracer = first.get_tracer("octosts")
    versioned = first.get_tracer("lib", "1.2.3", schema_url="https://scope")
    remote = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        }
    )
    with tracer.start_as_current_span(
        "octosts.v1.SecurityTokenService/Exchange", context=remote, kind=SpanKind.SERVER
    ) as rpc:
        rpc.set_attributes(
            {
                "rpc.system": "grpc",
                "rpc.grpc.status_code": 0,
                "negative": -5,
                "big": 2**62,
                "ratio": 0.25,
                "flag": True,
                "off": False,
                "one": 1,  # equal to True as a dict key: must still encode as an int
                "names": ("a", "b"),
                "codes": (1, 2, 3),
                "unicode": "héllo ✓",
            }
        )
        with tracer.start_as_current_span("token_mint") as stage:
            stage.set_attribute("cache", "hit")
            stage.add_event("exception", {"exception.type": "UpstreamUnavailable"})
            stage.set_status(Status(StatusCode.ERROR, "upstream_unavailable"))
        with versioned.start_as_current_span("policy_match", kind=SpanKind.CLIENT) as ok:
            ok.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span("root", kind=SpanKind.PRODUCER):
        pass
    with second.get_tracer("x").start_as_current_span("limited", kind=SpanKind.CONSUMER) as s:
        s.set_attributes({"a": 1, "b": 2, "c": 3})  # one dropped
    return exporter.get_finished_spans()


def test_same_request_as_the_stock_encoder() -> None:
    spans = _spans()
    assert len(spans) == 5
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == encode_spans(spans)
    # A cache hit (same attribute pairs, same resource) encodes the same again.
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:1", insecure=True)
    try:
        assert exporter._translate_data(spans) == encode_spans(spans)
        assert exporter._translate_data(spans) == encode_spans(spans)
    finally:
        exporter.shutdown()


def test_links_fall_back_to_the_stock_encoder() -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter, Resource.create({})).get_tracer("t")
    with tracer.start_as_current_span("a") as a:
        pass
    with tracer.start_as_current_span("b", links=[Link(a.get_span_context(), {"k": "v"})]):
        pass
    spans = exporter.get_finished_spans()
    with pytest.raises(Unsupported):
        encode_request(spans)
    fast = FastOTLPSpanExporter(endpoint="http://127.0.0.1:1", insecure=True)
    try:
        assert fast._translate_data(spans) == encode_spans(spans)
    finally:
        fast.shutdown()


def test_empty_batch() -> None:
    assert ExportTraceServiceRequest.FromString(encode_request([])) == encode_spans([])
