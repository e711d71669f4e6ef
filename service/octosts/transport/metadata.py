"""Reading gRPC metadata: the bearer token, request id, user agent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Iterable, Sequence

from octosts.domain.errors import TOKEN_MISSING, InvalidRequest, TokenMalformed
from octosts.domain.tokens import MAX_TOKEN_BYTES
from octosts.transport.request_id import (
    REQUEST_ID_HEADER,
    current_request_id,
    is_request_id,
)

# RFC 6750 b64token; a JWT uses a subset. Rejecting anything else up front keeps
# commas (several joined Authorization headers) and whitespace out of the verifier.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

Metadata = Iterable[tuple[str, str | bytes]]


def _values(metadata: Metadata, name: str) -> list[str]:
    out = []
    for key, value in metadata:
        if key.lower() == name:
            out.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return out


def bearer_from_values(
    values: Sequence[str],
    *,
    max_bytes: int = MAX_TOKEN_BYTES,
    schemes: Collection[str] = ("bearer",),
) -> str:
    """The raw token from the ``authorization`` value(s) of one request (gRPC or HTTP).

    ``schemes``: the accepted schemes, lower case (the egress gateway also takes GitHub's
    ``token``, which the gh CLI and Octokit send).
    Raises TokenMalformed: reason ``token_missing`` when there is no Bearer token
    (no value, another scheme, empty), ``token_too_large`` past ``max_bytes``,
    ``token_malformed`` for several values or characters a JWT cannot have.
    Messages never contain the token. This is the size check of both token paths
    (Exchange, ext_authz Check): the verifier behind it does not repeat it.
    """
    if not values:
        raise TokenMalformed("no authorization header", reason=TOKEN_MISSING)
    if len(values) > 1:
        raise TokenMalformed("more than one authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() not in schemes:
        raise TokenMalformed("authorization scheme is not Bearer", reason=TOKEN_MISSING)
    return raw_token(token.strip(), "bearer token", max_bytes=max_bytes)


def raw_token(token: str, what: str, *, max_bytes: int = MAX_TOKEN_BYTES) -> str:
    """``token`` if it can be a JWT of at most ``max_bytes`` (a bearer token, an OAuth
    ``subject_token``). Raises TokenMalformed as ``bearer_from_values`` (never quoting it)."""
    if not token:
        raise TokenMalformed(f"empty {what}", reason=TOKEN_MISSING)
    if len(token) > max_bytes:
        raise TokenMalformed(f"{what} longer than {max_bytes} bytes", reason="token_too_large")
    if not _B64TOKEN.fullmatch(token):
        raise TokenMalformed(f"{what} has characters a JWT cannot have")
    return token


def bearer_token(metadata: Metadata) -> str:
    """The token from exactly one ``authorization: Bearer <token>`` metadata value.

    Raises InvalidRequest (more than one authorization value: a malformed
    request, not a bad credential) or TokenMalformed as ``bearer_from_values``.
    """
    values = _values(metadata, "authorization")
    if len(values) > 1:
        raise InvalidRequest("exactly one authorization value is allowed")
    return bearer_from_values(values)


def request_id(metadata: Metadata) -> str:
    """The id of this request: the interceptor's, else the caller's well-formed one, else new.

    Inside an RPC the interceptor has already chosen (and sent back) an id;
    reusing it keeps error messages, logs, audit events and the caller's
    ``x-request-id`` header in agreement.
    """
    chosen = current_request_id()
    if chosen:
        return chosen
    for value in _values(metadata, REQUEST_ID_HEADER):
        if is_request_id(value):
            return value
    return uuid.uuid4().hex


def user_agent(metadata: Metadata) -> str:
    values = _values(metadata, "user-agent")
    return values[0][:200] if values else ""
