"""gRPC servicers: ``octosts.v1`` and the chainguard-compatible service.

Each method is request proto -> domain call -> response proto; conversions
are the named functions below, and every failure goes through the one error
table in ``transport/errors.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.domain.errors import InvalidRequest, StsError
from octosts.domain.exchange import (
    CallInfo,
    ExchangeAttempt,
    ExchangeReporter,
    ExchangeRequest,
    ExchangeResult,
)
from octosts.transport.errors import Failure, failure
from octosts.transport.metadata import bearer_token, request_id, user_agent
from octosts.transport.request_id import REQUEST_ID_HEADER

if TYPE_CHECKING:
    from octosts.domain.exchange import Exchanger

SERVICE_NAMES = (
    "octosts.v1.SecurityTokenService",
    "chainguard.platform.oidc.SecurityTokenService",
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
    ) -> ExchangeResult:
        started = time.perf_counter()
        metadata = tuple(context.invocation_metadata() or ())
        rid = request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        attempt = ExchangeAttempt()
        request = ExchangeRequest(bearer="", scope=scope, identity=identity, audience=audience)
        error: BaseException | None = None
        try:
            request = ExchangeRequest(bearer_token(metadata), scope, identity, audience)
            return await self._exchanger.exchange(request, attempt)
        except asyncio.CancelledError as exc:  # client gone, deadline: recorded, then let through
            error = exc
            raise
        except Exception as exc:  # noqa: BLE001 - every fault becomes a status, never a traceback to callers
            error = exc
        finally:
            call = CallInfo(rpc, rid, user_agent(metadata), time.perf_counter() - started)
            self._reporter.exchange_done(call, request, attempt, error)
        # Foreign exceptions are INTERNAL without detail, whatever the verbosity.
        verbose = self._verbose and isinstance(error, StsError)
        await abort(context, failure(error, rid, verbose=verbose))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def abort(context: grpc.aio.ServicerContext, failed: Failure) -> None:
    """End the RPC with the failure's code, message and rich details (ErrorInfo).

    Everything goes in the trailers, with no initial metadata before them: a
    "trailers-only" answer, which Envoy's retry policies can read (see
    ``transport/interceptors.py``).
    """
    trailers = (
        ("grpc-status-details-bin", failed.status_details()),
        (REQUEST_ID_HEADER, failed.request_id),
    )
    await context.abort(failed.code, failed.message, trailing_metadata=trailers)


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


def chainguard_audience(request: oidc_pb2.ExchangeRequest) -> str | None:
    """The chainguard API carries a list of audiences; we honour at most one."""
    if len(request.aud) > 1:
        raise InvalidRequest("at most one aud value is supported")
    return request.aud[0] if request.aud else None


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
    """``chainguard.platform.oidc.SecurityTokenService``: what existing clients call."""

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._handler = _Handler(exchanger, reporter, verbose=verbose)
        self._verbose = verbose

    async def Exchange(  # noqa: N802 - gRPC method name
        self, request: oidc_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> oidc_pb2.RawToken:
        try:
            audience = chainguard_audience(request)
        except InvalidRequest as exc:
            rid = request_id(tuple(context.invocation_metadata() or ()))
            await abort(context, failure(exc, rid, verbose=self._verbose))
        result = await self._handler.run(
            "chainguard.platform.oidc.SecurityTokenService/Exchange",
            context,
            request.scope,
            request.identity,
            audience,
        )
        return oidc_pb2.RawToken(token=result.token.token)


def add_to_server(
    server: grpc.aio.Server, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool
) -> None:
    sts_pb2_grpc.add_SecurityTokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
        StsServicer(exchanger, reporter, verbose=verbose), server
    )
    oidc_pb2_grpc.add_SecurityTokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
        ChainguardStsServicer(exchanger, reporter, verbose=verbose), server
    )
