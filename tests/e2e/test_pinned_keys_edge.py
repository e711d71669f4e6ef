"""Pinned keys through the real stack: Envoy's ext_authz, then Exchange, for an issuer that
neither the edge nor the replicas can reach (a private address their SSRF guard refuses).

The edge checks a ``GET /sts/exchange`` token as Exchange will (docs/architecture.md,
"Order of checks"): with the keys the named policy pins. It never passes on a token it could
not verify: on the body and gRPC routes it cannot see the scope, and a pinned issuer's token
is refused there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.envoy import EnvoyError
from octosts.dev.issuer import SigningKey, generate_key, mint_token
from octosts.dev.stack import EXAMPLE_REPOS, DevStack, StackError, StackPorts
from tests.e2e.envoy_harness import unique_base_id
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    assert_token_json,
    bearer,
    counted,
    denials,
    exchanges,
    grpc_channel,
    http,
)

pytestmark = pytest.mark.e2e

K8S = "https://10.96.0.1:6443"
SUB = "system:serviceaccount:ci:deploy"
KEY = generate_key("rsa", kid="cluster-1")
OTHER = generate_key("ec", kid="cluster-b")
FORGER = generate_key("rsa", kid="cluster-1")  # the same kid, another key
DEMO = {"scope": "octo-org/demo", "identity": "k8s"}


def pinned_policy(key: SigningKey) -> str:
    jwks = json.dumps({"keys": [key.public_jwk(publish_alg=True)]})
    return f"issuer: {K8S}\nsubject: {SUB}\npermissions:\n  contents: read\njwks: {jwks}\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("pinned")
    repos = root / "repos"
    shutil.copytree(EXAMPLE_REPOS, repos)
    for repo, key in (("demo", KEY), ("infra", OTHER)):
        path = repos / "octo-org" / repo / ".github/chainguard/k8s.sts.yaml"
        path.write_text(pinned_policy(key))
    running = None
    for attempt in (1, 2):  # free ports are bound later by the children: retry once
        candidate = DevStack(
            workdir=root / f"try{attempt}",
            ports=StackPorts.free(2),
            base_id=unique_base_id(),
            repos=repos,
        )
        try:
            running = candidate.start()
            break
        except (StackError, EnvoyError):
            if attempt == 2:
                raise
    assert running is not None
    try:
        yield running
    finally:
        running.stop()


def k8s_token(stack: DevStack, key: SigningKey = KEY, **claims: Any) -> str:
    return mint_token(key, K8S, {"sub": SUB, "aud": stack.domain, **claims})


async def test_a_pinned_issuers_token_is_exchanged_through_envoy(stack: DevStack) -> None:
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=DEMO, headers=bearer(k8s_token(stack)))
    body = assert_token_json(resp)
    async with httpx.AsyncClient(base_url=stack.github_url) as github:
        readme = await github.get(
            "/repos/octo-org/demo/contents/README.md",
            headers={"authorization": f"Bearer {body['token']}"},
        )
    assert readme.status_code == 200


@pytest.mark.parametrize(
    ("key", "params"),
    [
        (FORGER, DEMO),  # the pinned issuer's name and kid, another key
        (KEY, {"scope": "octo-org/infra", "identity": "k8s"}),  # infra pins OTHER
        (KEY, {"scope": "octo-org/demo", "identity": "ci"}),  # ci pins nothing
    ],
    ids=["forged", "another-policys-keys", "unpinned-policy"],
)
async def test_the_edge_refuses_what_the_policys_keys_do_not_verify(
    stack: DevStack, key: SigningKey, params: dict[str, str]
) -> None:
    token = k8s_token(stack, key)
    before_exchange, before_deny = exchanges(stack), denials(stack)
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=params, headers=bearer(token))
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["code"] == 16
    assert token not in resp.text
    await counted(lambda: denials(stack) >= before_deny + 1, "the edge's denial")
    assert exchanges(stack) == before_exchange  # Exchange never saw it


async def test_routes_where_the_edge_cannot_see_the_scope_stay_closed(stack: DevStack) -> None:
    # JSON POST and native gRPC carry the scope in the body, which ext_authz does not see:
    # the token is checked the usual way, and a pinned issuer cannot be fetched.
    token = k8s_token(stack)
    async with http(stack) as client:
        posted = await client.post(EXCHANGE, json=DEMO, headers=bearer(token))
    assert posted.status_code == 401, posted.text
    async with grpc_channel(stack) as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Exchange(
                sts_pb2.ExchangeRequest(**DEMO), metadata=(("authorization", f"Bearer {token}"),)
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
