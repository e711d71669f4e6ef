"""Shared by both transports: turning the service's answers into results and errors."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from octosts.client.errors import ServerError
from octosts.client.models import ExchangeResult, check_token

# Largest response either transport accepts: a token, its permissions and a
# list of repository names fit in a few KiB.
MAX_RESPONSE_BYTES = 256 * 1024
# Error messages shown to users are cut to this many characters.
MAX_MESSAGE_CHARS = 300

GRPC_CODE_NAMES: dict[int, str] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

REQUEST_ID_KEYS = ("x-request-id", "request-id", "x-octo-sts-request-id")
REASON_KEY = "x-octo-sts-reason"
# Sent with 429 and 503 answers (HTTP header, gRPC trailer): seconds to wait before retrying.
RETRY_AFTER_KEY = "retry-after"
# A longer wait than this is read as this: no caller should sleep for hours on our word.
MAX_RETRY_AFTER_SECONDS = 3600.0


def short(text: str) -> str:
    """A message safe to show: printable, one line, bounded."""
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(cleaned) > MAX_MESSAGE_CHARS:
        return cleaned[: MAX_MESSAGE_CHARS - 1] + "…"
    return cleaned


def code_name(code: object) -> str | None:
    """Normalise a status code given as a number (7), or a name ("PERMISSION_DENIED")."""
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return GRPC_CODE_NAMES.get(code)
    if isinstance(code, str) and code:
        if code.isdigit():
            return GRPC_CODE_NAMES.get(int(code))
        return code.upper()
    return None


def first_header(headers: Mapping[str, str], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = headers.get(key)
        if value:
            return short(value)
    return None


def build_result(
    *,
    token: object,
    expires_at: dt.datetime | None,
    expires_in: int | None,
    permissions: Mapping[str, Any],
    repositories: Sequence[Any],
    token_type: object,
    request_id: str | None,
) -> ExchangeResult:
    """Validate a decoded response. Raises ``ServerError`` when it is malformed."""
    if not isinstance(token, str):
        raise ServerError("the response carries no token", request_id=request_id)
    try:
        check_token(token, "the returned token")
    except ValueError as exc:
        raise ServerError(str(exc), request_id=request_id) from exc
    if expires_at is None:
        if expires_in is None:
            raise ServerError("the response carries no expiry", request_id=request_id)
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in permissions.items()):
        raise ServerError("the response has malformed permissions", request_id=request_id)
    if not all(isinstance(r, str) for r in repositories):
        raise ServerError("the response has malformed repositories", request_id=request_id)
    return ExchangeResult(
        token=token,
        expires_at=expires_at,
        permissions=MappingProxyType(dict(permissions)),
        repositories=tuple(repositories),
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        request_id=request_id,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """A ``retry-after`` value in seconds (RFC 9110 delay-seconds), or None.

    The service sends whole seconds; an HTTP date or anything else is ignored (None).
    """
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_SECONDS)
