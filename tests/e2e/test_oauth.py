"""RFC 8693 token exchange at ``POST /oauth2/token``, through the real Envoy over TLS.

A generic OAuth 2.0 client, authlib's ``OAuth2Session`` (PyPI ``authlib``, over ``requests``),
fetches tokens and reads errors the way any OAuth client does; the minted tokens are then used
against the GitHub emulator. Answers Envoy gives itself on the endpoint (405, 413, no replica)
are checked with plain HTTP requests. docs/oauth.md is the contract.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from octosts.dev.envoy import free_port
from octosts.dev.stack import DevStack
from octosts.transport.oauth import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    MAX_FORM_BYTES,
    TOKEN_EXCHANGE,
)
from tests.e2e.envoy_harness import running_edge
from tests.e2e.test_clients_live import (
    IDENTITY,
    SCOPE,
    WORKFLOW,
    allowed_token,
    denied_token,
    github_status,
)

pytestmark = pytest.mark.e2e

# RFC 6749 appendix A.7: what error_description may hold.
_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


@pytest.fixture
def oauth(stack: DevStack) -> Iterator[OAuth2Session]:
    # No client authentication: the subject token is the credential.
    session = OAuth2Session(token_endpoint_auth_method="none")
    try:
        yield session
    finally:
        session.close()


def fetch(stack: DevStack, session: OAuth2Session, subject: str, **params: Any) -> Any:
    return session.fetch_token(
        f"{stack.gateway_url}/oauth2/token",
        grant_type=TOKEN_EXCHANGE,
        verify=str(stack.ca_cert),  # a request setting: REQUESTS_CA_BUNDLE beats session.verify
        timeout=15,
        subject_token=subject,
        **{"subject_token_type": JWT_TOKEN_TYPE, "audience": SCOPE, "scope": IDENTITY, **params},
    )


def post(stack: DevStack, fields: Any, **kwargs: Any) -> httpx.Response:
    with httpx.Client(verify=stack.client_tls(), timeout=15) as client:
        return client.post(f"{stack.gateway_url}/oauth2/token", data=fields, **kwargs)


def assert_rfc6749_error(response: httpx.Response, status: int, error: str) -> dict[str, str]:
    """An error answer as RFC 6749 section 5.2 has it, never cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert not any(name.startswith("grpc-") for name in response.headers)
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert _DESCRIPTION.fullmatch(body["error_description"]), body
    return body  # type: ignore[no-any-return]


# -- a standard OAuth client -------------------------------------------------------------------


@pytest.mark.parametrize("token_type", [JWT_TOKEN_TYPE, ID_TOKEN_TYPE])
def test_authlib_exchanges_an_oidc_token_for_a_github_token(
    stack: DevStack, oauth: OAuth2Session, token_type: str
) -> None:
    token = fetch(stack, oauth, allowed_token(stack), subject_token_type=token_type)
    # RFC 8693 section 2.2.1, and nothing else (authlib adds its own expires_at).
    assert set(token) - {"expires_at"} == {
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
        "scope",
    }
    assert token["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert token["token_type"] == "Bearer"
    assert 3000 < token["expires_in"] <= 3600
    assert token["scope"] == IDENTITY
    assert github_status(stack, token["access_token"]) == 200
    grant = stack_grant(stack, token["access_token"])
    assert grant["permissions"] == {"contents": "read", "issues": "write"}
    assert grant["repositories"] == ["demo"]


def stack_grant(stack: DevStack, token: str) -> dict[str, Any]:
    """The emulator's ledger line for ``token`` (found by its SHA-256, never the token)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    ledger = httpx.get(f"{stack.github_url}/_emulator/tokens", timeout=10).json()
    (entry,) = [e for e in ledger["tokens"] if e["token_sha256"] == digest]
    return entry  # type: ignore[no-any-return]


def test_the_answer_is_never_cached(stack: DevStack) -> None:
    fields = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": allowed_token(stack),
        "subject_token_type": JWT_TOKEN_TYPE,
        "audience": SCOPE,
        "scope": IDENTITY,
    }
    response = post(stack, fields)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert not any(name.startswith("grpc-") for name in response.headers)


def test_several_audiences_are_one_token_for_several_repositories(
    stack: DevStack, oauth: OAuth2Session
) -> None:
    # RFC 8693 lets audience repeat; authlib's fetch_token sends a dict (one value per name), so
    # the body is built here and authlib reads the answer.
    fields = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", allowed_token(stack)),
        ("subject_token_type", JWT_TOKEN_TYPE),
        ("audience", "octo-org/demo"),
        ("audience", "octo-org/infra"),
        ("scope", IDENTITY),
    ]
    answer = oauth.post(
        f"{stack.gateway_url}/oauth2/token",
        data=fields,
        verify=str(stack.ca_cert),
        timeout=15,
        withhold_token=True,  # the session has no access token yet: this call fetches one
    )
    token = oauth.parse_response_token(answer)
    grant = stack_grant(stack, token["access_token"])
    # demo grants contents: read + issues: write, infra contents: read + pull_requests: write.
    assert grant["permissions"] == {"contents": "read"}
    assert grant["repositories"] == ["demo", "infra"]


@pytest.mark.parametrize(
    ("params", "subject", "error"),
    [
        # The token is fine, no policy matches it: RFC 8693's "unwilling to issue for the target".
        ({}, "denied", "invalid_target"),
        ({"audience": "octo-org/nowhere"}, "allowed", "invalid_target"),
        ({"audience": "not an owner"}, "allowed", "invalid_target"),
        ({"resource": "https://github.com/octo-org/demo"}, "allowed", "invalid_target"),
        # A subject token we cannot trust.
        ({}, "expired", "invalid_grant"),
        ({}, "garbage", "invalid_grant"),
        ({}, "wrong_audience", "invalid_target"),
        # The policy's name.
        ({"scope": "ci deploy"}, "allowed", "invalid_scope"),
        ({"scope": "../ci"}, "allowed", "invalid_scope"),
        ({"scope": ""}, "allowed", "invalid_scope"),
        # The request.
        (
            {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"},
            "allowed",
            "invalid_request",
        ),
        ({"actor_token": "x", "actor_token_type": JWT_TOKEN_TYPE}, "allowed", "invalid_request"),
        ({"requested_token_type": ID_TOKEN_TYPE}, "allowed", "invalid_request"),
        ({"audience": ""}, "allowed", "invalid_request"),
    ],
)
def test_authlib_reads_rfc6749_errors(
    stack: DevStack, oauth: OAuth2Session, params: dict[str, str], subject: str, error: str
) -> None:
    token = {
        "allowed": allowed_token(stack),
        "denied": denied_token(stack),
        "expired": stack.token(
            "repo:octo-org/demo:ref:refs/heads/main", workflow_ref=WORKFLOW, ttl=-3600
        ),
        "garbage": "a.b.c",
        "wrong_audience": stack.token(
            "repo:octo-org/demo:ref:refs/heads/main", aud="elsewhere", workflow_ref=WORKFLOW
        ),
    }[subject]
    with pytest.raises(OAuthError) as refused:
        fetch(stack, oauth, token, **params)
    assert refused.value.error == error
    assert "request_id" in refused.value.description
    assert token not in refused.value.description


def test_only_token_exchange_is_granted(stack: DevStack, oauth: OAuth2Session) -> None:
    with pytest.raises(OAuthError) as refused:
        oauth.fetch_token(
            f"{stack.gateway_url}/oauth2/token",
            grant_type="client_credentials",
            verify=str(stack.ca_cert),
            timeout=15,
        )
    assert refused.value.error == "unsupported_grant_type"


# -- status codes and bodies on the wire -------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": None}, "invalid_request"),
        ({"subject_token": None}, "invalid_request"),
        ({"subject_token": "x" * 17_000}, "invalid_grant"),
        ({"scope": None}, "invalid_scope"),
        ({"audience": None}, "invalid_request"),
        ({"audience": ["octo-org/demo", "other-org/lib"]}, "invalid_target"),
        ({"scope": ["ci", "ci"]}, "invalid_request"),  # RFC 6749 3.2: no parameter twice
    ],
)
def test_errors_are_400_with_the_rfc6749_body(
    stack: DevStack, change: dict[str, Any], error: str
) -> None:
    fields: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": allowed_token(stack),
        "subject_token_type": JWT_TOKEN_TYPE,
        "audience": SCOPE,
        "scope": IDENTITY,
    }
    fields.update(change)
    body = assert_rfc6749_error(
        post(stack, {k: v for k, v in fields.items() if v is not None}), 400, error
    )
    assert fields["subject_token"] is None or fields["subject_token"] not in json.dumps(body)


def test_only_form_bodies_are_read(stack: DevStack) -> None:
    payload = {"grant_type": TOKEN_EXCHANGE, "subject_token": allowed_token(stack)}
    with httpx.Client(verify=stack.client_tls(), timeout=15) as client:
        response = client.post(f"{stack.gateway_url}/oauth2/token", json=payload)
    body = assert_rfc6749_error(response, 400, "invalid_request")
    assert "application/x-www-form-urlencoded" in body["error_description"]


def test_other_methods_are_405(stack: DevStack) -> None:
    with httpx.Client(verify=stack.client_tls(), timeout=15) as client:
        response = client.get(f"{stack.gateway_url}/oauth2/token?grant_type={TOKEN_EXCHANGE}")
    assert_rfc6749_error(response, 405, "invalid_request")
    assert response.headers["allow"] == "POST"


def test_a_body_over_the_limit_is_refused_at_the_edge(stack: DevStack) -> None:
    fields = {"grant_type": TOKEN_EXCHANGE, "padding": "x" * MAX_FORM_BYTES}
    assert_rfc6749_error(post(stack, fields), 413, "invalid_request")


async def test_no_replica_is_503_temporarily_unavailable(tmp_path: Path) -> None:
    # An edge whose only replica is not listening: Envoy answers itself.
    async with running_edge(tmp_path, [free_port()]) as edge, edge.http() as client:
        response = await client.post(
            "/oauth2/token",
            data={"grant_type": TOKEN_EXCHANGE},
        )
    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "temporarily_unavailable"
