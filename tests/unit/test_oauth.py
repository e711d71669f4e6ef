"""The token endpoint's parameters (transport/oauth.py) and its answers (errors.oauth_failure)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import grpc
import pytest
import yaml

from octosts._gen.octosts.gateway.v1 import oauth_pb2
from octosts.dev.envoy import EnvoyParams, Upstream, render_config
from octosts.domain import errors
from octosts.domain.tokens import MAX_TOKEN_BYTES
from octosts.transport.errors import TABLE, oauth_failure
from octosts.transport.oauth import (
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    MAX_FORM_BYTES,
    TOKEN_EXCHANGE,
    TOKEN_PATH,
    token_exchange_request,
)
from tests.unit.test_transport_errors import TRANSCODER_HTTP

C = grpc.StatusCode
FORM = "application/x-www-form-urlencoded"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
BASE = {
    "grant_type": TOKEN_EXCHANGE,
    "subject_token": JWT,
    "subject_token_type": JWT_TOKEN_TYPE,
    "audience": "octo-org/demo",
    "scope": "ci",
}


def read(fields: object, content_type: str = FORM) -> object:
    return token_exchange_request(urllib.parse.urlencode(fields, doseq=True).encode(), content_type)


def test_a_token_exchange_is_the_exchange_of_audience_and_scope() -> None:
    request = read(BASE)
    assert (request.bearer, request.scope, request.identity, request.scopes) == (  # type: ignore[attr-defined]
        JWT,
        "octo-org/demo",
        "ci",
        (),
    )
    assert request.audience is None  # type: ignore[attr-defined]  # the token's aud: the policy's rule


def test_several_audiences_are_scopes() -> None:
    request = read({**BASE, "audience": ["octo-org/a", "octo-org/b"]})
    assert (request.scope, request.scopes) == ("", ("octo-org/a", "octo-org/b"))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "extra",
    [
        {"subject_token_type": ID_TOKEN_TYPE},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        {"client_id": "anything", "client_secret": "ignored", "unknown": ["1", "2"]},
        {"audience": "octo-org"},
    ],
)
def test_accepted_variants(extra: dict[str, object]) -> None:
    read({**BASE, **extra})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"grant_type": None}, "invalid_request"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": [TOKEN_EXCHANGE, TOKEN_EXCHANGE]}, "invalid_request"),
        ({"subject_token": None}, "invalid_request"),
        ({"subject_token": ""}, "invalid_request"),
        ({"subject_token_type": None}, "invalid_request"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request"),
        ({"actor_token": JWT}, "invalid_request"),
        ({"actor_token_type": JWT_TOKEN_TYPE}, "invalid_request"),
        ({"requested_token_type": ID_TOKEN_TYPE}, "invalid_request"),
        ({"audience": None}, "invalid_request"),
        ({"audience": "a/b/c"}, "invalid_target"),
        ({"audience": ["octo-org/a", "-bad"]}, "invalid_target"),
        ({"resource": "https://github.com/octo-org/demo"}, "invalid_target"),
        ({"scope": None}, "invalid_scope"),
        ({"scope": "ci deploy"}, "invalid_scope"),
        ({"scope": "../etc"}, "invalid_scope"),
        ({"scope": ["ci", "ci"]}, "invalid_request"),
    ],
)
def test_refused_requests(change: dict[str, object], reason: str) -> None:
    fields = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(errors.InvalidRequest) as refused:
        read(fields)
    assert refused.value.reason == reason
    assert JWT not in str(refused.value)


@pytest.mark.parametrize(
    ("subject", "reason"),
    [("x" * (MAX_TOKEN_BYTES + 1), "token_too_large"), ("a b", "token_malformed")],
)
def test_subject_tokens_no_jwt_can_be_are_malformed(subject: str, reason: str) -> None:
    with pytest.raises(errors.TokenMalformed) as refused:
        read({**BASE, "subject_token": subject})
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"grant_type=x", "application/json"),
        (b"grant_type=x", "text/plain"),
        (b"\xff\xfe", FORM),
        (b"x" * (MAX_FORM_BYTES + 1), FORM),
        (b"grant_type=x", f"{FORM}; charset=latin-1"),
    ],
)
def test_only_sane_utf8_forms_are_read(body: bytes, content_type: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        token_exchange_request(body, content_type)
    assert refused.value.reason == "invalid_request"


# -- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (errors.InvalidRequest("x"), 400, "invalid_request"),
        (
            errors.InvalidRequest("x", reason="unsupported_grant_type"),
            400,
            "unsupported_grant_type",
        ),
        (errors.InvalidRequest("x", reason="invalid_scope"), 400, "invalid_scope"),
        (errors.InvalidRequest("x", reason="invalid_target"), 400, "invalid_target"),
        (errors.InvalidRequest("x", reason=errors.INVALID_SCOPES), 400, "invalid_target"),
        (errors.TokenMalformed("x", reason=errors.TOKEN_MISSING), 400, "invalid_request"),
        (errors.TokenExpired("x"), 400, "invalid_grant"),
        (errors.TokenSignatureInvalid("x"), 400, "invalid_grant"),
        (errors.IssuerRejected("x"), 400, "invalid_grant"),
        (errors.PolicyDenied("x"), 400, "invalid_target"),
        (errors.PolicyNotFound("x"), 400, "invalid_target"),
        (errors.NoInstallation("x"), 400, "invalid_target"),
        (errors.RateLimited("x", retry_after=30), 429, "temporarily_unavailable"),
        (errors.GitHubUnavailable("x"), 503, "temporarily_unavailable"),
        (errors.IssuerUnavailable("x"), 503, "temporarily_unavailable"),
        (errors.StsError("x"), 500, "server_error"),
        (RuntimeError("secret internals"), 500, "server_error"),
    ],
)
def test_oauth_answers(exc: BaseException, status: int, error: str) -> None:
    failed = oauth_failure(exc, "rid-1")
    assert (failed.http_status, failed.error) == (status, error)
    # The transcoder turns the gRPC code into the HTTP status RFC 6749 asks for.
    assert TRANSCODER_HTTP[failed.code] == status
    body = json.loads(failed.body())
    assert body == {"error": error, "error_description": failed.description}
    assert "rid-1" in failed.description
    assert "secret internals" not in failed.description


def test_every_row_names_an_oauth_error() -> None:
    registered = {
        "invalid_request",
        "invalid_grant",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "temporarily_unavailable",
        "server_error",
    }
    assert {row.oauth for row in TABLE} <= registered


def test_retry_after_and_hidden_denials_carry_over() -> None:
    assert oauth_failure(errors.RateLimited("x", retry_after=29.2), "r").retry_after == 30
    quiet = oauth_failure(
        errors.PolicyDenied("subject 'repo:x' no", reason="subject_mismatch"), "r"
    )
    assert "subject_mismatch" not in quiet.description
    assert "repo:x" not in quiet.description
    loud = oauth_failure(
        errors.PolicyDenied("subject 'repo:x' no", reason="subject_mismatch"), "r", verbose=True
    )
    assert "subject_mismatch" in loud.description


def test_descriptions_keep_to_rfc6749_characters() -> None:
    failed = oauth_failure(errors.InvalidRequest('scope "a\\b"\n\té'), "r")
    assert all(
        c in "\x20\x21" or 0x23 <= ord(c) <= 0x5B or 0x5D <= ord(c) <= 0x7E
        for c in failed.description
    )


# -- the endpoint: proto binding, Envoy route ------------------------------------------------


def test_the_proto_binding_is_the_endpoint() -> None:
    from google.api import annotations_pb2  # noqa: PLC0415

    method = oauth_pb2.DESCRIPTOR.services_by_name["OAuthTokenService"].methods_by_name["Token"]
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    assert (rule.post, rule.body) == (TOKEN_PATH, "*")


def test_envoy_routes_the_endpoint_without_ext_authz_and_never_cached(tmp_path: Path) -> None:
    params = EnvoyParams(
        listen_port=8443,
        admin_port=9901,
        cert_path=tmp_path / "c.pem",
        key_path=tmp_path / "k.pem",
        descriptor_path=tmp_path / "d.pb",
        upstreams=[Upstream("127.0.0.1", 8080)],
    )
    config = yaml.safe_load(render_config(params))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    post, other = [r for r in routes if r["match"].get("path") == TOKEN_PATH]
    assert post["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "POST"}}]
    per_filter = post["typed_per_filter_config"]
    assert per_filter["envoy.filters.http.ext_authz"]["disabled"] is True
    transcoder = per_filter["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["services"] == ["octosts.gateway.v1.OAuthTokenService"]
    assert per_filter["envoy.filters.http.buffer"]["buffer"]["max_request_bytes"] == MAX_FORM_BYTES
    headers = {h["header"]["key"]: h["header"]["value"] for h in post["response_headers_to_add"]}
    assert headers == {"cache-control": "no-store", "pragma": "no-cache"}
    assert other["direct_response"]["status"] == 405
    mappers = hcm["typed_config"]["local_reply_config"]["mappers"]
    # The endpoint's mappers come first: no other mapper gives its answers another shape.
    assert [m["body_format_override"]["json_format"].get("error") for m in mappers[:2]] == [
        "temporarily_unavailable",
        "invalid_request",
    ]
