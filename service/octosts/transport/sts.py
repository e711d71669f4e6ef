"""gRPC servicers: ``octosts.v1``, the chainguard-compatible service, its form binding and
the OAuth 2.0 token endpoint.

Each method is request proto -> domain call -> response proto; conversions
are the named functions below, and every failure goes through the one error
table in ``transport/errors.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.gateway.v1 import form_pb2_grpc, oauth_pb2_grpc
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
from octosts.transport.errors import (
    RETRY_AFTER_HEADER,
    Failure,
    OAuthFailure,
    failure,
    oauth_failure,
)
from octosts.transport.metadata import Metadata, bearer_token, request_id, user_agent
from octosts.transport.oauth import ACCESS_TOKEN_TYPE, token_exchange_request
from octosts.transport.request_id import REQUEST_ID_HEADER

if TYPE_CHECKING:
    from octosts.domain.exchange import Exchanger

SERVICE_NAMES = (
    "octosts.v1.SecurityTokenService",
    "chainguard.platform.oidc.SecurityTokenService",
    "octosts.gateway.v1.FormExchangeService",
    "octosts.gateway.v1.OAuthTokenService",
)
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class _Failed:
    """An exchange that ended with ``error`` (already reported); the servicer answers it."""

    error: BaseException
    request_id: str
    verbose: bool  # detail may be shown: verbose errors on, and an StsError


class _Handler:
    """Shared body of every Exchange method: run the exchange, report it once."""

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._exchanger = exchanger
        self._reporter = reporter
        self._verbose = verbose

    async def attempt(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        shown: ExchangeRequest,
        read: Callable[[Metadata], ExchangeRequest],
    ) -> ExchangeResult | _Failed:
        """The result, or why the exchange failed.

        ``read`` builds the request from the call (bearer token, the API's own field
        rules) and may raise like the exchange; ``shown`` is the request as the audit
        event names it when ``read`` fails (no bearer).
        """
        started = time.perf_counter()
        metadata = tuple(context.invocation_metadata() or ())
        rid = request_id(metadata)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        attempt = ExchangeAttempt()
        request = shown
        error: BaseException | None = None
        # No GitHub call, and no retry of one, outlives the caller's deadline.
        deadline = set_deadline(context.time_remaining())
        try:
            request = read(metadata)
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
        return _Failed(error, rid, verbose=self._verbose and isinstance(error, StsError))

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        shown: ExchangeRequest,
        read: Callable[[Metadata], ExchangeRequest],
    ) -> ExchangeResult:
        """``attempt``, with a failure answered as a gRPC status (``abort``)."""
        outcome = await self.attempt(rpc, context, shown, read)
        if not isinstance(outcome, _Failed):
            return outcome
        await abort(context, failure(outcome.error, outcome.request_id, verbose=outcome.verbose))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def abort(context: grpc.aio.ServicerContext, failed: Failure) -> None:
    """End the RPC with the failure's code, message and rich details (ErrorInfo).

    Everything goes in the trailers, with no initial metadata before them
    (``Failure.trailers``, and ``transport/interceptors.py``).
    """
    await context.abort(failed.code, failed.message, trailing_metadata=failed.trailers())


async def answer_with_body(
    context: grpc.aio.ServicerContext, body: httpbody_pb2.HttpBody, failed: OAuthFailure
) -> None:
    """End the RPC with ``body`` *and then* the failure's status (proto/.../oauth.proto).

    Envoy's transcoder keeps a body it received and writes only the HTTP status
    it maps from the gRPC code; an answer without a body would get its own
    ``{"code", "message"}`` JSON instead. grpc.aio drops a returned message when
    the status is not OK, so the message is written first: a unary handler's
    ``write`` takes the serialized bytes. ``retry-after`` and the request id go in
    the headers (initial metadata): trailers after a body do not reach HTTP/1 callers.
    """
    headers: tuple[tuple[str, str], ...] = ((REQUEST_ID_HEADER, failed.request_id),)
    if failed.retry_after is not None:
        headers += ((RETRY_AFTER_HEADER, str(failed.retry_after)),)
    await context.send_initial_metadata(headers)
    await context.write(body.SerializeToString())
    await context.abort(failed.code, failed.description)


def expires_at_proto(result: ExchangeResult) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(result.token.expires_at)
    return stamp


def expires_in(result: ExchangeResult, now: float) -> int:
    """Whole seconds left before the minted token expires, at ``now`` (never negative)."""
    return max(0, int(result.token.expires_at.timestamp() - now))


def to_response(result: ExchangeResult, now: float) -> sts_pb2.ExchangeResponse:
    token = result.token
    return sts_pb2.ExchangeResponse(
        token=token.token,
        access_token=token.token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=expires_in(result, now),
        expires_at=expires_at_proto(result),
        permissions=dict(token.permissions),
        repositories=list(token.repositories),
    )


def to_raw_token(result: ExchangeResult) -> oidc_pb2.RawToken:
    return oidc_pb2.RawToken(token=result.token.token, expiry=expires_at_proto(result))


def to_token_response(result: ExchangeResult, now: float) -> httpbody_pb2.HttpBody:
    """RFC 8693 section 2.2.1's answer; ``scope`` is the policy the token was minted under."""
    body = {
        "access_token": result.token.token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": expires_in(result, now),
        "scope": result.identity,
    }
    return httpbody_pb2.HttpBody(content_type=JSON, data=json.dumps(body).encode())


class StsServicer(sts_pb2_grpc.SecurityTokenServiceServicer):
    """``octosts.v1.SecurityTokenService``."""

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._handler = _Handler(exchanger, reporter, verbose=verbose)

    async def Exchange(  # noqa: N802 - gRPC method name
        self, request: sts_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> sts_pb2.ExchangeResponse:
        audience = request.audience if request.HasField("audience") else None
        shown = ExchangeRequest(
            "", request.scope, request.identity, audience, scopes=tuple(request.scopes)
        )
        result = await self._handler.run(
            "octosts.v1.SecurityTokenService/Exchange",
            context,
            shown,
            lambda metadata: dataclasses.replace(shown, bearer=bearer_token(metadata)),
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
        def read(metadata: Metadata) -> ExchangeRequest:
            scope = scope_of(request.scope, request.scopes)
            return ExchangeRequest(bearer_token(metadata), scope, request.identity)

        named = request.scope or next(iter(request.scopes), "")
        with structlog.contextvars.bound_contextvars(requested_aud=logged_audiences(request.aud)):
            result = await self._handler.run(
                rpc, context, ExchangeRequest("", named, request.identity), read
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


OAUTH_TOKEN_METHOD = "/octosts.gateway.v1.OAuthTokenService/Token"  # noqa: S105 - a method


async def answer_oauth(
    context: grpc.aio.ServicerContext, error: BaseException, rid: str, *, verbose: bool = False
) -> None:
    """End a token endpoint call with ``error`` as RFC 6749's JSON and status (the servicer's
    failures, and the calls admission control sheds or cuts there)."""
    failed = oauth_failure(error, rid, verbose=verbose)
    body = httpbody_pb2.HttpBody(content_type=JSON, data=failed.body())
    await answer_with_body(context, body, failed)


class OAuthTokenServicer(oauth_pb2_grpc.OAuthTokenServiceServicer):
    """``octosts.gateway.v1.OAuthTokenService``: Envoy's target for ``POST /oauth2/token``.

    RFC 8693 token exchange (parameters: ``transport/oauth``): the same exchange as
    ``octosts.v1``, answered with RFC 8693's JSON, or RFC 6749's error JSON and HTTP
    status (``errors.oauth_failure``) written as described in ``answer_with_body``.
    """

    RPC = OAUTH_TOKEN_METHOD.lstrip("/")

    def __init__(self, exchanger: Exchanger, reporter: ExchangeReporter, *, verbose: bool) -> None:
        self._handler = _Handler(exchanger, reporter, verbose=verbose)

    async def Token(  # noqa: N802 - gRPC method name
        self, request: httpbody_pb2.HttpBody, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        outcome = await self._handler.attempt(
            self.RPC,
            context,
            ExchangeRequest("", "", ""),
            lambda _: token_exchange_request(request.data, request.content_type),
        )
        if not isinstance(outcome, _Failed):
            return to_token_response(outcome, time.time())
        await answer_oauth(context, outcome.error, outcome.request_id, verbose=outcome.verbose)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


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
    oauth_pb2_grpc.add_OAuthTokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
        OAuthTokenServicer(exchanger, reporter, verbose=verbose), server
    )
