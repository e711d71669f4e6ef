"""The ext_authz Check servicer, called directly with Envoy-shaped requests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2

from octosts.domain.errors import (
    AuthenticationError,
    IssuerUnavailable,
    StsError,
    TokenExpired,
    TokenMalformed,
)
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import VerifiedToken
from octosts.transport.ext_authz import (
    AuthorizationServicer,
    ExtAuthzOptions,
)
from octosts.transport.metadata import bearer_from_values, is_request_id

GOOD = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vcjpyZWY6bWFpbiJ9.c2ln"


def verified(sub: str = "repo:o/r:ref:refs/heads/main") -> VerifiedToken:
    return VerifiedToken(
        issuer="https://token.actions.githubusercontent.com",
        subject=sub,
        audience=("octo-sts.dev",),
        expires_at=2_000_000_000.0,
        claims={"sub": sub},
    )


class FakeVerifier:
    def __init__(self, outcome: VerifiedToken | BaseException | None = None) -> None:
        self.outcome = outcome if outcome is not None else verified()
        self.calls: list[str] = []

    async def verify(self, bearer: str) -> VerifiedToken:
        self.calls.append(bearer)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


_: TokenVerifier = FakeVerifier()


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


def check_request(
    headers: dict[str, str] | None = None,
    mode: str | None = "verify",
    header_map: list[tuple[str, str]] | None = None,
) -> Any:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.path = "/sts/exchange"
    for k, v in (headers or {}).items():
        http.headers[k] = v
    for k, v in header_map or []:
        http.header_map.headers.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    if mode is not None:
        req.attributes.context_extensions["mode"] = mode
    return req


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


async def check(verifier: FakeVerifier, req: Any) -> Any:
    return await AuthorizationServicer(verifier).Check(req, FakeContext())


async def test_allow_sets_identity_headers_and_removes_spoofed_ones() -> None:
    verifier = FakeVerifier()
    req = check_request(
        {
            "authorization": f"Bearer {GOOD}",
            "x-request-id": "abc-123",
            "x-octo-sts-subject": "repo:evil/evil",
            "x-octo-sts-admin": "true",
        }
    )
    resp = await check(verifier, req)
    assert resp.WhichOneof("http_response") == "ok_response"
    assert resp.status.code == 0
    assert headers_of(resp.ok_response.headers) == {
        "x-octo-sts-issuer": "https://token.actions.githubusercontent.com",
        "x-octo-sts-subject": "repo:o/r:ref:refs/heads/main",
    }
    for option in resp.ok_response.headers:
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    # Removing the injected names would undo them (Envoy removes after it sets).
    assert list(resp.ok_response.headers_to_remove) == ["x-octo-sts-admin"]
    assert verifier.calls == [GOOD]


async def test_allow_names_the_tenant_for_the_rate_limits_by_digests() -> None:
    resp = await check(FakeVerifier(), check_request({"authorization": f"Bearer {GOOD}"}))
    tenant = dict(resp.dynamic_metadata)
    # ``printf '%s' "$ISSUER" | sha256sum | cut -c1-32``, as docs/deploy.md tells operators.
    assert tenant["issuer"] == "dd9c65dd99f49e3d0ff1d11acfec9a12"
    assert (
        tenant["subject"]
        == hashlib.sha256(
            b"https://token.actions.githubusercontent.com\nrepo:o/r:ref:refs/heads/main"
        ).hexdigest()[:32]
    )
    other = await check(
        FakeVerifier(verified("repo:o/r:ref:refs/heads/dev")),
        check_request({"authorization": f"Bearer {GOOD}"}),
    )
    assert dict(other.dynamic_metadata)["subject"] != tenant["subject"]
    assert dict(other.dynamic_metadata)["issuer"] == tenant["issuer"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_scheme_is_case_insensitive(scheme: str) -> None:
    verifier = FakeVerifier()
    resp = await check(verifier, check_request({"authorization": f"{scheme} {GOOD}"}))
    assert resp.WhichOneof("http_response") == "ok_response"


async def test_header_map_is_read_when_headers_is_empty() -> None:
    verifier = FakeVerifier()
    resp = await check(verifier, check_request(header_map=[("Authorization", f"Bearer {GOOD}")]))
    assert resp.WhichOneof("http_response") == "ok_response"
    assert verifier.calls == [GOOD]


async def test_two_authorization_headers_in_header_map_are_rejected() -> None:
    verifier = FakeVerifier()
    req = check_request(
        header_map=[("authorization", f"Bearer {GOOD}"), ("authorization", f"Bearer {GOOD}")]
    )
    resp = await check(verifier, req)
    assert resp.denied_response.status.code == 401
    assert verifier.calls == []


def denial_body(resp: Any) -> dict[str, Any]:
    assert resp.WhichOneof("http_response") == "denied_response"
    assert headers_of(resp.denied_response.headers)["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(resp.denied_response.body)
    assert set(body) == {"code", "message", "request_id"}
    return body


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "token_missing"),
        ({"authorization": "Bearer "}, "token_missing"),
        ({"authorization": f"Basic {GOOD}"}, "token_missing"),
        ({"authorization": GOOD}, "token_missing"),
        # Envoy joins repeated headers with a comma.
        ({"authorization": f"Bearer {GOOD},Bearer {GOOD}"}, "token_malformed"),
        ({"authorization": "Bearer a b"}, "token_malformed"),
        ({"authorization": "Bearer " + "a" * 20_000}, "token_too_large"),
    ],
)
async def test_bad_authorization_is_401_without_calling_the_verifier(
    headers: dict[str, str], reason: str
) -> None:
    verifier = FakeVerifier()
    resp = await check(verifier, check_request({**headers, "x-request-id": "rid-1"}))
    assert resp.denied_response.status.code == 401
    assert resp.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    www = headers_of(resp.denied_response.headers)["www-authenticate"]
    assert www == ("Bearer" if reason == "token_missing" else 'Bearer error="invalid_token"')
    body = denial_body(resp)
    assert body["code"] == 16
    assert reason in body["message"]
    assert body["request_id"] == "rid-1"
    assert verifier.calls == []


async def test_rejected_token_is_401_and_never_echoed() -> None:
    verifier = FakeVerifier(TokenExpired(f"expired {GOOD}"))
    resp = await check(verifier, check_request({"authorization": f"Bearer {GOOD}"}))
    assert resp.denied_response.status.code == 401
    assert headers_of(resp.denied_response.headers)["www-authenticate"] == (
        'Bearer error="invalid_token"'
    )
    assert "token_expired" in denial_body(resp)["message"]
    assert GOOD not in resp.SerializeToString().decode(errors="replace")


async def test_issuer_unavailable_is_an_unavailable_rpc_error_not_a_denial() -> None:
    # Not a 401 (the token may be valid) and not a 503 denial either: Envoy cannot retry a
    # successful Check, but it retries an UNAVAILABLE one on a replica that has the keys.
    servicer = AuthorizationServicer(FakeVerifier(IssuerUnavailable("jwks timed out")))
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Check(
            check_request({"authorization": f"Bearer {GOOD}", "x-request-id": "rid-9"}), context
        )
    assert context.aborted is not None
    code, message = context.aborted
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "issuer_unavailable" in message
    assert "rid-9" in message
    assert GOOD not in message


@pytest.mark.parametrize("mode", [None, "", "admin"])
async def test_unknown_mode_is_403(mode: str | None) -> None:
    verifier = FakeVerifier()
    resp = await check(verifier, check_request({"authorization": f"Bearer {GOOD}"}, mode=mode))
    assert resp.denied_response.status.code == 403
    assert "unknown_authz_mode" in denial_body(resp)["message"]
    assert verifier.calls == []


async def test_hostile_request_id_is_not_echoed() -> None:
    resp = await check(FakeVerifier(), check_request({"x-request-id": "<script>\n"}))
    assert denial_body(resp)["request_id"] == ""


@pytest.mark.parametrize(
    "value", ["abc-123", "A.b_c:d-e", "x" * 128, "x" * 129, "a b", "a/b", "é", "a,b", ""]
)
async def test_request_id_echo_follows_the_metadata_rule(value: str) -> None:
    resp = await check(FakeVerifier(), check_request({"x-request-id": value}))
    assert denial_body(resp)["request_id"] == (value if is_request_id(value) else "")


@pytest.mark.parametrize("fault", [RuntimeError(f"boom {GOOD}"), StsError("odd")])
async def test_verifier_fault_is_an_rpc_error(fault: Exception) -> None:
    servicer = AuthorizationServicer(FakeVerifier(fault))
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Check(check_request({"authorization": f"Bearer {GOOD}"}), context)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INTERNAL
    assert context.aborted[1].startswith("internal error")
    assert GOOD not in context.aborted[1]


async def test_subject_unfit_for_a_header_is_denied() -> None:
    verifier = FakeVerifier(verified(sub="repo:o/r\r\nx-evil: 1"))
    resp = await check(verifier, check_request({"authorization": f"Bearer {GOOD}"}))
    assert resp.denied_response.status.code == 401


async def test_max_token_bytes_option() -> None:
    servicer = AuthorizationServicer(FakeVerifier(), ExtAuthzOptions(max_token_bytes=10))
    resp = await servicer.Check(check_request({"authorization": f"Bearer {GOOD}"}), FakeContext())
    assert resp.denied_response.status.code == 401


def test_bearer_from_headers_errors_never_contain_the_token() -> None:
    for values in (["Basic " + GOOD], ["Bearer " + GOOD + "!"], ["Bearer " + GOOD] * 2):
        with pytest.raises(TokenMalformed) as info:
            bearer_from_values(values)
        assert GOOD not in str(info.value)
    with pytest.raises(AuthenticationError, match="no authorization header"):
        bearer_from_values([])
    assert bearer_from_values([f"  Bearer   {GOOD} "]) == GOOD


async def test_decisions_are_reported() -> None:
    seen: list[tuple[str, str]] = []
    servicer = AuthorizationServicer(FakeVerifier(), on_decision=lambda d, r: seen.append((d, r)))
    await servicer.Check(check_request({"authorization": f"Bearer {GOOD}"}), FakeContext())
    await servicer.Check(check_request({}), FakeContext())
    await servicer.Check(check_request({}, mode="other"), FakeContext())
    assert seen == [("allow", "ok"), ("deny", "token_missing"), ("deny", "unknown_authz_mode")]


@pytest.mark.parametrize(
    "query",
    [
        "scope=o/a&scope=o/b&identity=ci",
        "scope=o/a&identity=ci&identity=other",
        "scope=o/a&scope=&identity=ci",
        "audience=a&audience=b&scope=o/a&identity=ci",
    ],
)
async def test_repeated_query_parameters_are_400_before_verification(query: str) -> None:
    verifier = FakeVerifier()
    req = check_request({"authorization": f"Bearer {GOOD}", "x-request-id": "rid-2"})
    req.attributes.request.http.path = f"/sts/exchange?{query}"
    resp = await check(verifier, req)
    assert resp.denied_response.status.code == 400
    body = denial_body(resp)
    assert body["code"] == 3
    assert "repeated_parameter" in body["message"]
    assert verifier.calls == []


@pytest.mark.parametrize(
    "query",
    [
        "scope=o/a&identity=ci&unknown=1",
        # Parameters the transcoder ignores may repeat (tracking tags and the like).
        "scope=o/a&identity=ci&utm=1&utm=2",
    ],
)
async def test_distinct_exchange_fields_pass(query: str) -> None:
    verifier = FakeVerifier()
    req = check_request({"authorization": f"Bearer {GOOD}"})
    req.attributes.request.http.path = f"/sts/exchange?{query}"
    resp = await check(verifier, req)
    assert resp.WhichOneof("http_response") == "ok_response"


async def test_undecodable_query_is_400() -> None:
    req = check_request({"authorization": f"Bearer {GOOD}"})
    req.attributes.request.http.path = "/sts/exchange?scope=%ff&identity=ci"
    resp = await check(FakeVerifier(), req)
    assert resp.denied_response.status.code == 400
    assert "bad_query" in denial_body(resp)["message"]


@pytest.mark.parametrize(("method", "edge"), [("GET", True), ("POST", False), ("", False)])
async def test_only_a_gets_query_is_checked_as_exchange_will(method: str, edge: bool) -> None:
    # GET /sts/exchange?scope=..&identity=.. is the request Exchange reads, so the edge may
    # verify its token with the policy's pinned keys; a POST's scope is in its body, and a
    # query on it must not make the edge read the policies that query names.
    asked: list[tuple[str, str, str]] = []

    async def verify_for(token: str, scope: str, identity: str, scopes: tuple[str, ...]) -> Any:
        asked.append((token, scope, identity))
        return verified()

    req = check_request({"authorization": f"Bearer {GOOD}"})
    req.attributes.request.http.path = "/sts/exchange?scope=octo-org/demo&identity=ci"
    req.attributes.request.http.method = method
    verifier = FakeVerifier()
    servicer = AuthorizationServicer(verifier, verify_for=verify_for)
    resp = await servicer.Check(req, FakeContext())
    assert resp.WhichOneof("http_response") == "ok_response"
    assert asked == ([(GOOD, "octo-org/demo", "ci")] if edge else [])
