"""The original Octo STS's request shapes against the service over real gRPC (transport/compat.py).

``chainguard.platform.oidc.SecurityTokenService/Exchange`` as chainguard.dev/sdk fills it
(``aud``, ``scope`` + ``scopes``, ``cap``), and ``octosts.gateway.v1.FormExchangeService``, which
Envoy calls with the raw body of a form POST. Through Envoy and with the real SDK:
tests/e2e/test_compat.py and tests/e2e/test_chainguard_sdk_live.py.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
import structlog
from google.api import httpbody_pb2

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts._gen.octosts.gateway.v1 import form_pb2_grpc
from octosts.dev.github import token_sha256
from octosts.transport.compat import AMBIGUOUS_SCOPE
from tests.integration.service_harness import DOMAIN, Stack
from tests.integration.test_service import code_of, error_info

FORM = "application/x-www-form-urlencoded"


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def chainguard(stack: Stack, token: str | None = None, **fields: Any) -> Any:
    request = oidc_pb2.ExchangeRequest(**{"identity": "ci", **fields})
    return await stack.chainguard.Exchange(request, metadata=auth(token or stack.token()))


def form_call(stack: Stack, body: bytes, content_type: str = FORM, token: str | None = None) -> Any:
    stub = form_pb2_grpc.FormExchangeServiceStub(stack.channel)
    request = httpbody_pb2.HttpBody(content_type=content_type, data=body)
    return stub.Exchange(request, metadata=auth(token or stack.token()))


@pytest.mark.parametrize(
    "aud",
    [
        [DOMAIN],  # sts.New(endpoint, "<domain>")
        [""],  # sts.New(endpoint, "")
        ["ci"],  # octosts.NewTokenSourceFromValues: the identity
        ["somewhere-else", "another"],
        [],
    ],
)
async def test_aud_is_not_a_demand_on_the_token(stack: Stack, aud: list[str]) -> None:
    raw = await chainguard(stack, aud=aud, scope="octo-org/demo")
    assert raw.token.startswith("ghs_")
    assert stack.github.token_grant(raw.token) is not None


async def test_the_token_still_needs_the_policys_audience(stack: Stack) -> None:
    # Ignoring `aud` asks nothing of the token: the default rule (STS_DOMAIN in aud) still holds.
    foreign = stack.token(aud="someone-else")
    code, _ = await code_of(chainguard(stack, foreign, aud=["someone-else"], scope="octo-org/demo"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_requested_aud_is_logged_with_the_exchange(stack: Stack) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await chainguard(stack, aud=["ci", "x" * 500], scope="octo-org/demo")
    [line] = [entry for entry in logs if entry["event"] == "exchange"]
    assert line["requested_aud"] == ["ci", "x" * 100]
    assert line["result"] == "ok"


@pytest.mark.parametrize(
    "fields",
    [
        {"scopes": ["octo-org/demo"]},
        {"scope": "octo-org/demo", "scopes": ["octo-org/demo"]},
        {"scopes": ["octo-org/demo", "octo-org/demo"]},
        {"scope": "octo-org/demo"},
    ],
)
async def test_scope_is_scopes0_else_scope(stack: Stack, fields: dict[str, Any]) -> None:
    raw = await chainguard(stack, **fields)
    assert stack.github.token_grant(raw.token)["repositories"] == {"demo"}


@pytest.mark.parametrize(
    "fields",
    [
        {"scopes": ["octo-org/demo", "octo-org/other"]},
        {"scope": "octo-org/other", "scopes": ["octo-org/demo"]},
    ],
)
async def test_several_scopes_are_invalid_argument(stack: Stack, fields: dict[str, Any]) -> None:
    info = await error_info(chainguard(stack, **fields))
    assert info.reason == AMBIGUOUS_SCOPE
    code, message = await code_of(chainguard(stack, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "scope" in message


async def test_raw_token_carries_the_expiry(stack: Stack) -> None:
    raw = await chainguard(stack, scope="octo-org/demo")
    assert raw.refresh_token == ""
    grant = stack.github.token_grant(raw.token)
    assert grant is not None
    # The same instant GitHub gave the token (1 hour from the emulator's clock, which runs on
    # while the service's test clock stands still: read it from the emulator's ledger).
    [line] = [t for t in stack.github.tokens() if t["token_sha256"] == token_sha256(raw.token)]
    assert raw.expiry.seconds == int(line["expires_at"])
    assert raw.expiry.seconds - int(stack.clock.now()) in range(3590, 3610)
    assert raw.expiry.ToSeconds() > time.time()


# -- the form binding --------------------------------------------------------------------------


async def test_a_form_body_is_exchanged_for_a_raw_token(stack: Stack) -> None:
    body = b"aud=ci&cap=a&cap=b&identity=ci&scope=octo-org%2Fdemo&scopes=octo-org%2Fdemo"
    raw = await form_call(stack, body)
    assert isinstance(raw, oidc_pb2.RawToken)
    assert raw.token.startswith("ghs_")
    assert raw.expiry.seconds > 0
    assert stack.github.token_grant(raw.token)["repositories"] == {"demo"}


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"scope=octo-org%2Fdemo&identity=ci&identity=x", FORM, "repeated_parameter"),
        (b"scope=octo-org%2Fdemo&scopes=octo-org%2Fother&identity=ci", FORM, AMBIGUOUS_SCOPE),
        (b'{"scope": "octo-org/demo", "identity": "ci"}', "application/json", "bad_form"),
        (b"scope=%ff&identity=ci", FORM, "bad_form"),
    ],
)
async def test_bad_form_bodies_are_invalid_argument(
    stack: Stack, body: bytes, content_type: str, reason: str
) -> None:
    info = await error_info(form_call(stack, body, content_type))
    assert info.reason == reason
    code, _ = await code_of(form_call(stack, body, content_type))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_form_denials_are_the_usual_codes(stack: Stack) -> None:
    body = b"identity=missing&scope=octo-org%2Fdemo"
    code, _ = await code_of(form_call(stack, body))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    expired = stack.issuer.mint(
        {"sub": "repo:octo-org/demo:ref:refs/heads/main", "aud": DOMAIN},
        iat=1_600_000_000,
        exp=1_600_000_060,
    )
    code, _ = await code_of(form_call(stack, b"identity=ci&scope=octo-org%2Fdemo", token=expired))
    assert code == grpc.StatusCode.UNAUTHENTICATED
