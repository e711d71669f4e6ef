"""What the server's interceptors share: a unary-unary handler's behaviour, wrapped.

A grpc.aio interceptor only returns a handler and never sees how the call ends, so each of
ours (``decoding``, ``admission``, ``interceptors``) wraps the behaviour of a unary-unary
handler and passes streaming ones (health Watch, reflection) through untouched. The behaviour
type, which handlers are wrapped, the rebuilt handler and calling a behaviour (a coroutine
function, or a plain one) are written here once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any] | Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
Decoder = Callable[[bytes], Any]


def unary_behavior(handler: grpc.RpcMethodHandler | None) -> Behavior | None:
    """The behaviour to wrap, or None: no handler (unknown method) or a streaming one."""
    return None if handler is None else handler.unary_unary


def rewrapped(
    handler: grpc.RpcMethodHandler, behavior: Behavior, decode: Decoder | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` with ``behavior`` (and ``decode``, if given) in place of its own."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer if decode is None else decode,
        response_serializer=handler.response_serializer,
    )


async def run(behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """The response of ``behavior``, awaited when it is a coroutine function's."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result
