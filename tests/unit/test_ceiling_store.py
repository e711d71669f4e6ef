"""CeilingStore: the org's permission ceiling, read and cached as every org file is.

The lookup outcomes are the shared ``OrgFileStore``'s (``test_issuers_store`` covers each one
through the issuers file); these check what is the ceiling's own: its path, its parser, the
names of its reason and warnings, and that the two files of one org are cached apart.
"""

from __future__ import annotations

import pytest

from octosts.adapters.org_files import CeilingStore, OrgFileConfig
from octosts.adapters.trusted_issuers import TrustedIssuersStore
from octosts.domain.errors import GitHubUnavailable, PolicyInvalid, PolicyNotFound, RateLimited
from octosts.domain.layout import CEILING_FILE, ISSUERS_FILE
from octosts.domain.ports import NullObserver, PermissionCeilingSource
from tests.fakes import FakeClock, FakeGitHub

KEY = ("octo-org", ".github", CEILING_FILE)
GOOD = b"default: read\npermissions:\n  contents: write\n"
INVALID = b"permissions:\n  contents: reed\n"


def make(content: bytes | None = GOOD) -> tuple[CeilingStore, FakeGitHub, FakeClock]:
    clock = FakeClock()
    github = FakeGitHub({"octo-org": 7})
    if content is not None:
        github.files[KEY] = content
    config = OrgFileConfig(fresh_seconds=300, stale_seconds=3600)
    store = CeilingStore(github, clock=clock, observer=NullObserver(), config=config)
    return store, github, clock


_: PermissionCeilingSource = make()[0]


async def test_the_ceiling_file_is_read_parsed_and_cached() -> None:
    store, github, _clock = make()
    ceiling = await store.permission_ceiling(7, "octo-org")
    assert ceiling is not None
    assert (ceiling.cap("contents"), ceiling.cap("issues")) == ("write", "read")
    assert await store.permission_ceiling(7, "Octo-Org") is ceiling  # names: any case
    assert github.reads == 1


async def test_an_invalid_ceiling_refuses_with_its_own_reason_then_a_push_rereads_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, github, _clock = make(INVALID)
    with pytest.raises(PolicyInvalid) as info:
        await store.permission_ceiling(7, "octo-org")
    assert info.value.reason == "permission_ceiling_invalid"
    assert "permissions.contents" in str(info.value)
    out = capsys.readouterr().out
    assert "permission_ceiling_invalid" in out
    assert "refusing every exchange into this organization" in out
    github.files[KEY] = GOOD
    assert store.invalidate("octo-org")
    assert await store.permission_ceiling(7, "octo-org") is not None


async def test_unreadable_means_no_ceiling_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, github, _clock = make()
    github.fail_with = PolicyNotFound("GitHub 403", reason="policy_unreadable")
    assert await store.permission_ceiling(7, "octo-org") is None
    assert "permission_ceiling_unreadable" in capsys.readouterr().out


async def test_the_issuers_file_and_the_ceiling_of_one_org_are_cached_apart() -> None:
    store, github, clock = make()
    github.files[("octo-org", ".github", ISSUERS_FILE)] = b"issuers: [https://a.example]\n"
    issuers = TrustedIssuersStore(github, clock=clock, observer=NullObserver())
    assert await store.permission_ceiling(7, "octo-org") is not None
    trusted = await issuers.trusted_issuers(7, "octo-org")
    assert trusted is not None
    assert trusted.allows("https://a.example")
    assert github.reads == 2


@pytest.mark.parametrize("before", [None, GOOD], ids=["absent", "laxer"])
async def test_a_pushed_ceiling_is_applied_or_the_org_refused_while_github_reads_fail(
    before: bytes | None, capsys: pytest.CaptureFixture[str]
) -> None:
    # An insider who can spend the installation's GitHub budget must not keep a stricter
    # ceiling just pushed from applying: the answer the push dropped is never served.
    store, github, clock = make(before)
    first = await store.permission_ceiling(7, "octo-org")
    assert (first is None) == (before is None)
    github.files[KEY] = b"default: none\n"  # the org pushes a strict ceiling
    assert store.invalidate("octo-org")
    github.fail_with = RateLimited("installation budget spent", retry_after=60.0)
    for _ in range(3):
        with pytest.raises(RateLimited) as info:
            await store.permission_ceiling(7, "octo-org")
        assert info.value.retry_after == 60.0
        clock.advance(10)
    github.fail_with = GitHubUnavailable("GitHub is down")
    with pytest.raises(GitHubUnavailable):
        await store.permission_ceiling(7, "octo-org")
    assert "permission_ceiling_push_unconfirmed" in capsys.readouterr().out
    github.fail_with = None
    strict = await store.permission_ceiling(7, "octo-org")
    assert strict is not None
    assert strict.cap("contents") == "none"
    # Read since the push: GitHub failing again is the usual stale fallback.
    clock.advance(301)
    github.fail_with = RateLimited("again", retry_after=60.0)
    assert await store.permission_ceiling(7, "octo-org") is strict


async def test_a_push_that_changed_nothing_is_confirmed_by_a_304() -> None:
    store, github, clock = make()
    ceiling = await store.permission_ceiling(7, "octo-org")
    assert store.invalidate("octo-org")
    assert await store.permission_ceiling(7, "octo-org") is ceiling  # revalidated: unchanged
    clock.advance(301)
    github.fail_with = RateLimited("budget spent", retry_after=5.0)
    assert await store.permission_ceiling(7, "octo-org") is ceiling  # stale, not pushed
