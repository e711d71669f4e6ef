"""The egress use case (``domain.egress``) with the held-token cache (``adapters.held_tokens``).

Real Exchanger and cache, fake ports and clock: every request is decided as an exchange, a
token is reused only for the same (OIDC token, scope, identity, grant) and only while it has
``REUSE_MARGIN_SECONDS`` left at GitHub and the OIDC token has not expired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

import pytest

from octosts.adapters.held_tokens import HeldTokenCache
from octosts.domain.egress import REUSE_MARGIN_SECONDS, Egress, HeldTokens, reuse_key
from octosts.domain.errors import MintRejected, PolicyDenied, PolicyNotFound
from octosts.domain.exchange import ExchangeAttempt, Exchanger, ExchangeRequest
from octosts.domain.ports import MintedToken, NullObserver
from tests.fakes import FakeClock, FakeGitHub, FakePolicies, FakeVerifier, policy, verified

POLICY_PATH = ".github/chainguard/ci.sts.yaml"
DEMO = ("octo-org", "demo", POLICY_PATH)
LIFETIME = 3600.0

_: HeldTokens = HeldTokenCache(clock=FakeClock())


class ClockedGitHub(FakeGitHub):
    """Mints tokens that expire an hour after the fake clock's now, as GitHub's do."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__({"octo-org": 7})
        self.clock = clock
        self.refuse_next = False

    async def mint(
        self, installation_id: int, permissions: Mapping[str, str], repositories: Sequence[str]
    ) -> MintedToken:
        await asyncio.sleep(0)  # a real mint yields: concurrent callers interleave
        if self.refuse_next:
            self.refuse_next = False
            raise MintRejected("422")
        token = await super().mint(installation_id, permissions, repositories)
        expires = dt.datetime.fromtimestamp(self.clock.now() + LIFETIME, dt.UTC)
        return dataclasses.replace(token, expires_at=expires)


class Harness:
    def __init__(self, *, token_ttl: float = 10_000.0, maxsize: int = 100) -> None:
        self.clock = FakeClock()
        self.github = ClockedGitHub(self.clock)
        self.policies = FakePolicies({DEMO: policy(permissions={"issues": "write"})})
        caller = dataclasses.replace(verified(), expires_at=self.clock.now() + token_ttl)
        self.exchanger = Exchanger(
            verifier=FakeVerifier({"oidc-a": caller, "oidc-b": caller}),
            github=self.github,
            policies=self.policies,
            observer=NullObserver(),
            domain="octo-sts.dev",
        )
        self.cache = HeldTokenCache(clock=self.clock, maxsize=maxsize)
        self.egress = Egress(self.exchanger, self.cache)

    async def ask(self, bearer: str = "oidc-a", scope: str = "octo-org/demo") -> tuple[str, bool]:
        request = ExchangeRequest(bearer, scope, "ci")
        grant = await self.egress.authorize(request, ExchangeAttempt())
        return grant.result.token.token, grant.reused

    @property
    def mints(self) -> int:
        return len(self.github.minted)


async def test_the_same_caller_reuses_one_token() -> None:
    h = Harness()
    assert await h.ask() == ("ghs_fake1", False)
    assert await h.ask() == ("ghs_fake1", True)
    assert await h.ask() == ("ghs_fake1", True)
    assert h.mints == 1


async def test_another_oidc_token_or_scope_gets_its_own_token() -> None:
    h = Harness()
    h.policies.policies[("octo-org", ".github", POLICY_PATH)] = policy(kind="org")
    assert (await h.ask("oidc-a"))[0] == "ghs_fake1"
    assert (await h.ask("oidc-b"))[0] == "ghs_fake2"  # same claims, another token
    assert (await h.ask("oidc-a", scope="octo-org"))[0] == "ghs_fake3"
    assert (await h.ask("oidc-a"))[0] == "ghs_fake1"


async def test_every_request_is_decided_a_held_token_never_outlives_its_policy() -> None:
    h = Harness()
    await h.ask()
    del h.policies.policies[DEMO]  # deleted (the policy cache saw the push)
    with pytest.raises(PolicyNotFound):
        await h.ask()
    h.policies.policies[DEMO] = policy(subject="repo:octo-org/demo:ref:refs/heads/prod")
    with pytest.raises(PolicyDenied):
        await h.ask()
    assert h.mints == 1


async def test_a_policy_edit_that_changes_the_grant_mints_a_new_token() -> None:
    h = Harness()
    await h.ask()
    h.policies.policies[DEMO] = policy(permissions={"issues": "read"})
    assert await h.ask() == ("ghs_fake2", False)
    assert h.github.minted[-1][1] == {"issues": "read"}
    h.policies.policies[DEMO] = policy(permissions={"issues": "write"})
    assert await h.ask() == ("ghs_fake1", True)  # still held, and still what is granted


async def test_reuse_stops_short_of_githubs_expiry() -> None:
    h = Harness()
    await h.ask()
    h.clock.advance(LIFETIME - REUSE_MARGIN_SECONDS - 1)
    assert await h.ask() == ("ghs_fake1", True)
    h.clock.advance(2)
    assert await h.ask() == ("ghs_fake2", False)


async def test_reuse_never_outlives_the_oidc_token() -> None:
    h = Harness(token_ttl=100.0)
    await h.ask()
    h.clock.advance(99)
    assert await h.ask() == ("ghs_fake1", True)
    h.clock.advance(1)
    assert await h.ask() == ("ghs_fake2", False)  # the fake verifier still accepts it


async def test_concurrent_first_requests_share_one_mint() -> None:
    h = Harness()
    answers = await asyncio.gather(*(h.ask() for _ in range(5)))
    assert {token for token, _ in answers} == {"ghs_fake1"}
    assert sorted(reused for _, reused in answers) == [False, True, True, True, True]
    assert h.mints == 1


async def test_a_failed_mint_is_not_held() -> None:
    h = Harness()
    h.github.refuse_next = True
    with pytest.raises(MintRejected):
        await h.ask()
    assert await h.ask() == ("ghs_fake1", False)


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    h = Harness(maxsize=1)
    h.policies.policies[("octo-org", ".github", POLICY_PATH)] = policy(kind="org")
    await h.ask()
    await h.ask(scope="octo-org")
    assert len(h.cache) == 1
    assert await h.ask() == ("ghs_fake3", False)


async def test_the_key_holds_a_hash_of_the_oidc_token_never_the_token() -> None:
    h = Harness()
    authorized = await h.exchanger.authorize(ExchangeRequest("oidc-a", "octo-org/demo", "ci"))
    key = reuse_key("oidc-a", authorized)
    assert "oidc-a" not in repr(key)
    assert key == reuse_key("oidc-a", authorized)
    assert key != reuse_key("oidc-b", authorized)
