"""Query strings and form bodies in the original Octo STS's request shapes.

Input: UTF-8 text (the body may be any bytes): the first line is the form's
``content-type``, the second a request path with its query, the rest the form body.
Path: ``transport.compat.check_query`` (what ext_authz runs before the transcoder
reads a query), then the typed API's ``domain.exchange.requested_scopes`` on the
query's ``scope``/``scopes``; ``exchange_request_from_form`` (the form POST binding),
then ``scope_of`` on the form's fields.

Property: only ``InvalidRequest`` escapes. The repeated-parameter guard agrees
with an independent reading of the same pairs: a singular field named twice is
always refused, never silently resolved to one of its values; an accepted form's
fields are exactly its pairs' values. The scopes a query is granted are exactly
its distinct ``scopes`` (or its ``scope``), ``scope`` among them; several are
repositories of one owner, at most ``MAX_SCOPES``, never the org policy repository.
"""

from __future__ import annotations

import contextlib
import urllib.parse

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts._gen.octosts.v1 import sts_pb2
from octosts.domain.errors import InvalidRequest
from octosts.domain.exchange import MAX_SCOPES, requested_scopes
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO
from octosts.domain.names import Scope
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
    scope = next((v for n, v in pairs if n == "scope"), "")
    with contextlib.suppress(InvalidRequest):
        _granted(scope, scopes, requested_scopes(scope, scopes))


def _granted(scope: str, scopes: list[str], targets: tuple[Scope, ...]) -> None:
    named = {str(t).lower() for t in targets}
    assert len(named) == len(targets), "a scope granted twice"
    if not scopes:
        assert [str(t) for t in targets] == [scope]
        return
    assert named == {s.lower() for s in scopes}
    assert not scope or scope.lower() in named, "scope not among scopes was accepted"
    if len(targets) > 1:
        assert len(scopes) <= MAX_SCOPES
        assert len({t.owner.lower() for t in targets}) == 1
        assert all(t.repo and t.repo.lower() != DEFAULT_ORG_POLICY_REPO for t in targets)


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
