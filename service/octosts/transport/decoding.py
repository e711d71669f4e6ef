"""Requests whose bytes are not the method's message: INVALID_ARGUMENT, not UNKNOWN.

grpc.aio decodes a request before any interceptor behaviour or servicer runs, and a
``DecodeError`` there became status UNKNOWN with the text "Unexpected <class
'google.protobuf.message.DecodeError'>: ..." plus an error-level log with stack frames:
a caller's mistake (or an attacker's bytes, e.g. ``ff ff ff ff 0f``) reported as our
fault. ``UndecodableRequestGuard`` (the innermost interceptor, added by ``GrpcServer``)
gives every unary-unary method a decoder that never raises and a behaviour that answers
an undecodable request with the answer table's ``InvalidRequest`` row, logged at info.
Streaming methods (health Watch, reflection) keep grpc's own handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from octosts.domain.errors import InvalidRequest
from octosts.transport.errors import failure
from octosts.transport.metadata import request_id
from octosts.transport.sts import abort
from octosts.transport.unary import Behavior, Continuation, Decoder, rewrapped, run, unary_behavior

UNDECODABLE_REQUEST = "undecodable_request"
_MAX_METHODS = 64

_log = structlog.get_logger("octosts.transport")


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """Stands in for a request that did not decode (never its bytes: they may hold anything)."""

    size: int


def _tolerant(decode: Decoder | None) -> Decoder | None:
    if decode is None:
        return None

    def decode_or_mark(raw: bytes) -> Any:
        try:
            return decode(raw)
        except DecodeError:
            return _Undecodable(len(raw))

    return decode_or_mark


def _refusing(behavior: Behavior) -> Behavior:
    async def refuse_or_run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            _log.info("grpc.undecodable_request", bytes=request.size)
            rid = request_id(tuple(context.invocation_metadata() or ()))
            error = InvalidRequest(
                "the request is not a valid protobuf message for this method",
                reason=UNDECODABLE_REQUEST,
            )
            await abort(context, failure(error, rid))
        return await run(behavior, request, context)

    return refuse_or_run


class UndecodableRequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Undecodable unary requests answer INVALID_ARGUMENT (see the module docstring)."""

    def __init__(self) -> None:
        # Registered handler -> its guarded twin, built once per method, not per call.
        self._guarded: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = unary_behavior(handler)
        if behavior is None:
            return handler
        guarded = self._guarded.get(handler)
        if guarded is None:
            guarded = rewrapped(
                handler, _refusing(behavior), _tolerant(handler.request_deserializer)
            )
            if len(self._guarded) < _MAX_METHODS:  # registered handlers are a fixed few
                self._guarded[handler] = guarded
        return guarded
