"""An attacker-run issuer ([hardening-2] finding 3): what its keys may make a token cost.

The verifier reads the JWKS over HTTP from a real issuer on loopback. The cost of a
rejection is bounded by operation counts, not by the clock: at most ``MAX_KEYS_TRIED``
signature checks per token, each against a key of at most ``MAX_RSA_MODULUS_BITS`` with
an exponent of at most ``MAX_RSA_EXPONENT`` (bench/hostile_verify.py measures the CPU).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from octosts.adapters.oidc import OidcConfig, OidcVerifier, make_http_client, parse_jwks
from octosts.dev.issuer import CannedResponse, DevIssuer
from octosts.domain.errors import IssuerRejected, TokenSignatureInvalid
from octosts.domain.jwks import (
    MAX_KEYS_TRIED,
    MAX_RSA_EXPONENT,
    MAX_RSA_MODULUS_BITS,
    MIN_RSA_MODULUS_BITS,
    rsa_key_refusal,
)
from octosts.observability.metrics import Metrics
from octosts.observability.stages import TelemetryObserver
from tests.emulator import real_time_clock
from tests.hostile import (
    ALLOWED_RSA_KEYS,
    EXPENSIVE_JWKS,
    REFUSED_RSA_KEYS,
    bogus_signature_token,
    rsa_jwk,
    rsa_jwks,
)
from tests.issuers import RecordingObserver


@pytest.fixture
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as server:
        yield server


def publish(issuer: DevIssuer, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    issuer.responses[issuer.jwks_path] = CannedResponse(
        body=body, headers={"content-type": "application/json"}
    )


@pytest.fixture
async def verifier(issuer: DevIssuer) -> Any:
    config = OidcConfig(insecure_issuers=frozenset({issuer.url}))
    observer = RecordingObserver()
    async with make_http_client(config) as http:
        yield OidcVerifier(config, http=http, clock=real_time_clock(), observer=observer), observer


def test_the_caps_are_what_the_docs_say() -> None:
    assert (MIN_RSA_MODULUS_BITS, MAX_RSA_MODULUS_BITS) == (2048, 4096)
    assert MAX_RSA_EXPONENT == 65537
    assert MAX_KEYS_TRIED == 4


@pytest.mark.parametrize(("jwk", "reason"), REFUSED_RSA_KEYS)
def test_expensive_or_weak_rsa_keys_are_refused(jwk: dict[str, Any], reason: str) -> None:
    assert rsa_key_refusal(jwk) == reason
    parsed = parse_jwks({"keys": [jwk, *ALLOWED_RSA_KEYS]})
    assert parsed.refused == {reason: 1}
    assert len(parsed.keys) == len(ALLOWED_RSA_KEYS)


@pytest.mark.parametrize("jwk", ALLOWED_RSA_KEYS)
def test_keys_within_the_caps_are_kept(jwk: dict[str, Any]) -> None:
    assert rsa_key_refusal(jwk) is None
    assert len(parse_jwks({"keys": [jwk]}).usable()) == 1


async def test_the_expensive_issuer_is_refused_when_its_jwks_is_read(
    issuer: DevIssuer, verifier: Any
) -> None:
    checker, observer = verifier
    publish(issuer, EXPENSIVE_JWKS)
    for seed in range(3):  # unique bogus signatures, no kid
        token = bogus_signature_token(issuer.url, seed=seed, signature_bytes=2048)
        with pytest.raises(IssuerRejected, match="no usable signature keys"):
            await checker.verify(token)
    [jwks] = observer.find("jwks")  # read once; the failure is remembered
    assert jwks.notes["refused.rsa_modulus_too_large"] == 30
    assert observer.find("signature_verify") == []  # not one signature check
    assert issuer.requests[issuer.jwks_path] == 1


@pytest.mark.parametrize("kid", [None, "shared"], ids=["no-kid", "shared-kid"])
async def test_a_token_is_checked_against_at_most_four_keys(
    issuer: DevIssuer, verifier: Any, kid: str | None
) -> None:
    checker, observer = verifier
    # The most a JWKS may hold, every key as large as allowed and matching the token.
    extra = {"kid": kid} if kid else {}
    publish(issuer, rsa_jwks(100, MAX_RSA_MODULUS_BITS, MAX_RSA_EXPONENT, **extra))
    for seed in range(3):
        token = bogus_signature_token(issuer.url, seed=seed, kid=kid)
        with pytest.raises(TokenSignatureInvalid, match="does not verify"):
            await checker.verify(token)
    checks = observer.find("signature_verify")
    assert [stage.notes["keys_tried"] for stage in checks] == [MAX_KEYS_TRIED] * 3
    assert [stage.notes["refused.too_many_candidate_keys"] for stage in checks] == [1] * 3


async def test_a_genuine_key_past_the_first_four_is_not_reached(
    issuer: DevIssuer, verifier: Any
) -> None:
    # The cap is a rule, not a hint: a kid-less token signed by the fifth matching key fails.
    checker, observer = verifier
    genuine = issuer.add_key("rsa")
    decoys = [rsa_jwk(2048, 65537, seed=i, alg="RS256") for i in range(MAX_KEYS_TRIED)]
    publish(issuer, {"keys": [*decoys, genuine.public_jwk(publish_alg=True)]})
    payload = {"iss": issuer.url, "sub": "s", "exp": real_time_clock().now() + 600}
    kidless = jwt.encode(payload, genuine.private_key, algorithm="RS256")
    with pytest.raises(TokenSignatureInvalid, match="does not verify"):
        await checker.verify(kidless)
    # With its kid the same key is found at once.
    token = await checker.verify(issuer.mint({"sub": "s"}, kid=genuine.kid))
    assert token.subject == "s"
    assert observer.find("signature_verify")[-1].notes["keys_tried"] == 1


async def test_refusals_reach_the_metrics(issuer: DevIssuer) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = TelemetryObserver(metrics, TracerProvider().get_tracer("t"))
    config = OidcConfig(insecure_issuers=frozenset({issuer.url}))
    keys = [rsa_jwk(16384, 65537, seed=1), rsa_jwk(2048, 2**64 - 1, seed=2)]
    publish(issuer, {"keys": keys + rsa_jwks(6, 2048, 65537, seed=3)["keys"]})
    async with make_http_client(config) as http:
        checker = OidcVerifier(config, http=http, clock=real_time_clock(), observer=observer)
        with pytest.raises(TokenSignatureInvalid):
            await checker.verify(bogus_signature_token(issuer.url, seed=1, signature_bytes=256))

    def refused(stage: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "octo_sts_refusals_total", {"stage": stage, "reason": reason}
        )

    assert refused("jwks", "rsa_modulus_too_large") == 1
    assert refused("jwks", "rsa_exponent_not_allowed") == 1
    assert refused("signature_verify", "too_many_candidate_keys") == 1
