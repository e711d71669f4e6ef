"""Several repositories in one token through the JSON gateway (real Envoy, TLS, transcoder).

``GET /sts/exchange?scopes=A&scopes=B`` and ``POST {"scopes": [A, B]}`` reach
``octosts.v1.ExchangeRequest.scopes``; the octo-sts action's ``?scope=X&scopes=X`` stays one
scope (docs/compatibility.md, "scope and scopes"). The clients' own tests are in
test_clients_live.py; the call budget is held in tests/integration/test_multi_repo.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from octosts.dev.stack import DevStack
from tests.e2e.test_clients_live import IDENTITY, SCOPES, allowed_token, denied_token

pytestmark = pytest.mark.e2e


def get(stack: DevStack, query: list[tuple[str, str]], oidc: str) -> httpx.Response:
    with httpx.Client(verify=stack.client_tls(), timeout=15) as client:
        return client.get(
            f"{stack.gateway_url}/sts/exchange",
            params=query,
            headers={"authorization": f"Bearer {oidc}"},
        )


def usable_in(stack: DevStack, token: str, scope: str) -> bool:
    resp = httpx.get(
        f"{stack.github_url}/repos/{scope}/contents/README.md",
        headers={"authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    return resp.status_code == 200


def assert_both(stack: DevStack, body: dict[str, Any]) -> None:
    assert body["repositories"] == ["demo", "infra"]
    # demo grants contents: read + issues: write; infra contents: read + pull_requests: write.
    assert body["permissions"] == {"contents": "read"}
    assert all(usable_in(stack, body["token"], scope) for scope in SCOPES)
    assert not usable_in(stack, body["token"], "octo-user/hello")


def test_get_with_repeated_scopes(stack: DevStack) -> None:
    query = [("scopes", SCOPES[0]), ("scopes", SCOPES[1]), ("identity", IDENTITY)]
    resp = get(stack, query, allowed_token(stack))
    assert resp.status_code == 200, resp.text
    assert_both(stack, resp.json())


def test_json_post_with_scopes(stack: DevStack) -> None:
    with httpx.Client(verify=stack.client_tls(), timeout=15) as client:
        resp = client.post(
            f"{stack.gateway_url}/sts/exchange",
            json={"scopes": list(SCOPES), "identity": IDENTITY},
            headers={"authorization": f"Bearer {allowed_token(stack)}"},
        )
    assert resp.status_code == 200, resp.text
    assert_both(stack, resp.json())


@pytest.mark.parametrize(
    "query",
    [
        # The octo-sts action: scope repeated in scopes is one scope, an owner scope included.
        [("scope", "octo-org"), ("scopes", "octo-org"), ("identity", "deploy")],
        [("scope", SCOPES[0]), ("scopes", SCOPES[0]), ("identity", IDENTITY)],
        # scopes alone with one entry (was 400 before octosts.v1 had the field).
        [("scopes", SCOPES[0]), ("identity", IDENTITY)],
    ],
)
def test_one_scope_in_scopes_is_a_single_scope_exchange(
    stack: DevStack, query: list[tuple[str, str]]
) -> None:
    oidc = allowed_token(stack)
    if query[-1] == ("identity", "deploy"):  # the org policy trusts production deployments
        oidc = stack.token("repo:octo-org/demo:environment:production")
    resp = get(stack, query, oidc)
    assert resp.status_code == 200, resp.text
    assert resp.json()["repositories"] == ["demo"]


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ([("scopes", SCOPES[0]), ("scopes", "octo-user/hello")], 400, "invalid_scopes"),
        ([("scope", "octo-org/other"), *(("scopes", s) for s in SCOPES)], 400, "ambiguous_scope"),
        ([("scopes", "octo-org"), ("scopes", SCOPES[1])], 400, "invalid_scopes"),
        ([("scope", SCOPES[0]), ("scope", SCOPES[1])], 400, "repeated_parameter"),
    ],
)
def test_what_one_token_cannot_cover_is_400(
    stack: DevStack, query: list[tuple[str, str]], status: int, reason: str
) -> None:
    resp = get(stack, [*query, ("identity", IDENTITY)], allowed_token(stack))
    assert resp.status_code == status, resp.text
    assert reason in resp.json()["message"]


def test_one_refusing_policy_refuses_the_token(stack: DevStack) -> None:
    # The feature-branch token matches neither policy; a 403 says nothing about which.
    query = [*(("scopes", s) for s in SCOPES), ("identity", IDENTITY)]
    resp = get(stack, query, denied_token(stack))
    assert resp.status_code == 403
    assert resp.json()["code"] == 7
