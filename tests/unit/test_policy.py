"""compile_policy (validation) and check (decisions): tables and properties."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from octosts.domain.decision import REASONS, Decision
from octosts.domain.errors import PolicyInvalid
from octosts.domain.permissions import PERMISSION_LEVELS, permission_problem
from octosts.domain.policy import (
    TrustPolicy,
    claim_text,
    compile_pattern,
    compile_policy,
    decide_trust,
)
from octosts.domain.tokens import VerifiedToken

ISS = "https://token.actions.githubusercontent.com"
DOMAIN = "octo-sts.dev"


def base(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "issuer": ISS,
        "subject": "repo:org/repo:ref:refs/heads/main",
        "permissions": {"contents": "read"},
    }
    data.update(extra)
    return data


def token(
    *,
    iss: str = ISS,
    sub: str = "repo:org/repo:ref:refs/heads/main",
    aud: tuple[str, ...] = (DOMAIN,),
    **claims: object,
) -> VerifiedToken:
    payload: dict[str, Any] = {"iss": iss, "sub": sub, "aud": list(aud), "exp": 2e9, **claims}
    return VerifiedToken(
        issuer=iss,
        subject=sub,
        audience=aud,
        expires_at=2e9,
        claims=MappingProxyType(payload),
    )


def problems(data: Mapping[str, object], kind: str = "repo") -> list[tuple[str, str]]:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy(data, kind=kind)  # type: ignore[arg-type]
    return [(p.field, p.message) for p in info.value.problems]


INT_KEY: dict[object, object] = {7: "x"}
INT_KEY.update(base())

# ---- compile_policy ----------------------------------------------------------


def test_minimal_policy_compiles() -> None:
    policy = compile_policy(base(), kind="repo")
    assert policy.issuer == ISS
    assert policy.issuer_pattern is None
    assert dict(policy.permissions) == {"contents": "read"}
    assert policy.repositories is None
    assert policy.kind == "repo"


def test_org_policy_repositories() -> None:
    policy = compile_policy(base(repositories=["a", "b.c"]), kind="org")
    assert policy.repositories == ("a", "b.c")
    assert compile_policy(base(), kind="org").repositories is None


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"subject": "s", "permissions": {"contents": "read"}}, "issuer", "required"),
        (base(issuer_pattern=".*"), "issuer_pattern", "not both"),
        ({"issuer": ISS, "permissions": {"contents": "read"}}, "subject", "required"),
        (base(subject_pattern="x"), "subject_pattern", "not both"),
        (base(audience="a", audience_pattern="b"), "audience_pattern", "not both"),
        (base(issuer=""), "issuer", "empty"),
        (base(issuer=1), "issuer", "string"),
        (base(subject=True), "subject", "string"),
        (base(subject=None), "subject", "null"),
        (base(audience=["a"]), "audience", "list"),
        (base(subject_pattern=None, subject=None), "subject_pattern", "not both"),
        (base(claim_pattern="x"), "claim_pattern", "mapping"),
        (base(claim_pattern=None), "claim_pattern", "mapping"),
        (base(claim_pattern={"ref": 1}), "claim_pattern.ref", "string"),
        (base(claim_pattern={"": "x"}), "claim_pattern", "non-empty"),
        (base(claim_pattern={"ref": "(a"}), "claim_pattern.ref", "invalid RE2"),
        (base(permissions={}), "permissions", "at least one"),
        (base(permissions=None), "permissions", "at least one"),
        (base(permissions=["contents"]), "permissions", "mapping"),
        (base(permissions={"contnts": "read"}), "permissions.contnts", "did you mean 'contents'"),
        (base(permissions={"contents": "admin"}), "permissions.contents", "read|write"),
        (base(permissions={"contents": "READ"}), "permissions.contents", "not allowed"),
        (base(permissions={"contents": "none"}), "permissions.contents", "not allowed"),
        (base(permissions={"contents": True}), "permissions.contents", "string"),
        (base(permissions={"workflows": "read"}), "permissions.workflows", "write"),
        (base(permissions={"organization_events": "write"}), "permissions.organization_events", ""),
        (base(permissions={1: "read"}), "permissions", "strings"),
        (base(repositories=["a"]), "repositories", "organization"),
        (base(isuer="x"), "isuer", "did you mean 'issuer'"),
        (base(claims_pattern={}), "claims_pattern", "unknown field"),
        (INT_KEY, "7", "strings"),
    ],
)
def test_invalid_repo_policies(data: dict[str, object], field: str, fragment: str) -> None:
    found = problems(data)
    assert any(f == field and fragment in m for f, m in found), found


@pytest.mark.parametrize(
    ("repositories", "field", "fragment"),
    [
        ("repo", "repositories", "list"),
        ([], "repositories", "empty"),
        (["a", "a"], "repositories[1]", "duplicate"),
        (["org/a"], "repositories[0]", "not a repository name"),
        ([".."], "repositories[0]", "not a repository name"),
        (["r" * 101], "repositories[0]", "not a repository name"),
        ([1], "repositories[0]", "string"),
    ],
)
def test_invalid_org_repositories(repositories: object, field: str, fragment: str) -> None:
    found = problems(base(repositories=repositories), kind="org")
    assert any(f == field and fragment in m for f, m in found), found


def test_every_problem_is_collected() -> None:
    found = problems(
        {
            "issuer_pattern": "(a)\\1",
            "subject_pattern": "(?=x)",
            "audience_pattern": "(?<!y)z",
            "permissions": {"contents": "admin", "pulls": "write"},
            "extra": 1,
        }
    )
    fields = {f for f, _ in found}
    assert fields == {
        "issuer_pattern",
        "subject_pattern",
        "audience_pattern",
        "permissions.contents",
        "permissions.pulls",
        "extra",
    }


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a)\1",  # backreference
        r"(?=a)a",  # lookahead
        r"(?!a)b",  # negative lookahead
        r"(?<=a)b",  # lookbehind
        r"a{1001}",  # beyond RE2's repeat limit
        r"[z-a]",
        "(",
        "\\",
        "x" * 5000,  # longer than the cap
    ],
)
def test_patterns_rejected(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        compile_pattern(pattern)


def test_lines_are_attached_to_problems() -> None:
    with pytest.raises(PolicyInvalid) as info:
        compile_policy(
            base(subject_pattern="(", subject=None) | {"subject": "x"},
            kind="repo",
            lines={"subject_pattern": 7},
        )
    assert [(p.field, p.line) for p in info.value.problems] == [("subject_pattern", 7)]


def test_permission_table_levels() -> None:
    assert PERMISSION_LEVELS["workflows"] == {"write"}
    assert PERMISSION_LEVELS["organization_projects"] == {"read", "write", "admin"}
    for name in ("contents", "pull_requests", "issues", "checks", "administration", "metadata"):
        assert PERMISSION_LEVELS[name] == {"read", "write"}
        assert permission_problem(name, "read") is None
    assert permission_problem("contents", "admin") is not None


# ---- check --------------------------------------------------------------------


def decide(data: dict[str, object], tok: VerifiedToken, *, domain: str = DOMAIN) -> Decision:
    data = {k: v for k, v in data.items() if v is not None}
    return decide_trust(compile_policy(data, kind="repo"), tok, domain=domain)


@pytest.mark.parametrize(
    ("data", "tok", "reason"),
    [
        (base(), token(), "allowed"),
        (base(), token(iss=ISS + "/"), "issuer_mismatch"),
        (base(), token(iss=ISS.upper()), "issuer_mismatch"),
        (base(issuer=None, issuer_pattern=r"https://token\.actions\..*"), token(), "allowed"),
        (
            base(issuer=None, issuer_pattern="https://token.actions"),
            token(),
            "issuer_mismatch",
        ),
        (base(), token(sub="repo:org/repo:ref:refs/heads/main2"), "subject_mismatch"),
        (base(), token(sub="Repo:org/repo:ref:refs/heads/main"), "subject_mismatch"),
        (base(subject=None, subject_pattern="main|develop"), token(sub="main"), "allowed"),
        (base(subject=None, subject_pattern="main|develop"), token(sub="develop"), "allowed"),
        (
            base(subject=None, subject_pattern="main|develop"),
            token(sub="main-evil"),
            "subject_mismatch",
        ),
        (
            base(subject=None, subject_pattern="main|develop"),
            token(sub="evil-develop"),
            "subject_mismatch",
        ),
        (
            base(subject=None, subject_pattern="[[:alpha:]]+:\\pL+"),
            token(sub="repo:ñandú"),
            "allowed",
        ),
        (
            base(subject=None, subject_pattern="[[:alpha:]]+"),
            token(sub="repo1"),
            "subject_mismatch",
        ),
        (base(subject=None, subject_pattern="(?i)REPO:.*"), token(sub="repo:x"), "allowed"),
        (base(subject=None, subject_pattern="a.c"), token(sub="a\nc"), "subject_mismatch"),
        (base(subject=None, subject_pattern="abc"), token(sub="abc\n"), "subject_mismatch"),
        # audience
        (base(), token(aud=("other",)), "audience_mismatch"),
        (base(), token(aud=("other", DOMAIN)), "allowed"),
        (base(audience="sts"), token(aud=("x", "sts")), "allowed"),
        (base(audience="sts"), token(aud=(DOMAIN,)), "audience_mismatch"),
        (base(audience="sts"), token(aud=("sts2",)), "audience_mismatch"),
        (base(audience_pattern="sts-[0-9]+"), token(aud=("x", "sts-42")), "allowed"),
        (base(audience_pattern="sts-[0-9]+"), token(aud=("sts-42x",)), "audience_mismatch"),
        (base(audience_pattern="sts-[0-9]+"), token(aud=(DOMAIN,)), "audience_mismatch"),
        # claim_pattern
        (base(claim_pattern={"ref": "refs/heads/main"}), token(ref="refs/heads/main"), "allowed"),
        (
            base(claim_pattern={"ref": "refs/heads/main"}),
            token(ref="refs/heads/main-x"),
            "claim_mismatch",
        ),
        (base(claim_pattern={"ref": ".*"}), token(), "claim_missing"),
        (base(claim_pattern={"ref": ".*"}), token(ref=None), "claim_not_string"),
        (base(claim_pattern={"n": ".*"}), token(n=1), "claim_not_string"),
        (base(claim_pattern={"n": ".*"}), token(n=["a"]), "claim_not_string"),
        (base(claim_pattern={"n": ".*"}), token(n={"a": "b"}), "claim_not_string"),
        (base(claim_pattern={"b": "true"}), token(b=True), "allowed"),
        (base(claim_pattern={"b": "false"}), token(b=False), "allowed"),
        (base(claim_pattern={"b": "true"}), token(b=False), "claim_mismatch"),
        (base(claim_pattern={"b": "True"}), token(b=True), "claim_mismatch"),
        (base(claim_pattern={"b": "1"}), token(b=1), "claim_not_string"),
        (base(claim_pattern={"s": "a.*"}), token(s="a\ud800"), "claim_mismatch"),
        (base(claim_pattern={"e": "x?"}), token(e=""), "allowed"),
        # nested claims are not addressed by dotted names
        (base(claim_pattern={"a.b": "c"}), token(a={"b": "c"}), "claim_missing"),
    ],
)
def test_decisions(data: dict[str, object], tok: VerifiedToken, reason: str) -> None:
    decision = decide(data, tok)
    assert decision.reason == reason, decision
    assert decision.allowed is (reason == "allowed")
    assert decision.reason in REASONS
    assert decision.detail


def test_first_failing_rule_wins() -> None:
    decision = decide(base(), token(iss="https://other", sub="x", aud=("y",)))
    assert decision.reason == "issuer_mismatch"


def test_no_audience_and_empty_domain_denies() -> None:
    assert decide(base(), token(aud=("",)), domain="").reason == "audience_mismatch"


def test_detail_names_pattern_and_is_bounded() -> None:
    data = base(claim_pattern={"ref": "refs/heads/main"})
    decision = decide(data, token(ref="x" * 10_000))
    assert "refs/heads/main" in decision.detail
    assert len(decision.detail) < 500


@pytest.mark.parametrize(
    ("data", "tok", "detail"),
    [
        (
            base(),
            token(iss="https://other"),
            f"issuer 'https://other' is not the policy's issuer '{ISS}'",
        ),
        (
            base(issuer=None, issuer_pattern="https://a"),
            token(iss="https://b"),
            "issuer 'https://b' does not match issuer_pattern 'https://a'",
        ),
        (
            base(),
            token(sub="x"),
            "subject 'x' is not the policy's subject 'repo:org/repo:ref:refs/heads/main'",
        ),
        (
            base(subject=None, subject_pattern="main"),
            token(sub="dev"),
            "subject 'dev' does not match subject_pattern 'main'",
        ),
    ],
)
def test_issuer_and_subject_denials_say_which_rule_of_the_policy_failed(
    data: dict[str, object], tok: VerifiedToken, detail: str
) -> None:
    assert decide(data, tok).detail == detail


def test_policy_is_frozen() -> None:
    policy: TrustPolicy = compile_policy(base(claim_pattern={"a": "b"}), kind="repo")
    with pytest.raises(AttributeError):
        policy.issuer = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.permissions["contents"] = "write"  # type: ignore[index]


# ---- properties ---------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@given(literal=text, other=text)
def test_escaped_literal_matches_exactly_itself(literal: str, other: str) -> None:
    pattern = compile_pattern(re2.escape(literal))
    assert pattern.fullmatch(literal)
    assert pattern.fullmatch(other) == (other == literal)
    assert not pattern.fullmatch(literal + "x")
    assert not pattern.fullmatch("x" + literal)


atoms = st.sampled_from(["a", "b", "ab", ".", "[ab]", "[[:alpha:]]", "\\pL", "\\d", "-", "x*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(atoms, min_size=1, max_size=4))
    joined = "".join(parts)
    if draw(st.booleans()):
        joined = f"{joined}|{draw(atoms)}"
    if draw(st.booleans()):
        joined = f"(?:{joined})+"
    return joined


@given(source=patterns(), value=st.text(alphabet="ab-1xé\n", max_size=8))
def test_pattern_is_anchored_full_match(source: str, value: str) -> None:
    pattern = compile_pattern(source)
    expected = re2.fullmatch(source, value) is not None
    assert pattern.fullmatch(value) == expected
    assert expected == (re2.search(f"^(?:{source})$", value) is not None)
    # a full match never accepts a longer string just because a prefix matches
    if pattern.fullmatch(value):
        assert compile_pattern(f"(?:{source})").fullmatch(value)


@given(sub=text)
def test_check_is_total(sub: str) -> None:
    decision = decide(base(subject=None, subject_pattern="repo:.*"), token(sub=sub))
    assert decision.reason in {"allowed", "subject_mismatch"}
    assert decision.allowed == (sub.startswith("repo:") and "\n" not in sub)


@pytest.mark.parametrize(
    ("value", "text"),
    [("x", "x"), ("", ""), (True, "true"), (False, "false"), (1, None), (None, None), ([], None)],
)
def test_claim_text(value: object, text: str | None) -> None:
    assert claim_text(value) == text
