"""How the original Octo STS's request shapes are read (docs/compatibility.md).

The chainguard-compatible API (``chainguard.platform.oidc.ExchangeRequest``)
and the HTTP requests existing clients send carry fields our typed API
(``octosts.v1``) does not have. These rules say what each one means here:

- **scope**: ``scopes[0]`` when ``scopes`` is given, else ``scope`` (what the
  original does). One token has one scope, so an ambiguous request is refused
  rather than guessed: ``scopes`` holding different values, or a ``scope`` that
  differs from ``scopes[0]`` (INVALID_ARGUMENT, reason ``ambiguous_scope``).
  Identical repeats are fine (the SDK sends ``scope=X`` and ``scopes=X``).
- **aud**: never a demand on the OIDC token (the original never reads it); the
  trust policy's audience rule applies. The values are logged with the
  exchange (``requested_aud``), bounded.
- **form bodies** (``POST /sts/exchange``, ``application/x-www-form-urlencoded``,
  what chainguard.dev/sdk's HTTP/1 downgrade exchanger sends): the field names
  of ``chainguard.platform.oidc.ExchangeRequest``; its repeated fields (``aud``,
  ``scopes``, ``cap``) may repeat, a singular one (``scope``, ``identity``,
  ``identity_provider``) given twice is refused; other names are ignored, like
  unknown query parameters.
- **query strings** (GET, JSON POST; read by Envoy's transcoder into
  ``octosts.v1.ExchangeRequest``): a singular field of that message given twice
  is refused (the transcoder would pick one); its repeated ``scopes`` may
  repeat. How ``scope`` and ``scopes`` combine there is the typed API's rule
  (``domain.exchange.requested_scopes``): ``scopes`` names one or several
  repositories, ``scope=X&scopes=X`` (the octo-sts action) is one scope.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts._gen.octosts.v1 import sts_pb2
from octosts.domain.errors import AMBIGUOUS_SCOPE, InvalidRequest

if TYPE_CHECKING:
    from google.protobuf.message import Message

REPEATED_PARAMETER = "repeated_parameter"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# The SDK's form is a few hundred bytes; nothing legitimate comes near these.
MAX_FORM_BYTES = 16 * 1024
MAX_FIELDS = 100
# What of a caller's ``aud`` reaches the log line.
_LOGGED_AUDS = 5
_LOGGED_AUD_CHARS = 100


def scope_of(scope: str, scopes: Sequence[str]) -> str:
    """The scope of a request carrying ``scope`` and the repeated ``scopes``.

    Raises InvalidRequest (``ambiguous_scope``) when they name more than one.
    """
    if not scopes:
        return scope
    first = scopes[0]
    if any(other != first for other in scopes[1:]):
        raise InvalidRequest(
            "scopes holds different values; a token has exactly one scope",
            reason=AMBIGUOUS_SCOPE,
        )
    if scope and scope != first:
        raise InvalidRequest("scope and scopes[0] differ; send one scope", reason=AMBIGUOUS_SCOPE)
    return first


def logged_audiences(aud: Sequence[str]) -> list[str]:
    """``aud`` as it may appear in a log line: a few values, each cut short."""
    return [value[:_LOGGED_AUD_CHARS] for value in aud[:_LOGGED_AUDS]]


def _pairs(encoded: str, what: str, reason: str) -> list[tuple[str, str]]:
    try:
        return urllib.parse.parse_qsl(
            encoded, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid UTF-8", reason=reason) from exc
    except ValueError as exc:  # max_num_fields
        raise InvalidRequest(f"{what} has more than {MAX_FIELDS} fields", reason=reason) from exc


def _fill(message: Message, pairs: Sequence[tuple[str, str]], what: str) -> None:
    """Set ``message``'s string fields from ``pairs``; unknown names are ignored.

    Raises InvalidRequest (``repeated_parameter``) for a singular field named twice.
    """
    fields = message.DESCRIPTOR.fields_by_name
    seen: set[str] = set()
    for name, value in pairs:
        field = fields.get(name)
        # upb looks names up as C strings: "scope\x00x" finds `scope`. It is another name.
        if field is None or field.name != name:
            continue
        if field.is_repeated:
            getattr(message, name).append(value)
            continue
        if name in seen:
            raise InvalidRequest(f"{what} {name!r} given more than once", reason=REPEATED_PARAMETER)
        seen.add(name)
        setattr(message, name, value)


def check_query(path: str) -> sts_pb2.ExchangeRequest | None:
    """Refuse a query string the transcoder would read ambiguously (see the module doc).

    Returns the request the query describes, as the transcoder will read it (the edge
    reads the policies it names when it must: docs/architecture.md, "Order of checks"),
    or None without a query. Raises InvalidRequest: ``repeated_parameter``, or
    ``bad_query`` for a query that is not UTF-8 or has too many fields.
    """
    _, _, query = path.partition("?")
    if not query:
        return None
    pairs = _pairs(query.partition("#")[0], "query string", "bad_query")
    request = sts_pb2.ExchangeRequest()
    _fill(request, pairs, "query parameter")
    return request


def read_form(
    body: bytes, content_type: str, *, max_bytes: int, reason: str
) -> list[tuple[str, str]]:
    """The (name, value) pairs of a UTF-8 ``application/x-www-form-urlencoded`` body.

    Raises InvalidRequest with ``reason``: another content type or charset, more
    than ``max_bytes`` or MAX_FIELDS fields, bytes that are not UTF-8.
    """
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"content type must be {FORM_CONTENT_TYPE}", reason=reason)
    charset = _charset(params)
    if charset not in {"", "utf-8", "us-ascii"}:
        raise InvalidRequest("form bodies must be UTF-8", reason=reason)
    if len(body) > max_bytes:
        raise InvalidRequest(f"form body larger than {max_bytes} bytes", reason=reason)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("form body is not valid UTF-8", reason=reason) from exc
    return _pairs(text, "form body", reason)


def exchange_request_from_form(body: bytes, content_type: str) -> oidc_pb2.ExchangeRequest:
    """The ExchangeRequest a form body describes (see the module doc).

    Raises InvalidRequest: ``bad_form`` (not a UTF-8 form of a sane size),
    ``repeated_parameter``.
    """
    request = oidc_pb2.ExchangeRequest()
    pairs = read_form(body, content_type, max_bytes=MAX_FORM_BYTES, reason="bad_form")
    _fill(request, pairs, "form field")
    return request


def _charset(params: str) -> str:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return ""
