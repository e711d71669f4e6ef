"""Token field syntax rules (domain/tokens.py) and token parsing (adapters/oidc.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octosts.adapters.oidc import parse_jwks, parse_unverified
from octosts.dev.issuer import generate_key
from octosts.domain.errors import (
    IssuerRejected,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.tokens import (
    check_issuer_url,
    check_token_times,
    parse_issuer_url,
    token_from_claims,
)
from tests.issuers import raw_token

GOOD_ISSUERS = [
    "https://token.actions.githubusercontent.com",
    "https://token.actions.githubusercontent.com/",
    "https://accounts.google.com",
    "https://oidc.eks.us-west-2.amazonaws.com/id/ABCDEF0123456789",
    "https://gitlab.example.com:8443/tenant_1/a.b-c~d",
    "https://token.actions.githubusercontent.com/octo-org",
    "https://xn--bcher-kva.example",  # punycode is ASCII
    "https://127.0.0.1:8443",  # syntax only; the SSRF guard decides about addresses
    "https://[::1]:8443/x",
    "https://host/" + "a" * 150,
    "https://h.example/.well-known/jwks",  # a segment may start with a dot
]

BAD_ISSUERS = [
    ("", "empty"),
    ("http://token.actions.githubusercontent.com", "https"),
    ("HTTPS://example.com", "https"),
    ("ftp://example.com", "https"),
    ("//example.com", "https"),
    ("example.com", "https"),
    ("https://", "empty host"),
    ("https://example.com?x=1", "query"),
    ("https://example.com/?", "query"),
    ("https://example.com#frag", "fragment"),
    ("https://user@example.com", "userinfo"),
    ("https://user:pw@example.com/x", "userinfo"),
    ("https://bücher.example", "ASCII"),
    ("https://exam ple.com", "ASCII"),
    ("https://example.com/a b", "ASCII"),
    ("https://example.com\t", "ASCII"),
    ("https://example.com\x00", "ASCII"),
    ("https://exa_mple.com", "host"),
    ("https://-example.com", "host"),
    ("https://example..com", "host"),
    ("https://example.com:", "port"),
    ("https://example.com:0", "port"),
    ("https://example.com:65536", "port"),
    ("https://example.com:80a", "port"),
    ("https://[::1", "IPv6"),
    ("https://[zz::1]", "IPv6"),
    ("https://example.com/a/../b", r"\.\."),
    ("https://example.com/..", r"\.\."),
    ("https://example.com/%2e%2e/x", r"\[A-Za-z0-9"),
    ("https://example.com/a%2Fb", r"\[A-Za-z0-9"),
    ("https://example.com//a", "//"),
    ("https://example.com/a//b", "//"),
    ("https://example.com/a~~b", "~~"),
    ("https://example.com/a~", "'~'"),
    ("https://example.com/~/b", "segment"),
    ("https://example.com/./b", "segment"),
    ("https://example.com/a/.", "segment"),
    ("https://example.com/" + "a" * 151, "150"),
    ("https://example.com/a;b", r"\[A-Za-z0-9"),
    ("https://example.com/a\\b", r"\[A-Za-z0-9"),
    ("https://example.com/" + "/".join(["a" * 50] * 5), "255"),
]


@pytest.mark.parametrize("issuer", GOOD_ISSUERS)
def test_good_issuers(issuer: str) -> None:
    check_issuer_url(issuer)


@pytest.mark.parametrize(("issuer", "rule"), BAD_ISSUERS)
def test_bad_issuers(issuer: str, rule: str) -> None:
    with pytest.raises(IssuerRejected, match=rule) as info:
        check_issuer_url(issuer, allow_insecure=False)
    assert info.value.reason == "invalid_token_issuer"


def test_http_only_when_allowed() -> None:
    check_issuer_url("http://localhost:8080", allow_insecure=True)
    with pytest.raises(IssuerRejected):
        check_issuer_url("http://localhost:8080")


def test_parse_issuer_url_parts() -> None:
    url = parse_issuer_url("https://[::1]:8443/x")
    assert (url.host, url.port, url.path) == ("::1", 8443, "/x")
    assert parse_issuer_url("https://Example.com").origin == ("https", "example.com", 443)
    assert parse_issuer_url("http://a.b", allow_insecure=True).origin == ("http", "a.b", 80)


_PATH_ALPHABET = string.ascii_letters + string.digits + "-._~/%?#@:;\\ é"


@given(st.text(alphabet=_PATH_ALPHABET, max_size=40))
def test_accepted_paths_obey_every_rule(path: str) -> None:
    issuer = "https://example.com/" + path
    try:
        check_issuer_url(issuer)
    except IssuerRejected:
        return
    path = "/" + path
    assert all(c in string.ascii_letters + string.digits + "-._~/" for c in path)
    assert ".." not in path
    assert "//" not in path
    assert "~~" not in path
    assert not path.endswith("~")
    segments = [s for s in path.split("/")[1:] if s]
    assert not {".", "~"} & set(segments)


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "https://token.actions.githubusercontent.com",
        "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
        "aud": "octo-sts.dev",
        "exp": 1_700_000_600,
        "iat": 1_700_000_000,
        "ref": "refs/heads/main",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def test_token_from_claims_happy_path() -> None:
    source = _claims(aud=["a", "b.example"], nested={"x": [1]})
    token = token_from_claims(source)
    assert token.issuer == "https://token.actions.githubusercontent.com"
    assert token.subject == "repo:octo-org/octo-repo:ref:refs/heads/main"
    assert token.audience == ("a", "b.example")
    assert token.expires_at == 1_700_000_600
    assert token.claims["ref"] == "refs/heads/main"
    with pytest.raises(TypeError):
        token.claims["ref"] = "x"  # type: ignore[index]
    source["nested"]["x"].append(2)  # the verified copy does not change with the input
    assert token.claims["nested"] == {"x": [1]}


def test_tokens_share_one_copy_of_each_repeated_claim_string() -> None:
    # Decoded JSON gives each token its own strings; a replica caches thousands of tokens.
    def decoded(jti: str) -> dict[str, Any]:
        return json.loads(json.dumps(_claims(jti=jti, nested={"env": ["prod"]})))

    first, second = token_from_claims(decoded("1")), token_from_claims(decoded("2"))
    assert first.issuer is second.issuer
    assert first.subject is second.subject
    assert first.claims["ref"] is second.claims["ref"]
    assert first.claims["nested"]["env"][0] is second.claims["nested"]["env"][0]  # type: ignore[index]
    names = {id(key) for token in (first, second) for key in token.claims}
    assert len(names) == len(first.claims)
    assert (first.claims["jti"], second.claims["jti"]) == ("1", "2")


def test_missing_audience_is_empty() -> None:
    assert token_from_claims(_claims(aud=None)).audience == ()


BAD_SUBJECTS = [
    "",
    "a" * 256,
    "repo:a b",
    "repo:a\tb",
    "repo:a\nb",
    "repo:a\x00b",
    "repo:a\u200bb",  # zero-width space
    "repo:a\u202eb",  # bidi override
    "repo:a\u00a0b",  # no-break space
    *[f"repo:a{c}b" for c in "\"'`\\<>;&$(){}[]"],
    123,
    ["a"],
    None,
]


@pytest.mark.parametrize("sub", BAD_SUBJECTS)
def test_bad_subjects(sub: Any) -> None:
    claims = _claims()
    claims["sub"] = sub
    with pytest.raises(TokenClaimsInvalid) as info:
        token_from_claims(claims)
    assert info.value.reason == "invalid_token_subject"


@pytest.mark.parametrize(
    "sub",
    [
        "a" * 255,
        "repo:octo/app:environment:prod",
        "system:serviceaccount:ns:name",
        "user@example.com|x",  # | and @ are fine in a subject
        "ünïcode",
    ],
)
def test_good_subjects(sub: str) -> None:
    assert token_from_claims(_claims(sub=sub)).subject == sub


BAD_AUDIENCES = [
    "",
    "a" * 256,
    "a b",
    "a|b",
    "a@b",
    "a\x7fb",
    *[f"a{c}b" for c in "\"'`\\<>;&$(){}[]"],
    ["ok", "bad|one"],
    ["ok", ""],
    ["ok", 3],
    {"aud": "x"},
    5,
    True,
]


@pytest.mark.parametrize("aud", BAD_AUDIENCES)
def test_bad_audiences(aud: Any) -> None:
    with pytest.raises(TokenClaimsInvalid) as info:
        token_from_claims(_claims(aud=aud))
    assert info.value.reason == "invalid_token_audience"


@pytest.mark.parametrize(
    ("over", "error", "reason"),
    [
        ({"exp": None}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"exp": "1700000600"}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"exp": True}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"exp": float("inf")}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"nbf": "soon"}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"iat": [1]}, TokenClaimsInvalid, "token_claims_invalid"),
        ({"iss": None}, IssuerRejected, "invalid_token_issuer"),
        ({"iss": 5}, IssuerRejected, "invalid_token_issuer"),
        ({"iss": "http://evil.example"}, IssuerRejected, "invalid_token_issuer"),
        ({"iss": "https://evil.example/a/../b"}, IssuerRejected, "invalid_token_issuer"),
    ],
)
def test_other_claim_rules(over: dict[str, Any], error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        token_from_claims(_claims(**over))
    assert getattr(info.value, "reason", None) == reason


def test_insecure_issuer_allowed_on_request() -> None:
    token = token_from_claims(_claims(iss="http://127.0.0.1:8080"), allow_insecure=True)
    assert token.issuer == "http://127.0.0.1:8080"


def test_claims_must_be_a_mapping() -> None:
    with pytest.raises(TokenClaimsInvalid):
        token_from_claims(["not", "a", "mapping"])  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_accepted_subjects_obey_every_rule(sub: str) -> None:
    try:
        token = token_from_claims(_claims(sub=sub))
    except TokenClaimsInvalid:
        return
    assert 0 < len(token.subject) <= 255
    assert not any(c.isspace() or c in "\"'`\\<>;&$(){}[]" for c in token.subject)
    assert token.subject.isprintable()


@pytest.mark.parametrize(
    ("claims", "now", "ok"),
    [
        ({"exp": 100}, 99, True),
        ({"exp": 100}, 129, True),  # leeway 30
        ({"exp": 100}, 130, False),
        ({"exp": 100, "nbf": 150}, 121, True),
        ({"exp": 1000, "nbf": 150}, 119, False),
        ({"exp": 1000, "iat": 150}, 119, False),
        ({"exp": 1000, "iat": 150}, 121, True),
    ],
)
def test_token_times(claims: dict[str, Any], now: float, *, ok: bool) -> None:
    if ok:
        check_token_times(claims, now=now, leeway=30)
    else:
        with pytest.raises(TokenExpired):
            check_token_times(claims, now=now, leeway=30)


def test_token_times_need_exp() -> None:
    with pytest.raises(TokenClaimsInvalid):
        check_token_times({}, now=0, leeway=0)


# -- parse_unverified ---------------------------------------------------------

ISS = {"iss": "https://issuer.example"}


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("a" * 20_000, TokenMalformed),
        ("", TokenMalformed),
        ("a.b", TokenMalformed),
        ("a.b.c.d", TokenMalformed),
        ("é.b.c", TokenMalformed),
        ("a=.b.c", TokenMalformed),
        ("e30.e30.", TokenMalformed),  # empty signature
        ("bm90IGpzb24.e30.c2ln", TokenMalformed),  # header not JSON
        (raw_token({"alg": "RS256"}, ISS).replace("e", "*", 1), TokenMalformed),
        ("W10.e30.c2ln", TokenMalformed),  # header is a list
        (raw_token({"alg": "none"}, ISS, b"s"), TokenSignatureInvalid),
        (raw_token({"alg": "HS256"}, ISS, b"s"), TokenSignatureInvalid),
        (raw_token({"alg": "ES512"}, ISS, b"s"), TokenSignatureInvalid),
        (raw_token({}, ISS, b"s"), TokenSignatureInvalid),
        (raw_token({"alg": "RS256", "crit": ["exp"]}, ISS, b"s"), TokenMalformed),
        (raw_token({"alg": "RS256", "kid": 5}, ISS, b"s"), TokenMalformed),
        (raw_token({"alg": "RS256"}, {}, b"s"), IssuerRejected),
        (raw_token({"alg": "RS256"}, {"iss": ["x"]}, b"s"), IssuerRejected),
    ],
)
def test_parse_unverified_rejects(token: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_unverified(token)


def test_parse_unverified_deeply_nested_payload() -> None:
    payload = "[" * 5000 + "]" * 5000
    token = raw_token({"alg": "RS256"}, ISS, b"s").split(".")
    token[1] = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    with pytest.raises(TokenMalformed):
        parse_unverified(".".join(token))


def test_parse_unverified_accepts() -> None:
    parsed = parse_unverified(raw_token({"alg": "ES256", "kid": "k"}, ISS, b"s"))
    assert (parsed.issuer, parsed.alg, parsed.kid) == ("https://issuer.example", "ES256", "k")


@given(st.binary(max_size=300))
def test_parse_unverified_never_crashes_on_bytes(data: bytes) -> None:
    text = data.decode("latin-1")
    with contextlib.suppress(TokenMalformed, TokenSignatureInvalid, IssuerRejected):
        parse_unverified(text)


# -- parse_jwks ---------------------------------------------------------------

RSA_JWK = generate_key("rsa", kid="r").public_jwk(publish_alg=False)


def test_parse_jwks_algorithms_from_key() -> None:
    keys = parse_jwks(
        {
            "keys": [
                RSA_JWK,
                {**RSA_JWK, "kid": "r2", "alg": "PS384"},
                {**RSA_JWK, "kid": "enc", "use": "enc"},
                {**RSA_JWK, "kid": "hs", "alg": "HS256"},
                {"kty": "oct", "kid": "o", "k": "c2VjcmV0"},
                {"kty": "RSA", "kid": "broken", "n": "x", "e": "y"},
                "not a key",
            ]
        }
    ).usable()
    assert [k.kid for k in keys] == ["r", "r2"]
    assert "PS256" in keys[0].algorithms
    assert "RS256" in keys[0].algorithms
    assert keys[1].algorithms == {"PS384"}


@pytest.mark.parametrize(
    "doc",
    [{}, {"keys": "x"}, {"keys": []}, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}],
)
def test_parse_jwks_rejects(doc: dict[str, Any]) -> None:
    with pytest.raises(IssuerRejected):
        parse_jwks(doc).usable()


@pytest.mark.parametrize(
    "key",
    [{"kty": "OKP", "crv": []}, {"kty": "EC", "crv": {}}, {"kty": [], "x": "AQAB"}],
)
def test_parse_jwks_skips_members_of_the_wrong_json_type(key: dict[str, Any]) -> None:
    # Was TypeError (an unhashable list looked up in a set): an issuer publishing such a key
    # made every verification of its tokens an internal error instead of using its good keys.
    assert [k.kid for k in parse_jwks({"keys": [key, RSA_JWK]}).usable()] == ["r"]
