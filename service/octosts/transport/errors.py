"""The one table of answers: domain error -> gRPC code, HTTP status, the edge's denial.

Most specific first; a row with a ``reason`` matches only errors carrying it.
Every way Octo STS answers a failure reads its row here:

- gRPC (``failure``): the code and a generic caller-facing message (a fixed
  sentence, the reason code and the request id).
- The JSON gateway: Envoy's transcoder turns the gRPC code into ``http_status``
  (the tests hold the column to the transcoder's mapping and to the README).
- ``Retry-After``: a row with ``retry_after`` tells callers when to come back, in
  seconds: the error's own ``retry_after`` (a GitHub rate limit's remaining wait),
  else ``DEFAULT_RETRY_AFTER``. gRPC callers read it in the ``retry-after`` trailing
  metadata; Envoy passes it on to HTTP callers as the ``Retry-After`` header (the
  answer is trailers-only, so the transcoder sees it as a header).
- The OAuth 2.0 token endpoint (``oauth_failure``, ``POST /oauth2/token``,
  docs/oauth.md): the row's ``oauth`` error code (RFC 6749 section 5.2, RFC 8693
  section 2.2.2) in a ``{"error", "error_description"}`` body, with HTTP 400 for
  every caller's fault, as RFC 6749 asks, and the row's own status (429, 503, 500)
  otherwise. The three ``reason`` rows naming an OAuth error are raised only by the
  token endpoint's parameter rules (``transport/oauth.py``).
- The edge (ext_authz, ``denial``): a row with an ``edge`` text is a denial
  with ``http_status``, that text and ``www_authenticate``; a row without one
  is a fault there: the Check RPC fails with the row's code. Envoy retries an
  UNAVAILABLE Check on another replica (which may have the issuer's keys) and,
  once every attempt failed, answers 503 itself (``status_on_error``) with the
  ``EDGE_UNAVAILABLE`` body, which ``octosts.dev.envoy`` renders from here.

For the PERMISSION_DENIED family the reason is collapsed to the family
(``permission_denied``) so a caller holding a valid token from an issuer they
own cannot probe which policies exist (a ``policy_not_found`` vs
``subject_mismatch`` answer would tell them); ``OCTOSTS_VERBOSE_ERRORS``
(private deployments) shows the real reason and the owner-facing detail. Full
detail always goes to the log and audit event.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from octosts.domain.errors import (
    GITHUB_BUSY,
    INVALID_SCOPES,
    TOKEN_MISSING,
    AuthenticationError,
    GitHubUnavailable,
    InvalidRequest,
    IssuerRejected,
    Overloaded,
    PermissionDenied,
    RateLimited,
    ShuttingDown,
    StsError,
    UpstreamUnavailable,
)
from octosts.transport.request_id import REQUEST_ID_HEADER

# ext_authz was asked for a check it does not have: an Envoy configuration error, fail closed.
UNKNOWN_AUTHZ_MODE = "unknown_authz_mode"

# Reasons of InvalidRequests that the token endpoint's parameter rules raise, named as the
# OAuth error codes they are answered with (transport/oauth.py).
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_SCOPE = "invalid_scope"
INVALID_TARGET = "invalid_target"

# RFC 6750 section 3: no error code when the request carried no token.
_BEARER = "Bearer"
_INVALID_TOKEN = 'Bearer error="invalid_token"'  # noqa: S105 - a challenge, not a secret


@dataclass(frozen=True, slots=True)
class Row:
    error: type[StsError]
    code: grpc.StatusCode
    http_status: int
    message: str  # what gRPC callers read
    reason: str | None = None  # only errors with this reason
    show_detail: bool = False  # True only where detail never holds policy contents
    show_reason: bool = True  # False: callers read the family, not the reason
    edge: str | None = None  # the edge's denial text; None: a fault at the edge
    edge_detail: bool = False  # the edge shows the detail, when there is one, instead of ``edge``
    www_authenticate: str | None = None
    retry_after: bool = False  # answers carry Retry-After (the error's, else the default)
    oauth: str = "invalid_request"  # the token endpoint's error code (oauth_failure)


# Seconds, for a row with ``retry_after`` whose error does not say how long.
DEFAULT_RETRY_AFTER = 1
RETRY_AFTER_HEADER = "retry-after"

_C = grpc.StatusCode
TABLE: tuple[Row, ...] = (
    *(
        Row(
            InvalidRequest,
            _C.INVALID_ARGUMENT,
            400,
            "invalid request",
            reason=reason,
            show_detail=True,
            edge="invalid request",
            edge_detail=True,
            oauth=oauth,
        )
        for reason, oauth in (
            (UNSUPPORTED_GRANT_TYPE, UNSUPPORTED_GRANT_TYPE),
            (INVALID_SCOPE, INVALID_SCOPE),
            (INVALID_TARGET, INVALID_TARGET),
            # Several repositories that one token cannot cover (domain.exchange).
            (INVALID_SCOPES, INVALID_TARGET),
        )
    ),
    Row(
        InvalidRequest,
        _C.INVALID_ARGUMENT,
        400,
        "invalid request",
        show_detail=True,
        edge="invalid request",
        edge_detail=True,
    ),
    Row(
        AuthenticationError,
        _C.UNAUTHENTICATED,
        401,
        "token not verified",
        reason=TOKEN_MISSING,
        show_detail=True,
        edge="missing bearer token",
        www_authenticate=_BEARER,
    ),
    # No detail: "resolves to a non-public address" would let anyone map internal DNS names.
    Row(
        IssuerRejected,
        _C.UNAUTHENTICATED,
        401,
        "token issuer not accepted",
        edge="invalid bearer token",
        www_authenticate=_INVALID_TOKEN,
        oauth="invalid_grant",
    ),
    Row(
        AuthenticationError,
        _C.UNAUTHENTICATED,
        401,
        "token not verified",
        show_detail=True,
        edge="invalid bearer token",
        www_authenticate=_INVALID_TOKEN,
        oauth="invalid_grant",
    ),
    # An Envoy configuration error, not an answer about any policy: the reason is shown.
    Row(
        PermissionDenied,
        _C.PERMISSION_DENIED,
        403,
        "permission denied",
        reason=UNKNOWN_AUTHZ_MODE,
        edge="forbidden",
        oauth=INVALID_TARGET,
    ),
    # The egress gateway's policy check (ext_authz mode ``egress``) answers these at the edge;
    # the token endpoint answers them all RFC 8693's "unwilling to issue a token for the
    # target" (no installation, no or an invalid policy, a policy the caller does not satisfy).
    Row(
        PermissionDenied,
        _C.PERMISSION_DENIED,
        403,
        "permission denied",
        show_reason=False,
        edge="forbidden",
        oauth=INVALID_TARGET,
    ),
    # RFC 6749 registers temporarily_unavailable for the authorization endpoint only; the
    # token endpoint has no code for "retry later", so it borrows it (with the status).
    Row(
        RateLimited,
        _C.RESOURCE_EXHAUSTED,
        429,
        "GitHub rate limit reached, retry later",
        edge="GitHub rate limit reached, retry later",
        retry_after=True,
        oauth="temporarily_unavailable",
    ),
    # Every connection to GitHub busy (GitHub slow): shed at once, come back in a second.
    # Not UNAVAILABLE: Envoy would retry it at once, on a replica as busy (or the same one),
    # turning a fast answer into a slow one; GitHub's slowness is the same everywhere.
    Row(
        GitHubUnavailable,
        _C.RESOURCE_EXHAUSTED,
        429,
        "server busy, retry later",
        reason=GITHUB_BUSY,
        show_detail=True,
        retry_after=True,
        oauth="temporarily_unavailable",
    ),
    # A fault at the edge, not a denial: the token may well be valid and another replica
    # may have the issuer's keys cached, so Envoy retries the Check there (see the module doc).
    Row(
        UpstreamUnavailable,
        _C.UNAVAILABLE,
        503,
        "upstream unavailable, retry later",
        oauth="temporarily_unavailable",
    ),
    # Admission control shed the call at once (Envoy tries another replica first).
    Row(
        Overloaded,
        _C.RESOURCE_EXHAUSTED,
        429,
        "server busy, retry later",
        retry_after=True,
        oauth="temporarily_unavailable",
    ),
    # Still running when the drain's grace period ended: Envoy retries it on another replica.
    Row(
        ShuttingDown,
        _C.UNAVAILABLE,
        503,
        "server shutting down, retry later",
        retry_after=True,
        oauth="temporarily_unavailable",
    ),
    Row(StsError, _C.INTERNAL, 500, "internal error", oauth="server_error"),
)


ERROR_DOMAIN = "octo-sts.dev"


@dataclass(frozen=True, slots=True)
class EdgeAnswer:
    """An answer Envoy gives itself (``local_reply_config``): no replica could answer, or the
    request is refused before any replica sees it."""

    http_status: int
    code: grpc.StatusCode
    reason: str
    text: str
    retry_after_seconds: int | None = None

    @property
    def message(self) -> str:
        return f"{self.text} ({self.reason})"


# Check failed on every replica Envoy tried (issuer unreachable from all of them, the
# service overloaded or down): 503 with Retry-After, the token may well be valid.
EDGE_UNAVAILABLE = EdgeAnswer(
    503,
    _C.UNAVAILABLE,
    "authz_unavailable",
    "cannot verify the token right now, retry later",
    DEFAULT_RETRY_AFTER,
)
# More or larger request headers than the edge takes (octosts.dev.envoy's caps, or Envoy's
# own codec limits): refused before any filter adds headers of its own.
EDGE_HEADERS_TOO_LARGE = EdgeAnswer(
    431, _C.INVALID_ARGUMENT, "request_headers_too_large", "too many or too large request headers"
)
# A body over the route's limit (/sts/exchange's, the webhook's), enforced by Envoy before any
# replica reads it.
EDGE_BODY_TOO_LARGE = EdgeAnswer(
    413, _C.INVALID_ARGUMENT, "body_too_large", "request body too large"
)
# One workload (or issuer) past its per-tenant limit at the edge (octosts.dev.tenant_limits);
# Retry-After is the rate limiter's own figure for when the window or bucket refills.
EDGE_RATE_LIMITED = EdgeAnswer(
    429, _C.RESOURCE_EXHAUSTED, "tenant_rate_limited", "too many requests from this workload"
)


# A path that is no API method (the catch-all route; the transcoder's unknown methods).
EDGE_NOT_FOUND = EdgeAnswer(404, _C.NOT_FOUND, "not_found", "no such API method")
# A request the transcoder cannot turn into a call (malformed JSON, a wrong field type): the
# text is Envoy's own description, filled in by Envoy (a local_reply_config operator).
EDGE_MALFORMED = EdgeAnswer(400, _C.INVALID_ARGUMENT, "invalid_request", "%LOCAL_REPLY_BODY%")


# Answers Envoy gives itself on the OAuth token endpoint (a method other than POST, a body over
# the route's limit, no replica reachable): (lowest HTTP status, RFC 6749 error code), first
# match wins; octosts.dev.envoy renders them, with Envoy's text as the error_description.
EDGE_OAUTH_ERRORS: tuple[tuple[int, str], ...] = (
    (500, "temporarily_unavailable"),
    (400, "invalid_request"),
)


@dataclass(frozen=True, slots=True)
class Failure:
    code: grpc.StatusCode
    reason: str  # the real reason, for logs, metrics and audit
    message: str  # what the caller sees
    shown_reason: str  # the reason the caller sees (collapsed for PERMISSION_DENIED)
    request_id: str
    retry_after: int | None = None  # whole seconds, at least 1; None: no Retry-After

    def status_details(self) -> bytes:
        """``grpc-status-details-bin``: a google.rpc.Status with an ErrorInfo for clients."""
        info = error_details_pb2.ErrorInfo(
            reason=self.shown_reason, domain=ERROR_DOMAIN, metadata={"request_id": self.request_id}
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        serialized: bytes = status.SerializeToString()
        return serialized

    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailing metadata of this answer: rich details, request id, Retry-After.

        Sent with no initial metadata before it (a "trailers-only" answer), which
        Envoy's retry policies can read and whose ``retry-after`` it passes on to
        HTTP callers as a header.
        """
        trailers: tuple[tuple[str, str | bytes], ...] = (
            ("grpc-status-details-bin", self.status_details()),
            (REQUEST_ID_HEADER, self.request_id),
        )
        if self.retry_after is not None:
            trailers += ((RETRY_AFTER_HEADER, str(self.retry_after)),)
        return trailers


@dataclass(frozen=True, slots=True)
class Denial:
    """The edge's answer to a request it refuses (an ext_authz DeniedHttpResponse)."""

    http_status: int
    code: grpc.StatusCode
    reason: str
    message: str  # "<text> (<shown reason>)"
    www_authenticate: str | None
    retry_after: int | None = None  # seconds: a Retry-After header on the denial


def row_for(exc: BaseException) -> Row:
    for row in TABLE:
        if isinstance(exc, row.error) and (row.reason is None or row.reason == exc.reason):
            return row
    return TABLE[-1]


def status_code(exc: BaseException) -> grpc.StatusCode:
    return row_for(exc).code


def failure(exc: BaseException, request_id: str, *, verbose: bool = False) -> Failure:
    """Status code and caller-facing message for ``exc``."""
    row = row_for(exc)
    if isinstance(exc, StsError):
        reason, family, detail = exc.reason, exc.family, exc.detail
    else:
        reason = family = StsError.reason
        detail = ""
    shown_reason = reason if (row.show_reason or verbose) else family
    message = f"{row.message} (reason: {shown_reason}, request_id: {request_id})"
    if detail and (row.show_detail or verbose):
        message = f"{message}: {detail}"
    return Failure(row.code, reason, message, shown_reason, request_id, _retry_after(row, exc))


def _retry_after(row: Row, exc: BaseException) -> int | None:
    """Whole seconds (at least 1) for a row with ``retry_after``; None for the others."""
    if not row.retry_after:
        return None
    seconds = exc.retry_after if isinstance(exc, StsError) else None
    return DEFAULT_RETRY_AFTER if seconds is None else max(math.ceil(seconds), 1)


def denial(exc: StsError, *, verbose: bool = False) -> Denial | None:
    """The edge's denial for ``exc``, or None when the edge must fail (a fault, not a denial).

    Like ``failure``, the PERMISSION_DENIED family shows the family, not the reason, unless
    ``verbose``; ``Denial.reason`` is always the real one (metrics, logs).
    """
    row = row_for(exc)
    if row.edge is None:
        return None
    text = exc.detail if (row.edge_detail and exc.detail) else row.edge
    shown = exc.reason if (row.show_reason or verbose) else exc.family
    message = f"{text} ({shown})"
    if verbose and exc.detail and not row.edge_detail:
        message = f"{message}: {exc.detail}"
    return Denial(
        row.http_status,
        row.code,
        exc.reason,
        message,
        row.www_authenticate,
        _retry_after(row, exc),
    )


# Envoy's circuit breakers for the replicas are full: Envoy sheds the call itself, with the
# text of the replicas' own answer (the Overloaded row) and 503, what overload means in HTTP.
EDGE_OVERLOADED = EdgeAnswer(
    503,
    _C.UNAVAILABLE,
    Overloaded.reason,
    row_for(Overloaded()).message,
    DEFAULT_RETRY_AFTER,
)


# Every {code, message} answer Envoy gives itself (the README's "Answers from the edge" table;
# a unit test holds the rendered Envoy config to it).
EDGE_ANSWERS: tuple[EdgeAnswer, ...] = (
    EDGE_UNAVAILABLE,
    EDGE_OVERLOADED,
    EDGE_HEADERS_TOO_LARGE,
    EDGE_BODY_TOO_LARGE,
    EDGE_RATE_LIMITED,
    EDGE_NOT_FOUND,
    EDGE_MALFORMED,
)


@dataclass(frozen=True, slots=True)
class OAuthFailure:
    """The token endpoint's error answer: RFC 6749 section 5.2's JSON with its HTTP status."""

    http_status: int
    code: grpc.StatusCode  # the gRPC code Envoy's transcoder turns into ``http_status``
    error: str  # RFC 6749 / RFC 8693 error code
    description: str  # the gRPC message, in the characters error_description allows
    request_id: str
    retry_after: int | None = None

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "error_description": self.description}).encode()


# RFC 6749 section 5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"' or '\').
_DESCRIPTION_MAP = dict.fromkeys(range(0x20), " ") | {0x22: "'", 0x5C: "/", 0x7F: " "}


def oauth_failure(exc: BaseException, request_id: str, *, verbose: bool = False) -> OAuthFailure:
    """The token endpoint's answer for ``exc`` (see the module doc)."""
    row = row_for(exc)
    failed = failure(exc, request_id, verbose=verbose)
    status, code = row.http_status, row.code
    if status < 500 and status != 429:  # the caller's fault: always 400 (RFC 6749 5.2)
        status, code = 400, _C.INVALID_ARGUMENT
    text = failed.message.translate(_DESCRIPTION_MAP).encode("ascii", "replace").decode()
    return OAuthFailure(status, code, row.oauth, text, request_id, failed.retry_after)
