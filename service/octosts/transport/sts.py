"""gRPC servicers: ``octosts.v1``, the chainguard-compatible service and its form binding.

Each method is request proto -> domain call -> response proto; conversions
are the named functions below, and every failure goes through the one error
table in ``transport/errors.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
import structlog
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.gateway.v1 import form_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.domain.deadline import reset_deadline, set_deadline
from octosts.domain.errors import InvalidRequest, StsError
from octosts.domain.exchange import (
    CallInfo,
    ExchangeAttempt,
    ExchangeReporter,
    ExchangeRequest,
    ExchangeResult,
)
from octosts.transport.compat import exchange_request_from_form, logged_audiences, scope_of
from octosts.transport.errors import Failure, failure
from octosts.transport.metadata import bearer_token, request_id, user_agent
from octosts.transport.request_id import REQUEST_ID_HEADER

if TYPE_CHECKING:
    from octosts.domain.exchange import Exchanger

SERVICE_NAMES = (
    "octosts.v1.SecurityTokenService",
    "chainguard.platform.oidc.SecurityTokenService",
    "octosts.gateway.v1.FormExchangeService",
)


class _Handler:
    """Shared body of both services' Exchange methods."""

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._exchanger = exchanger
        self._reporter = reporter
        self._verbose = verbose

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        scope: str,
        identity: str,
        audience: str | None,
        scopes: Sequence[str] = (),
    ) -> ExchangeResult:
        """``scopes``: the chainguard API's repeated scope, read with ``scope`` by ``scope_of``."""
        started = time.perf_counter()
        metadata = tuple(context.invocation_metadata() or ())
        rid = request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        attempt = ExchangeAttempt()
        named = scope or next(iter(scopes), "")
        request = ExchangeRequest(bearer="", scope=named, identity=identity, audience=audience)
        error: BaseException | None = None
        # No GitHub call, and no retry of one, outlives the caller's deadline.
        deadline = set_deadline(context.time_remaining())
        try:
            scope = scope_of(scope, scopes)
            request = ExchangeRequest(bearer_token(metadata), scope, identity, audience)
            return await self._exchanger.exchange(request, attempt)
        except asyncio.CancelledError as exc:  # client gone, deadline: recorded, then let through
            error = exc
            raise
        except Exception as exc:  # noqa: BLE001 - every fault becomes a status, never a traceback to callers
            error = exc
        finally:
            reset_deadline(deadline)
            call = CallInfo(rpc, rid, user_agent(metadata), time.perf_counter() - started)
            self._reporter.exchange_done(call, request, attempt, error)
        # Foreign exceptions are INTERNAL without detail, whatever the verbosity.
        verbose = self._verbose and isinstance(error, StsError)
        await abort(context, failure(error, rid, verbose=verbose))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def abort(context: grpc.aio.ServicerContext, failed: Failure) -> None:
    """End the RPC with the failure's code, message and rich details (ErrorInfo).

    Everything goes in the trailers, with no initial metadata before them
    (``Failure.trailers``, and ``transport/interceptors.py``).
    """
    await context.abort(failed.code, failed.message, trailing_metadata=failed.trailers())


def expires_at_proto(result: ExchangeResult) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(result.token.expires_at)
    return stamp


def to_response(result: ExchangeResult, now: float) -> sts_pb2.ExchangeResponse:
    token = result.token
    expires_in = max(0, int(token.expires_at.timestamp() - now))
    return sts_pb2.ExchangeResponse(
        token=token.token,
        access_token=token.token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=expires_in,
        expires_at=expires_at_proto(result),
        permissions=dict(token.permissions),
        repositories=list(token.repositories),
    )


def to_raw_token(result: ExchangeResult) -> oidc_pb2.RawToken:
    return oidc_pb2.RawToken(token=result.token.token, expiry=expires_at_proto(result))


class StsServicer(sts_pb2_grpc.SecurityTokenServiceServicer):
    """``octosts.v1.SecurityTokenService``."""

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._handler = _Handler(exchanger, reporter, verbose=verbose)

    async def Exchange(  # noqa: N802 - gRPC method name
        self, request: sts_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> sts_pb2.ExchangeResponse:
        audience = request.audience if request.HasField("audience") else None
        result = await self._handler.run(
            "octosts.v1.SecurityTokenService/Exchange",
            context,
            request.scope,
            request.identity,
            audience,
        )
        return to_response(result, time.time())


class ChainguardStsServicer(oidc_pb2_grpc.SecurityTokenServiceServicer):
    """``chainguard.platform.oidc.SecurityTokenService``: what existing clients call.

    Read as the original reads it (``transport/compat``): the scope is
    ``scopes[0]`` or ``scope``; ``aud`` is logged with the exchange
    (``requested_aud``), never verified; ``cap`` and ``identity_provider`` are
    ignored.
    """

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._handler = _Handler(exchanger, reporter, verbose=verbose)

    async def Exchange(  # noqa: N802 - gRPC method name
        self, request: oidc_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> oidc_pb2.RawToken:
        return await self.exchange(
            "chainguard.platform.oidc.SecurityTokenService/Exchange", request, context
        )

    async def exchange(
        self, rpc: str, request: oidc_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> oidc_pb2.RawToken:
        with structlog.contextvars.bound_contextvars(requested_aud=logged_audiences(request.aud)):
            result = await self._handler.run(
                rpc, context, request.scope, request.identity, None, request.scopes
            )
        return to_raw_token(result)


class FormExchangeServicer(form_pb2_grpc.FormExchangeServiceServicer):
    """``octosts.gateway.v1.FormExchangeService``: Envoy's target for form POSTs.

    The form's fields are those of the chainguard ExchangeRequest
    (``transport/compat``), and so is the answer: a RawToken, which the
    gateway renders as the JSON the SDK decodes. A body that is not such a
    form is INVALID_ARGUMENT before any exchange starts (like a JSON body the
    transcoder cannot parse).
    """

    def __init__(self, chainguard: ChainguardStsServicer, *, verbose: bool) -> None:
        self._chainguard = chainguard
        self._verbose = verbose

    async def Exchange(  # noqa: N802 - gRPC method name
        self, request: httpbody_pb2.HttpBody, context: grpc.aio.ServicerContext
    ) -> oidc_pb2.RawToken:
        try:
            fields = exchange_request_from_form(request.data, request.content_type)
        except InvalidRequest as exc:
            rid = request_id(tuple(context.invocation_metadata() or ()))
            await abort(context, failure(exc, rid, verbose=self._verbose))
            raise AssertionError("unreachable: abort raises") from exc  # pragma: no cover
        return await self._chainguard.exchange(
            "octosts.gateway.v1.FormExchangeService/Exchange", fields, context
        )


def add_to_server(
    server: grpc.aio.Server, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool
) -> None:
    sts_pb2_grpc.add_SecurityTokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
        StsServicer(exchanger, reporter, verbose=verbose), server
    )
    chainguard = ChainguardStsServicer(exchanger, reporter, verbose=verbose)
    oidc_pb2_grpc.add_SecurityTokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
        chainguard, server
    )
    form_pb2_grpc.add_FormExchangeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        FormExchangeServicer(chainguard, verbose=verbose), server
    )
