"""Edge JWT verification (octosts.dev.edge_jwt) on the real stack: Envoy's jwt_authn refuses a
bad token of an exact allowlisted issuer with ext_authz's own 401, and no Check reaches a
replica; every other token still goes through ext_authz, and good tokens still exchange.

Checks are counted where they land: the replicas' ``octo_sts_ext_authz_decisions_total``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev import edge_jwt
from octosts.dev.issuer import DevIssuer, generate_key, load_state, mint_token
from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
EXCHANGE = "/sts/exchange?scope=octo-org/demo&identity=ci"
# The second issuer is allowed by a pattern (and, being plain http on loopback, listed as
# insecure): not an exact allowlist entry, so Envoy has no provider for it.
PATTERN_PATH = "/pattern-tenant"


@pytest.fixture(scope="module")
def pattern_issuer() -> Iterator[DevIssuer]:
    with DevIssuer(path_prefix=PATTERN_PATH, keys=[generate_key("ec")]) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pattern_issuer: DevIssuer
) -> Iterator[DevStack]:
    def prepare(stack: DevStack) -> None:
        stack.extra_env.update(
            {
                "OCTOSTS_INSECURE_ISSUERS": f"{stack.issuer_url},{pattern_issuer.url}",
                "OCTOSTS_ISSUER_PATTERNS": r"http://127\.0\.0\.1:[0-9]+/pattern-[a-z]+",
            }
        )

    running = start_stack(
        tmp_path_factory.mktemp("edge-jwt"), replicas=1, edge_jwt=True, prepare=prepare
    )
    try:
        yield running
    finally:
        running.stop()


def _claims(stack: DevStack, **extra: Any) -> dict[str, Any]:
    return {"sub": SUB, "aud": stack.domain, "workflow_ref": WORKFLOW, **extra}


def _impostor_token(stack: DevStack) -> str:
    """The dev issuer's ``iss`` and ``kid``, another key: a bad signature."""
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    impostor = generate_key("rsa", kid=state.key.kid)
    return mint_token(impostor, stack.issuer_url, _claims(stack))


def _checks(stack: DevStack) -> dict[str, float]:
    """Check decisions so far, summed over the replicas: {"allow": n, "deny": n}."""
    counts = {"allow": 0.0, "deny": 0.0}
    for port in stack.ports.metrics:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in text.splitlines():
            found = re.match(
                r'octo_sts_ext_authz_decisions_total\{decision="(\w+)".*\} (\S+)', line
            )
            if found:
                counts[found[1]] += float(found[2])
    return counts


def _get(stack: DevStack, token: str) -> tuple[httpx.Response, dict[str, float]]:
    """GET the exchange with ``token``; the answer and the Checks it caused."""
    before = _checks(stack)
    with httpx.Client(verify=stack.client_tls(), timeout=10) as client:
        reply = client.get(
            stack.gateway_url + EXCHANGE, headers={"authorization": f"Bearer {token}"}
        )
    after = _checks(stack)
    return reply, {k: after[k] - before[k] for k in after}


def _refusal(reply: httpx.Response) -> tuple[int, str | None, str, dict[str, Any]]:
    body = json.loads(reply.text)
    assert re.fullmatch(r"[0-9a-f-]{36}", body.pop("request_id")), reply.text
    return (
        reply.status_code,
        reply.headers.get("www-authenticate"),
        reply.headers["content-type"],
        body,
    )


def test_config_has_providers_for_the_exact_issuers_only(stack: DevStack) -> None:
    config = yaml.safe_load((stack.workdir / "envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (jwt,) = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == edge_jwt.FILTER]
    providers = jwt["typed_config"]["providers"].values()
    assert [p["issuer"] for p in providers] == [stack.issuer_url]
    assert all(p["forward"] for p in providers)  # the service still reads the token


def test_bad_signature_of_an_exact_issuer_is_refused_at_the_edge(
    stack: DevStack, pattern_issuer: DevIssuer
) -> None:
    reply, checks = _get(stack, _impostor_token(stack))
    assert checks == {"allow": 0, "deny": 0}
    # The same refusal from ext_authz: a bad signature of the pattern-allowed issuer.
    (key,) = pattern_issuer.keys
    impostor = generate_key("ec", kid=key.kid)
    reference, ref_checks = _get(stack, mint_token(impostor, pattern_issuer.url, _claims(stack)))
    assert ref_checks == {"allow": 0, "deny": 1}
    assert (
        _refusal(reply)
        == _refusal(reference)
        == (
            401,
            'Bearer error="invalid_token"',
            "application/json",
            {"code": 16, "message": "invalid bearer token (token_signature_invalid)"},
        )
    )


@pytest.mark.parametrize("claims", [{"exp": -3600}, {"nbf": 3600}], ids=["expired", "not_yet"])
def test_expired_token_of_an_exact_issuer_is_refused_at_the_edge(
    stack: DevStack, claims: dict[str, int]
) -> None:
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    now = int(time.time())
    timed = {name: now + offset for name, offset in claims.items()}
    token = mint_token(state.key, stack.issuer_url, _claims(stack, iat=now - 7200, **timed))
    reply, checks = _get(stack, token)
    assert checks == {"allow": 0, "deny": 0}
    assert _refusal(reply)[0::3] == (
        401,
        {"code": 16, "message": "invalid bearer token (token_expired)"},
    )


def test_good_token_of_an_exact_issuer_still_exchanges_through_ext_authz(stack: DevStack) -> None:
    reply, checks = _get(stack, stack.token(SUB, workflow_ref=WORKFLOW))
    assert reply.status_code == 200, reply.text
    assert reply.json()["token"].startswith("ghs_")
    assert checks == {"allow": 1, "deny": 0}


def test_pattern_allowed_issuer_goes_to_ext_authz(
    stack: DevStack, pattern_issuer: DevIssuer
) -> None:
    (key,) = pattern_issuer.keys
    reply, checks = _get(stack, mint_token(key, pattern_issuer.url, _claims(stack)))
    # Check verified it (the policy names the dev issuer, so the Exchange then refuses it).
    assert checks == {"allow": 1, "deny": 0}
    assert reply.status_code == 403, reply.text


@pytest.mark.parametrize("case", ["unknown_kid", "malformed", "lowercase_scheme"])
def test_what_the_edge_cannot_judge_goes_to_ext_authz(stack: DevStack, case: str) -> None:
    """A kid Envoy's cached JWKS lacks (keys rotated: the service refetches), a token Envoy
    cannot parse, a scheme it does not extract: ext_authz decides, as without edge JWT."""
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    headers = {"authorization": f"Bearer {stack.token(SUB)}"}
    if case == "unknown_kid":
        rotated = generate_key("rsa", kid="rotated-key")
        headers["authorization"] = f"Bearer {mint_token(rotated, stack.issuer_url, _claims(stack))}"
    elif case == "malformed":
        headers["authorization"] = "Bearer not.a.jwt"
    else:
        headers["authorization"] = f"bearer {_impostor_token(stack)}"
    before = _checks(stack)
    with httpx.Client(verify=stack.client_tls(), timeout=10) as client:
        reply = client.get(stack.gateway_url + EXCHANGE, headers=headers)
    after = _checks(stack)
    assert reply.status_code == 401, reply.text
    assert after["deny"] - before["deny"] == 1


def test_grpc_callers_get_unauthenticated_from_the_edge(stack: DevStack) -> None:
    assert stack.certs is not None
    creds = grpc.ssl_channel_credentials(Path(stack.ca_cert).read_bytes())
    before = _checks(stack)
    with grpc.secure_channel(f"localhost:{stack.ports.gateway}", creds) as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=[("authorization", f"Bearer {_impostor_token(stack)}")],
                timeout=10,
            )
    assert _checks(stack) == before
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "token_signature_invalid" in (refused.value.details() or "")
