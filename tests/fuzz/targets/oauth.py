"""Token requests at the OAuth 2.0 endpoint (``POST /oauth2/token``, RFC 8693).

Input: the first line is the request's ``content-type`` (UTF-8), the rest its body (any
bytes). Path: ``transport.oauth.token_exchange_request`` (what the endpoint's servicer
reads), then ``domain.exchange.requested_scopes`` on an accepted request's audiences.

Property: only ``InvalidRequest`` and ``TokenMalformed`` escape, and no message quotes
the subject token. An accepted request is what an independent reading of the form says:
the token-exchange grant, each parameter the endpoint reads given once (``audience``
may repeat), no ``resource`` or ``actor_token``, the bearer is ``subject_token``, the
identity is the one ``scope`` token, and the scopes are the audiences.
"""

from __future__ import annotations

import contextlib
import urllib.parse

from octosts.domain.errors import InvalidRequest, TokenMalformed
from octosts.domain.exchange import ExchangeRequest, requested_scopes
from octosts.transport.compat import MAX_FIELDS
from octosts.transport.oauth import SUBJECT_TOKEN_TYPES, TOKEN_EXCHANGE, token_exchange_request

_SINGULAR = ("grant_type", "subject_token", "subject_token_type", "scope")


def one_input(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    content_type = head.decode("utf-8", "replace")
    try:
        request = token_exchange_request(body, content_type)
    except (InvalidRequest, TokenMalformed) as exc:
        refused = str(exc)
    else:
        _accepted(body, request)
        return
    assert not _quotes_the_token(body, refused), "the message quotes the subject token"


def _pairs(body: bytes) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(
        body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
    )


def _quotes_the_token(body: bytes, message: str) -> bool:
    """Whether ``message`` holds a JWT-like subject token that no other part of the form
    (a name, another value, which messages may quote) contains."""
    try:
        pairs = _pairs(body)
    except ValueError:  # not UTF-8, too many fields: no token was read
        return False
    subject = next((v for n, v in pairs if n == "subject_token"), "")
    if len(subject) < 20 or "." not in subject:
        return False
    others = [n for n, _ in pairs] + [v for n, v in pairs if n != "subject_token"]
    return subject in message and not any(subject in other for other in others)


def _accepted(body: bytes, request: ExchangeRequest) -> None:
    pairs = _pairs(body)
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    for name in _SINGULAR:
        assert len(values.get(name, [])) == 1, f"{name} accepted {len(values.get(name, []))} times"
    assert values["grant_type"] == [TOKEN_EXCHANGE]
    assert values["subject_token_type"][0] in SUBJECT_TOKEN_TYPES
    assert "resource" not in values
    assert "actor_token" not in values
    assert "actor_token_type" not in values
    assert request.bearer == values["subject_token"][0]
    assert request.identity == values["scope"][0]
    audiences = values["audience"]
    assert (request.scopes or (request.scope,)) == tuple(audiences)
    assert request.audience is None
    with contextlib.suppress(InvalidRequest):
        requested_scopes(request.scope, request.scopes)
