"""Envoy's external authorization service (``envoy.service.auth.v3.Authorization/Check``).

Envoy calls Check before forwarding a request. Which check runs is chosen per
route by Envoy's ``context_extensions`` (``mode``), so new routes can reuse
this service without code changes:

``mode: verify``
    Exactly one ``authorization: Bearer <jwt>`` header (scheme case-insensitive),
    verified by the TokenVerifier (signature, expiry, issuer rules; not the trust
    policy, which needs the scope). Allowed requests get ``x-octo-sts-issuer`` /
    ``x-octo-sts-subject`` set and every other client-supplied ``x-octo-sts-*``
    header removed.

Outcomes, as the one answer table in ``transport/errors.py`` gives them (a
denial is a *successful* Check carrying a DeniedHttpResponse; faults are RPC
errors, trailers-only, which Envoy retries on another replica when they are
UNAVAILABLE and otherwise turns into 503 through ``status_on_error``):

=========================================  ======  =============================
token missing / malformed / not trusted    401     ``www-authenticate: Bearer``
issuer unreachable (IssuerUnavailable...)  RPC     UNAVAILABLE -> Envoy asks another
                                                   replica, else 503 + Retry-After
an ambiguous query (``transport/compat``)  400     refused, not guessed
unknown or missing ``mode``                403     an Envoy config error; fail closed
verifier bug (anything else)               RPC     INTERNAL -> Envoy answers 503
=========================================  ======  =============================

Denial bodies are JSON ``{"code": <gRPC code number>, "message": "<generic
text> (<reason>)", "request_id": "<x-request-id>"}``, the same shape as the
JSON gateway's error bodies plus the request id. They never contain the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from octosts.domain.errors import PermissionDenied, StsError, TokenClaimsInvalid
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import MAX_TOKEN_BYTES, VerifiedToken
from octosts.transport.compat import check_query
from octosts.transport.errors import UNKNOWN_AUTHZ_MODE, Denial, denial, failure
from octosts.transport.metadata import bearer_from_values
from octosts.transport.request_id import REQUEST_ID_HEADER, is_request_id

HEADER_PREFIX = "x-octo-sts-"
ISSUER_HEADER = "x-octo-sts-issuer"
SUBJECT_HEADER = "x-octo-sts-subject"
MODE_VERIFY = "verify"

# Header values Envoy accepts and a reader can trust: printable ASCII, no controls.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,2048}")

_log = structlog.get_logger("octosts.ext_authz")


@dataclass(frozen=True, slots=True)
class ExtAuthzOptions:
    max_token_bytes: int = MAX_TOKEN_BYTES


def _request_headers(http: Any) -> dict[str, list[str]]:
    """Lower-cased header name -> values, from ``headers`` (Envoy 1.40) or ``header_map``."""
    out: dict[str, list[str]] = {}
    if http.headers:
        for key, value in http.headers.items():
            # Envoy joins repeated headers with ","; the b64token check rejects that for tokens.
            out.setdefault(key.lower(), []).append(value)
        return out
    for header in http.header_map.headers:
        value = header.value or header.raw_value.decode("utf-8", errors="replace")
        out.setdefault(header.key.lower(), []).append(value)
    return out


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _denied(refused: Denial, request_id: str) -> Any:
    code = refused.code.value[0]
    body = json.dumps({"code": code, "message": refused.message, "request_id": request_id})
    headers = [_header("content-type", "application/json")]
    if refused.www_authenticate is not None:
        headers.append(_header("www-authenticate", refused.www_authenticate))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=refused.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=refused.http_status),
            headers=headers,
            body=body,
        ),
    )


def _allowed(verified: VerifiedToken, headers: Mapping[str, list[str]]) -> Any:
    injected = (ISSUER_HEADER, SUBJECT_HEADER)
    # The injected names are overwritten, not removed: Envoy removes after it sets.
    spoofed = sorted(k for k in headers if k.startswith(HEADER_PREFIX) and k not in injected)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                _header(ISSUER_HEADER, verified.issuer),
                _header(SUBJECT_HEADER, verified.subject),
            ],
            headers_to_remove=spoofed,
        ),
    )


def _ignore_decision(decision: str, reason: str) -> None:
    pass


# One mode's check: request headers -> CheckResponse (raises StsError to deny).
_Check = Callable[[dict[str, list[str]]], Awaitable[Any]]


class AuthorizationServicer:
    """``envoy.service.auth.v3.Authorization`` backed by a TokenVerifier.

    Check never raises for a request it can judge (see the module docstring);
    a verifier failing with anything but AuthenticationError or
    UpstreamUnavailable aborts the RPC with INTERNAL.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        options: ExtAuthzOptions | None = None,
        *,
        on_decision: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_decision(decision, reason)`` ("allow"/"deny", reason code) feeds metrics."""
        self._verifier = verifier
        self._options = options or ExtAuthzOptions()
        self._on_decision = on_decision or _ignore_decision
        self._modes: dict[str, _Check] = {MODE_VERIFY: self._verify}

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802  (gRPC method name)
        http = request.attributes.request.http
        headers = _request_headers(http)
        request_id = next(iter(headers.get(REQUEST_ID_HEADER, [])), "")
        if not is_request_id(request_id):
            request_id = ""
        mode = request.attributes.context_extensions.get("mode", "")
        log = _log.bind(request_id=request_id, authz_mode=mode)
        try:
            handler = self._handler(mode, log)
            check_query(http.path)
            response = await handler(headers)
        except StsError as exc:
            refused = denial(exc)
            if refused is None:
                # A fault, not a verdict: the RPC fails with the table's code; Envoy asks
                # another replica when it is UNAVAILABLE (one without the issuer's keys here
                # may well have them there).
                failed = failure(exc, request_id)
                level = log.warning if failed.code is grpc.StatusCode.UNAVAILABLE else log.error
                level("ext_authz.fault", error=type(exc).__name__, reason=exc.reason)
                await context.abort(failed.code, failed.message)
                raise  # abort raises; this keeps type checkers and readers sure
            # debug, not info: a denial is counted (octo_sts_ext_authz_decisions_total{reason})
            # and in Envoy's access log; a line per junk request is log volume attackers control.
            log.debug("ext_authz.denied", reason=exc.reason, status=refused.http_status)
            self._on_decision("deny", exc.reason)
            return _denied(refused, request_id)
        except Exception as exc:
            # Only the type: a buggy verifier's message could quote the token.
            # No traceback either (TRY400): its frames' locals and messages are not ours to log.
            log.error("ext_authz.fault", error=type(exc).__name__)  # noqa: TRY400
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise
        self._on_decision("allow", "ok")
        return response

    def _handler(self, mode: str, log: Any) -> _Check:
        """The check for ``mode``; raises PermissionDenied for none (an Envoy config error)."""
        handler = self._modes.get(mode)
        if handler is None:
            log.warning("ext_authz.unknown_mode")
            raise PermissionDenied("no check for this mode", reason=UNKNOWN_AUTHZ_MODE)
        return handler

    async def _verify(self, headers: dict[str, list[str]]) -> Any:
        token = bearer_from_values(
            headers.get("authorization", []), max_bytes=self._options.max_token_bytes
        )
        verified = await self._verifier.verify(token)
        for value in (verified.issuer, verified.subject):
            if not _HEADER_VALUE.fullmatch(value):
                raise TokenClaimsInvalid(
                    "iss/sub cannot be passed on as a header", reason="token_claims_invalid"
                )
        return _allowed(verified, headers)


def add_to_server(server: Any, servicer: AuthorizationServicer) -> None:
    """Register the servicer on a ``grpc.aio.Server`` (or ``grpc.Server``)."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
