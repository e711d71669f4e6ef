"""Several repositories in one token: which scopes a request names, and what the token gets."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octosts.domain.errors import (
    AMBIGUOUS_SCOPE,
    INVALID_SCOPES,
    InvalidRequest,
    PolicyDenied,
    PolicyNotFound,
)
from octosts.domain.exchange import (
    MAX_SCOPES,
    NO_COMMON_PERMISSIONS,
    ExchangeAttempt,
    Exchanger,
    ExchangeRequest,
    ScopeDecision,
    requested_scopes,
)
from octosts.domain.names import Scope
from octosts.domain.permissions import LEVEL_RANK, PERMISSION_LEVELS, common_permissions
from octosts.domain.policy import TrustPolicy
from octosts.domain.ports import NullObserver, PolicyLocation
from tests.fakes import FakeGitHub, FakePolicies, FakeVerifier, policy, verified

PATH = ".github/chainguard/ci.sts.yaml"


# -- which scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "scopes", "expected"),
    [
        ("o/a", [], [Scope("o", "a")]),
        ("o", [], [Scope("o", None)]),
        # The octo-sts action repeats its scope; a single entry is a single-scope exchange,
        # an owner (org policy) included.
        ("o", ["o"], [Scope("o", None)]),
        ("", ["o/a"], [Scope("o", "a")]),
        ("o/a", ["o/a"], [Scope("o", "a")]),
        ("", ["o/a", "o/b"], [Scope("o", "a"), Scope("o", "b")]),
        ("o/b", ["o/a", "o/b"], [Scope("o", "a"), Scope("o", "b")]),
        # GitHub names are case-insensitive: one repository, named twice.
        ("", ["o/a", "O/A", "o/b", "o/a"], [Scope("o", "a"), Scope("o", "b")]),
        ("", ["o/a", "o/A"], [Scope("o", "a")]),
    ],
)
def test_requested_scopes(scope: str, scopes: list[str], expected: list[Scope]) -> None:
    assert list(requested_scopes(scope, scopes)) == expected


@pytest.mark.parametrize(
    ("scope", "scopes", "reason"),
    [
        ("o/c", ["o/a", "o/b"], AMBIGUOUS_SCOPE),
        ("o/b", ["o/a"], AMBIGUOUS_SCOPE),
        ("", ["o", "o/a"], INVALID_SCOPES),
        ("", ["o/a", "p/b"], INVALID_SCOPES),
        ("", ["o/a", "o/.github"], INVALID_SCOPES),
        ("", ["o/a", "o/.GitHub"], INVALID_SCOPES),
        ("", [f"o/r{i}" for i in range(MAX_SCOPES + 1)], INVALID_SCOPES),
        ("", ["o/a", "o/b/c"], "invalid_request"),
        ("", ["o/a", ""], "invalid_request"),
    ],
)
def test_refused_scopes(scope: str, scopes: list[str], reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        requested_scopes(scope, scopes)
    assert refused.value.reason == reason


def test_the_cap_counts_entries_before_parsing_them() -> None:
    # MAX_SCOPES entries pass, whatever repeats; more are refused before any is parsed.
    assert len(requested_scopes("", [f"o/r{i}" for i in range(MAX_SCOPES)])) == MAX_SCOPES
    with pytest.raises(InvalidRequest, match=f"at most {MAX_SCOPES}"):
        requested_scopes("", ["o/a"] * (MAX_SCOPES + 1))


def test_a_configured_org_policy_repo_is_refused_among_several() -> None:
    with pytest.raises(InvalidRequest, match="org policies"):
        requested_scopes("", ["o/a", "o/policies"], "policies")
    assert len(requested_scopes("", ["o/a", "o/.github"], "policies")) == 2


# -- the permissions all policies grant --------------------------------------------------------


@pytest.mark.parametrize(
    ("grants", "common"),
    [
        ([], {}),
        ([{"contents": "write"}], {"contents": "write"}),
        (
            [{"contents": "write", "issues": "read"}, {"contents": "read", "issues": "write"}],
            {"contents": "read", "issues": "read"},
        ),
        # A permission missing from one policy is dropped.
        ([{"contents": "read", "issues": "write"}, {"contents": "read"}], {"contents": "read"}),
        ([{"contents": "read"}, {"issues": "read"}], {}),
        (
            [{"repository_projects": "admin"}, {"repository_projects": "admin"}],
            {"repository_projects": "admin"},
        ),
        (
            [
                {"repository_projects": "admin"},
                {"repository_projects": "write"},
                {"repository_projects": "read"},
            ],
            {"repository_projects": "read"},
        ),
    ],
)
def test_common_permissions(grants: list[dict[str, str]], common: dict[str, str]) -> None:
    assert common_permissions(grants) == common


_grant = st.dictionaries(
    st.sampled_from(sorted(PERMISSION_LEVELS)), st.sampled_from(sorted(LEVEL_RANK)), max_size=6
)


@given(st.lists(_grant, min_size=1, max_size=5))
def test_common_permissions_never_exceed_any_grant(grants: list[dict[str, str]]) -> None:
    common = common_permissions(grants)
    for name, level in common.items():
        assert all(LEVEL_RANK[level] <= LEVEL_RANK[grant[name]] for grant in grants)
        assert any(grant[name] == level for grant in grants)  # the lowest, not lower
    names = set.intersection(*(set(grant) for grant in grants))
    assert set(common) == names


# -- the exchange ------------------------------------------------------------------------------


def make(policies: dict[str, TrustPolicy]) -> tuple[Exchanger, FakeGitHub, FakePolicies]:
    github = FakeGitHub({"octo-org": 7})
    source = FakePolicies({("octo-org", repo, PATH): p for repo, p in policies.items()})
    exchanger = Exchanger(
        verifier=FakeVerifier({"good": verified()}),
        github=github,
        policies=source,
        observer=NullObserver(),
        domain="octo-sts.dev",
    )
    return exchanger, github, source


def several(*repos: str) -> ExchangeRequest:
    return ExchangeRequest("good", "", "ci", scopes=tuple(f"octo-org/{r}" for r in repos))


async def test_one_token_for_several_repositories_gets_the_common_permissions() -> None:
    exchanger, github, source = make(
        {
            "app": policy(permissions={"contents": "write", "issues": "read", "checks": "write"}),
            "lib": policy(permissions={"contents": "read", "issues": "write"}),
        }
    )
    attempt = ExchangeAttempt()
    result = await exchanger.exchange(several("app", "lib"), attempt)
    assert github.minted == [(7, {"contents": "read", "issues": "read"}, ("app", "lib"))]
    assert [loc.repo for loc in source.asked] == ["app", "lib"]
    assert [str(s) for s in result.scopes] == ["octo-org/app", "octo-org/lib"]
    assert len(result.policies) == 2
    assert attempt.decisions == [
        ScopeDecision("octo-org/app", allowed=True, reason="allowed"),
        ScopeDecision("octo-org/lib", allowed=True, reason="allowed"),
    ]


async def test_one_policy_that_does_not_match_refuses_the_whole_token() -> None:
    exchanger, github, _ = make(
        {
            "app": policy(),
            "lib": policy(subject="repo:octo-org/lib:ref:refs/heads/main"),
            "web": policy(),
        }
    )
    attempt = ExchangeAttempt()
    with pytest.raises(PolicyDenied) as denied:
        await exchanger.exchange(several("app", "lib", "web"), attempt)
    assert denied.value.reason == "subject_mismatch"
    assert denied.value.detail.startswith("octo-org/lib: ")
    assert github.minted == []
    # Every repository was judged, and the audit event says which one refused.
    assert [(d.scope, d.allowed, d.reason) for d in attempt.decisions] == [
        ("octo-org/app", True, "allowed"),
        ("octo-org/lib", False, "subject_mismatch"),
        ("octo-org/web", True, "allowed"),
    ]


async def test_a_repository_without_the_policy_refuses_the_whole_token() -> None:
    exchanger, github, _ = make({"app": policy()})
    attempt = ExchangeAttempt()
    with pytest.raises(PolicyNotFound):
        await exchanger.exchange(several("app", "nothing"), attempt)
    assert github.minted == []
    assert [(d.scope, d.reason) for d in attempt.decisions] == [
        ("octo-org/app", "allowed"),
        ("octo-org/nothing", "policy_not_found"),
    ]


async def test_the_first_failure_in_request_order_is_raised() -> None:
    exchanger, _, _ = make({"lib": policy(subject="repo:octo-org/lib:ref:refs/heads/main")})
    with pytest.raises(PolicyNotFound):
        await exchanger.exchange(several("nothing", "lib"))
    with pytest.raises(PolicyDenied):
        await exchanger.exchange(several("lib", "nothing"))


async def test_policies_with_nothing_in_common_mint_nothing() -> None:
    exchanger, github, _ = make(
        {
            "app": policy(permissions={"contents": "read"}),
            "lib": policy(permissions={"issues": "read"}),
        }
    )
    with pytest.raises(PolicyDenied) as denied:
        await exchanger.exchange(several("app", "lib"))
    assert denied.value.reason == NO_COMMON_PERMISSIONS
    assert github.minted == []


async def test_the_policies_are_read_concurrently() -> None:
    class Gate(FakePolicies):
        """Answers only once every policy of the request is being read."""

        def __init__(self, policies: dict, expected: int) -> None:
            super().__init__(policies)
            self.expected = expected
            self.all_asked = asyncio.Event()

        async def trust_policy(self, installation_id: int, location: PolicyLocation) -> TrustPolicy:
            self.asked.append(location)
            if len(self.asked) == self.expected:
                self.all_asked.set()
            await self.all_asked.wait()
            return self.policies[(location.owner, location.repo, location.path)]

    gate = Gate({("octo-org", r, PATH): policy() for r in ("a", "b", "c")}, expected=3)
    exchanger = Exchanger(
        verifier=FakeVerifier({"good": verified()}),
        github=FakeGitHub({"octo-org": 7}),
        policies=gate,
        observer=NullObserver(),
        domain="octo-sts.dev",
    )
    # Read one after another, the first read would wait forever.
    result = await asyncio.wait_for(exchanger.exchange(several("a", "b", "c")), timeout=5)
    assert result.token.repositories == ("a", "b", "c")


async def test_a_single_scope_in_scopes_is_the_usual_exchange() -> None:
    org = policy(kind="org", repositories=["demo", "infra"])
    exchanger, github, source = make({".github": org})
    attempt = ExchangeAttempt()
    await exchanger.exchange(
        ExchangeRequest("good", "octo-org", "ci", scopes=("octo-org",)), attempt
    )
    # The org policy, with its own repositories: what `scope=octo-org` alone gets.
    assert source.asked[0].kind == "org"
    assert github.minted == [(7, {"contents": "read"}, ("demo", "infra"))]
    assert attempt.decisions == [ScopeDecision("octo-org", allowed=True, reason="allowed")]


async def test_several_scopes_are_checked_before_the_token_is_verified() -> None:
    exchanger, _, _ = make({})
    with pytest.raises(InvalidRequest):
        await exchanger.exchange(ExchangeRequest("forged", "", "ci", scopes=("a/b", "c/d")))
