"""[hardening-2] findings against a real replica: real gRPC, a real issuer over HTTP.

Each test sends what an attacker sent (tests/hostile.py holds the inputs) and asserts the
answer a caller sees and what the replica counted. Before the fixes these were INTERNAL
(counted as server errors, feeding the error-rate alert and telling clients to retry).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from octosts.dev.issuer import CannedResponse
from tests.hostile import (
    DEEP_CLAIMS,
    EXPENSIVE_JWKS,
    HOSTILE_TIMES,
    bogus_signature_token,
    case_ids,
    rsa_jwks,
)
from tests.integration.service_harness import DOMAIN, SUBJECT, Stack


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


@pytest.mark.parametrize(("name", "value"), HOSTILE_TIMES, ids=case_ids(HOSTILE_TIMES))
async def test_hostile_times_are_unauthenticated(stack: Stack, name: str, value: Any) -> None:
    error = await refused(stack, hostile_token(stack, **{name: value}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert "token_claims_invalid" in (error.details() or "")
    assert exchanges(stack, "denied", "token_claims_invalid") == 1
    assert exchanges(stack, "error", "internal") == 0


@pytest.mark.parametrize(("name", "value"), DEEP_CLAIMS, ids=case_ids(DEEP_CLAIMS))
async def test_deep_claims_are_unauthenticated(stack: Stack, name: str, value: Any) -> None:
    error = await refused(stack, hostile_token(stack, **{name: value}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert "nests deeper than 16 levels" in (error.details() or "")
    assert exchanges(stack, "denied", "token_malformed") == 1
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
