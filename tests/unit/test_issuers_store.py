"""TrustedIssuersStore lookup outcomes and caching; the exchange's org_allowlist stage."""

from __future__ import annotations

import asyncio

import pytest

from octosts.adapters.trusted_issuers import TrustedIssuersConfig, TrustedIssuersStore
from octosts.domain.errors import (
    GitHubUnavailable,
    IssuerNotTrusted,
    PolicyInvalid,
    PolicyNotFound,
    RateLimited,
)
from octosts.domain.exchange import ExchangeAttempt, Exchanger, ExchangeRequest
from octosts.domain.layout import ISSUERS_FILE
from octosts.domain.ports import NullObserver, TrustedIssuersSource
from tests.fakes import FakeClock, FakeGitHub, FakePolicies, FakeVerifier, policy, verified

KEY = ("octo-org", ".github", ISSUERS_FILE)
GHA = "https://token.actions.githubusercontent.com"
GOOD = f"issuers: [{GHA}]\n".encode()
OTHER = b"issuers: [https://other.example]\n"
INVALID = b"issuer_patterns: ['https://.*']\n"


def make(content: bytes | None = GOOD) -> tuple[TrustedIssuersStore, FakeGitHub, FakeClock]:
    clock = FakeClock()
    github = FakeGitHub({"octo-org": 7})
    if content is not None:
        github.files[KEY] = content
    store = TrustedIssuersStore(
        github,
        clock=clock,
        observer=NullObserver(),
        config=TrustedIssuersConfig(fresh_seconds=300, stale_seconds=3600),
    )
    return store, github, clock


_: TrustedIssuersSource = make()[0]


async def test_valid_file_is_cached_for_the_fresh_window_then_revalidated() -> None:
    store, github, clock = make()
    first = await store.trusted_issuers(7, "octo-org")
    assert first is not None
    assert first.allows(GHA)
    assert await store.trusted_issuers(7, "Octo-Org") is first
    assert github.reads == 1
    clock.advance(301)
    assert await store.trusted_issuers(7, "octo-org") is first  # 304
    assert github.reads == 2


async def test_absent_file_means_no_restriction_and_is_cached() -> None:
    store, github, _clock = make(None)
    assert await store.trusted_issuers(7, "octo-org") is None
    assert await store.trusted_issuers(7, "octo-org") is None
    assert github.reads == 1


async def test_unreadable_policy_repo_means_no_restriction_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, github, _clock = make()
    github.fail_with = PolicyNotFound("GitHub 403", reason="policy_unreadable")
    assert await store.trusted_issuers(7, "octo-org") is None
    assert "trusted_issuers_unreadable" in capsys.readouterr().out


@pytest.mark.parametrize("error", [RateLimited("limit", retry_after=60), GitHubUnavailable("down")])
async def test_github_failure_serves_last_known_good(error: Exception) -> None:
    store, github, clock = make()
    good = await store.trusted_issuers(7, "octo-org")
    clock.advance(301)
    github.fail_with = error
    assert await store.trusted_issuers(7, "octo-org") is good
    clock.advance(3700)  # beyond the stale window: nothing to fall back on
    with pytest.raises(type(error)):
        await store.trusted_issuers(7, "octo-org")


@pytest.mark.parametrize("error", [RateLimited("limit", retry_after=60), GitHubUnavailable("down")])
async def test_github_failure_without_last_known_good_rejects(error: Exception) -> None:
    store, github, _clock = make()
    github.fail_with = error
    with pytest.raises(type(error)):
        await store.trusted_issuers(7, "octo-org")


async def test_invalid_file_without_last_known_good_rejects_every_exchange() -> None:
    store, github, _clock = make(INVALID)
    for _ in range(2):
        with pytest.raises(PolicyInvalid) as info:
            await store.trusted_issuers(7, "octo-org")
        assert info.value.reason == "trusted_issuers_invalid"
        assert "issuer_patterns[0]" in str(info.value)
    assert github.reads == 1  # the invalid answer is cached too


async def test_invalid_file_with_last_known_good_serves_it_for_an_hour() -> None:
    store, github, clock = make()
    good = await store.trusted_issuers(7, "octo-org")
    github.files[KEY] = INVALID
    clock.advance(301)
    assert await store.trusted_issuers(7, "octo-org") is good
    clock.advance(3600)
    with pytest.raises(PolicyInvalid):
        await store.trusted_issuers(7, "octo-org")


async def test_deleted_file_ends_restriction_and_last_known_good() -> None:
    store, github, clock = make()
    await store.trusted_issuers(7, "octo-org")
    del github.files[KEY]
    clock.advance(301)
    assert await store.trusted_issuers(7, "octo-org") is None
    github.files[KEY] = INVALID
    clock.advance(301)
    with pytest.raises(PolicyInvalid):
        await store.trusted_issuers(7, "octo-org")


async def test_invalidate_rereads_at_once_and_keeps_last_known_good() -> None:
    store, github, _clock = make()
    good = await store.trusted_issuers(7, "octo-org")
    github.files[KEY] = OTHER
    assert store.invalidate("OCTO-org")
    changed = await store.trusted_issuers(7, "octo-org")
    assert changed is not None
    assert not changed.allows(GHA)
    assert github.reads == 2
    github.files[KEY] = INVALID
    store.invalidate("octo-org")
    assert await store.trusted_issuers(7, "octo-org") is changed  # last known good
    assert good is not changed
    assert not store.invalidate("nobody")


async def test_concurrent_cold_lookups_share_one_read() -> None:
    store, github, _clock = make()
    results = await asyncio.gather(*(store.trusted_issuers(7, "octo-org") for _ in range(20)))
    assert github.reads == 1
    assert all(r is results[0] for r in results)


def exchanger(content: bytes | None) -> tuple[Exchanger, FakeGitHub]:
    store, github, _clock = make(content)
    loc = ("octo-org", "demo", ".github/chainguard/ci.sts.yaml")
    return (
        Exchanger(
            verifier=FakeVerifier({"t": verified(aud=("octo-sts.dev",))}),
            github=github,
            policies=FakePolicies({loc: policy()}),
            observer=NullObserver(),
            domain="octo-sts.dev",
            trusted_issuers=store,
        ),
        github,
    )


REQUEST = ExchangeRequest(bearer="t", scope="octo-org/demo", identity="ci")


async def test_enforce_denies_an_unlisted_issuer_before_the_policy_is_read() -> None:
    ex, github = exchanger(OTHER)
    attempt = ExchangeAttempt()
    with pytest.raises(IssuerNotTrusted) as info:
        await ex.exchange(REQUEST, attempt)
    assert info.value.reason == "issuer_not_trusted"
    assert attempt.caller is not None
    assert github.minted == []


async def test_audit_allows_and_records_an_unlisted_issuer() -> None:
    ex, github = exchanger(b"mode: audit\nissuers: [https://other.example]\n")
    attempt = ExchangeAttempt()
    result = await ex.exchange(REQUEST, attempt)
    assert result.token.token.startswith("ghs_")
    assert attempt.issuer_audit == "issuer_not_trusted"
    assert len(github.minted) == 1


async def test_listed_issuer_and_absent_file_are_not_audited() -> None:
    for content in (GOOD, None):
        ex, _github = exchanger(content)
        attempt = ExchangeAttempt()
        await ex.exchange(REQUEST, attempt)
        assert attempt.issuer_audit is None


async def test_invalid_file_rejects_the_exchange() -> None:
    ex, github = exchanger(INVALID)
    with pytest.raises(PolicyInvalid):
        await ex.exchange(REQUEST)
    assert github.minted == []


async def test_an_invalid_file_is_logged_with_the_org_the_pattern_and_the_effect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Never a silent lock-out: the log names the org, each bad pattern as written and why."""
    store, github, clock = make()
    await store.trusted_issuers(7, "octo-org")
    github.files[KEY] = b"issuer_patterns: ['https://a\\.example\\.com/.*']\n"
    clock.advance(301)
    await store.trusted_issuers(7, "octo-org")  # the last valid file is served
    served = capsys.readouterr().out
    clock.advance(3600)
    with pytest.raises(PolicyInvalid):
        await store.trusted_issuers(7, "octo-org")
    refused = capsys.readouterr().out
    for out, effect in (
        (served, "serving the last valid file"),
        (refused, "refusing every exchange into this organization"),
    ):
        assert "trusted_issuers_invalid" in out
        assert "octo-org" in out
        assert ISSUERS_FILE in out
        assert "https://a\\\\.example\\\\.com/.*" in out  # JSON-escaped in the log line
        assert "other than as a fixed literal" in out
        assert effect in out
