"""Pinned keys end to end: the real service, the GitHub emulator, an issuer nobody can reach.

The pinned issuer is a private address the service's SSRF guard refuses before any
connection (no DNS, no socket): were the service to try discovery, the exchange would fail.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer, SigningKey, generate_key, mint_token
from octosts.domain.layout import ISSUERS_FILE
from tests.integration.service_harness import DOMAIN, Stack, running

C = grpc.StatusCode
K8S = "https://10.96.0.1:6443"  # a cluster's own issuer: private, never fetched
SUB = "system:serviceaccount:ci:deploy"
POLICY = ".github/chainguard/k8s.sts.yaml"
KEYS = ".github/chainguard/keys/k8s.jwks.json"
KEY = generate_key("rsa", kid="k8s-1")
NEXT = generate_key("ec", kid="k8s-2")
FORGER = generate_key("rsa", kid="k8s-1")  # the same kid, another key


def pinned_policy(*, inline: list[SigningKey] | None = None) -> str:
    head = f"issuer: {K8S}\nsubject: {SUB}\npermissions:\n  contents: read\n"
    if inline is not None:
        jwks = {"keys": [k.public_jwk(publish_alg=True) for k in inline]}
        return head + f"jwks: {json.dumps(jwks)}\n"
    return head + f"jwks_file: {KEYS}\n"


def key_file(*keys: SigningKey) -> str:
    return json.dumps({"keys": [k.public_jwk(publish_alg=True) for k in keys]})


def token(stack: Stack, key: SigningKey = KEY, **claims: Any) -> str:
    body = {"sub": SUB, "aud": DOMAIN, "iat": int(stack.clock.now()), **claims}
    return mint_token(key, K8S, body)


async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


@pytest.fixture
def pinned(backends: tuple[DevIssuer, GitHubEmulator]) -> tuple[DevIssuer, GitHubEmulator]:
    _, github = backends
    github.set_file("octo-org", "demo", POLICY, pinned_policy(inline=[KEY]))
    github.set_file("octo-org", "other", POLICY, pinned_policy(inline=[NEXT]))
    return backends


async def test_the_pinned_keys_verify_and_a_warm_exchange_costs_one_github_call(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*pinned) as stack:
        first = await stack.exchange(identity="k8s", token=token(stack))
        assert first.token.startswith("ghs_")
        before = stack.github_calls()
        again = await stack.exchange(identity="k8s", token=token(stack, jti="2"))
        assert again.token.startswith("ghs_")
        assert stack.github_calls() - before == 1  # the mint


async def test_another_key_under_the_pinned_issuers_name_is_refused(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*pinned) as stack:
        code, _ = await code_of(stack.exchange(identity="k8s", token=token(stack, FORGER)))
        assert code == C.UNAUTHENTICATED
        # One installation token: the contents:read one that read the policy; none minted.
        assert stack.github.count("POST", "/app/installations/") == 1


async def test_one_repositorys_keys_never_verify_for_another(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*pinned) as stack:
        mine = token(stack)
        assert (await stack.exchange(identity="k8s", token=mine)).token
        # octo-org/other pins NEXT for the same issuer; a policy pinning nothing (ci) would
        # verify the usual way, and this issuer cannot be fetched.
        for scope, identity in (("octo-org/other", "k8s"), ("octo-org/demo", "ci")):
            code, _ = await code_of(stack.exchange(scope=scope, identity=identity, token=mine))
            assert code == C.UNAUTHENTICATED, (scope, identity)


async def test_a_key_file_is_rotated_by_editing_it(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _, github = backends
    github.set_file("octo-org", "demo", POLICY, pinned_policy())
    github.set_file("octo-org", "demo", KEYS, key_file(KEY))
    async with running(*backends) as stack:
        assert (await stack.exchange(identity="k8s", token=token(stack))).token
        # Step 1 of a rotation: pin the next key beside the current one.
        github.set_file("octo-org", "demo", KEYS, key_file(KEY, NEXT))
        stack.clock.advance(11)  # the policy cache's freshness window
        assert (await stack.exchange(identity="k8s", token=token(stack, NEXT))).token
        assert (await stack.exchange(identity="k8s", token=token(stack, KEY, jti="b"))).token
        # Step 2, once the issuer signs with the next key only: drop the old one.
        github.set_file("octo-org", "demo", KEYS, key_file(NEXT))
        stack.clock.advance(11)
        code, _ = await code_of(stack.exchange(identity="k8s", token=token(stack, KEY, jti="c")))
        assert code == C.UNAUTHENTICATED


async def test_a_missing_key_file_refuses_the_policys_tokens(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _, github = backends
    github.set_file("octo-org", "demo", POLICY, pinned_policy())
    async with running(*backends, verbose_errors=True) as stack:
        code, _ = await code_of(stack.exchange(identity="k8s", token=token(stack)))
        # Nothing can verify the token without its keys: not authenticated, and no answer
        # about the policy to a caller who is not.
        assert code == C.UNAUTHENTICATED


async def test_the_deployments_allowlist_applies_to_pinned_issuers_before_github_is_asked(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, _ = pinned
    async with running(*pinned, issuer_allowlist=(issuer.url,)) as stack:
        code, _ = await code_of(stack.exchange(identity="k8s", token=token(stack)))
        assert code == C.UNAUTHENTICATED
        assert stack.github_calls() == 0
    async with running(*pinned, issuer_allowlist=(issuer.url, K8S)) as stack:
        assert (await stack.exchange(identity="k8s", token=token(stack))).token


async def test_the_orgs_trusted_issuers_apply_to_pinned_issuers(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, github = pinned
    github.set_file("octo-org", ".github", ISSUERS_FILE, f"issuers: ['{issuer.url}']\n")
    async with running(*pinned) as stack:
        code, _ = await code_of(stack.exchange(identity="k8s", token=token(stack)))
        # Refused before the policy (and its keys) is read: the token cannot be verified.
        assert code == C.UNAUTHENTICATED
        assert stack.github.count("GET", "/repos/octo-org/demo/contents/") == 0
    github.set_file("octo-org", ".github", ISSUERS_FILE, f"issuers: ['{issuer.url}', '{K8S}']\n")
    async with running(*pinned) as stack:
        assert (await stack.exchange(identity="k8s", token=token(stack))).token


async def test_forged_tokens_naming_new_identities_cost_a_bounded_number_of_github_reads(
    pinned: tuple[DevIssuer, GitHubEmulator],
) -> None:
    # Tokens of the pinned issuer are read before they can be verified; a forger inventing an
    # identity per request gets OCTOSTS_UNVERIFIED_LOOKUPS_PER_MINUTE policy reads, then 429s
    # that cost GitHub nothing. The workload that verified before is not held back.
    async with running(*pinned, unverified_lookups_per_minute=4.0) as stack:
        assert (await stack.exchange(identity="k8s", token=token(stack))).token  # 1 of 4
        codes = []
        for i in range(12):
            forged = token(stack, FORGER, jti=str(i))
            codes.append((await code_of(stack.exchange(identity=f"id{i}", token=forged)))[0])
        assert codes[:3] == [C.UNAUTHENTICATED] * 3
        assert codes[3:] == [C.RESOURCE_EXHAUSTED] * 9
        reads = stack.github.count("GET", "/repos/octo-org/demo/contents/.github/chainguard/id")
        assert reads == 3
        assert (await stack.exchange(identity="k8s", token=token(stack, jti="again"))).token
