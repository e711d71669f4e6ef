"""The one table mapping domain errors to gRPC status codes.

Most specific first. Caller-facing messages are generic: a fixed sentence,
the reason code and the request id. For the PERMISSION_DENIED family the
reason is collapsed to ``permission_denied`` so a caller holding a valid
token from an issuer they own cannot probe which policies exist (a
``policy_not_found`` vs ``subject_mismatch`` answer would tell them);
``OCTOSTS_VERBOSE_ERRORS`` (private deployments) shows the real reason and
the owner-facing detail. Full detail always goes to the log and audit event.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from octosts.domain.errors import (
    AuthenticationError,
    InvalidRequest,
    IssuerRejected,
    PermissionDenied,
    RateLimited,
    StsError,
    UpstreamUnavailable,
)


@dataclass(frozen=True, slots=True)
class _Row:
    error: type[StsError]
    code: grpc.StatusCode
    message: str
    show_detail: bool = False  # True only where detail never holds policy contents
    show_reason: bool = True


_C = grpc.StatusCode
_TABLE: tuple[_Row, ...] = (
    _Row(InvalidRequest, _C.INVALID_ARGUMENT, "invalid request", show_detail=True),
    # No detail: "resolves to a non-public address" would let anyone map internal DNS names.
    _Row(IssuerRejected, _C.UNAUTHENTICATED, "token issuer not accepted"),
    _Row(AuthenticationError, _C.UNAUTHENTICATED, "token not verified", show_detail=True),
    _Row(PermissionDenied, _C.PERMISSION_DENIED, "permission denied", show_reason=False),
    _Row(RateLimited, _C.RESOURCE_EXHAUSTED, "GitHub rate limit reached, retry later"),
    _Row(UpstreamUnavailable, _C.UNAVAILABLE, "upstream unavailable, retry later"),
    _Row(StsError, _C.INTERNAL, "internal error"),
)


ERROR_DOMAIN = "octo-sts.dev"


@dataclass(frozen=True, slots=True)
class Failure:
    code: grpc.StatusCode
    reason: str  # the real reason, for logs, metrics and audit
    message: str  # what the caller sees
    shown_reason: str  # the reason the caller sees (collapsed for PERMISSION_DENIED)
    request_id: str

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


def _row_for(exc: BaseException) -> _Row:
    for row in _TABLE:
        if isinstance(exc, row.error):
            return row
    return _TABLE[-1]


def status_code(exc: BaseException) -> grpc.StatusCode:
    return _row_for(exc).code


def failure(exc: BaseException, request_id: str, *, verbose: bool = False) -> Failure:
    """Status code and caller-facing message for ``exc``."""
    row = _row_for(exc)
    reason = exc.reason if isinstance(exc, StsError) else "internal"
    shown_reason = reason if (row.show_reason or verbose) else "permission_denied"
    message = f"{row.message} (reason: {shown_reason}, request_id: {request_id})"
    detail = exc.detail if isinstance(exc, StsError) else ""
    if detail and (row.show_detail or verbose):
        message = f"{message}: {detail}"
    return Failure(row.code, reason, message, shown_reason, request_id)
