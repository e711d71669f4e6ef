"""Envoy's external authorization service (``envoy.service.auth.v3.Authorization/Check``).

Envoy calls Check before forwarding a request. Which check runs is chosen per
route by Envoy's ``context_extensions`` (``mode``), so new routes can reuse
this service without code changes:

``mode: verify``
    Exactly one ``authorization: Bearer <jwt>`` header (scheme case-insensitive),
    verified by the TokenVerifier (signature, expiry, issuer rules; not the trust
    policy's decision, which is Exchange's). When a GET's query names the scope and
    identity (``GET /sts/exchange``: the request Exchange will read), a token whose
    issuer's keys this replica does not hold is checked as Exchange will check it, with
    the keys the policy pins (``Exchanger.verify_at_edge``; docs/architecture.md, "Order
    of checks"). A query on any other method is not read for this.
    Allowed requests get ``x-octo-sts-issuer`` / ``x-octo-sts-subject`` set and every
    other client-supplied ``x-octo-sts-*`` header removed, and carry the tenant's digests
    in Envoy's dynamic metadata (``tenant_metadata``: the per-tenant rate limits'
    descriptors, octosts.dev.tenant_limits).

``mode: egress`` (the GitHub egress gateway, docs/egress.md)
    The workload's OIDC token (``authorization: Bearer <jwt>``, or ``token <jwt>`` as the gh
    CLI and Octokit send it) with the scope and identity from ``x-octo-sts-scope`` /
    ``x-octo-sts-identity``, or fixed by the route (``context_extensions`` ``scope`` /
    ``identity``; a request header naming another value is then refused). Decided as an
    Exchange is (``domain.egress``); allowed requests go upstream with ``authorization``
    replaced by a GitHub token (reused while it is good) and every client-supplied
    ``x-octo-sts-*`` header removed. Denials: 400 (no scope/identity), 401, 403 (the
    PERMISSION_DENIED family, reason collapsed), 429 + Retry-After (GitHub rate limit).

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

import functools
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from octosts.domain.egress import Egress, EgressReporter
from octosts.domain.errors import InvalidRequest, PermissionDenied, StsError, TokenClaimsInvalid
from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import MAX_TOKEN_BYTES, VerifiedToken
from octosts.transport.compat import check_query
from octosts.transport.errors import (
    RETRY_AFTER_HEADER,
    UNKNOWN_AUTHZ_MODE,
    Denial,
    denial,
    failure,
)
from octosts.transport.metadata import bearer_from_values
from octosts.transport.request_id import REQUEST_ID_HEADER, is_request_id

HEADER_PREFIX = "x-octo-sts-"
TENANT_DIGEST_CHARS = 32  # of a SHA-256 hex digest: 128 bits
ISSUER_HEADER = "x-octo-sts-issuer"
SUBJECT_HEADER = "x-octo-sts-subject"
SCOPE_HEADER = "x-octo-sts-scope"
IDENTITY_HEADER = "x-octo-sts-identity"
MODE_VERIFY = "verify"
MODE_EGRESS = "egress"
# What ``mode: egress`` calls its Check in logs, metrics and audit events.
EGRESS_RPC = "egress"
# GitHub's own scheme is accepted besides Bearer: the gh CLI and Octokit send ``token <value>``.
EGRESS_SCHEMES = ("bearer", "token")
# The upstream scheme: GitHub takes installation tokens as Bearer.
_UPSTREAM_SCHEME = "Bearer"
MISSING_EGRESS_HEADER = "missing_egress_header"
FIXED_BY_ROUTE = "fixed_by_route"

# Header values Envoy accepts and a reader can trust: printable ASCII, no controls.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,2048}")

_log = structlog.get_logger("octosts.ext_authz")


@dataclass(frozen=True, slots=True)
class ExtAuthzOptions:
    max_token_bytes: int = MAX_TOKEN_BYTES
    verbose: bool = False  # denials show the real reason and detail (OCTOSTS_VERBOSE_ERRORS)


@dataclass(frozen=True, slots=True)
class EgressCheck:
    """What ``mode: egress`` runs: the use case, and where each finished check is reported."""

    egress: Egress
    reporter: EgressReporter


@dataclass(frozen=True, slots=True)
class _Checked:
    """One Check request as a mode reads it."""

    headers: dict[str, list[str]]
    path: str
    extensions: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    method: str = ""  # the HTTP method (GET, POST...)


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
    if refused.retry_after is not None:
        headers.append(_header(RETRY_AFTER_HEADER, str(refused.retry_after)))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=refused.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=refused.http_status),
            headers=headers,
            body=body,
        ),
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:TENANT_DIGEST_CHARS]


def tenant_metadata(verified: VerifiedToken) -> dict[str, str]:
    """The tenant of a verified token, as the per-tenant rate limits' descriptors see it.

    ``subject``: one workload identity (issuer and subject); ``issuer``: every workload the
    issuer vouches for. Digests: the values end up in the rate-limit service's Redis keys,
    which a caller owning an issuer must not be able to shape (octosts.dev.tenant_limits).
    A token only a policy's pinned keys verified is filed under those keys, never under
    the issuer and subject it claims: whoever pins a key may sign any ``iss`` and ``sub``,
    and must not spend the real issuer's or another workload's budget.
    """
    if verified.pinned_keys:
        keys = ",".join(verified.pinned_keys)
        return {
            "subject": _digest("pinned", keys, verified.subject),
            "issuer": _digest("pinned", keys),
        }
    return {
        "subject": _digest(verified.issuer, verified.subject),
        "issuer": _digest(verified.issuer),
    }


def _allowed(verified: VerifiedToken, headers: Mapping[str, list[str]]) -> Any:
    injected = (ISSUER_HEADER, SUBJECT_HEADER)
    # The injected names are overwritten, not removed: Envoy removes after it sets.
    spoofed = sorted(k for k in headers if k.startswith(HEADER_PREFIX) and k not in injected)
    tenant = struct_pb2.Struct()
    tenant.update(tenant_metadata(verified))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        dynamic_metadata=tenant,
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                _header(ISSUER_HEADER, verified.issuer),
                _header(SUBJECT_HEADER, verified.subject),
            ],
            headers_to_remove=spoofed,
        ),
    )


def _egress_allowed(github_token: str, headers: Mapping[str, list[str]]) -> Any:
    """Forward with the GitHub token in place of the workload's OIDC token, upstream only."""
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[_header("authorization", f"{_UPSTREAM_SCHEME} {github_token}")],
            headers_to_remove=sorted(k for k in headers if k.startswith(HEADER_PREFIX)),
        ),
    )


def _egress_name(checked: _Checked, name: str, header: str) -> str:
    """The route's fixed ``name`` (context_extensions), else the request's ``header``.

    Raises InvalidRequest: no value, several, or one the route's fixed value contradicts.
    """
    values = checked.headers.get(header, [])
    fixed = checked.extensions.get(name)
    if fixed:
        if values and values != [fixed]:
            raise InvalidRequest(
                f"this route fixes the {name}: drop the {header} header", reason=FIXED_BY_ROUTE
            )
        return fixed
    if len(values) != 1 or not values[0]:
        raise InvalidRequest(
            f"exactly one {header} header is required", reason=MISSING_EGRESS_HEADER
        )
    return values[0]


def _named(checked: _Checked, name: str, header: str) -> str:
    """The route's fixed ``name``, else the request's first ``header`` (for reports only)."""
    return checked.extensions.get(name) or next(iter(checked.headers.get(header, [])), "")


def _ignore_decision(decision: str, reason: str) -> None:
    pass


# One mode's check: the request -> CheckResponse (raises StsError to deny).
_Check = Callable[[_Checked], Awaitable[Any]]


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
        egress: EgressCheck | None = None,
        verify_for: Callable[[str, str, str, tuple[str, ...]], Awaitable[VerifiedToken]]
        | None = None,
    ) -> None:
        """``on_decision(decision, reason)`` ("allow"/"deny", reason code) feeds metrics;
        without ``egress`` there is no ``egress`` mode (a route asking for it gets 403).
        ``verify_for(token, scope, identity, scopes)`` (``Exchanger.verify_at_edge``) checks
        the tokens of requests whose query names an identity, so that a policy's pinned keys
        verify them; the others, and all without it, go to ``verifier``."""
        self._verify_for = verify_for
        self._verifier = verifier
        self._options = options or ExtAuthzOptions()
        self._on_decision = on_decision or _ignore_decision
        self._modes: dict[str, _Check] = {MODE_VERIFY: self._verify}
        if egress is not None:
            self._modes[MODE_EGRESS] = functools.partial(self._egress, egress)

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802  (gRPC method name)
        http = request.attributes.request.http
        headers = _request_headers(http)
        request_id = next(iter(headers.get(REQUEST_ID_HEADER, [])), "")
        if not is_request_id(request_id):
            request_id = ""
        extensions = request.attributes.context_extensions
        mode = extensions.get("mode", "")
        # Not bound up front: a bound logger per Check costs even when nothing is logged.
        ids = {"request_id": request_id, "authz_mode": mode}
        try:
            handler = self._handler(mode, ids)
            checked = _Checked(headers, http.path, extensions, request_id, http.method)
            response = await handler(checked)
        except StsError as exc:
            refused = denial(exc, verbose=self._options.verbose)
            if refused is None:
                # A fault, not a verdict: the RPC fails with the table's code; Envoy asks
                # another replica when it is UNAVAILABLE (one without the issuer's keys here
                # may well have them there).
                failed = failure(exc, request_id)
                level = _log.warning if failed.code is grpc.StatusCode.UNAVAILABLE else _log.error
                level("ext_authz.fault", **ids, error=type(exc).__name__, reason=exc.reason)
                await context.abort(failed.code, failed.message)
                raise  # abort raises; this keeps type checkers and readers sure
            # debug, not info: a denial is counted (octo_sts_ext_authz_decisions_total{reason})
            # and in Envoy's access log; a line per junk request is log volume attackers control.
            _log.debug("ext_authz.denied", **ids, reason=exc.reason, status=refused.http_status)
            self._on_decision("deny", exc.reason)
            return _denied(refused, request_id)
        except Exception as exc:
            # Only the type: a buggy verifier's message could quote the token.
            # No traceback either (TRY400): its frames' locals and messages are not ours to log.
            _log.error("ext_authz.fault", **ids, error=type(exc).__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise
        self._on_decision("allow", "ok")
        return response

    def _handler(self, mode: str, ids: Mapping[str, str]) -> _Check:
        """The check for ``mode``; raises PermissionDenied for none (an Envoy config error)."""
        handler = self._modes.get(mode)
        if handler is None:
            _log.warning("ext_authz.unknown_mode", **ids)
            raise PermissionDenied("no check for this mode", reason=UNKNOWN_AUTHZ_MODE)
        return handler

    async def _verify(self, checked: _Checked) -> Any:
        query = check_query(checked.path)
        token = bearer_from_values(
            checked.headers.get("authorization", []), max_bytes=self._options.max_token_bytes
        )
        # Only a GET's query is the request Exchange reads: a POST's query (its scope is in
        # the body) must not make the edge read policies it names.
        named = query if checked.method == "GET" else None
        if named is not None and named.identity and self._verify_for is not None:
            scopes = tuple(named.scopes)
            verified = await self._verify_for(token, named.scope, named.identity, scopes)
        else:
            verified = await self._verifier.verify(token)
        for value in (verified.issuer, verified.subject):
            if not _HEADER_VALUE.fullmatch(value):
                raise TokenClaimsInvalid(
                    "iss/sub cannot be passed on as a header", reason="token_claims_invalid"
                )
        return _allowed(verified, checked.headers)

    async def _egress(self, check: EgressCheck, checked: _Checked) -> Any:
        """``mode: egress``; reports every outcome to ``check.reporter``, once."""
        started = time.perf_counter()
        headers = checked.headers
        attempt = ExchangeAttempt()
        # What the report names when the request is refused before it is read in full.
        request = ExchangeRequest(
            "", _named(checked, "scope", SCOPE_HEADER), _named(checked, "identity", IDENTITY_HEADER)
        )
        reused = False
        error: BaseException | None = None
        try:
            bearer = bearer_from_values(
                headers.get("authorization", []),
                max_bytes=self._options.max_token_bytes,
                schemes=EGRESS_SCHEMES,
            )
            request = ExchangeRequest(
                bearer,
                _egress_name(checked, "scope", SCOPE_HEADER),
                _egress_name(checked, "identity", IDENTITY_HEADER),
            )
            grant = await check.egress.authorize(request, attempt)
            reused = grant.reused
            return _egress_allowed(grant.result.token.token, headers)
        except BaseException as exc:
            error = exc
            raise
        finally:
            agent = next(iter(headers.get("user-agent", [])), "")[:200]
            call = CallInfo(EGRESS_RPC, checked.request_id, agent, time.perf_counter() - started)
            check.reporter.egress_done(call, request, attempt, reused, error)


def add_to_server(server: Any, servicer: AuthorizationServicer) -> None:
    """Register the servicer on a ``grpc.aio.Server`` (or ``grpc.Server``)."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
