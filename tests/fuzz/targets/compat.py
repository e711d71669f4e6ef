"""Query strings and form bodies in the original Octo STS's request shapes.

Input: UTF-8 text (the body may be any bytes): the first line is the form's
``content-type``, the second a request path with its query, the rest the form body.
Path: ``transport.compat.check_query`` (what ext_authz runs before the transcoder
reads a query) and ``exchange_request_from_form`` (the form POST binding), then
``scope_of`` on the form's fields.

Property: only ``InvalidRequest`` escapes. The repeated-parameter guard agrees
with an independent reading of the same pairs: a singular field named twice is
always refused, never silently resolved to one of its values; an accepted form's
fields are exactly its pairs' values.
"""

from __future__ import annotations

import contextlib
import urllib.parse

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts._gen.octosts.v1 import sts_pb2
from octosts.domain.errors import InvalidRequest
from octosts.transport.compat import (
    MAX_FIELDS,
    REPEATED_PARAMETER,
    check_query,
    exchange_request_from_form,
    scope_of,
)


def _pairs(encoded: str) -> list[tuple[str, str]] | None:
    try:
        return urllib.parse.parse_qsl(
            encoded, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except ValueError:  # not UTF-8, too many fields: refused by the code under test too
        return None


def _repeated_singular(pairs: list[tuple[str, str]], descriptor: object) -> bool:
    singular = {f.name for f in descriptor.fields if not f.is_repeated}  # type: ignore[attr-defined]
    names = [n for n, _ in pairs if n in singular]
    return len(names) != len(set(names))


def one_input(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    path, _, body = body.partition(b"\n")
    content_type = head.decode("utf-8", "replace")
    _query(path.decode("utf-8", "replace"))
    _form(body, content_type)


def _query(path: str) -> None:
    query = path.partition("?")[2].partition("#")[0]
    pairs = _pairs(query) if query else []
    try:
        check_query(path)
    except InvalidRequest as exc:
        if exc.reason == REPEATED_PARAMETER:
            assert pairs is not None
            assert _repeated_singular(pairs, sts_pb2.ExchangeRequest.DESCRIPTOR)
        return
    assert pairs is not None
    assert not _repeated_singular(pairs, sts_pb2.ExchangeRequest.DESCRIPTOR)
    scopes = [v for n, v in pairs if n == "scopes"]
    scope = [v for n, v in pairs if n == "scope"]
    if scopes:
        assert scope, "scopes without scope was accepted"
        assert set(scopes) == {scope[0]}


def _form(body: bytes, content_type: str) -> None:
    try:
        request = exchange_request_from_form(body, content_type)
    except InvalidRequest as exc:
        if exc.reason == REPEATED_PARAMETER:
            pairs = _pairs(body.decode("utf-8"))
            assert pairs is not None
            assert _repeated_singular(pairs, oidc_pb2.ExchangeRequest.DESCRIPTOR)
        return
    pairs = _pairs(body.decode("utf-8"))
    assert pairs is not None
    fields = oidc_pb2.ExchangeRequest.DESCRIPTOR.fields_by_name
    assert not _repeated_singular(pairs, oidc_pb2.ExchangeRequest.DESCRIPTOR)
    for name, field in fields.items():
        values = [v for n, v in pairs if n == name]
        if field.is_repeated:
            assert list(getattr(request, name)) == values
        elif values:
            assert getattr(request, name) == values[0]
    with contextlib.suppress(InvalidRequest):
        scope_of(request.scope, request.scopes)
