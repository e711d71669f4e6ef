"""Envoy's ext_authz Check against a fake verifier, and what its answer must look like.

Shared by the ``metadata`` target (headers from text) and the ``protobuf`` target
(whole CheckRequests from bytes). The fake verifier's outcome is chosen by the
token's first letter, so the fuzzer reaches every branch of the answer table.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2

from octosts.domain.errors import IssuerUnavailable, TokenExpired, TokenSignatureInvalid
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import VerifiedToken
from octosts.transport.ext_authz import (
    HEADER_PREFIX,
    ISSUER_HEADER,
    SUBJECT_HEADER,
    AuthorizationServicer,
)
from octosts.transport.request_id import is_request_id
from tests.fuzz.targets._support import DOMAIN, not_quoted, run

SUBJECT_HEADER_IN = "x-fuzz-subject"  # lets the input choose the verified subject
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,2048}")


class FakeVerifier:
    """``eyJ...``: valid; ``x``: expired; ``u``: issuer down; ``z``: a bug; else a bad signature."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    async def verify(self, bearer: str) -> VerifiedToken:
        if bearer.startswith("eyJ"):
            return VerifiedToken(
                issuer="https://issuer.example",
                subject=self.subject,
                audience=(DOMAIN,),
                expires_at=2e9,
                claims={},
            )
        if bearer.startswith("x"):
            raise TokenExpired("expired")
        if bearer.startswith("u"):
            raise IssuerUnavailable("issuer down")
        if bearer.startswith("z"):
            raise RuntimeError("a verifier bug")
        raise TokenSignatureInvalid("bad signature")


_: TokenVerifier = FakeVerifier("s")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code)
        self.code = code


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code)


def check(request: Any) -> None:
    """Run Check on ``request`` and hold its answer to the module docstring of ext_authz."""
    http = request.attributes.request.http
    headers: dict[str, str] = {k.lower(): v for k, v in http.headers.items()}
    for header in http.header_map.headers:
        headers.setdefault(header.key.lower(), header.value)
    authorization = headers.get("authorization", "")
    token = authorization.strip().partition(" ")[2].strip()
    servicer = AuthorizationServicer(FakeVerifier(headers.get(SUBJECT_HEADER_IN, "repo:o/r")))
    aborted: grpc.StatusCode | None = None
    with structlog.testing.capture_logs() as logs:
        try:
            response = run(servicer.Check(request, FakeContext()))
        except Aborted as exc:
            aborted, response = exc.code, None
    not_quoted(token, logs)
    if response is None:
        expected = {"u": grpc.StatusCode.UNAVAILABLE, "z": grpc.StatusCode.INTERNAL}
        assert aborted == expected.get(token[:1]), (aborted, token[:1])
        return
    assert isinstance(response, external_auth_pb2.CheckResponse)
    if response.HasField("ok_response"):
        _allowed(response, headers)
    else:
        _denied(response, token)


def _allowed(response: Any, headers: dict[str, str]) -> None:
    ok = response.ok_response
    assert response.status.code == 0
    assert [h.header.key for h in ok.headers] == [ISSUER_HEADER, SUBJECT_HEADER]
    assert all(_PRINTABLE.fullmatch(h.header.value) for h in ok.headers)
    spoofed = {
        k
        for k in headers
        if k.startswith(HEADER_PREFIX) and k not in {ISSUER_HEADER, SUBJECT_HEADER}
    }
    assert spoofed <= set(ok.headers_to_remove), "a client x-octo-sts-* header is passed on"


def _denied(response: Any, token: str) -> None:
    denied = response.denied_response
    assert 400 <= denied.status.code < 500, denied.status.code
    body = json.loads(denied.body)
    assert set(body) == {"code", "message", "request_id"}
    assert body["request_id"] == "" or is_request_id(body["request_id"])
    not_quoted(token, denied.body)
