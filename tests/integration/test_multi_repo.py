"""Several repositories in one token, over real gRPC against the GitHub emulator.

The GitHub call budget of docs/architecture.md ("Several repositories in one token") is
held here against the emulator's call log: for N repositories of one org, a cold exchange
makes 1 installation lookup, 1 trusted-issuers read, 1 contents-token mint, N policy reads
(concurrent) and 1 mint; within the policies' fresh window, only the mint.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import httpx
import pytest

from octosts._gen.octosts.v1 import sts_pb2
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.domain.exchange import MAX_SCOPES
from tests.integration.service_harness import SUBJECT, Stack

POLICY = ".github/chainguard/ci.sts.yaml"
REPOS = ("app", "lib", "web")


def policy(issuer: str, **permissions: str) -> bytes:
    lines = [f"issuer: {issuer}", f"subject: {SUBJECT}", "permissions:"]
    lines += [f"  {name}: {level}" for name, level in permissions.items()]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def backends(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> tuple[DevIssuer, GitHubEmulator]:
    issuer, github = backends
    grants = {
        "app": {"contents": "write", "issues": "write", "checks": "read"},
        "lib": {"contents": "read", "issues": "write"},
        "web": {"contents": "write", "issues": "read", "pull_requests": "write"},
    }
    for repo, permissions in grants.items():
        github.add_repo("octo-org", repo)
        github.set_file("octo-org", repo, POLICY, policy(issuer.url, **permissions))
    return issuer, github


async def exchange(stack: Stack, *scopes: str, scope: str = "") -> sts_pb2.ExchangeResponse:
    return await stack.stub.Exchange(
        sts_pb2.ExchangeRequest(scope=scope, scopes=scopes, identity="ci"),
        metadata=(("authorization", f"Bearer {stack.token()}"),),
    )


def calls(github: GitHubEmulator) -> Counter[str]:
    """The emulator's call log as "METHOD endpoint" counts (policy reads by repository)."""
    counted: Counter[str] = Counter()
    for call in github.calls():
        if call.path.endswith("/access_tokens"):
            counted[f"{call.method} access_tokens"] += 1
        elif "/contents/" in call.path:
            counted[f"{call.method} {call.path.split('/contents/')[0]}"] += 1
        else:
            counted[f"{call.method} {call.path}"] += 1
    return counted


async def test_one_token_for_three_repositories(stack: Stack) -> None:
    response = await exchange(stack, *(f"octo-org/{r}" for r in REPOS))
    assert dict(response.permissions) == {"contents": "read", "issues": "read"}
    assert sorted(response.repositories) == sorted(REPOS)
    grant = stack.github.token_grant(response.token)
    assert grant is not None
    assert grant["permissions"] == {"contents": "read", "issues": "read"}
    assert grant["repositories"] == set(REPOS)
    # What GitHub enforces: readable in each listed repository, nowhere else, never writable.
    headers = {"authorization": f"Bearer {response.token}"}
    async with httpx.AsyncClient(base_url=stack.github.url, headers=headers) as gh:
        for repo in REPOS:
            read = await gh.get(f"/repos/octo-org/{repo}/contents/{POLICY}")
            assert read.status_code == 200, repo
        other = await gh.get(f"/repos/octo-org/demo/contents/{POLICY}")
        assert other.status_code in {403, 404}
        write = await gh.put(
            "/repos/octo-org/app/contents/x.txt", json={"message": "m", "content": "eA=="}
        )
        assert write.status_code == 403


async def test_github_call_budget_for_n_repositories(stack: Stack) -> None:
    stack.github.reset()
    await exchange(stack, *(f"octo-org/{r}" for r in REPOS))
    assert calls(stack.github) == {
        "GET /orgs/octo-org/installation": 1,
        # The org's trusted-token-issuers and permission-ceiling files (absent here), then
        # one read per repository.
        "GET /repos/octo-org/.github": 2,
        "POST access_tokens": 2,  # the contents:read token for the reads, then the token
        "GET /repos/octo-org/app": 1,
        "GET /repos/octo-org/lib": 1,
        "GET /repos/octo-org/web": 1,
    }
    # Within the policies' fresh window (10 s by default): the mint only.
    stack.github.reset()
    await exchange(stack, *(f"octo-org/{r}" for r in REPOS))
    assert calls(stack.github) == {"POST access_tokens": 1}


async def test_concurrent_exchanges_share_each_policy_read(stack: Stack) -> None:
    stack.github.reset()
    scopes = [f"octo-org/{r}" for r in REPOS]
    results = await asyncio.gather(
        *(exchange(stack, *scopes[i:], *scopes[:i]) for i in range(len(scopes)) for _ in range(3))
    )
    assert len({r.token for r in results}) == 9
    counted = calls(stack.github)
    # Single-flight: one read per repository however many exchanges asked at once.
    assert [counted[f"GET /repos/octo-org/{r}"] for r in REPOS] == [1, 1, 1]
    assert counted["POST access_tokens"] == 1 + 9


@pytest.mark.parametrize(
    ("scope", "scopes", "reason"),
    [
        ("", ["octo-org/app", "other-org/lib"], "invalid_scopes"),
        ("", ["octo-org", "octo-org/lib"], "invalid_scopes"),
        ("octo-org/demo", ["octo-org/app", "octo-org/lib"], "ambiguous_scope"),
        ("", [f"octo-org/r{i}" for i in range(MAX_SCOPES + 1)], "invalid_scopes"),
    ],
)
async def test_requests_one_token_cannot_serve_are_invalid_argument(
    stack: Stack, scope: str, scopes: list[str], reason: str
) -> None:
    stack.github.reset()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await exchange(stack, *scopes, scope=scope)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"reason: {reason}" in (refused.value.details() or "")
    assert stack.github.calls() == []


async def test_a_repository_whose_policy_refuses_denies_the_whole_token(stack: Stack) -> None:
    stack.github.set_file(
        "octo-org", "lib", POLICY, policy("https://elsewhere.example", contents="read")
    )
    stack.github.reset()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await exchange(stack, "octo-org/app", "octo-org/lib")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The contents:read token for the reads only: no token was minted for the caller.
    assert stack.github.count("POST", "/app/installations/") == 1


async def test_the_action_shape_is_still_one_scope(stack: Stack) -> None:
    # scope=X&scopes=X: X alone, an org scope included (its policy's own repositories).
    org = await exchange(stack, "octo-org", scope="octo-org")
    assert list(org.repositories) == ["demo"]
    one = await exchange(stack, "octo-org/app")
    assert list(one.repositories) == ["app"]
    assert dict(one.permissions) == {"contents": "write", "issues": "write", "checks": "read"}
