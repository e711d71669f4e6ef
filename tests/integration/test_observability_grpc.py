"""The interceptor and the stage observer on a real grpc.aio server over loopback."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from octosts.domain.errors import PolicyDenied
from octosts.observability.metrics import Metrics
from octosts.observability.stages import TelemetryObserver
from octosts.observability.tracing import current_trace_id
from octosts.transport.interceptors import ObservabilityInterceptor
from octosts.transport.request_id import current_request_id
from tests.polling import eventually

SERVICE = "octosts.test.Probe"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"


@dataclass
class Harness:
    channel: grpc.aio.Channel
    registry: CollectorRegistry
    exporter: InMemorySpanExporter
    seen: dict[str, Any]

    async def call(
        self, method: str, body: bytes = b"", metadata: tuple[tuple[str, str], ...] = ()
    ) -> tuple[bytes, grpc.aio.UnaryUnaryCall]:
        rpc = self.channel.unary_unary(f"/{SERVICE}/{method}")
        call = rpc(body, metadata=metadata, timeout=10)
        return await call, call

    def handled(self, method: str, code: str) -> float | None:
        return self.registry.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code},
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    observer = TelemetryObserver(metrics, tracer)
    seen: dict[str, Any] = {}

    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["request_id"] = current_request_id()
        seen["log_context"] = structlog.contextvars.get_contextvars()
        with observer.stage("token_parse") as stage:
            stage.annotate("issuer", "https://issuer.example")
        with observer.stage("policy_fetch") as stage:
            stage.annotate("cache", "miss")
        return b"ok:" + request

    async def denied(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        def deny() -> None:
            raise PolicyDenied("subject does not match")

        try:
            with observer.stage("policy_match"):
                deny()
        except PolicyDenied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
        return b""

    async def set_code(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("nothing here")
        return b""

    async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with observer.stage("token_mint"):
            raise RuntimeError("boom with ghs_abcdefghijklmnopqrstuvwxyz0123456789")

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in {"Ok": ok, "Denied": denied, "SetCode": set_code, "Crash": crash}.items()
    }
    server = grpc.aio.server(interceptors=[ObservabilityInterceptor(metrics, tracer)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(channel, registry, exporter, seen)
    finally:
        await channel.close()
        await server.stop(None)
        provider.shutdown()


async def test_ok_rpc_counts_metrics_and_nests_stage_spans_under_callers_trace(
    harness: Harness,
) -> None:
    body, call = await harness.call(
        "Ok", b"x", (("traceparent", TRACEPARENT), ("x-request-id", "req-123"))
    )
    assert body == b"ok:x"
    assert ("x-request-id", "req-123") in tuple(await call.initial_metadata())
    assert harness.handled("Ok", "OK") == 1.0
    assert (
        harness.registry.get_sample_value(
            "grpc_server_handling_seconds_count", {"grpc_service": SERVICE, "grpc_method": "Ok"}
        )
        == 1.0
    )
    assert harness.seen["request_id"] == "req-123"
    assert harness.seen["log_context"]["request_id"] == "req-123"
    assert harness.seen["log_context"]["rpc"] == f"/{SERVICE}/Ok"
    # Stage metrics, including the ones derived from annotations.
    sample = harness.registry.get_sample_value
    assert sample(
        "octo_sts_stage_duration_seconds_count", {"stage": "token_parse", "outcome": "ok"}
    )
    assert sample("octo_sts_cache_requests_total", {"cache": "policy_fetch", "result": "miss"})

    spans = {s.name: s for s in harness.spans()}
    assert set(spans) == {f"{SERVICE}/Ok", "token_parse", "policy_fetch"}
    rpc = spans[f"{SERVICE}/Ok"]
    assert rpc.kind is SpanKind.SERVER
    assert rpc.context is not None
    assert rpc.parent is not None
    assert f"{rpc.context.trace_id:032x}" == CALLER_TRACE_ID
    assert f"{rpc.parent.span_id:016x}" == CALLER_SPAN_ID
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["octosts.request_id"] == "req-123"
    for stage in ("token_parse", "policy_fetch"):
        assert spans[stage].parent is not None
        assert spans[stage].parent.span_id == rpc.context.span_id
    assert spans["token_parse"].attributes == {"issuer": "https://issuer.example"}


async def test_missing_or_hostile_request_id_is_replaced(harness: Harness) -> None:
    _, call = await harness.call("Ok", metadata=(("x-request-id", "bad id;<x>"),))
    rid = dict(tuple(await call.initial_metadata()))["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    _, call = await harness.call("Ok")
    other = dict(tuple(await call.initial_metadata()))["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", other)
    assert other != rid
    # Without a traceparent the RPC span is a root.
    roots = [s for s in harness.spans() if s.name == f"{SERVICE}/Ok" and s.parent is None]
    assert len(roots) == 2


async def test_abort_records_final_code_and_stage_family(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.call("Denied")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # Trailers-only: no initial metadata before the status (Envoy can only retry those).
    assert tuple(info.value.initial_metadata() or ()) == ()
    # context.abort() sends the status before the interceptor's finally block runs: the client
    # can see it before the RPC span ends and the RPC is counted (span first, then the count).
    await eventually(
        lambda: harness.handled("Denied", "PERMISSION_DENIED") == 1.0, "the aborted RPC counted"
    )
    assert harness.handled("Denied", "OK") is None
    assert harness.registry.get_sample_value(
        "octo_sts_stage_duration_seconds_count",
        {"stage": "policy_match", "outcome": "permission_denied"},
    )
    spans = {s.name: s for s in harness.spans()}
    stage = spans["policy_match"]
    assert stage.status.status_code is StatusCode.ERROR
    assert stage.attributes is not None
    assert stage.attributes["octosts.reason"] == "policy_denied"
    # Client faults do not mark the RPC span as failed.
    assert spans[f"{SERVICE}/Denied"].status.status_code is StatusCode.UNSET


async def test_set_code_is_seen(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.call("SetCode")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert harness.handled("SetCode", "NOT_FOUND") == 1.0


async def test_crash_is_unknown_and_its_message_never_reaches_spans(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.call("Crash")
    assert info.value.code() is grpc.StatusCode.UNKNOWN
    assert harness.handled("Crash", "UNKNOWN") == 1.0
    assert harness.registry.get_sample_value(
        "octo_sts_stage_duration_seconds_count", {"stage": "token_mint", "outcome": "error"}
    )
    dumped = "".join(s.to_json() for s in harness.spans())
    assert "ghs_" not in dumped
    assert "boom" not in dumped
    assert "builtins.RuntimeError" in dumped
    rpc = next(s for s in harness.spans() if s.name == f"{SERVICE}/Crash")
    assert rpc.status.status_code is StatusCode.ERROR


async def test_unknown_method_is_not_counted(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.call("Nope")
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert harness.handled("Nope", "UNIMPLEMENTED") is None


async def test_tracing_off_a_callers_trace_context_still_reaches_audit_and_logs() -> None:
    seen: list[str] = []

    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(current_trace_id())
        return b"ok"

    interceptor = ObservabilityInterceptor(Metrics(CollectorRegistry()), NoOpTracer())
    handlers = {"Ok": grpc.unary_unary_rpc_method_handler(ok)}
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            rpc = channel.unary_unary(f"/{SERVICE}/Ok")
            await rpc(b"", metadata=(("traceparent", TRACEPARENT),), timeout=10)
            await rpc(b"", timeout=10)
    finally:
        await server.stop(None)
    assert seen == [CALLER_TRACE_ID, ""]


async def test_each_methods_observed_handler_is_built_once() -> None:
    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"ok"

    interceptor = ObservabilityInterceptor(Metrics(CollectorRegistry()), NoOpTracer())
    registered = grpc.unary_unary_rpc_method_handler(ok)

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return registered

    details = SimpleNamespace(method=f"/{SERVICE}/Ok", invocation_metadata=())
    first = await interceptor.intercept_service(continuation, details)
    assert first is not registered
    assert await interceptor.intercept_service(continuation, details) is first
