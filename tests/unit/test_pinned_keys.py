"""Keys a trust policy pins: the rules, the order of checks, the verifier, the key file.

The attacker holds tokens from issuers they own and can name any scope; they cannot
write other repositories' policies. Every test states what it stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octosts.adapters.oidc import OidcConfig, OidcVerifier
from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_store import PolicyCacheConfig, PolicyStore
from octosts.adapters.policy_yaml import parse_trust_policy
from octosts.adapters.unverified import UnverifiedBudget, UnverifiedConfig
from octosts.adapters.verified_cache import CachingVerifier
from octosts.dev.issuer import SigningKey, generate_key, mint_token
from octosts.domain.errors import (
    UNKNOWN_KEY_ID,
    InvalidRequest,
    IssuerRejected,
    IssuerUnavailable,
    NoInstallation,
    PolicyDenied,
    PolicyInvalid,
    PolicyNotFound,
    RateLimited,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.exchange import (
    UNVERIFIED_LOOKUPS,
    CallInfo,
    ExchangeAttempt,
    Exchanger,
    ExchangeRequest,
)
from octosts.domain.issuers import compile_allowlist
from octosts.domain.jwks import (
    MAX_KEYS,
    PRIVATE_MEMBERS,
    PinnedJwks,
    compile_pinned_jwks,
)
from octosts.domain.policy import TrustPolicy, compile_policy, pinned_keys_for
from octosts.domain.ports import NullObserver, PinnedVerifier, PolicyLocation
from octosts.domain.tokens import VerifiedToken
from octosts.observability.exchanges import audit_event
from octosts.transport.ext_authz import tenant_metadata
from tests.fakes import FakeClock, FakeGitHub, FakePolicies, FakeVerifier, policy, verified

K8S = "https://k8s.cluster.invalid"  # .invalid never resolves: nothing can be fetched
ACTIONS = "https://token.actions.githubusercontent.com"
SUB = "system:serviceaccount:ci:deploy"
REPO_PATH = ".github/chainguard/ci.sts.yaml"
KEYS_PATH = ".github/chainguard/keys/k8s.jwks.json"

RSA = generate_key("rsa", kid="rsa-1")
EC = generate_key("ec", kid="ec-1")
ED = generate_key("ed25519", kid="ed-1")
OTHER = generate_key("rsa", kid="rsa-1")  # the same kid, another key: an attacker's


def jwk(key: SigningKey, **changes: Any) -> dict[str, Any]:
    return {**key.public_jwk(publish_alg=True), **changes}


def pinned(*keys: dict[str, Any]) -> PinnedJwks:
    compiled, problems = compile_pinned_jwks({"keys": list(keys)}, where="jwks", source="jwks")
    assert compiled is not None, problems
    return compiled


def pinned_policy(*keys: SigningKey, issuer: str = K8S, **fields: object) -> TrustPolicy:
    data: dict[str, object] = {
        "issuer": issuer,
        "subject": SUB,
        "audience": "octo-sts.dev",
        "permissions": {"contents": "read"},
        "jwks": {"keys": [jwk(k) for k in keys or (RSA,)]},
        **fields,
    }
    return compile_policy(data, kind="repo")


# -- the rules every pinned key passes ------------------------------------------------------


def problems_of(*keys: object) -> list[str]:
    compiled, problems = compile_pinned_jwks({"keys": list(keys)}, where="jwks", source="jwks")
    assert (compiled is None) == bool(problems)
    return [p.render() for p in problems]


def test_public_rsa_ec_and_okp_keys_are_accepted_with_their_algorithms() -> None:
    keys = pinned(jwk(RSA), jwk(EC), jwk(ED))
    assert [(k.kid, sorted(k.algorithms)) for k in keys.keys] == [
        ("rsa-1", ["RS256"]),
        ("ec-1", ["ES256"]),
        ("ed-1", ["EdDSA"]),
    ]
    assert len(keys.digest) == 64


def test_the_digest_names_the_key_material_not_its_spelling() -> None:
    reordered = dict(reversed(list(jwk(RSA).items())))
    assert pinned(jwk(RSA)).digest == pinned(reordered).digest
    assert pinned(jwk(RSA)).digest != pinned(jwk(OTHER)).digest


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "jwks.keys[0].kty: symmetric keys (oct)"),
        ({"kty": "AKP"}, "jwks.keys[0].kty: must be RSA, EC or OKP"),
        (jwk(RSA, d="AQAB"), "jwks.keys[0].d: private key material"),
        (jwk(EC, d="AQAB"), "jwks.keys[0].d: private key material"),
        (jwk(RSA, extra=1), "jwks.keys[0].extra: unknown member for kty RSA"),
        (jwk(RSA, use="enc"), "jwks.keys[0].use: must be sig"),
        (jwk(RSA, key_ops=["sign"]), "jwks.keys[0].key_ops: must be [verify]"),
        (jwk(RSA, alg="HS256"), "jwks.keys[0].alg: 'HS256' does not fit this key"),
        (jwk(RSA, alg="none"), "jwks.keys[0].alg: 'none' does not fit this key"),
        (jwk(EC, alg="ES384"), "jwks.keys[0].alg: 'ES384' does not fit this key"),
        (jwk(RSA, kid=""), "jwks.keys[0].kid: must be a non-empty string"),
        (jwk(RSA, kid="x" * 257), "jwks.keys[0].kid: must be a non-empty string"),
        (jwk(RSA, kid="a\nb"), "jwks.keys[0].kid: must be a non-empty string"),
        (jwk(RSA, n="AQAB"), "jwks.keys[0].n: RSA modulus of 17 bits: shorter than 2048"),
        (jwk(RSA, n="_" * 700), "jwks.keys[0].n: RSA modulus of 4200 bits: longer than 4096"),
        (jwk(RSA, e="Ag"), "jwks.keys[0].e: the exponent must be odd"),
        (jwk(RSA, e="AQAAAAAAAAE"), "jwks.keys[0].e: the exponent must be odd and 3..65537"),
        (jwk(RSA, n=None), "jwks.keys[0].n: is required"),
        (jwk(EC, crv="P-521"), "jwks.keys[0].crv: must be P-256 or P-384"),
        (jwk(EC, y="not base64!"), "jwks.keys[0].y: is required: base64url"),
        (jwk(ED, crv="X25519"), "jwks.keys[0].crv: must be Ed25519 or Ed448"),
        ("AQAB", "jwks.keys[0]: must be a JWK object"),
    ],
)
def test_each_rule_is_a_problem_naming_the_key_and_member(key: object, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(key)), problems_of(key)


def test_the_same_kid_twice_is_refused() -> None:
    assert problems_of(jwk(RSA), jwk(OTHER)) == ["jwks.keys[1].kid: duplicate kid (also keys[0])"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], 'jwks: must be a JWKS object: {"keys"'),
        ({"keys": []}, "jwks.keys: must be a non-empty list"),
        ({"keys": [jwk(RSA)], "issuer": K8S}, "jwks.issuer: unknown member (only keys)"),
        ({"keys": [jwk(RSA, kid=str(i)) for i in range(MAX_KEYS + 1)]}, "jwks.keys: at most 100"),
    ],
)
def test_the_key_set_itself(value: object, expected: str) -> None:
    _, problems = compile_pinned_jwks(value, where="jwks", source="jwks")
    assert problems[0].render().startswith(expected)


@pytest.mark.parametrize(
    "key", [{"kty": "OKP", "crv": []}, {"kty": "EC", "crv": {}}, {"kty": [], "x": "AQAB"}]
)
def test_members_of_the_wrong_json_type_are_refused_not_a_crash(key: dict[str, Any]) -> None:
    assert problems_of(key)  # the fetched-JWKS side: tests/unit/test_token_rules.py


@pytest.mark.parametrize(
    ("extra", "member"),
    [
        ("x5t: 2024-01-01", "x5t"),  # a YAML date
        ("x5t: !!binary aGVsbG8=", "x5t"),  # bytes
        ("x5t#S256: 12", "x5t#S256"),
        ("x5c: {1: a, b: c}", "x5c"),  # a mapping with an integer key
        ("x5c: [2024-01-01]", "x5c"),
        ("x5c: [not base64!]", "x5c"),
    ],
)
def test_an_inline_key_member_of_a_yaml_only_type_makes_the_policy_invalid(
    extra: str, member: str
) -> None:
    # These members only reach the key set's digest (canonical JSON): a YAML type there
    # used to raise TypeError, an internal error for the exchange, the check run and lint.
    members = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in jwk(RSA).items())
    doc = (
        f"issuer: {K8S}\nsubject: x\npermissions: {{contents: read}}\n"
        f"jwks:\n  keys:\n  -\n{members}    {extra}\n"
    )
    with pytest.raises(PolicyInvalid) as refused:
        parse_trust_policy(doc, kind="repo")
    assert any(p.field == f"jwks.keys[0].{member}" for p in refused.value.problems)
    valid = doc.replace(f"    {extra}\n", '    x5t: "aGVsbG8"\n    x5c: ["aGVsbG8="]\n')
    assert parse_trust_policy(valid, kind="repo").jwks is not None


_members = st.sampled_from(
    ["kty", "use", "key_ops", "alg", "kid", "n", "e", "crv", "x", "y", *PRIVATE_MEMBERS, "zz"]
)
_values = st.one_of(
    st.sampled_from(["RSA", "EC", "OKP", "oct", "sig", "P-256", "Ed25519", "RS256", "AQAB"]),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_members, _values, max_size=8), min_size=1, max_size=4))
def test_no_key_with_private_or_symmetric_material_is_ever_accepted(keys: list[Any]) -> None:
    compiled, problems = compile_pinned_jwks({"keys": keys}, where="jwks", source="jwks")
    if compiled is None:
        assert problems
        return
    for key in compiled.keys:
        assert key.jwk["kty"] in {"RSA", "EC", "OKP"}
        assert not set(PRIVATE_MEMBERS) & set(key.jwk)
        assert key.algorithms


# -- in a policy ----------------------------------------------------------------------------


def policy_problems(**fields: object) -> list[str]:
    data: dict[str, object] = {"subject": SUB, "permissions": {"contents": "read"}, **fields}
    with pytest.raises(PolicyInvalid) as info:
        compile_policy(data, kind="repo")
    return [p.render() for p in info.value.problems]


def test_pinned_keys_belong_to_one_exact_issuer() -> None:
    # A pattern would let one policy's keys speak for every issuer it matches.
    assert "jwks: pinned keys belong to one issuer" in " ".join(
        policy_problems(issuer_pattern="https://.*", jwks={"keys": [jwk(RSA)]})
    )
    assert policy_problems(issuer="k8s", jwks={"keys": [jwk(RSA)]}) == [
        "issuer: issuer URL rejected: scheme must be https (required with jwks)"
    ]
    assert policy_problems(issuer=K8S, jwks={"keys": [jwk(RSA)]}, jwks_file=KEYS_PATH) == [
        "jwks_file: set either jwks or jwks_file, not both"
    ]


@pytest.mark.parametrize(
    "path",
    [
        "keys/k8s.jwks.json",
        "/.github/chainguard/k8s.jwks.json",
        ".github/chainguard/../../k8s.jwks.json",
        ".github/chainguard//k8s.jwks.json",
        ".github/chainguard/k8s.json",
        ".github/chainguard/.jwks.json",
        ".github/chainguard/k8s key.jwks.json",
        ".github/chainguard/" + "k" * 250 + ".jwks.json",
    ],
)
def test_a_key_file_is_a_jwks_json_file_under_the_policy_folder(path: str) -> None:
    (problem,) = policy_problems(issuer=K8S, jwks_file=path)
    assert problem.startswith("jwks_file: ")


def test_a_policy_with_unusable_key_material_is_invalid() -> None:
    bad = jwk(EC, y=jwk(EC)["x"])  # not a point of P-256
    text = f"issuer: {K8S}\nsubject: {SUB}\npermissions: {{contents: read}}\n"
    text += f"jwks: {json.dumps({'keys': [jwk(RSA), bad]})}\n"
    with pytest.raises(PolicyInvalid) as info:
        parse_trust_policy(text, kind="repo")
    (problem,) = info.value.problems
    assert (problem.field, problem.line) == ("jwks.keys[1]", 4)
    assert "not a valid public key" in problem.message


def test_keys_apply_to_the_policys_issuer_only() -> None:
    policy = pinned_policy()
    assert pinned_keys_for(policy, K8S) is policy.jwks
    assert pinned_keys_for(policy, ACTIONS) is None  # verified the usual way, then mismatch
    unread = compile_policy(
        {
            "issuer": K8S,
            "subject": SUB,
            "permissions": {"contents": "read"},
            "jwks_file": KEYS_PATH,
        },
        kind="repo",
    )
    with pytest.raises(PolicyInvalid):  # a key file the source did not read: fail closed
        pinned_keys_for(unread, K8S)


# -- the order of checks --------------------------------------------------------------------


def exchanger(
    policies: dict[tuple[str, str, str], TrustPolicy],
    verifier: FakeVerifier,
    *,
    with_pinned: bool = True,
    unverified: UnverifiedBudget | None = None,
) -> tuple[Exchanger, FakeGitHub, FakePolicies]:
    github = FakeGitHub({"octo-org": 7})
    source = FakePolicies(policies)
    return (
        Exchanger(
            verifier=verifier,
            github=github,
            policies=source,
            observer=NullObserver(),
            domain="octo-sts.dev",
            pinned=verifier if with_pinned else None,
            unverified=unverified,
        ),
        github,
        source,
    )


K8S_TOKEN = verified(sub=SUB, iss=K8S)


def pinned_caller(policy: TrustPolicy, token: VerifiedToken = K8S_TOKEN) -> VerifiedToken:
    """``token`` as the exchange sees it once ``policy``'s pinned keys alone verified it."""
    assert policy.jwks is not None
    return dataclasses.replace(token, pinned_keys=(policy.jwks.digest,), pinned_by="octo-org/demo")


def request(bearer: str, scope: str = "octo-org/demo") -> ExchangeRequest:
    return ExchangeRequest(bearer, scope, "ci")


async def test_the_policys_keys_verify_its_issuers_tokens_and_nothing_is_fetched() -> None:
    policy = pinned_policy()
    assert policy.jwks is not None
    verifier = FakeVerifier({}, pinned={"k8s": (policy.jwks.digest, K8S_TOKEN)})
    ex, github, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    attempt = ExchangeAttempt()
    result = await ex.exchange(request("k8s"), attempt)
    assert result.caller == pinned_caller(policy)
    assert verifier.calls == 0  # the deployment's verifier (discovery) was never asked
    assert verifier.pinned_calls == [policy.jwks.digest]
    assert attempt.pinned_keys == (policy.jwks.digest,)
    assert github.minted == [(7, {"contents": "read"}, ("demo",))]


async def test_a_token_the_issuers_published_keys_verify_is_not_enough() -> None:
    # The pinned keys are the only ones: a token claiming the pinned issuer but signed by
    # another key (one the "issuer", as DNS or a proxy answers, would publish) is refused.
    policy = pinned_policy()
    verifier = FakeVerifier({"k8s": K8S_TOKEN})  # the discovered keys would accept it
    ex, github, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    with pytest.raises(TokenSignatureInvalid):
        await ex.exchange(request("k8s"))
    assert verifier.calls == 0
    assert github.minted == []


async def test_one_policys_keys_never_verify_a_token_for_another_policy() -> None:
    mine, theirs = pinned_policy(RSA), pinned_policy(OTHER)
    assert mine.jwks is not None
    verifier = FakeVerifier({}, pinned={"k8s": (mine.jwks.digest, K8S_TOKEN)})
    ex, github, _ = exchanger(
        {
            ("octo-org", "demo", REPO_PATH): mine,
            ("octo-org", "other", REPO_PATH): theirs,
        },
        verifier,
    )
    await ex.exchange(request("k8s"))
    with pytest.raises(TokenSignatureInvalid):
        await ex.exchange(request("k8s", "octo-org/other"))
    assert len(github.minted) == 1


async def test_a_token_for_several_repositories_must_satisfy_each_policys_keys() -> None:
    mine, theirs = pinned_policy(RSA), pinned_policy(OTHER)
    assert mine.jwks is not None
    verifier = FakeVerifier({}, pinned={"k8s": (mine.jwks.digest, K8S_TOKEN)})
    both = ExchangeRequest("k8s", "", "ci", scopes=("octo-org/demo", "octo-org/app"))
    ex, github, _ = exchanger(
        {("octo-org", "demo", REPO_PATH): mine, ("octo-org", "app", REPO_PATH): mine}, verifier
    )
    await ex.exchange(both)
    assert verifier.pinned_calls == [mine.jwks.digest]  # one key set: verified once
    assert github.minted == [(7, {"contents": "read"}, ("demo", "app"))]
    ex, github, _ = exchanger(
        {("octo-org", "demo", REPO_PATH): mine, ("octo-org", "app", REPO_PATH): theirs}, verifier
    )
    with pytest.raises(TokenSignatureInvalid):  # the second policy pins other keys
        await ex.exchange(both)
    assert github.minted == []


async def test_a_token_of_another_issuer_is_verified_as_usual_then_fails_the_issuer_rule() -> None:
    policy = pinned_policy()
    verifier = FakeVerifier({"actions": verified()})
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    with pytest.raises(PolicyDenied) as info:
        await ex.exchange(request("actions"))
    assert info.value.reason == "issuer_mismatch"
    assert (verifier.calls, verifier.pinned_calls) == (1, [])
    verifier.tokens.clear()  # a forged one: 401 as under any policy, not a policy answer
    with pytest.raises(TokenSignatureInvalid):
        await ex.exchange(request("actions"))


async def test_a_token_that_cannot_be_read_is_refused_before_github_is_asked() -> None:
    ex, github, source = exchanger({}, FakeVerifier({}))
    with pytest.raises(TokenMalformed):
        await ex.exchange(request("malformed"))
    assert (source.asked, github.reads, github.minted) == ([], 0, [])


async def test_without_a_valid_token_no_policy_question_is_answered() -> None:
    # Otherwise 401 vs 403 would tell an unauthenticated caller which policies exist.
    verifier = FakeVerifier({"good": verified()}, claims={"forged": K8S})
    ex, _, _ = exchanger({}, verifier)
    for scope, error in (("octo-org/demo", PolicyNotFound), ("nobody/demo", NoInstallation)):
        with pytest.raises(TokenSignatureInvalid):
            await ex.exchange(request("forged", scope))
        with pytest.raises(error):
            await ex.exchange(request("good", scope))


async def test_a_policy_whose_key_file_was_not_read_is_refused_after_the_token_verified() -> None:
    unread = dataclasses.replace(pinned_policy(), jwks=None, jwks_file=KEYS_PATH)
    verifier = FakeVerifier({"k8s": K8S_TOKEN})
    ex, github, _ = exchanger({("octo-org", "demo", REPO_PATH): unread}, verifier)
    with pytest.raises(PolicyInvalid):
        await ex.exchange(request("k8s"))
    assert verifier.calls == 1
    assert github.minted == []


async def test_without_a_pinned_verifier_pinned_policies_are_refused() -> None:
    verifier = FakeVerifier({"k8s": K8S_TOKEN})
    ex, github, _ = exchanger(
        {("octo-org", "demo", REPO_PATH): pinned_policy()}, verifier, with_pinned=False
    )
    with pytest.raises(PolicyInvalid):
        await ex.exchange(request("k8s"))
    assert github.minted == []


async def test_a_bad_signature_under_a_held_issuers_kid_costs_no_github_call() -> None:
    # Keys held, the kid known to them, the signature wrong: refused before the installation
    # lookup, at the edge and in Exchange alike, whatever policy the request names.
    verifier = FakeVerifier({}, held=frozenset({ACTIONS}))
    ex, github, source = exchanger({("octo-org", "demo", REPO_PATH): pinned_policy()}, verifier)
    with pytest.raises(TokenSignatureInvalid):
        await ex.exchange(request("forged"))
    with pytest.raises(TokenSignatureInvalid):
        await ex.verify_at_edge("forged", "octo-org/demo", "ci")
    assert (github.lookups, github.reads, source.asked) == (0, 0, [])


async def test_a_kid_the_held_keys_do_not_know_is_left_to_the_policy() -> None:
    # A policy may pin keys of an issuer the service also reaches: a kid its published keys
    # do not know is not refused early, the policy's keys decide.
    policy = pinned_policy(issuer=ACTIONS)
    assert policy.jwks is not None
    token = verified(sub=SUB)
    verifier = FakeVerifier(
        {},
        TokenSignatureInvalid("no key", reason=UNKNOWN_KEY_ID),
        pinned={"pinned": (policy.jwks.digest, token)},
        held=frozenset({ACTIONS}),
    )
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    assert (await ex.exchange(request("pinned"))).caller == pinned_caller(policy, token)


def bounded(per_minute: float) -> tuple[UnverifiedBudget, FakeClock]:
    clock = FakeClock()
    return UnverifiedBudget(clock=clock, config=UnverifiedConfig(per_minute=per_minute)), clock


async def test_lookups_for_unverified_tokens_naming_new_identities_are_bounded() -> None:
    # Forged tokens of an issuer nobody can fetch (the pinned case), a new identity each:
    # without a bound, one policy read per request, and no valid token needed.
    budget, clock = bounded(per_minute=3)
    verifier = FakeVerifier({}, IssuerUnavailable("unreachable"), claims={"forged": K8S})
    ex, github, source = exchanger({}, verifier, unverified=budget)
    refused: list[str] = []
    for i in range(10):
        with pytest.raises((IssuerUnavailable, RateLimited)) as info:
            await ex.exchange(ExchangeRequest("forged", "octo-org/demo", f"id{i}"))
        refused.append(getattr(info.value, "reason", ""))
    assert len(source.asked) == 3  # the bucket, then no lookup at all
    assert github.lookups == 3
    assert refused[3:] == [UNVERIFIED_LOOKUPS] * 7
    assert isinstance(info.value, RateLimited)
    assert info.value.retry_after is not None
    assert 1 <= info.value.retry_after <= 20
    clock.advance(20)  # 3 a minute: one more
    with pytest.raises(IssuerUnavailable):
        await ex.exchange(ExchangeRequest("forged", "octo-org/demo", "id-later"))
    assert len(source.asked) == 4


async def test_workloads_that_verified_before_are_never_held_back_by_the_bound() -> None:
    pinned_one = pinned_policy()
    assert pinned_one.jwks is not None
    budget, _ = bounded(per_minute=2)
    verifier = FakeVerifier(
        {},
        IssuerUnavailable("unreachable"),
        pinned={"k8s": (pinned_one.jwks.digest, K8S_TOKEN)},
        claims={"forged": K8S},
    )
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): pinned_one}, verifier, unverified=budget)
    assert (await ex.exchange(request("k8s"))).caller == pinned_caller(pinned_one)  # one of the two
    for i in range(5):  # the attacker spends the rest
        with pytest.raises((IssuerUnavailable, RateLimited)):
            await ex.exchange(ExchangeRequest("forged", "octo-org/demo", f"id{i}"))
    assert (await ex.exchange(request("k8s"))).caller == pinned_caller(pinned_one)
    assert (await ex.verify_at_edge("k8s", "octo-org/demo", "ci")) == pinned_caller(pinned_one)
    # A new pinned workload waits (429, Retry-After) until the bucket refills.
    with pytest.raises(RateLimited):
        await ex.exchange(request("k8s", "octo-org/other"))


async def test_past_the_bound_tokens_of_reachable_issuers_are_verified_first_as_before() -> None:
    # Over the bound, a token is verified with its issuer's published keys: workloads of
    # issuers the service can fetch never see the bound, forged ones get 401 with no lookup.
    budget, _ = bounded(per_minute=1)
    good = verified()
    verifier = FakeVerifier({"good": good}, claims={"forged": ACTIONS})
    ex, github, source = exchanger(
        {("octo-org", "demo", REPO_PATH): policy()}, verifier, unverified=budget
    )
    with pytest.raises(TokenSignatureInvalid):  # spends the bucket (one lookup, then 401)
        await ex.exchange(ExchangeRequest("forged", "octo-org/demo", "id0"))
    before = (github.lookups, len(source.asked))
    with pytest.raises(TokenSignatureInvalid):
        await ex.exchange(ExchangeRequest("forged", "octo-org/demo", "id1"))
    assert (github.lookups, len(source.asked)) == before
    assert (await ex.exchange(request("good"))).caller is good


def test_the_budget_refills_smoothly_and_remembers_boundedly() -> None:
    clock = FakeClock()
    budget = UnverifiedBudget(
        clock=clock, config=UnverifiedConfig(per_minute=60, remember_seconds=10, max_entries=2)
    )
    assert [budget.admit(f"n{i}") for i in range(60)] == [None] * 60
    assert budget.admit("n60") == pytest.approx(1.0)
    clock.advance(0.5)
    assert budget.admit("n60") == pytest.approx(0.5)
    budget.verified("known")
    assert budget.admit("known") is None  # without a token
    clock.advance(11)
    assert budget.admit("x") is None  # 11.5 s refilled 11 tokens
    budget.verified("a")
    budget.verified("b")
    budget.verified("c")  # bounded: "a" is forgotten, so it counts again
    for _ in range(10):
        budget.admit("y")
    assert budget.admit("a") is not None
    assert budget.admit("c") is None


def test_unverified_claims_that_can_only_fail_are_checked_before_any_lookup() -> None:
    clock = FakeClock(time.time())
    oidc = make_verifier(clock)
    assert oidc.claimed_issuer(k8s_token()) == K8S
    with pytest.raises(TokenExpired):
        oidc.claimed_issuer(k8s_token(exp=int(clock.now()) - 3600))
    with pytest.raises(TokenExpired):
        oidc.claimed_issuer(k8s_token(nbf=int(clock.now()) + 3600))
    with pytest.raises(TokenClaimsInvalid):
        oidc.claimed_issuer(k8s_token(sub="a\nb"))


# -- the edge -------------------------------------------------------------------------------


async def test_the_edge_verifies_tokens_of_issuers_it_holds_keys_for_without_a_policy() -> None:
    verifier = FakeVerifier({"actions": verified()}, held=frozenset({ACTIONS}))
    ex, github, source = exchanger({}, verifier)
    assert (await ex.verify_at_edge("actions", "octo-org/demo", "ci")).issuer == ACTIONS
    assert (source.asked, github.reads) == ([], 0)
    verifier.tokens.clear()  # forged tokens of such issuers cost no GitHub call either
    with pytest.raises(TokenSignatureInvalid):
        await ex.verify_at_edge("actions", "octo-org/demo", "ci")
    assert source.asked == []


async def test_the_edge_verifies_other_tokens_as_exchange_will() -> None:
    # An issuer the edge cannot fetch (the SSRF guard refuses a cluster's private address):
    # its token is authenticated as Exchange does it, with the policy's keys; once pinned
    # keys verified one, the edge no longer tries the issuer.
    policy = pinned_policy()
    assert policy.jwks is not None
    verifier = FakeVerifier(
        {}, IssuerRejected("private address"), pinned={"k8s": (policy.jwks.digest, K8S_TOKEN)}
    )
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    assert await ex.verify_at_edge("k8s", "octo-org/demo", "ci") == pinned_caller(policy)
    assert verifier.calls == 1
    assert await ex.verify_at_edge("k8s", "octo-org/demo", "ci") == pinned_caller(policy)
    assert verifier.calls == 1
    with pytest.raises(IssuerRejected):  # no policy there: only the issuer's keys, unreachable
        await ex.verify_at_edge("k8s", "octo-org/other", "ci")


async def test_a_token_only_pinned_keys_verified_is_not_filed_under_the_issuer_it_claims() -> None:
    # Whoever controls a repository can pin their own key for GitHub Actions' issuer (under
    # a kid GitHub does not publish) and sign any sub with it, e.g. another repository's.
    # The edge accepts such tokens for that repository's policy; the rate limits' tenant
    # must then be the pinned key set, not GitHub Actions' issuer or the victim's subject.
    policy = pinned_policy(issuer=ACTIONS)
    assert policy.jwks is not None
    victim = "repo:victim-org/prod:ref:refs/heads/main"
    forged = verified(sub=victim)  # iss: GitHub Actions
    verifier = FakeVerifier(
        {"real": verified(sub=victim)},
        TokenSignatureInvalid("no key", reason=UNKNOWN_KEY_ID),
        pinned={"pinned": (policy.jwks.digest, forged)},
        held=frozenset({ACTIONS}),
    )
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    caller = await ex.verify_at_edge("pinned", "octo-org/demo", "ci")
    real = await ex.verify_at_edge("real", "octo-org/demo", "ci")
    assert (caller.issuer, caller.subject) == (real.issuer, real.subject) == (ACTIONS, victim)
    assert (caller.pinned_keys, caller.pinned_by) == ((policy.jwks.digest,), "octo-org/demo")
    assert (real.pinned_keys, real.pinned_by) == ((), "")
    forged_tenant, real_tenant = tenant_metadata(caller), tenant_metadata(real)
    assert forged_tenant["issuer"] != real_tenant["issuer"]
    assert forged_tenant["subject"] != real_tenant["subject"]
    # One bucket per pinned key set, whatever sub its holder signs; subjects still apart.
    other = await ex.verify_at_edge("pinned", "octo-org/demo", "ci")
    assert tenant_metadata(other) == forged_tenant
    elsewhere = dataclasses.replace(caller, subject="repo:victim-org/other:ref:refs/heads/main")
    assert tenant_metadata(elsewhere)["issuer"] == forged_tenant["issuer"]
    assert tenant_metadata(elsewhere)["subject"] != forged_tenant["subject"]


async def test_a_cold_edge_judges_tokens_of_fetchable_issuers_without_github() -> None:
    # Keys not held yet (a replica just started): the issuer's published keys are fetched,
    # as the edge always did; neither a valid nor a forged token costs a GitHub lookup.
    good = verified()
    verifier = FakeVerifier({"good": good})
    ex, github, source = exchanger({("octo-org", "demo", REPO_PATH): policy()}, verifier)
    assert await ex.verify_at_edge("good", "octo-org/demo", "ci") is good
    with pytest.raises(TokenSignatureInvalid):
        await ex.verify_at_edge("forged", "octo-org/demo", "ci")
    assert (github.lookups, github.reads, source.asked) == (0, 0, [])


async def test_the_edge_leaves_policy_answers_to_exchange() -> None:
    verifier = FakeVerifier({"actions": verified()})
    ex, _, _ = exchanger({}, verifier)
    # No policy, a bad scope: the token is verified the usual way and passed on.
    assert (await ex.verify_at_edge("actions", "octo-org/demo", "nope")).issuer == ACTIONS
    assert (await ex.verify_at_edge("actions", "a/b/c", "ci")).issuer == ACTIONS
    with pytest.raises(InvalidRequest):
        await ex.exchange(request("actions", "a/b/c"))
    with pytest.raises(TokenMalformed):
        await ex.verify_at_edge("malformed", "octo-org/demo", "ci")


# -- the verifier ---------------------------------------------------------------------------


def no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"pinned verification fetched {request.url}")


async def no_dns(host: str) -> list[str]:
    raise AssertionError(f"pinned verification resolved {host}")


async def nxdomain(host: str) -> list[str]:
    raise OSError(f"{host}: name does not resolve")


def make_verifier(clock: FakeClock, resolver: Any = no_dns, **config: Any) -> OidcVerifier:
    http = httpx.AsyncClient(transport=httpx.MockTransport(no_network))
    return OidcVerifier(OidcConfig(**config), http=http, clock=clock, resolver=resolver)


def k8s_token(key: SigningKey = RSA, **claims: Any) -> str:
    return mint_token(key, K8S, {"sub": SUB, "aud": "octo-sts.dev", **claims})


async def test_pinned_verification_fetches_and_resolves_nothing() -> None:
    oidc = make_verifier(FakeClock(time.time()))
    keys = pinned(jwk(RSA), jwk(EC), jwk(ED))
    for key in (RSA, EC, ED):
        token = await oidc.verify_pinned(k8s_token(key), keys)
        assert (token.issuer, token.subject) == (K8S, SUB)
    assert oidc.claimed_issuer(k8s_token()) == K8S
    assert not oidc.holds_keys(K8S)  # pinned keys are never the issuer's keys


async def test_pinned_verification_refuses_other_keys_kids_and_stale_tokens() -> None:
    clock = FakeClock(time.time())
    oidc = make_verifier(clock)
    keys = pinned(jwk(RSA))
    with pytest.raises(TokenSignatureInvalid) as forged:  # same kid, attacker's key
        await oidc.verify_pinned(k8s_token(OTHER), keys)
    assert forged.value.reason == "token_signature_invalid"
    with pytest.raises(TokenSignatureInvalid) as unknown:
        await oidc.verify_pinned(k8s_token(EC), keys)
    assert unknown.value.reason == UNKNOWN_KEY_ID
    assert "pinned key" in unknown.value.detail
    clock.advance(3600)
    with pytest.raises(TokenExpired):
        await oidc.verify_pinned(k8s_token(), keys)


async def test_the_deployments_issuer_rules_still_apply_to_pinned_issuers() -> None:
    allowlist = compile_allowlist([ACTIONS], [])
    oidc = make_verifier(FakeClock(time.time()), allowlist=allowlist)
    with pytest.raises(IssuerRejected):
        oidc.claimed_issuer(k8s_token())
    with pytest.raises(IssuerRejected):
        await oidc.verify_pinned(k8s_token(), pinned(jwk(RSA)))
    plain = mint_token(RSA, "http://10.0.0.1:8080", {"sub": SUB, "aud": "octo-sts.dev"})
    with pytest.raises(IssuerRejected):  # http only for OCTOSTS_INSECURE_ISSUERS
        await make_verifier(FakeClock(time.time())).verify_pinned(plain, pinned(jwk(RSA)))


async def test_a_pinned_verification_is_not_remembered_as_verified() -> None:
    # The verified-token cache keys by the token alone: were a pinned result stored there,
    # the token would pass the edge and every other policy's exchange.
    clock = FakeClock(time.time())
    oidc = make_verifier(clock, resolver=nxdomain)
    cache = CachingVerifier(oidc, clock=clock)
    token = k8s_token()
    await oidc.verify_pinned(token, pinned(jwk(RSA)))
    assert len(cache) == 0
    with pytest.raises(IssuerRejected):  # the usual way: .invalid cannot be fetched
        await cache.verify(token)


_pv: PinnedVerifier = make_verifier(FakeClock())


# -- the key file ---------------------------------------------------------------------------


def test_a_key_file_passes_the_same_rules() -> None:
    good = json.dumps({"keys": [jwk(RSA), jwk(EC)]}).encode()
    assert len(parse_jwks_file(good, path=KEYS_PATH).keys) == 2
    for content, expected in [
        (json.dumps({"keys": [jwk(RSA, d="AQAB")]}).encode(), "keys[0].d: private key"),
        (b'{"keys": [], "keys": []}', "keys: duplicate member"),
        (b"\xff", "the key file is not UTF-8"),
        (b"keys: []", "the key file is not JSON"),
        (b'{"keys": [[[[["deep"]]]]]}', "the key file nests deeper"),
        (b" " * (64 * 1024 + 1), "the key file is larger than 64 KiB"),
    ]:
        with pytest.raises(PolicyInvalid) as info:
            parse_jwks_file(content, path=KEYS_PATH)
        assert info.value.problems[0].render().startswith(expected), info.value.problems


KEYS_FILE = ("octo-org", "demo", KEYS_PATH)
POLICY_FILE = ("octo-org", "demo", REPO_PATH)
LOC = PolicyLocation("octo-org", "demo", REPO_PATH, "repo")


def file_store() -> tuple[PolicyStore, FakeGitHub, FakeClock]:
    clock = FakeClock()
    github = FakeGitHub({"octo-org": 7})
    github.files[POLICY_FILE] = (
        f"issuer: {K8S}\nsubject: {SUB}\npermissions: {{contents: read}}\njwks_file: {KEYS_PATH}\n"
    ).encode()
    github.files[KEYS_FILE] = json.dumps({"keys": [jwk(RSA)]}).encode()
    config = PolicyCacheConfig(fresh_seconds=10, stale_seconds=3600, missing_seconds=30)
    store = PolicyStore(github, clock=clock, observer=NullObserver(), config=config)
    return store, github, clock


async def test_a_key_file_is_read_with_its_policy_and_cached_like_it() -> None:
    store, github, clock = file_store()
    policy = await store.trust_policy(7, LOC)
    assert policy.jwks is not None
    assert policy.jwks.source == KEYS_PATH
    assert policy.jwks.digest == pinned(jwk(RSA)).digest
    await store.trust_policy(7, LOC)
    assert github.reads == 2  # warm: no read
    github.files[KEYS_FILE] = json.dumps({"keys": [jwk(RSA), jwk(EC)]}).encode()  # rotation
    clock.advance(11)
    rotated = await store.trust_policy(7, LOC)
    assert rotated.jwks is not None
    assert len(rotated.jwks.keys) == 2
    assert github.reads == 4  # the policy revalidated (304), the key file read again


async def test_a_push_to_the_key_file_is_seen_at_once() -> None:
    store, github, _ = file_store()
    await store.trust_policy(7, LOC)
    github.files[KEYS_FILE] = json.dumps({"keys": [jwk(EC)]}).encode()
    assert store.invalidate("octo-org", "demo", KEYS_PATH) == 1
    keys = (await store.trust_policy(7, LOC)).jwks
    assert keys is not None
    assert [k.kid for k in keys.keys] == ["ec-1"]


@pytest.mark.parametrize("pushed", [KEYS_PATH, REPO_PATH, None], ids=["keys", "policy", "all"])
async def test_what_a_push_dropped_is_never_served_while_github_reads_fail(
    pushed: str | None,
) -> None:
    # A key just revoked (or a policy just narrowed) must not stay in force because someone
    # spent the installation's GitHub budget: the store forgets what a push names, so a
    # failed read ends the exchange (RateLimited / GitHubUnavailable), fail closed.
    store, github, clock = file_store()
    await store.trust_policy(7, LOC)
    if pushed != REPO_PATH:
        github.files[KEYS_FILE] = json.dumps({"keys": [jwk(EC)]}).encode()  # RSA revoked
    assert store.invalidate("octo-org", "demo", pushed) >= 1
    github.fail_with = RateLimited("installation budget spent", retry_after=60.0)
    for _ in range(2):
        with pytest.raises(RateLimited):
            await store.trust_policy(7, LOC)
        clock.advance(1)
    github.fail_with = None
    keys = (await store.trust_policy(7, LOC)).jwks
    assert keys is not None
    assert [k.kid for k in keys.keys] == ["rsa-1" if pushed == REPO_PATH else "ec-1"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, f"jwks_file: {KEYS_PATH} is not in octo-org/demo"),
        (json.dumps({"keys": [{"kty": "oct", "k": "eA"}]}).encode(), f"jwks_file: {KEYS_PATH}:"),
    ],
)
async def test_a_missing_or_invalid_key_file_makes_the_policy_invalid(
    content: bytes | None, expected: str
) -> None:
    store, github, _ = file_store()
    if content is None:
        del github.files[KEYS_FILE]
    else:
        github.files[KEYS_FILE] = content
    for _ in range(2):
        with pytest.raises(PolicyInvalid) as info:
            await store.trust_policy(7, LOC)
        assert info.value.problems[0].render().startswith(expected)
    assert github.reads == 2  # both answers cached


async def test_concurrent_cold_exchanges_share_one_key_file_read() -> None:
    store, github, _ = file_store()
    await asyncio.gather(*(store.trust_policy(7, LOC) for _ in range(20)))
    assert github.reads == 2


async def test_the_audit_event_names_the_key_set_that_verified_the_caller() -> None:
    policy = pinned_policy()
    assert policy.jwks is not None
    verifier = FakeVerifier({}, pinned={"k8s": (policy.jwks.digest, K8S_TOKEN)})
    ex, _, _ = exchanger({("octo-org", "demo", REPO_PATH): policy}, verifier)
    attempt = ExchangeAttempt()
    await ex.exchange(request("k8s"), attempt)
    call = CallInfo("octosts.v1.SecurityTokenService/Exchange", "rid", "ua", 0.01)
    record = audit_event(call, request("k8s"), attempt, "ok", "ok", FakeClock()).to_dict()
    assert record["pinned_keys"] == [policy.jwks.digest]
    assert record["actor"]["iss"] == K8S
    # iss and sub are only what the pinned key's holder signed: the event says so.
    assert record["actor"]["verified_by"] == "as claimed by pinned keys of octo-org/demo"
