"""Request metadata: gRPC metadata and the headers Envoy's ext_authz Check carries.

Input: UTF-8 text; the first line is the request path (with its query), every
further ``name: value`` line a header. Path: ``transport.metadata.bearer_token``,
``request_id``, ``user_agent``; ``transport.request_id.sanitise_request_id``;
``transport.ext_authz.AuthorizationServicer.Check`` with a fake verifier
(``_ext_authz``), which also runs ``compat.check_query`` on the path.

Property: only ``InvalidRequest`` / ``TokenMalformed`` escape the readers and no
message quotes the token; the request id is always a safe one (the caller's first
well-formed ``x-request-id``, else a new one); the user agent is bounded; Check
answers every request (an allowed one strips every client ``x-octo-sts-*`` header,
a denied one is a 4xx JSON body) or fails with UNAVAILABLE / INTERNAL only for
an unavailable issuer / a verifier bug, and never logs the token.
"""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2

from octosts.domain.errors import InvalidRequest, TokenMalformed
from octosts.transport.metadata import bearer_token, request_id, user_agent
from octosts.transport.request_id import is_request_id, sanitise_request_id
from tests.fuzz.targets._ext_authz import check
from tests.fuzz.targets._support import not_quoted, text

MODE_HEADER = "x-fuzz-mode"  # the route's context extension ``mode`` (default ``verify``)


def parse(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    path, *lines = text(data).split("\n")
    headers = []
    for line in lines:
        name, colon, value = line.rstrip("\r").partition(":")
        if colon:
            headers.append((name.strip().lower(), value.strip()))
    return path.rstrip("\r"), headers


def one_input(data: bytes) -> None:
    path, metadata = parse(data)
    _grpc_metadata(metadata)
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.path = path
    for name, value in metadata:
        # Envoy hands a repeated header on once, its values joined with ","
        http.headers[name] = f"{http.headers[name]},{value}" if name in http.headers else value
    mode = dict(metadata).get(MODE_HEADER, "verify")
    request.attributes.context_extensions["mode"] = mode
    check(request)


def _grpc_metadata(metadata: list[tuple[str, str]]) -> None:
    authorization = [v for k, v in metadata if k == "authorization"]
    try:
        token = bearer_token(metadata)
    except (InvalidRequest, TokenMalformed) as exc:
        for value in authorization:
            not_quoted(value.partition(" ")[2].strip(), exc, exc.detail)
    else:
        assert len(authorization) == 1
        assert token == authorization[0].strip().partition(" ")[2].strip()
    rid = request_id(metadata)
    assert is_request_id(rid)
    given = [v for k, v in metadata if k == "x-request-id" and is_request_id(v)]
    assert rid == given[0] if given else len(rid) == 32
    agents = [v for k, v in metadata if k == "user-agent"]
    assert user_agent(metadata) == (agents[0][:200] if agents else "")
    for _, value in metadata:
        assert is_request_id(sanitise_request_id(value))
