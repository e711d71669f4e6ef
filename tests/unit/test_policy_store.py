from __future__ import annotations

import asyncio

import pytest

from octosts.adapters.policy_store import PolicyCacheConfig, PolicyStore
from octosts.domain.errors import GitHubUnavailable, PolicyInvalid, PolicyNotFound, RateLimited
from octosts.domain.ports import NullObserver, PolicyLocation
from tests.fakes import FakeClock, FakeGitHub

LOC = PolicyLocation("octo-org", "demo", ".github/chainguard/ci.sts.yaml", "repo")
KEY = ("octo-org", "demo", ".github/chainguard/ci.sts.yaml")
GOOD = b"issuer: https://issuer.example\nsubject: a\npermissions:\n  contents: read\n"
OTHER = b"issuer: https://issuer.example\nsubject: b\npermissions:\n  contents: write\n"


def make() -> tuple[PolicyStore, FakeGitHub, FakeClock]:
    clock = FakeClock()
    github = FakeGitHub({"octo-org": 7})
    github.files[KEY] = GOOD
    config = PolicyCacheConfig(fresh_seconds=10, stale_seconds=3600, missing_seconds=30)
    return PolicyStore(github, clock=clock, observer=NullObserver(), config=config), github, clock


async def test_fresh_window_then_etag_revalidation() -> None:
    store, github, clock = make()
    first = await store.trust_policy(7, LOC)
    assert first.subject == "a"
    await store.trust_policy(7, LOC)
    assert github.reads == 1  # fresh: no GitHub call
    clock.advance(11)
    again = await store.trust_policy(7, LOC)
    assert again is first  # 304: the same parsed policy
    assert github.reads == 2


async def test_changed_policy_is_enforced_after_the_freshness_window() -> None:
    store, github, clock = make()
    await store.trust_policy(7, LOC)
    github.files[KEY] = OTHER
    assert (await store.trust_policy(7, LOC)).subject == "a"
    clock.advance(11)
    assert (await store.trust_policy(7, LOC)).subject == "b"


async def test_missing_policy_is_negatively_cached_briefly() -> None:
    store, github, clock = make()
    del github.files[KEY]
    for _ in range(3):
        with pytest.raises(PolicyNotFound):
            await store.trust_policy(7, LOC)
    assert github.reads == 1
    clock.advance(31)
    github.files[KEY] = GOOD
    assert (await store.trust_policy(7, LOC)).subject == "a"


@pytest.mark.parametrize("error", [RateLimited("limit", retry_after=60), GitHubUnavailable("down")])
async def test_last_good_copy_is_served_while_github_fails(error: Exception) -> None:
    store, github, clock = make()
    await store.trust_policy(7, LOC)
    github.fail_with = error
    clock.advance(600)
    assert (await store.trust_policy(7, LOC)).subject == "a"
    clock.advance(3600)  # beyond the stale window: the failure surfaces
    with pytest.raises(type(error)):
        await store.trust_policy(7, LOC)


async def test_failure_without_a_good_copy_surfaces() -> None:
    store, github, _ = make()
    github.fail_with = RateLimited("limit", retry_after=60)
    with pytest.raises(RateLimited):
        await store.trust_policy(7, LOC)


async def test_deleted_policy_is_not_resurrected_from_stale_copy() -> None:
    store, github, clock = make()
    await store.trust_policy(7, LOC)
    del github.files[KEY]
    clock.advance(11)
    with pytest.raises(PolicyNotFound):
        await store.trust_policy(7, LOC)


async def test_invalid_policy_is_cached_and_raised_each_time() -> None:
    store, github, _ = make()
    github.files[KEY] = b"issuer: https://issuer.example\nsubject: a\nbogus: 1\n"
    for _ in range(3):
        with pytest.raises(PolicyInvalid) as info:
            await store.trust_policy(7, LOC)
        assert any(p.field == "bogus" for p in info.value.problems)
    assert github.reads == 1


async def test_concurrent_cold_requests_share_one_read() -> None:
    store, github, _ = make()
    results = await asyncio.gather(*(store.trust_policy(7, LOC) for _ in range(50)))
    assert {r.subject for r in results} == {"a"}
    assert github.reads == 1


async def test_invalidate_forgets_a_repository() -> None:
    store, github, _ = make()
    await store.trust_policy(7, LOC)
    github.files[KEY] = OTHER
    assert store.invalidate("Octo-Org", "demo") == 1
    assert (await store.trust_policy(7, LOC)).subject == "b"


async def test_org_policy_with_repositories_parses_as_org() -> None:
    store, github, _ = make()
    org = PolicyLocation("octo-org", ".github", ".github/chainguard/ci.sts.yaml", "org")
    github.files[("octo-org", ".github", org.path)] = GOOD + b"repositories: [demo]\n"
    assert (await store.trust_policy(7, org)).repositories == ("demo",)
    github.files[KEY] = GOOD + b"repositories: [demo]\n"
    with pytest.raises(PolicyInvalid):
        await store.trust_policy(7, LOC)


async def test_repo_and_org_readings_of_one_file_are_cached_apart() -> None:
    # An org policy with `repositories` is invalid as a repo policy; a caller reaching the
    # same file as a repo policy must not poison the org policy's cache entry.
    store, github, _ = make()
    path = ".github/chainguard/ci.sts.yaml"
    github.files[("octo-org", ".github", path)] = GOOD + b"repositories: [demo]\n"
    as_repo = PolicyLocation("octo-org", ".github", path, "repo")
    as_org = PolicyLocation("octo-org", ".github", path, "org")
    with pytest.raises(PolicyInvalid):
        await store.trust_policy(7, as_repo)
    assert (await store.trust_policy(7, as_org)).repositories == ("demo",)
