"""Request bytes of every unary method, as grpc.aio hands them to the decoder.

Input: a serialized request message (any bytes: ``ff ff ff ff 0f`` + noise...).
Path: the request deserializer ``transport.decoding.UndecodableRequestGuard``
gives each method (the message's ``FromString``, made tolerant), then what the
servicer reads from a decoded request: ``scope_of``, ``parse_scope``,
``check_identity``, ``audience_problem`` (octosts.v1 and chainguard Exchange),
``exchange_request_from_form`` (the form binding's HttpBody) and the whole ext_authz
Check (``_ext_authz``) for a CheckRequest.

Property: the tolerant decoder never raises (an undecodable request is marked,
and answered INVALID_ARGUMENT by the guard); the readers raise only
``InvalidRequest``; Check answers as the ``metadata`` target requires.
"""

from __future__ import annotations

import contextlib
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from google.api import httpbody_pb2

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts._gen.octosts.v1 import sts_pb2
from octosts.domain.errors import InvalidRequest
from octosts.domain.names import check_identity, parse_scope
from octosts.domain.tokens import audience_problem
from octosts.transport.compat import exchange_request_from_form, scope_of
from octosts.transport.decoding import _tolerant, _Undecodable
from tests.fuzz.targets._ext_authz import check

_DECODERS: dict[str, Any] = {
    "octosts": _tolerant(sts_pb2.ExchangeRequest.FromString),
    "chainguard": _tolerant(oidc_pb2.ExchangeRequest.FromString),
    "form": _tolerant(httpbody_pb2.HttpBody.FromString),
    "check": _tolerant(external_auth_pb2.CheckRequest.FromString),
}


def one_input(data: bytes) -> None:
    for kind, decode in _DECODERS.items():
        request = decode(data)
        if isinstance(request, _Undecodable):
            assert request.size == len(data)
            continue
        with contextlib.suppress(InvalidRequest):
            _read(kind, request)


def _read(kind: str, request: Any) -> None:
    if kind == "octosts":
        parse_scope(request.scope)
        check_identity(request.identity)
        if request.HasField("audience"):
            audience_problem(request.audience)
    elif kind == "chainguard":
        parse_scope(scope_of(request.scope, request.scopes))
        check_identity(request.identity)
    elif kind == "form":
        exchange_request_from_form(request.data, request.content_type)
    else:
        check(request)
