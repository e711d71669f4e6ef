"""gRPC server interceptor: request id, logging context, RPC span and RPC metrics.

``ObservabilityInterceptor`` wraps every unary-unary handler (Exchange, Check,
health Check) so that, around the servicer method:

- the request id is taken from ``x-request-id`` metadata (Envoy sets one) when
  it is well-formed, else a new one is generated; it is bound to structlog's
  contextvars with the rpc name, readable with ``request_id.current_request_id()``,
  and sent back as ``x-request-id`` (except to ext_authz Check, whose caller, Envoy,
  ignores it: ``NO_REQUEST_ID_ECHO``): in the initial metadata of a *successful*
  answer, sent after the handler returned; a failed answer carries it in its
  trailers (``sts.abort``). An error must stay "trailers-only" (no initial
  metadata sent before the status): Envoy's gRPC ``retry_on`` conditions
  (``unavailable``, ``resource-exhausted``) read ``grpc-status`` from the response
  headers, so an error after headers is never retried on another replica;
- the W3C trace context (``traceparent``) of the metadata becomes the parent of
  a SERVER span named ``<service>/<method>``; the stage spans of
  ``TelemetryObserver`` nest under it;
- the final status code is recorded in ``grpc_server_handled_total`` and
  ``grpc_server_handling_seconds``.

Why a wrapper around the behaviour rather than a plain interceptor: a grpc.aio
interceptor only returns a handler and never sees how the call ends. The
wrapper sees a returned response, ``context.abort`` (``AbortError`` plus
``context.code()``), ``context.set_code`` and unexpected exceptions (UNKNOWN).
Streaming handlers (health Watch, reflection) are passed through untouched:
they are not part of the exchange path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from opentelemetry.context import attach, detach
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, set_span_in_context

from octosts.observability.tracing import extract_trace_context
from octosts.transport.request_id import (
    REQUEST_ID_HEADER,
    reset_current_request_id,
    sanitise_request_id,
    set_current_request_id,
)
from octosts.transport.unary import Behavior, Continuation, rewrapped, run, unary_behavior

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from octosts.observability.metrics import Metrics

# Methods whose only caller discards response metadata: Envoy's ext_authz client reads the
# CheckResponse alone (the request id is in a denial's body and Envoy's own x-request-id). Sending
# initial metadata on its own is a separate gRPC batch, ~0.1 ms of CPU per RPC on the edge path.
NO_REQUEST_ID_ECHO = frozenset({"/envoy.service.auth.v3.Authorization/Check"})

# Codes that mean the server failed (OpenTelemetry's rpc conventions): span status ERROR.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
# W3C trace context headers (gRPC metadata keys arrive lower-cased).
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_MAX_METHODS = 64


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return (service or "unknown"), (method or "unknown")


def _status_code(raw: Any) -> grpc.StatusCode:
    if isinstance(raw, grpc.StatusCode):
        return raw
    if isinstance(raw, int):
        return _BY_VALUE.get(raw, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


def _context_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    try:
        raw = context.code()
    except NotImplementedError:
        return default
    return default if raw is None else _status_code(raw)


def _read_metadata(metadata: Iterable[tuple[str, Any]], tracing: bool) -> tuple[Any, bool]:  # noqa: FBT001
    """(the caller's first ``x-request-id``, whether the call gets a span: tracing is on, or
    the caller sent a trace context, which audit events and logs carry even untraced)."""
    given = None
    traced = tracing
    for key, value in metadata:
        if key == REQUEST_ID_HEADER:
            given = value if given is None else given
        elif key in _TRACE_HEADERS:
            traced = True
    return given, traced


def _open_span(
    tracer: Tracer, name: str, metadata: Iterable[tuple[str, Any]], attributes: dict[str, Any]
) -> tuple[Span, Token[Context]]:
    # start_span + attach, not start_as_current_span: the SDK's context-manager
    # layers cost about as much as the span (see observability/stages.py).
    span = tracer.start_span(
        name, context=extract_trace_context(metadata), kind=SpanKind.SERVER, attributes=attributes
    )
    return span, attach(set_span_in_context(span))


def _close_span(span: Span, token: Token[Context], code: grpc.StatusCode) -> None:
    detach(token)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Request id, RPC span and ``grpc_server_*`` metrics for unary RPCs (see module doc).

    The wrapped handler is built once per method (not per call: it reads the call's
    metadata from its context), and the span work is skipped when there is nothing to
    record or pass on: tracing off and no ``traceparent`` from the caller.
    """

    def __init__(self, metrics: Metrics, tracer: Tracer) -> None:
        self._metrics = metrics
        self._tracer = tracer
        self._tracing = not isinstance(tracer, NoOpTracer)
        # (method, registered handler) -> its observed twin (registered handlers are a few).
        self._wrapped: dict[tuple[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = unary_behavior(handler)
        if behavior is None:
            return handler
        key = (str(handler_call_details.method), handler)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = rewrapped(handler, self._wrap(behavior, key[0]))
            if len(self._wrapped) < _MAX_METHODS:
                self._wrapped[key] = wrapped
        return wrapped

    def _wrap(
        self, behavior: Behavior, full_method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        service, method = split_method(full_method)
        name = f"{service}/{method}"
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        echo_request_id = full_method not in NO_REQUEST_ID_ECHO
        tracer, tracing, record = self._tracer, self._tracing, self._metrics.grpc

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata() or ()
            given, traced = _read_metadata(metadata, tracing)
            request_id = sanitise_request_id(given)
            token = set_current_request_id(request_id)
            bound = structlog.contextvars.bind_contextvars(request_id=request_id, rpc=full_method)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            opened = (
                _open_span(tracer, name, metadata, {**attributes, "octosts.request_id": request_id})
                if traced
                else None
            )
            try:
                result = await run(behavior, request, context)
                code = _context_code(context, grpc.StatusCode.OK)
                if echo_request_id and code is grpc.StatusCode.OK:
                    # Only now: headers sent before an error would make it non-retryable.
                    await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
            except grpc.aio.AbortError:
                code = _context_code(context, grpc.StatusCode.UNKNOWN)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = grpc.StatusCode.UNKNOWN
                if opened is not None:
                    # Type only: the message of an unexpected exception may quote input.
                    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
                    opened[0].set_attribute("error.type", kind)
                raise
            else:
                return result
            finally:
                if opened is not None:
                    _close_span(*opened, code)
                record(service, method, code.name, time.perf_counter() - start)
                structlog.contextvars.reset_contextvars(**bound)
                reset_current_request_id(token)

        return observed
