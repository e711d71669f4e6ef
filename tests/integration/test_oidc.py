"""OidcVerifier against a real local HTTPS issuer (dev issuer, test CA)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from octosts.adapters.oidc import OidcConfig, OidcVerifier, make_http_client, system_resolver
from octosts.dev.certs import CertPaths
from octosts.dev.issuer import CannedResponse, DevIssuer, SigningKey, generate_key
from octosts.domain.errors import (
    IssuerRejected,
    IssuerUnavailable,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.issuers import IssuerAllowlist, compile_allowlist
from octosts.domain.ports import TokenVerifier
from tests.fakes import FakeClock
from tests.issuers import PUBLIC_IP, FakeResolver, RecordingObserver, raw_token, tls_client

CLAIMS = {"sub": "repo:octo/app:ref:refs/heads/main", "aud": "octo-sts.dev"}


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return generate_key("rsa", kid="rsa-1")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return generate_key("ec", kid="ec-1")


@pytest.fixture
def issuer(certs: CertPaths, rsa_key: SigningKey) -> Iterator[DevIssuer]:
    with DevIssuer(tls=certs, url_host="localhost", keys=[rsa_key]) as server:
        yield server


@pytest.fixture
async def http(certs: CertPaths) -> AsyncIterator[httpx.AsyncClient]:
    client = tls_client(certs.ca_cert)
    yield client
    await client.aclose()


@pytest.fixture
def resolver() -> FakeResolver:
    # "localhost" looks public to the guard; httpx still connects to loopback
    return FakeResolver({"localhost": [PUBLIC_IP]})


Make = Callable[..., tuple[OidcVerifier, RecordingObserver]]


@pytest.fixture
def make(http: httpx.AsyncClient, clock: FakeClock, resolver: FakeResolver) -> Make:
    def build(**config: Any) -> tuple[OidcVerifier, RecordingObserver]:
        observer = RecordingObserver()
        verifier = OidcVerifier(
            OidcConfig(**config), http=http, clock=clock, observer=observer, resolver=resolver
        )
        return verifier, observer

    return build


def fetches(issuer: DevIssuer) -> tuple[int, int]:
    return issuer.requests[issuer.discovery_path], issuer.requests[issuer.jwks_path]


async def test_rsa_token_verifies_and_keys_are_cached(issuer: DevIssuer, make: Make) -> None:
    verifier, observer = make()
    _: TokenVerifier = verifier
    token = await verifier.verify(issuer.mint(CLAIMS))
    assert token.issuer == issuer.url
    assert token.subject == CLAIMS["sub"]
    assert token.audience == ("octo-sts.dev",)
    assert token.claims["sub"] == CLAIMS["sub"]
    assert observer.names == [
        "token_parse",
        "issuer_validate",
        "discovery",
        "jwks",
        "signature_verify",
        "claims_validate",
    ]
    assert observer.find("jwks")[0].notes["cache"] == "miss"
    await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (1, 1)
    assert observer.find("jwks")[-1].notes["cache"] == "hit"


@pytest.mark.parametrize(
    ("kind", "alg", "publish_alg"),
    [
        ("ec", "ES256", True),
        ("ec384", "ES384", False),
        ("ed25519", "EdDSA", True),
        ("rsa", "PS256", False),
        ("rsa", "RS512", False),
    ],
)
async def test_key_types_and_algorithms(
    issuer: DevIssuer, make: Make, kind: Any, alg: str, *, publish_alg: bool
) -> None:
    issuer.publish_alg = publish_alg
    key = issuer.add_key(kind)
    verifier, _ = make()
    token = await verifier.verify(issuer.mint(CLAIMS, kid=key.kid, alg=alg))
    assert token.subject == CLAIMS["sub"]


async def test_algorithm_comes_from_the_jwk_not_the_token(issuer: DevIssuer, make: Make) -> None:
    # the JWK says RS256; a PS256 signature by the same key must not be accepted
    verifier, _ = make()
    with pytest.raises(TokenSignatureInvalid):
        await verifier.verify(issuer.mint(CLAIMS, alg="PS256"))


async def test_ec_key_cannot_verify_rsa_algorithm(
    issuer: DevIssuer, make: Make, ec_key: SigningKey
) -> None:
    issuer.add_key(ec_key)
    verifier, _ = make()
    token = issuer.mint(CLAIMS, kid=ec_key.kid)
    await verifier.verify(token)  # the genuine token is fine
    claims = jwt.decode(token, options={"verify_signature": False})
    signature = token.rsplit(".", 1)[1]
    forged = raw_token({"alg": "RS256", "kid": ec_key.kid}, claims).rsplit(".", 1)[0]
    with pytest.raises(TokenSignatureInvalid, match="no issuer key"):
        await verifier.verify(f"{forged}.{signature}")


async def test_tampered_payload_is_rejected(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    token = issuer.mint(CLAIMS)
    signature = token.rsplit(".", 1)[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["sub"] = "repo:octo/evil:ref:refs/heads/main"
    forged = raw_token(jwt.get_unverified_header(token), claims).rsplit(".", 1)[0]
    with pytest.raises(TokenSignatureInvalid, match="does not verify"):
        await verifier.verify(f"{forged}.{signature}")


@pytest.mark.parametrize(
    "header",
    [{"alg": "none"}, {"alg": "HS256", "kid": "rsa-1"}, {"alg": "None"}, {"kid": "rsa-1"}],
)
async def test_none_and_hmac_tokens_rejected_before_any_fetch(
    issuer: DevIssuer, make: Make, header: dict[str, Any]
) -> None:
    verifier, _ = make()
    payload = {"iss": issuer.url, "exp": time.time() + 60, **CLAIMS}
    with pytest.raises(TokenSignatureInvalid):
        await verifier.verify(raw_token(header, payload, b"x"))
    unsigned = raw_token(header, payload)
    with pytest.raises((TokenMalformed, TokenSignatureInvalid)):
        await verifier.verify(unsigned)
    assert fetches(issuer) == (0, 0)


async def test_hs256_signed_with_the_public_jwk_is_rejected(issuer: DevIssuer, make: Make) -> None:
    # the classic confusion attack: HMAC keyed with the public key material
    verifier, _ = make()
    secret = issuer.jwks()["keys"][0]["n"].encode()
    token = jwt.encode(
        {"iss": issuer.url, "exp": time.time() + 60, **CLAIMS},
        secret,
        algorithm="HS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(TokenSignatureInvalid):
        await verifier.verify(token)


async def test_key_rotation_refetches_once_per_interval(
    issuer: DevIssuer, make: Make, clock: FakeClock
) -> None:
    verifier, observer = make()
    await verifier.verify(issuer.mint(CLAIMS))
    new = issuer.add_key("ec")
    issuer.remove_key("rsa-1")
    token = await verifier.verify(issuer.mint(CLAIMS, kid=new.kid))
    assert token.subject == CLAIMS["sub"]
    assert fetches(issuer) == (2, 2)
    assert observer.find("jwks")[-1].notes["cache"] == "refetch"
    # another unknown kid within 30 s: no fetch, rejected
    newer = issuer.add_key("ec")
    with pytest.raises(TokenSignatureInvalid):
        await verifier.verify(issuer.mint(CLAIMS, kid=newer.kid))
    assert fetches(issuer) == (2, 2)
    clock.advance(31)
    await verifier.verify(issuer.mint(CLAIMS, kid=newer.kid))
    assert fetches(issuer) == (3, 3)


async def test_junk_kids_trigger_one_refetch(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    await verifier.verify(issuer.mint(CLAIMS))
    for i in range(5):
        with pytest.raises(TokenSignatureInvalid):
            await verifier.verify(issuer.mint(CLAIMS, headers={"kid": f"junk-{i}"}))
    assert fetches(issuer) == (2, 2)


async def test_unknown_kid_on_a_cold_issuer_fetches_once(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    with pytest.raises(TokenSignatureInvalid):
        await verifier.verify(issuer.mint(CLAIMS, headers={"kid": "junk"}))
    assert fetches(issuer) == (1, 1)


async def test_concurrent_cold_verifies_share_one_fetch(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    tokens = [issuer.mint({**CLAIMS, "n": i}) for i in range(50)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [r.claims["n"] for r in results] == list(range(50))
    assert fetches(issuer) == (1, 1)


async def test_expired_token(issuer: DevIssuer, make: Make, clock: FakeClock) -> None:
    verifier, _ = make(leeway_seconds=30)
    token = issuer.mint(CLAIMS, ttl=60)
    clock.advance(60 + 29)
    await verifier.verify(token)  # inside the leeway
    clock.advance(2)
    with pytest.raises(TokenExpired):
        await verifier.verify(token)


async def test_not_yet_valid_token(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make(leeway_seconds=5)
    with pytest.raises(TokenExpired, match="nbf"):
        await verifier.verify(issuer.mint(CLAIMS, nbf=int(time.time()) + 120))
    with pytest.raises(TokenExpired, match="iat"):
        await verifier.verify(issuer.mint(CLAIMS, iat=int(time.time()) + 120))
    await verifier.verify(issuer.mint(CLAIMS, nbf=int(time.time()) + 2))


async def test_missing_exp_is_rejected(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    token = jwt.encode(
        {"iss": issuer.url, **CLAIMS},
        issuer.keys[0].private_key,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(TokenClaimsInvalid):
        await verifier.verify(token)


async def test_bad_subject_rejected_after_verification(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    with pytest.raises(TokenClaimsInvalid) as info:
        await verifier.verify(issuer.mint({**CLAIMS, "sub": "repo:a/b;rm -rf"}))
    assert info.value.reason == "invalid_token_subject"


async def test_mismatched_issuer_in_discovery(issuer: DevIssuer, make: Make) -> None:
    issuer.discovery_issuer = issuer.url + "/other"
    verifier, _ = make()
    with pytest.raises(IssuerRejected, match="does not match"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (1, 0)


@pytest.mark.parametrize("send_length", [True, False])
async def test_oversized_documents(issuer: DevIssuer, make: Make, *, send_length: bool) -> None:
    big = b'{"keys": [], "pad": "' + b"x" * 200_000 + b'"}'
    issuer.responses[issuer.jwks_path] = CannedResponse(body=big, send_length=send_length)
    verifier, _ = make()
    with pytest.raises(IssuerUnavailable, match="JWKS response exceeds 102400 bytes"):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_compressed_documents(issuer: DevIssuer, make: Make) -> None:
    gzipped = gzip.compress(b'{"keys": []}')
    issuer.responses[issuer.jwks_path] = CannedResponse(
        body=gzipped, headers={"content-encoding": "gzip"}
    )
    verifier, _ = make()
    with pytest.raises(IssuerUnavailable, match="JWKS response is compressed"):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_garbage_and_failing_issuer(issuer: DevIssuer, make: Make, clock: FakeClock) -> None:
    issuer.responses[issuer.discovery_path] = CannedResponse(body=b"<html>nope</html>")
    verifier, _ = make(negative_ttl=10)
    with pytest.raises(IssuerUnavailable, match="not JSON"):
        await verifier.verify(issuer.mint(CLAIMS))
    issuer.responses[issuer.discovery_path] = CannedResponse(status=500, body=b"{}")
    # negatively cached: no second request within the negative TTL
    with pytest.raises(IssuerUnavailable, match="not JSON"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (1, 0)
    clock.advance(11)
    with pytest.raises(IssuerUnavailable, match="HTTP 500"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (2, 0)
    clock.advance(11)
    del issuer.responses[issuer.discovery_path]
    await verifier.verify(issuer.mint(CLAIMS))


async def test_404_discovery_is_rejected(issuer: DevIssuer, make: Make) -> None:
    issuer.responses[issuer.discovery_path] = CannedResponse(status=404, body=b"{}")
    verifier, _ = make()
    with pytest.raises(IssuerRejected, match="HTTP 404"):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_stale_keys_served_while_issuer_is_down(
    issuer: DevIssuer, make: Make, clock: FakeClock
) -> None:
    verifier, _ = make(cache_ttl=60, cache_stale_for=600)
    await verifier.verify(issuer.mint(CLAIMS))
    issuer.responses[issuer.discovery_path] = CannedResponse(status=503)
    clock.advance(120)
    await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (2, 1)
    clock.advance(600)
    with pytest.raises(IssuerUnavailable):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_slow_issuer_times_out(issuer: DevIssuer, make: Make) -> None:
    issuer.delay = 300  # answers only when the fixture stops it: only the timeout ends the wait
    verifier, _ = make(read_timeout=0.3)
    with pytest.raises(IssuerUnavailable, match="timed out"):
        # The outer bound turns a verifier that waits for the answer into a failure.
        await asyncio.wait_for(verifier.verify(issuer.mint(CLAIMS)), timeout=30)
    assert fetches(issuer) == (1, 0)  # the request reached the issuer, which never answered


async def test_good_redirect_is_followed(issuer: DevIssuer, make: Make) -> None:
    issuer.redirect(issuer.jwks_path, issuer.base_url + "/keys-v2")
    issuer.responses["/keys-v2"] = CannedResponse(body=json.dumps(issuer.jwks()).encode())
    verifier, _ = make()
    await verifier.verify(issuer.mint(CLAIMS))
    assert issuer.requests["/keys-v2"] == 1


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("http://localhost:{port}/keys", IssuerRejected, "https"),
        ("https://127.0.0.1:{port}/keys", IssuerRejected, "non-public"),
        ("https://user@localhost:{port}/keys", IssuerRejected, "userinfo"),
        ("https://localhost:{port}/keys?x=1", IssuerRejected, "query"),
        ("https://localhost:{port}/a/../keys", IssuerRejected, r"\.\."),
    ],
)
async def test_bad_redirect_targets(
    issuer: DevIssuer, make: Make, target: str, error: type[Exception], match: str
) -> None:
    issuer.redirect(issuer.jwks_path, target.format(port=issuer.port))
    issuer.responses["/keys"] = CannedResponse(body=b"{}")
    verifier, _ = make()
    with pytest.raises(error, match=match):
        await verifier.verify(issuer.mint(CLAIMS))
    assert issuer.requests["/keys"] == 0


async def test_redirect_loop_is_capped(issuer: DevIssuer, make: Make) -> None:
    issuer.redirect(issuer.jwks_path, issuer.jwks_path)
    verifier, _ = make(max_redirects=3)
    with pytest.raises(IssuerRejected, match="redirects"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert issuer.requests[issuer.jwks_path] == 4


async def test_jwks_uri_must_pass_the_rules(issuer: DevIssuer, make: Make) -> None:
    issuer.jwks_uri = f"http://localhost:{issuer.port}/.well-known/jwks"
    verifier, _ = make()
    with pytest.raises(IssuerRejected, match="jwks_uri"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (1, 0)


async def test_ssrf_guard_refuses_loopback_unless_allowed(
    certs: CertPaths, rsa_key: SigningKey, http: httpx.AsyncClient
) -> None:
    with DevIssuer(tls=certs, url_host="localhost", keys=[rsa_key]) as server:
        guarded = OidcVerifier(OidcConfig(), http=http, resolver=system_resolver)
        with pytest.raises(IssuerRejected, match="non-public"):
            await guarded.verify(server.mint(CLAIMS))
        assert fetches(server) == (0, 0)
        allowed = OidcVerifier(
            OidcConfig(insecure_issuers=frozenset({server.url})),
            http=http,
            resolver=system_resolver,
        )
        await allowed.verify(server.mint(CLAIMS))
        assert fetches(server) == (1, 1)


@pytest.mark.parametrize(
    "answer",
    [
        "10.0.0.7",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "240.0.0.1",
    ],
)
async def test_ssrf_guard_addresses(
    issuer: DevIssuer, make: Make, resolver: FakeResolver, answer: str
) -> None:
    resolver.answers["localhost"] = [PUBLIC_IP, answer]
    verifier, _ = make()
    with pytest.raises(IssuerRejected, match="non-public"):
        await verifier.verify(issuer.mint(CLAIMS))
    assert fetches(issuer) == (0, 0)


async def test_unresolvable_issuer_is_rejected_like_a_private_one(
    issuer: DevIssuer, make: Make, resolver: FakeResolver
) -> None:
    # Same status as "resolves to a non-public address": the answer must not tell a
    # caller whether an internal host name exists.
    resolver.answers.clear()
    verifier, _ = make()
    with pytest.raises(IssuerRejected, match="resolve"):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_plain_http_issuer_only_when_allowed(rsa_key: SigningKey) -> None:
    with DevIssuer(keys=[rsa_key]) as server:
        async with make_http_client(OidcConfig()) as http:
            strict = OidcVerifier(OidcConfig(), http=http)
            with pytest.raises(IssuerRejected, match="https"):
                await strict.verify(server.mint(CLAIMS))
            relaxed = OidcVerifier(OidcConfig(insecure_issuers=frozenset({server.url})), http=http)
            token = await relaxed.verify(server.mint(CLAIMS))
            assert token.issuer.startswith("http://127.0.0.1:")
            # another http issuer on a different port is still refused
            with DevIssuer(keys=[rsa_key]) as other:
                with pytest.raises(IssuerRejected):
                    await relaxed.verify(other.mint(CLAIMS))
                assert fetches(other) == (0, 0)


def allowlist(issuers: tuple[str, ...] = (), patterns: tuple[str, ...] = ()) -> IssuerAllowlist:
    return compile_allowlist(issuers, patterns)


async def test_issuer_allowlist(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make(
        allowlist=allowlist(patterns=(r"https://token\.actions\.githubusercontent\.com",))
    )
    with pytest.raises(IssuerRejected, match="allowlist"):
        await verifier.verify(issuer.mint(CLAIMS))
    verifier, _ = make(allowlist=allowlist(patterns=(r"https://localhost:[0-9]+",)))
    await verifier.verify(issuer.mint(CLAIMS))
    verifier, _ = make(allowlist=allowlist(issuers=(issuer.url,)))
    await verifier.verify(issuer.mint(CLAIMS))
    # full match: a prefix pattern does not admit a longer issuer
    verifier, _ = make(allowlist=allowlist(patterns=(r"https://localhost",)))
    with pytest.raises(IssuerRejected, match="allowlist"):
        await verifier.verify(issuer.mint(CLAIMS))


async def test_issuer_with_path(certs: CertPaths, rsa_key: SigningKey, make: Make) -> None:
    with DevIssuer(tls=certs, url_host="localhost", path_prefix="/tenant/a", keys=[rsa_key]) as srv:
        verifier, _ = make()
        token = await verifier.verify(srv.mint(CLAIMS))
        assert token.issuer.endswith("/tenant/a")
        assert srv.requests["/tenant/a/.well-known/openid-configuration"] == 1


async def test_errors_never_contain_the_token(issuer: DevIssuer, make: Make) -> None:
    verifier, observer = make()
    issuer.discovery_issuer = "https://elsewhere.example"
    token = issuer.mint(CLAIMS)
    with pytest.raises(IssuerRejected) as info:
        await verifier.verify(token)
    signature = token.rsplit(".", 1)[1]
    for text in (str(info.value), repr(info.value), info.value.detail):
        assert signature not in text
        assert token.split(".")[1] not in text
    failed = [s for s in observer.stages if s.error is not None]
    assert [s.name for s in failed] == ["discovery"]


async def test_oversized_and_garbage_tokens(issuer: DevIssuer, make: Make) -> None:
    verifier, _ = make()
    # The size cap is the transport's (bearer_from_values, tested there); here junk is junk.
    with pytest.raises(TokenMalformed):
        await verifier.verify("a" * (16 * 1024 + 1))
    for junk in ["", "abc", "a.b", "a.b.c.d", "é.b.c", "!!.!!.!!", raw_token({"alg": "RS256"}, {})]:
        with pytest.raises((TokenMalformed, IssuerRejected)):
            await verifier.verify(junk)
    assert fetches(issuer) == (0, 0)


def test_config_rejects_bad_insecure_issuers() -> None:
    with pytest.raises(ValueError, match="insecure_issuers: 'not a url': issuer URL rejected"):
        OidcConfig(insecure_issuers=frozenset({"not a url"}))
    OidcConfig(insecure_issuers=frozenset({"http://127.0.0.1:8080"}))
