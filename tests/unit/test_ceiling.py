"""The organization's permission ceiling: the file's rules, the one check, the exchange."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octosts.adapters.policy_yaml import parse_permission_ceiling
from octosts.domain.ceiling import (
    CAP_RANK,
    NONE,
    PermissionCeiling,
    compile_ceiling,
    excesses,
)
from octosts.domain.errors import (
    PolicyDenied,
    PolicyExceedsCeiling,
    PolicyInvalid,
    RateLimited,
)
from octosts.domain.exchange import ExchangeAttempt, Exchanger, ExchangeRequest
from octosts.domain.permissions import PERMISSION_LEVELS
from octosts.domain.ports import NullObserver, PermissionCeilingSource
from tests.fakes import FakeGitHub, FakePolicies, FakeVerifier, policy, verified

CEILING = compile_ceiling(
    {
        "default": "read",
        "permissions": {"contents": "write", "pull_requests": "write", "workflows": "none"},
        "elevated": {"identities": ["release"], "identity_patterns": ["deploy-[a-z]+"]},
    }
)


def found(permissions: dict[str, str], identity: str = "release") -> list[tuple[str, str, str]]:
    return [(e.permission, e.asked, e.allowed) for e in excesses(permissions, identity, CEILING)]


def test_a_policy_within_its_caps_passes() -> None:
    assert found({"contents": "write", "pull_requests": "read", "issues": "read"}) == []


def test_each_permission_above_its_cap_is_named() -> None:
    assert found({"contents": "write", "issues": "write", "workflows": "write"}) == [
        ("issues", "write", "read"),  # not listed: the default
        ("workflows", "write", NONE),  # listed as none: never
    ]


@pytest.mark.parametrize(
    ("identity", "allowed"), [("release", True), ("deploy-prod", True), ("ci", False)]
)
def test_only_elevated_identities_get_write_or_admin(identity: str, allowed: bool) -> None:
    excess = excesses({"contents": "write"}, identity, CEILING)
    assert (excess == []) is allowed
    if not allowed:
        assert excess[0].elevated
        assert "identities it lists under elevated" in excess[0].message()


def test_without_a_default_an_unlisted_permission_is_refused() -> None:
    ceiling = compile_ceiling({"permissions": {"contents": "read"}})
    assert [e.permission for e in excesses({"issues": "read"}, "ci", ceiling)] == ["issues"]
    assert excesses({"issues": "read"}, "ci", None) == []  # no file: no ceiling


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(PERMISSION_LEVELS)),
        st.sampled_from(["read", "write", "admin"]),
        max_size=6,
    ),
    st.sampled_from(["release", "ci", "deploy-x"]),
)
def test_what_passes_the_ceiling_never_exceeds_a_cap(perms: dict[str, str], identity: str) -> None:
    excess = {e.permission for e in excesses(perms, identity, CEILING)}
    for name, level in perms.items():
        cap = CEILING.cap(name)
        if CAP_RANK[cap] > CAP_RANK["read"] and not CEILING.may_elevate(identity):
            cap = "read"
        assert (name in excess) == (CAP_RANK[level] > CAP_RANK[cap])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ": the file must be a mapping"),
        ("{}\n", ": set permissions (the cap per permission), default, or both"),
        ("default: admn\n", "line 1: default: 'admn' is not a level: use one of none|read|"),
        ("permissions:\n  contnts: read\n", "line 2: permissions.contnts: unknown GitHub App"),
        ("permissions:\n  contents: admin\n", "line 2: permissions.contents: 'admin' is not"),
        ("permissions: [contents]\n", "line 1: permissions: must be a mapping"),
        ("default: read\nelevated: {}\n", "line 2: elevated: list at least one identity"),
        ("default: read\nelevated:\n  identities: ['..']\n", "line 3: elevated.identities[0]:"),
        ("default: read\nelevated:\n  identity_patterns: ['(a']\n", "line 3: elevated.identity_"),
        ("default: read\nelevated:\n  people: [x]\n", "line 3: elevated.people: unknown field"),
        ("default: read\nmode: enforce\n", "line 2: mode: unknown field"),
        ("default: read\ndefault: write\n", "line 2: default: duplicate key"),
        # YAML 1.1 reads `no` as false: refused, not taken for none (nor false for anything)
        ("default: no\n", "line 1: default: 'False' is not a level"),
        ("permissions:\n  contents: off\n", "line 2: permissions.contents: 'False' is not a lev"),
    ],
)
def test_an_invalid_file_names_every_problem_with_its_line(text: str, expected: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse_permission_ceiling(text)
    rendered = [p.render() if p.line else f": {p.render()}" for p in info.value.problems]
    assert any(r.startswith(expected) for r in rendered), rendered


def test_empty_fields_are_unset() -> None:
    ceiling = parse_permission_ceiling("default:\npermissions:\n  contents: read\n")
    assert (ceiling.default, dict(ceiling.permissions)) == (NONE, {"contents": "read"})
    assert ceiling.may_elevate("anyone")


# -- in the exchange ------------------------------------------------------------------------

REPO_PATH = ".github/chainguard/ci.sts.yaml"


class FakeCeilings:
    def __init__(self, ceiling: PermissionCeiling | None, error: Exception | None = None) -> None:
        self.ceiling = ceiling
        self.error = error
        self.asked: list[tuple[int, str]] = []

    async def permission_ceiling(
        self, installation_id: int, owner: str
    ) -> PermissionCeiling | None:
        self.asked.append((installation_id, owner))
        if self.error is not None:
            raise self.error
        return self.ceiling


_c: PermissionCeilingSource = FakeCeilings(None)


def make(
    policies: dict[tuple[str, str, str], Any], ceilings: FakeCeilings
) -> tuple[Exchanger, FakeGitHub]:
    github = FakeGitHub({"octo-org": 7})
    verifier = FakeVerifier({"good": verified()})
    exchanger = Exchanger(
        verifier=verifier,
        github=github,
        policies=FakePolicies(policies),
        observer=NullObserver(),
        domain="octo-sts.dev",
        pinned=verifier,
        ceilings=ceilings,
    )
    return exchanger, github


async def test_a_policy_above_the_ceiling_is_refused_and_nothing_minted() -> None:
    greedy = policy(permissions={"contents": "write", "administration": "write"})
    exchanger, github = make({("octo-org", "demo", REPO_PATH): greedy}, FakeCeilings(CEILING))
    with pytest.raises(PolicyExceedsCeiling) as info:
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"))
    assert info.value.reason == "policy_exceeds_ceiling"
    assert info.value.detail.startswith("octo-org/demo/.github/chainguard/ci.sts.yaml: ")
    assert "permissions.administration: write is above" in info.value.detail
    assert github.minted == []


async def test_org_policies_are_capped_too() -> None:
    org = policy(kind="org", permissions={"issues": "write"})
    exchanger, github = make({("octo-org", ".github", REPO_PATH): org}, FakeCeilings(CEILING))
    with pytest.raises(PolicyExceedsCeiling):
        await exchanger.exchange(ExchangeRequest("good", "octo-org", "ci"))
    assert github.minted == []


async def test_within_the_ceiling_the_token_has_what_the_policy_grants() -> None:
    exchanger, github = make(
        {("octo-org", "demo", REPO_PATH): policy(permissions={"contents": "read"})},
        FakeCeilings(CEILING),
    )
    await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"))
    assert github.minted == [(7, {"contents": "read"}, ("demo",))]


async def test_each_repository_of_a_token_for_several_is_capped() -> None:
    # The token would carry only what both grant (contents: read); the second policy still
    # asks for more than the org allows and is refused, as it would be alone.
    ok = policy(permissions={"contents": "read"})
    greedy = policy(permissions={"contents": "read", "secrets": "write"})
    exchanger, github = make(
        {("octo-org", "app", REPO_PATH): ok, ("octo-org", "lib", REPO_PATH): greedy},
        FakeCeilings(CEILING),
    )
    several = ExchangeRequest("good", "", "ci", scopes=("octo-org/app", "octo-org/lib"))
    with pytest.raises(PolicyExceedsCeiling) as info:
        await exchanger.exchange(several)
    assert info.value.detail.startswith("octo-org/lib/")
    assert github.minted == []


async def test_the_ceiling_is_read_only_for_callers_the_policy_trusts() -> None:
    ceilings = FakeCeilings(CEILING, error=RateLimited("limit", retry_after=5))
    exchanger, _ = make({("octo-org", "demo", REPO_PATH): policy(subject="someone-else")}, ceilings)
    with pytest.raises(PolicyDenied):
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"))
    assert ceilings.asked == []


async def test_an_unreadable_ceiling_fails_the_exchange_closed() -> None:
    invalid = PolicyInvalid("bad ceiling", reason="permission_ceiling_invalid")
    exchanger, github = make(
        {("octo-org", "demo", REPO_PATH): policy()}, FakeCeilings(None, error=invalid)
    )
    attempt = ExchangeAttempt()
    with pytest.raises(PolicyInvalid) as info:
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"), attempt)
    assert info.value.reason == "permission_ceiling_invalid"
    assert github.minted == []
