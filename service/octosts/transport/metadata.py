"""Reading gRPC metadata: the bearer token, request id, user agent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from octosts.domain.errors import InvalidRequest, TokenMalformed
from octosts.transport.interceptors import current_request_id

MAX_AUTHORIZATION_BYTES = 16 * 1024 + 16
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Metadata = Iterable[tuple[str, str | bytes]]


def _values(metadata: Metadata, name: str) -> list[str]:
    out = []
    for key, value in metadata:
        if key.lower() == name:
            out.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return out


def bearer_token(metadata: Metadata) -> str:
    """The token from exactly one ``authorization: Bearer <token>`` value.

    Raises TokenMalformed (missing, wrong scheme, empty, oversized) or
    InvalidRequest (more than one authorization value).
    """
    values = _values(metadata, "authorization")
    if not values:
        raise TokenMalformed("missing authorization metadata", reason="token_missing")
    if len(values) > 1:
        raise InvalidRequest("exactly one authorization value is allowed")
    value = values[0]
    if len(value) > MAX_AUTHORIZATION_BYTES:
        raise TokenMalformed("authorization value too large", reason="token_too_large")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenMalformed("authorization scheme must be Bearer", reason="token_missing")
    token = token.strip()
    if not token:
        raise TokenMalformed("empty bearer token", reason="token_missing")
    return token


def request_id(metadata: Metadata) -> str:
    """The id of this request: the interceptor's, else the caller's well-formed one, else new.

    Inside an RPC the interceptor has already chosen (and sent back) an id;
    reusing it keeps error messages, logs, audit events and the caller's
    ``x-request-id`` header in agreement.
    """
    chosen = current_request_id()
    if chosen:
        return chosen
    for value in _values(metadata, "x-request-id"):
        if _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def user_agent(metadata: Metadata) -> str:
    values = _values(metadata, "user-agent")
    return values[0][:200] if values else ""
