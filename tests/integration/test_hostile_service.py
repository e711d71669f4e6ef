"""[hardening-2] findings against a real replica: real gRPC, a real issuer over HTTP.

Each test sends what an attacker sent (tests/hostile.py holds the inputs) and asserts the
answer a caller sees and what the replica counted. Before the fixes these were INTERNAL
(counted as server errors, feeding the error-rate alert and telling clients to retry).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest
import structlog

from octosts.dev.issuer import CannedResponse
from tests.hostile import (
    EXPENSIVE_JWKS,
    HOSTILE_CLAIM_IDS,
    HOSTILE_CLAIMS,
    MALFORMED_PROTOBUFS,
    bogus_signature_token,
    rsa_jwks,
)
from tests.integration.service_harness import DOMAIN, SUBJECT, Stack
from tests.polling import eventually


def hostile_token(stack: Stack, **claims: Any) -> str:
    """A token the stack's issuer signs, with ``claims`` overriding even ``iat``/``exp``."""
    base = {"sub": SUBJECT, "aud": DOMAIN, "iat": int(stack.clock.now())}
    return stack.issuer.mint({**base, **claims})


def exchanges(stack: Stack, result: str, reason: str) -> float:
    value = stack.app.metrics.registry.get_sample_value(
        "octo_sts_exchanges_total", {"result": result, "reason": reason}
    )
    return value or 0.0


async def refused(stack: Stack, token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.exchange(token=token)
    return info.value


@pytest.mark.parametrize(("name", "value", "reason"), HOSTILE_CLAIMS, ids=HOSTILE_CLAIM_IDS)
async def test_hostile_claims_are_unauthenticated(
    stack: Stack, name: str, value: Any, reason: str
) -> None:
    error = await refused(stack, hostile_token(stack, **{name: value}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert f"reason: {reason}" in (error.details() or "")
    assert exchanges(stack, "denied", reason) == 1
    assert exchanges(stack, "error", "internal") == 0
    # The replica still works for everyone else.
    assert (await stack.exchange()).token


def refusals(stack: Stack, stage: str, reason: str) -> float:
    value = stack.app.metrics.registry.get_sample_value(
        "octo_sts_refusals_total", {"stage": stage, "reason": reason}
    )
    return value or 0.0


def publish_jwks(stack: Stack, document: dict[str, Any]) -> None:
    stack.issuer.responses[stack.issuer.jwks_path] = CannedResponse(
        body=json.dumps(document).encode(), headers={"content-type": "application/json"}
    )


async def test_an_issuer_publishing_expensive_keys_is_refused(stack: Stack) -> None:
    publish_jwks(stack, EXPENSIVE_JWKS)
    for seed in range(3):
        token = bogus_signature_token(stack.issuer.url, seed=seed, signature_bytes=2048)
        error = await refused(stack, token)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "invalid_token_issuer" in (error.details() or "")
    assert refusals(stack, "jwks", "rsa_modulus_too_large") == 30
    assert exchanges(stack, "denied", "invalid_token_issuer") == 3
    assert stack.issuer.requests[stack.issuer.jwks_path] == 1  # the failure is remembered


async def test_kidless_tokens_are_checked_against_four_keys(stack: Stack) -> None:
    publish_jwks(stack, rsa_jwks(30, 4096, 65537))
    for seed in range(3):
        error = await refused(stack, bogus_signature_token(stack.issuer.url, seed=seed))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token_signature_invalid" in (error.details() or "")
    assert refusals(stack, "signature_verify", "too_many_candidate_keys") == 3


EXCHANGE_METHODS = (
    "/octosts.v1.SecurityTokenService/Exchange",
    "/chainguard.platform.oidc.SecurityTokenService/Exchange",
    "/envoy.service.auth.v3.Authorization/Check",
)


@pytest.mark.parametrize("method", EXCHANGE_METHODS)
@pytest.mark.parametrize("body", MALFORMED_PROTOBUFS)
async def test_undecodable_requests_are_invalid_argument(
    stack: Stack, method: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    raw = stack.channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    metadata = (("authorization", f"Bearer {stack.token()}"), ("x-request-id", "hostile-1"))
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(body, metadata=metadata)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "invalid request (reason: undecodable_request, request_id: hostile-1): "
        "the request is not a valid protobuf message for this method"
    )
    assert "DecodeError" not in str(error.debug_error_string())
    # Logged once, at info, without the bytes; grpc itself logs nothing.
    assert [(e["event"], e["log_level"]) for e in logs] == [("grpc.undecodable_request", "info")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    service, _, name = method.lstrip("/").rpartition("/")
    labels = {"grpc_service": service, "grpc_method": name, "grpc_code": "INVALID_ARGUMENT"}

    def handled() -> float | None:
        return stack.app.metrics.registry.get_sample_value("grpc_server_handled_total", labels)

    # The server records the RPC after the status is sent: the client may be faster.
    await eventually(
        lambda: handled() == 1, lambda: f"one INVALID_ARGUMENT counted, saw {handled()}"
    )
    # A well-formed request on the same channel still works.
    assert (await stack.exchange()).token
