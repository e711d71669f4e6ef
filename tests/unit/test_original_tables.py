"""The original octo-sts's own test tables, ported: the same inputs, the outcomes it asserts.

Sources (public, github.com/octo-sts/app, pkg/octosts): ``org_trusted_issuers_test.go``,
``trust_policy_test.go`` and ``pattern_test.go`` (its ``compileAnchored``, used by every
pattern field). Rows keep the original test's name and row name; the Go code is not
copied, only the cases. Messages are ours: a row asserts the outcome (accepted or
refused, which issuers are allowed, which tokens are trusted) and that our message names
the field or pattern, not the original's wording.

Where our outcome differs from the original's, the row names the entry under
"Deliberate differences" in docs/policies.md (``differs=``); ``test_every_difference_is_
documented`` holds the two together. The original's trust-policy rows carry no
``permissions`` (its Go struct leaves them empty); ours requires them (difference
``permissions-required``), so every ported trust-policy row gets ``contents: read``
added, and ``TestCompile/no permissions`` shows the refusal itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from octosts.adapters.policy_yaml import parse_trusted_issuers
from octosts.domain.errors import PolicyInvalid
from octosts.domain.issuers import MAX_ENTRY_LENGTH, TrustedIssuers, compile_trusted_issuers
from octosts.domain.policy import compile_pattern, compile_policy, decide_trust
from octosts.domain.tokens import VerifiedToken

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
GH = "https://token.actions.githubusercontent.com"
EKS = r"https://oidc\.eks\.[a-z0-9-]+\.amazonaws\.com/id/[A-Z0-9]+"
AZURE = r"https://login\.microsoftonline\.com/[a-f0-9-]+/v2\.0"
ALTERNATION = r"https://a\.example\.com|https://b\.example\.com"
DOMAIN = "octo-sts.dev"
PERMISSIONS = {"contents": "read"}


# ---- org_trusted_issuers_test.go -------------------------------------------------------


@dataclass(frozen=True)
class IssuersCase:
    """One org trusted-issuers file: refused (``needle`` in the message), or accepted."""

    test: str
    name: str
    data: Mapping[str, object] | str  # the Go struct's fields, or the raw YAML
    refused: bool = False
    needle: str = ""
    allows: tuple[str, ...] = ()
    denies: tuple[str, ...] = ()
    mode: str | None = None
    differs: str | None = None  # was a difference before; see the row's comment

    @property
    def id(self) -> str:
        return f"{self.test}/{self.name}"


def _issuers(n: int) -> list[str]:
    return [f"https://issuer-{i}.example.com" for i in range(n)]


def _patterns(n: int) -> list[str]:
    return [rf"https://pattern-{i}\.example\.com" for i in range(n)]


SPANNING = "https://totally-evil.com/x.example.com"
# TestCompileRejectsSlashMatchingAtoms: (row, pattern, the issuer it wrongly permitted).
SLASH_ATOMS = [
    ("escaped non-whitespace shorthand", r"https://\S+\.example\.com", SPANNING),
    ("whitespace union class", r"https://[\s\S]+\.example\.com", SPANNING),
    ("negated newline class", r"https://[^\n]+\.example\.com", SPANNING),
    ("posix ascii class", r"https://[[:ascii:]]+\.example\.com", SPANNING),
    ("posix graph class", r"https://[[:graph:]]+\.example\.com", SPANNING),
    ("range that spans the slash byte", r"https://[.-9]+\.example\.com", "https://1/2.example.com"),
    ("unicode punctuation class", r"https://\p{P}+\.example\.com", "https://-/-.example.com"),
    ("posix punct class", r"https://[[:punct:]]+\.example\.com", "https://-/-.example.com"),
    (
        "loose atom after an escaped literal",
        r"https://a\.\S+\.example\.com",
        "https://a.evil.com/x.example.com",
    ),
    (
        "loose atom after a bracket expression",
        r"https://[a-z]+\.\S+\.example\.com",
        "https://a.evil.com/x.example.com",
    ),
    (
        "negated class with a leading literal ]",
        r"https://[^]]+\.example\.com",
        "https://evil.com/x.example.com",
    ),
    (
        "class whose leading literal ] precedes a slash",
        r"https://[]/]+\.example\.com",
        "https:///.example.com",
    ),
    (
        "pseudo-POSIX class spanning slash to tilde",
        r"https://[[:/-~]+\.example\.com",
        "https://e/v/i/l/x.example.com",
    ),
    (
        "pseudo-POSIX class holding a literal slash",
        r"https://[[:/]+\.example\.com",
        "https:///.example.com",
    ),
    (
        "pseudo-POSIX class after a member",
        r"https://[a[:/]+\.example\.com",
        "https://a/a.example.com",
    ),
]
# TestCompileRejectsSeparatorUnderQuantifier: (row, pattern, the issuer it spans to).
SEPARATORS = [
    (
        "star",
        r"https://([a-z0-9.-]+/)*trusted\.example\.com",
        "https://evil.com/x/trusted.example.com",
    ),
    (
        "plus",
        r"https://([a-z0-9.-]+/)+trusted\.example\.com",
        "https://evil.com/x/trusted.example.com",
    ),
    ("optional", r"https://(x\.com/)?trusted\.example\.com", "https://x.com/trusted.example.com"),
    (
        "bounded repeat",
        r"https://([a-z0-9.-]+/){1,3}trusted\.example\.com",
        "https://evil.com/x/trusted.example.com",
    ),
    (
        "alternation",
        r"https://(good\.example\.com|evil\.com/x/trusted\.example\.com)",
        "https://evil.com/x/trusted.example.com",
    ),
]
WILDCARD_DOTS = [
    r"https://.*.example.com",
    r"https://[a-z0-9-]+.example.com",
    r"https://ci.example\.com",
]
# The two patterns a bad third one is listed after (index 2), as the original's rows do.
BESIDE = [r"https://a\.example\.com", r"https://b\.example\.com"]

ISSUERS_CASES = [
    # TestCompileMode
    IssuersCase("TestCompileMode", "empty defaults to enforce", {"issuers": [GH]}, mode="enforce"),
    # The Go struct cannot tell an absent mode from ``mode: ""``; we refused the latter.
    IssuersCase(
        "TestCompileMode",
        "empty string defaults to enforce",
        {"mode": "", "issuers": [GH]},
        mode="enforce",
        differs="fixed",
    ),
    IssuersCase(
        "TestCompileMode", "explicit enforce", {"mode": "enforce", "issuers": [GH]}, mode="enforce"
    ),
    IssuersCase(
        "TestCompileMode", "explicit audit", {"mode": "audit", "issuers": [GH]}, mode="audit"
    ),
    IssuersCase(
        "TestCompileMode",
        "unknown",
        {"mode": "Enforce", "issuers": [GH]},
        refused=True,
        needle="mode",
    ),
    IssuersCase(
        "TestCompileMode", "garbage", {"mode": "off", "issuers": [GH]}, refused=True, needle="mode"
    ),
    IssuersCase(
        "TestCompileRequiresAtLeastOneEntry",
        "empty",
        {"mode": "enforce"},
        refused=True,
        needle="at least one entry",
    ),
    IssuersCase(
        "TestAllowsExactMatch",
        "exact",
        {"issuers": [GH, "https://accounts.google.com"]},
        allows=(GH, "https://accounts.google.com"),
        denies=("https://evil.example.com", "", "https://accounts.google.com/"),
    ),
    IssuersCase(
        "TestAllowsIsCaseSensitive",
        "case",
        {"issuers": [GH]},
        allows=(GH,),
        denies=(
            "https://TOKEN.actions.githubusercontent.com",
            "HTTPS://token.actions.githubusercontent.com",
            "https://Token.Actions.GithubUserContent.com",
        ),
    ),
    IssuersCase(
        "TestAllowsPatternMatch",
        "patterns",
        {"issuer_patterns": [EKS, AZURE]},
        allows=(
            "https://oidc.eks.us-west-2.amazonaws.com/id/ABCDEF123456",
            "https://login.microsoftonline.com/12345678-1234-1234-1234-123456789abc/v2.0",
        ),
        denies=(
            "https://oidc.eks.us-west-2.amazonaws.com/id/ABCDEF123456/extra",
            "https://not-eks.example.com/id/ABC",
        ),
    ),
    # The lock-out of [compat-2]: we refused the file (fixed by judging Go's factored tree).
    IssuersCase(
        "TestAnchoringRejectsAlternationBypass",
        "alternation",
        {"issuer_patterns": [ALTERNATION]},
        allows=("https://a.example.com", "https://b.example.com"),
        denies=("https://a.example.com.attacker.example/x",),
        differs="fixed",
    ),
    IssuersCase(
        "TestAnchoringRejectsSuffixBypass",
        "suffix",
        {"issuer_patterns": [r"https://token\.actions\.githubusercontent\.com"]},
        denies=("https://token.actions.githubusercontent.com.evil.example.com",),
    ),
    IssuersCase(
        "TestCompileRejectsBadPattern",
        "unclosed",
        {"issuer_patterns": ["[unclosed"]},
        refused=True,
        needle='pattern "[unclosed"',
    ),
    IssuersCase(
        "TestCompileAllowsInlineFlags",
        "(?i)",
        {"issuer_patterns": [r"(?i)https://token\.actions\.githubusercontent\.com"]},
        allows=("https://TOKEN.actions.githubusercontent.com",),
    ),
    IssuersCase(
        "TestAllowsUnionOfBothLists",
        "union",
        {"issuers": [GH], "issuer_patterns": [EKS]},
        allows=(GH, "https://oidc.eks.eu-west-1.amazonaws.com/id/ZZZ999"),
    ),
    *[
        IssuersCase(
            "TestCompileValidatesIssuers", name, {"issuers": [issuer]}, refused=True, needle=needle
        )
        for name, issuer, needle in [
            ("http on non-loopback", "http://evil.example.com", "scheme must be https"),
            ("no host", "https://", "empty host"),
            ("query string", "https://example.com?a=b", "query"),
            ("userinfo", "https://u:p@example.com", "userinfo"),
            ("non-ascii host", "https://exämple.com", "ASCII"),
            ("uppercase host", "https://Accounts.Google.com", "lowercase"),
            ("uppercase scheme", "HTTPS://accounts.google.com", "https"),
            ("uppercase scheme and host", "HTTPS://Accounts.Google.com", "https"),
            ("uppercase host with path", "https://Example.com/foo", "lowercase"),
            ("uppercase scheme with path", "HTTPS://example.com/foo", "https"),
        ]
    ],
    *[
        # Loopback http issuers: refused before (scheme must be https); fixed.
        IssuersCase(
            "TestCompileAcceptsRealWorldIssuers",
            issuer,
            {"issuers": [issuer]},
            allows=(issuer,),
            differs="fixed" if issuer.startswith("http:") else None,
        )
        for issuer in [
            GH,
            "https://accounts.google.com",
            "https://gitlab.com",
            "https://oidc.eks.us-west-2.amazonaws.com/id/ABCDEF123456",
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
            "https://tenant.us.auth0.com/",
            "http://localhost",
            "http://127.0.0.1",
        ]
    ],
    IssuersCase("TestCompileEnforcesCaps", "64 issuers", {"issuers": _issuers(64)}),
    IssuersCase(
        "TestCompileEnforcesCaps",
        "65 issuers",
        {"issuers": _issuers(65)},
        refused=True,
        needle="at most 64",
    ),
    IssuersCase("TestCompileEnforcesCaps", "16 patterns", {"issuer_patterns": _patterns(16)}),
    IssuersCase(
        "TestCompileEnforcesCaps",
        "17 patterns",
        {"issuer_patterns": _patterns(17)},
        refused=True,
        needle="at most 16",
    ),
    IssuersCase(
        "TestCompileEnforcesCaps",
        "pattern at the length cap",
        {"issuer_patterns": ["a" * MAX_ENTRY_LENGTH]},
    ),
    IssuersCase(
        "TestCompileEnforcesCaps",
        "pattern over the length cap",
        {"issuer_patterns": ["a" * (MAX_ENTRY_LENGTH + 1)]},
        refused=True,
        needle="256",
    ),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "valid enforce by default",
        f"issuers:\n  - {GH}\n",
        mode="enforce",
    ),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "valid audit",
        f"mode: audit\nissuers:\n  - {GH}\nissuer_patterns:\n  - {EKS}\n",
        mode="audit",
    ),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "unknown key issuer_pattern singular",
        f"issuers:\n  - {GH}\nissuer_pattern:\n  - https://token\\.actions\\.githubusercontent\\.com\n",
        refused=True,
        needle="unknown field",
    ),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "unknown key entirely",
        "enabled: true\nissuers:\n  - https://a.example.com\n",
        refused=True,
        needle="unknown field",
    ),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "malformed yaml",
        "issuers: [\n",
        refused=True,
        needle="invalid YAML",
    ),
    IssuersCase("TestParseOrgTrustedIssuers", "empty document", "", refused=True, needle="mapping"),
    IssuersCase(
        "TestParseOrgTrustedIssuers",
        "uncompilable pattern",
        'issuer_patterns:\n  - "[unclosed"\n',
        refused=True,
        needle="invalid RE2 pattern",
    ),
    *[
        IssuersCase(
            "TestCompileRejectsWildcardDot",
            pattern,
            {"issuers": [GH], "issuer_patterns": [*BESIDE, pattern]},
            refused=True,
            needle=r"\.",
        )
        for pattern in WILDCARD_DOTS
    ],
    IssuersCase(
        "TestAllowsLabelBoundedPatternRejectsBypass",
        "label bounded",
        {"issuer_patterns": [r"https://[a-z0-9-]+\.example\.com"]},
        allows=("https://ci.example.com",),
        denies=("https://evil.attacker-example.com", "https://totally-evil.com/x?a=example.com"),
    ),
    *[
        IssuersCase(
            "TestCompileRejectsSlashMatchingAtoms",
            name,
            {"issuers": [GH], "issuer_patterns": [*BESIDE, pattern]},
            refused=True,
            needle="matches '/'",
        )
        for name, pattern, _evil in SLASH_ATOMS
    ],
    *[
        IssuersCase(
            "TestCompileRejectsPatternsThatEscapeTheAnchoringGroup",
            pattern,
            {"issuer_patterns": [pattern]},
            refused=True,
            needle="invalid RE2 pattern",
        )
        for pattern in [r"token\.example\.com)|(", "a)|("]
    ],
    # Same pattern as the lock-out row; also refused by us before.
    IssuersCase(
        "TestCompileRejectsPatternsThatEscapeTheAnchoringGroup",
        "legitimate alternation",
        {"issuer_patterns": [ALTERNATION]},
        allows=("https://a.example.com", "https://b.example.com"),
        denies=("https://a.example.com.evil", "evil-prefix-https://a.example.com"),
        differs="fixed",
    ),
    *[
        IssuersCase(
            "TestCompileRejectsSeparatorUnderQuantifier",
            name,
            {"issuer_patterns": [pattern]},
            refused=True,
            needle="in an alternation" if name == "alternation" else "under a repetition",
        )
        for name, pattern, _spans in SEPARATORS
    ],
    *[
        IssuersCase(
            "TestCompileKeepsFixedPositionSlashes",
            pattern,
            {"issuer_patterns": [pattern]},
            differs="fixed" if pattern == ALTERNATION else None,
        )
        for pattern in [
            r"https://host\.example\.com/id/[A-Z0-9]+",
            EKS,
            r"https://example\.com/realms/[a-z0-9-]+",
            AZURE,
            ALTERNATION,
        ]
    ],
    IssuersCase(
        "TestCompileRejectsAnUnparseablePattern",
        "bogus POSIX class",
        {"issuer_patterns": [r"https://[[:bogus:]]+\.example\.com"]},
        refused=True,
        needle="invalid RE2 pattern",
    ),
    *[
        IssuersCase(
            "TestCompileAllowsNumericEscapesForSlashAtAFixedPosition",
            pattern,
            {"issuer_patterns": [pattern]},
            allows=("https://a/b.example.com",),
            denies=(
                "https://evil.com/b.example.com",
                "https://a/x/b.example.com",
                "https://evil.com/a/b.example.com",
            ),
        )
        for pattern in [
            r"https://a\x2Fb\.example\.com",
            r"https://a\x{2F}b\.example\.com",
            r"https://a\057b\.example\.com",
        ]
    ],
    *[
        IssuersCase(
            "TestCompileAcceptsPosixClassesThatCannotMatchSlash",
            posix,
            {"issuer_patterns": [rf"https://{posix}+\.example\.com"]},
        )
        for posix in ["[[:alpha:]]", "[[:lower:]]", "[[:alnum:]]", "[[:word:]]", "[[:digit:]]"]
    ],
    IssuersCase(
        "TestCompileAllowsLiteralSlashInRealWorldPatterns",
        "eks",
        {"issuer_patterns": [EKS]},
        allows=("https://oidc.eks.us-west-2.amazonaws.com/id/ABCDEF0123456789",),
    ),
    IssuersCase(
        "TestCompileAllowsLiteralSlashInRealWorldPatterns",
        "azure",
        {"issuer_patterns": [AZURE]},
        allows=("https://login.microsoftonline.com/00000000-1111-2222-3333-444444444444/v2.0",),
    ),
    IssuersCase(
        "TestCompileBracketExtractionHandlesEscapedCloseBracket",
        "escaped ]",
        {"issuer_patterns": [r"https://[a-z\]]+\.example\.com"]},
        allows=("https://ci]x.example.com",),
    ),
    *[
        IssuersCase(
            "TestCompileAllowsDotInsideCharacterClass", pattern, {"issuer_patterns": [pattern]}
        )
        for pattern in [
            r"https://a[.]example\.com",
            r"https://[a-z.]+\.example\.com",
            r"https://[a-z\].]+\.example\.com",
        ]
    ],
    IssuersCase(
        "TestCompileRejectsBadPatternWithCompileError",
        "unclosed",
        {"issuer_patterns": ["[unclosed"]},
        refused=True,
        needle="invalid RE2 pattern",
    ),
    IssuersCase(
        "TestCompileRejectsALoosePatternThatIsAlsoMalformed",
        "loose and malformed",
        {"issuer_patterns": [r"https://.*.example.com("]},
        refused=True,
        needle="invalid RE2 pattern",
    ),
]


def _compile_file(case: IssuersCase) -> TrustedIssuers:
    if isinstance(case.data, str):
        return parse_trusted_issuers(case.data)
    return compile_trusted_issuers(case.data)


@pytest.mark.parametrize("case", ISSUERS_CASES, ids=lambda c: c.id)
def test_org_trusted_issuers_table(case: IssuersCase) -> None:
    if case.refused:
        with pytest.raises(PolicyInvalid) as info:
            _compile_file(case)
        assert case.needle in str(info.value)
        return
    trusted = _compile_file(case)
    if case.mode is not None:
        assert trusted.mode == case.mode
    for issuer in case.allows:
        assert trusted.allows(issuer), issuer
    for issuer in case.denies:
        assert not trusted.allows(issuer), issuer


@pytest.mark.parametrize(
    ("pattern", "evil"),
    [(p, e) for _n, p, e in SLASH_ATOMS] + [(p, e) for _n, p, e in SEPARATORS],
)
def test_refused_patterns_really_are_bypasses_and_the_error_teaches_the_fix(
    pattern: str, evil: str
) -> None:
    """Each refused row would otherwise admit an attacker's issuer (checked with RE2), and
    the error names the entry's index and the corrected form (as the original's does)."""
    assert compile_pattern(pattern).fullmatch(evil)
    with pytest.raises(PolicyInvalid) as info:
        compile_trusted_issuers({"issuers": [GH], "issuer_patterns": [*BESIDE, pattern]})
    [problem] = info.value.problems
    assert problem.field == "issuer_patterns[2]"
    assert r"https://[a-z0-9-]+\.example\.com" in problem.message


# ---- trust_policy_test.go --------------------------------------------------------------


@dataclass(frozen=True)
class CompileCase:
    test: str
    name: str
    policy: Mapping[str, object]
    refused: bool = False
    needle: str = ""
    differs: str | None = None

    @property
    def id(self) -> str:
        return f"{self.test}/{self.name}"


def _with_permissions(policy: Mapping[str, object]) -> dict[str, object]:
    return {**policy, "permissions": PERMISSIONS}


COMPILE_CASES = [
    CompileCase(
        "TestCompile", "valid literals", {"issuer": "https://example.com", "subject": "subject"}
    ),
    CompileCase(
        "TestCompile",
        "valid patterns",
        {
            "issuer_pattern": r"https://(example|google)\.com",
            "subject_pattern": "[0-9]{10}",
            "claim_pattern": {"email": ".*@example.com"},
        },
    ),
    CompileCase(
        "TestCompile",
        "multiple issuers",
        {"issuer": "https://example.com", "issuer_pattern": ".*", "subject": "asdf"},
        refused=True,
        needle="issuer_pattern",
    ),
    CompileCase(
        "TestCompile",
        "multiple subjects",
        {"issuer": "https://example.com", "subject": "subject", "subject_pattern": ".*"},
        refused=True,
        needle="subject_pattern",
    ),
    CompileCase(
        "TestCompile",
        "invalid issuer pattern",
        {"issuer_pattern": ")(", "subject": "asdf"},
        refused=True,
        needle="issuer_pattern",
    ),
    CompileCase(
        "TestCompile",
        "invalid subject pattern",
        {"issuer": "https://examples.com", "subject_pattern": ")("},
        refused=True,
        needle="subject_pattern",
    ),
    CompileCase(
        "TestCompile",
        "invalid audience pattern",
        {"issuer": "https://examples.com", "subject": "asdf", "audience_pattern": ")("},
        refused=True,
        needle="audience_pattern",
    ),
    CompileCase(
        "TestCompile",
        "invalid claim pattern",
        {"issuer": "https://example.com", "subject": "subject", "claim_pattern": {"claim": ")()"}},
        refused=True,
        needle="claim_pattern.claim",
    ),
    CompileCase(
        "TestCompile", "missing issuer", {"subject": "subject"}, refused=True, needle="issuer"
    ),
    CompileCase(
        "TestCompile",
        "missing subject",
        {"issuer": "https://example.com"},
        refused=True,
        needle="subject",
    ),
    CompileCase(
        "TestCompileRejectsGroupEscape",
        "foo)|(",
        {"issuer": "https://example.com", "subject_pattern": "foo)|("},
        refused=True,
        needle="subject_pattern",
    ),
    *[
        CompileCase(
            "TestTrustPolicyCompileRejectsGroupEscape",
            f"{pattern}/{field_name}",
            policy,
            refused=True,
            needle=field_name,
        )
        for pattern in ["a)|(", r"token\.example\.com)|("]
        for field_name, policy in [
            ("issuer_pattern", {"issuer_pattern": pattern, "subject": "s"}),
            ("subject_pattern", {"issuer": "https://example.com", "subject_pattern": pattern}),
            (
                "audience_pattern",
                {"issuer": "https://example.com", "subject": "s", "audience_pattern": pattern},
            ),
            (
                "claim_pattern",
                {
                    "issuer": "https://example.com",
                    "subject": "s",
                    "claim_pattern": {"ref": pattern},
                },
            ),
        ]
    ],
    CompileCase(
        "TestTrustPolicyCompileRejectsGroupEscape",
        "a|b still compiles",
        {"issuer": "https://example.com", "subject_pattern": "a|b"},
    ),
]


@pytest.mark.parametrize("case", COMPILE_CASES, ids=lambda c: c.id)
def test_trust_policy_compile_table(case: CompileCase) -> None:
    data = _with_permissions(case.policy)
    if not case.refused:
        compile_policy(data, kind="repo")
        return
    with pytest.raises(PolicyInvalid) as info:
        compile_policy(data, kind="repo")
    assert case.needle in {p.field for p in info.value.problems} or case.needle in str(info.value)


def test_the_original_trusts_a_policy_without_permissions_we_refuse_it() -> None:
    """TestCompile/valid literals as the original writes it: no permissions field."""
    with pytest.raises(PolicyInvalid) as info:
        compile_policy({"issuer": "https://example.com", "subject": "subject"}, kind="repo")
    [problem] = info.value.problems
    assert problem.field == "permissions"
    assert "every permission the App installation holds" in problem.message
    assert _difference_documented("permissions-required")


@dataclass(frozen=True)
class CheckCase:
    """A policy and a token (``iss``, ``sub``, ``aud`` and extra claims): trusted or not."""

    test: str
    name: str
    policy: Mapping[str, object]
    iss: str
    sub: str
    aud: tuple[str, ...] = (DOMAIN,)
    claims: Mapping[str, object] = field(default_factory=dict)
    trusted: bool = True

    @property
    def id(self) -> str:
        return f"{self.test}/{self.name}"


EX = "https://example.com"
MAIN = "repo:org/app:ref:refs/heads/main"
DEV = "repo:org/app:ref:refs/heads/develop"
REF_ALT = {"ref": "refs/heads/main|refs/tags/v1"}
LIT = {"issuer": EX, "subject": "subject"}
EMAIL = {"email": ".*@example.com"}
BOTH = {"email": ".*@example.com", "domain": r".*\.net"}

CHECK_CASES = [
    CheckCase("TestCheckToken", "valid token", LIT, EX, "subject"),
    CheckCase(
        "TestCheckToken", "invalid issuer", LIT, "https://example.org", "subject", trusted=False
    ),
    CheckCase("TestCheckToken", "invalid subject", LIT, EX, "asdf", trusted=False),
    CheckCase(
        "TestCheckToken",
        "invalid audience",
        {**LIT, "audience": "octo-sts.com"},
        EX,
        "asdf",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "valid patterns",
        {"issuer_pattern": r"https://(example|google)\.com", "subject_pattern": "[0-9]{10}"},
        EX,
        "1234567890",
    ),
    CheckCase(
        "TestCheckToken",
        "invalid issuer pattern",
        {"issuer_pattern": r"https://(example|google)\.com", "subject": "blah"},
        "https://example.org",
        "blah",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "invalid subject pattern",
        {"issuer": EX, "subject_pattern": "[0-9]{10}"},
        EX,
        "blah",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "invalid audience pattern",
        {"issuer": EX, "subject": "blah", "audience_pattern": r"octo-sts\.com"},
        EX,
        "blah",
        aud=("octo-sts.dev", "octo-sts.co"),
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "missing custom claim (no email)",
        {**LIT, "claim_pattern": EMAIL},
        EX,
        "subject",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "reject prefix (with ^$)",
        {"issuer": "https://accounts.google.com", "subject_pattern": "^(123|456)$"},
        "https://accounts.google.com",
        "123999",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "reject prefix (without ^$)",
        {"issuer": "https://accounts.google.com", "subject_pattern": "(123|456)"},
        "https://accounts.google.com",
        "123999",
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "matches one of audience pattern",
        {"issuer": EX, "subject": "blah", "audience_pattern": r"(octo|nona)-sts\.dev"},
        EX,
        "blah",
        aud=("deka-sts.dev", "nona-sts.dev"),
    ),
    CheckCase(
        "TestCheckToken",
        "matches one of audience",
        {"issuer": EX, "subject": "blah", "audience_pattern": "example.com"},
        EX,
        "blah",
        aud=("octo-sts.dev", "deka-sts.dev", "example.com", "nona-sts.dev"),
    ),
    CheckCase(
        "TestCheckToken",
        "matching boolean claims",
        {"issuer": EX, "subject": "blah", "claim_pattern": {"email_verified": "true"}},
        EX,
        "blah",
        claims={"email_verified": True},
    ),
    CheckCase(
        "TestCheckToken",
        "matching custom claim",
        {"issuer": EX, "subject": "blah", "claim_pattern": EMAIL},
        EX,
        "blah",
        claims={"email": "test@example.com"},
    ),
    CheckCase(
        "TestCheckToken",
        "matching multiple custom claim",
        {"issuer": EX, "subject": "blah", "claim_pattern": BOTH},
        EX,
        "blah",
        claims={"email": "test@example.com", "domain": "example.net", "extra": "extra"},
    ),
    CheckCase(
        "TestCheckToken",
        "missing custom claim",
        {
            "issuer": EX,
            "subject": "blah",
            "claim_pattern": {"email_verified": "true", "email": ".*@example.com"},
        },
        EX,
        "blah",
        claims={"email_verified": True},
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "number custom claim",
        {"issuer": EX, "subject": "blah", "claim_pattern": {"age": r"\d+"}},
        EX,
        "blah",
        claims={"age": 21},
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "mismatching custom claim",
        {"issuer": EX, "subject": "blah", "claim_pattern": EMAIL},
        EX,
        "blah",
        claims={"email": "test@example.dev"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckToken",
        "mismatching one of multiple custom claim",
        {"issuer": EX, "subject": "blah", "claim_pattern": BOTH},
        EX,
        "blah",
        claims={"email": "test@example.dev", "domain": "example.net"},
        trusted=False,
    ),
    *[
        CheckCase(
            "TestPatternAnchoringWithAlternation",
            sub,
            {"issuer": EX, "subject_pattern": "main|develop", "claim_pattern": REF_ALT},
            EX,
            sub,
            claims={"ref": "refs/heads/main"},
            trusted=sub in {"main", "develop"},
        )
        for sub in ["main", "develop", "main-attacker", "attacker-develop", "xmainx"]
    ],
    CheckCase(
        "TestPatternAnchoringWithAlternation",
        "suffix-matching ref claim",
        {"issuer": EX, "subject_pattern": "main|develop", "claim_pattern": REF_ALT},
        EX,
        "main",
        claims={"ref": "refs/heads/x/refs/tags/v1"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "subject alternation accepts first alternative",
        {"issuer": GH, "subject_pattern": f"{MAIN}|{DEV}"},
        GH,
        MAIN,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "subject alternation accepts last alternative",
        {"issuer": GH, "subject_pattern": f"{MAIN}|{DEV}"},
        GH,
        DEV,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "subject alternation rejects prefix extension of first alternative",
        {"issuer": GH, "subject_pattern": f"{MAIN}|{DEV}"},
        GH,
        MAIN + "-x",
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "subject alternation rejects suffix extension of last alternative",
        {"issuer": GH, "subject_pattern": f"{MAIN}|{DEV}"},
        GH,
        "evil:" + DEV,
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "subject trailing empty alternative does not accept everything",
        {"issuer": GH, "subject_pattern": f"{MAIN}|"},
        GH,
        "repo:org/evil:ref:refs/heads/main",
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "issuer alternation accepts last alternative",
        {
            "issuer_pattern": r"https://token\.actions\.githubusercontent\.com|https://gitlab\.com",
            "subject": "s",
        },
        "https://gitlab.com",
        "s",
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "issuer alternation rejects prefix extension of first alternative",
        {
            "issuer_pattern": r"https://token\.actions\.githubusercontent\.com|https://gitlab\.com",
            "subject": "s",
        },
        GH + ".evil.example",
        "s",
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "issuer trailing empty alternative does not accept everything",
        {"issuer_pattern": r"https://token\.actions\.githubusercontent\.com|", "subject": "s"},
        "https://evil.example",
        "s",
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "audience alternation accepts first alternative",
        {"issuer": GH, "subject": "s", "audience_pattern": r"octo-sts\.dev|sts\.example\.com"},
        GH,
        "s",
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "audience alternation rejects suffix extension of last alternative",
        {"issuer": GH, "subject": "s", "audience_pattern": r"octo-sts\.dev|sts\.example\.com"},
        GH,
        "s",
        aud=("evil.sts.example.com",),
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "audience trailing empty alternative does not accept everything",
        {"issuer": GH, "subject": "s", "audience_pattern": r"octo-sts\.dev|"},
        GH,
        "s",
        aud=("evil.example",),
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "claim alternation accepts last alternative",
        {"issuer": GH, "subject": "s", "claim_pattern": REF_ALT},
        GH,
        "s",
        claims={"ref": "refs/tags/v1"},
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "claim alternation rejects prefix extension of first alternative",
        {"issuer": GH, "subject": "s", "claim_pattern": REF_ALT},
        GH,
        "s",
        claims={"ref": "refs/heads/main-x"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "claim alternation rejects suffix extension of last alternative",
        {"issuer": GH, "subject": "s", "claim_pattern": REF_ALT},
        GH,
        "s",
        claims={"ref": "refs/heads/x/refs/tags/v1"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "claim trailing empty alternative does not accept everything",
        {"issuer": GH, "subject": "s", "claim_pattern": {"ref": "refs/heads/main|"}},
        GH,
        "s",
        claims={"ref": "refs/heads/evil"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "claim inline multiline flag does not unanchor the end",
        {"issuer": GH, "subject": "s", "claim_pattern": {"ref": "(?m)refs/heads/main"}},
        GH,
        "s",
        claims={"ref": "refs/heads/main\nrefs/heads/evil"},
        trusted=False,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "parenthesized alternation keeps accepting its alternatives",
        {"issuer": GH, "subject_pattern": f"(?:{MAIN}|{DEV})"},
        GH,
        DEV,
    ),
    CheckCase(
        "TestCheckTokenPatternsMatchWholeValue",
        "parenthesized alternation keeps rejecting extensions",
        {"issuer": GH, "subject_pattern": f"(?:{MAIN}|{DEV})"},
        GH,
        MAIN + "-x",
        trusted=False,
    ),
]


def _token(case: CheckCase) -> VerifiedToken:
    payload: dict[str, Any] = {"iss": case.iss, "sub": case.sub, "aud": list(case.aud)}
    payload.update(case.claims)
    return VerifiedToken(
        issuer=case.iss,
        subject=case.sub,
        audience=case.aud,
        expires_at=2e9,
        claims=MappingProxyType(payload),
    )


@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: c.id)
def test_trust_policy_check_table(case: CheckCase) -> None:
    policy = compile_policy(_with_permissions(case.policy), kind="repo")
    decision = decide_trust(policy, _token(case), domain=DOMAIN)
    assert decision.allowed is case.trusted, decision.detail


# ---- pattern_test.go (compileAnchored: every pattern field) -----------------------------

ANCHORED = [
    (
        "top-level alternation anchors both alternatives",
        "main|develop",
        ["main", "develop"],
        ["main-x", "x-develop", "xmainx", ""],
    ),
    (
        "trailing empty alternative accepts only the alternative or empty",
        "main|",
        ["main", ""],
        ["x", "main-x"],
    ),
    (
        "inline multiline flag stays scoped to the pattern",
        "(?m)main",
        ["main"],
        ["main\nx", "x\nmain"],
    ),
    ("inline case-insensitive flag applies", "(?i)MAIN", ["main", "MAIN"], ["mainx"]),
    ("author-written anchors are harmless", "^main$", ["main"], ["xmain"]),
    ("parenthesized alternation is unchanged", "(?:main|develop)", ["main", "develop"], ["main-x"]),
    ("empty pattern accepts only the empty value", "", [""], ["x"]),
]


@pytest.mark.parametrize(
    ("name", "pattern", "accept", "reject"), ANCHORED, ids=[a[0] for a in ANCHORED]
)
def test_compile_anchored_table(
    name: str, pattern: str, accept: list[str], reject: list[str]
) -> None:
    compiled = compile_pattern(pattern)
    assert all(compiled.fullmatch(value) for value in accept), name
    assert not any(compiled.fullmatch(value) for value in reject), name


@pytest.mark.parametrize("pattern", ["a)|(", r"token\.example\.com)|(", "[unclosed", "*a"])
def test_compile_anchored_rejects_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid RE2 pattern"):
        compile_pattern(pattern)


# ---- bookkeeping -------------------------------------------------------------------------

# Every issuer pattern the ported tables use (the Go reference test compares them too).
ORIGINAL_PATTERNS = sorted(
    {
        pattern
        for case in ISSUERS_CASES
        if isinstance(case.data, Mapping)
        for pattern in case.data.get("issuer_patterns", [])  # type: ignore[attr-defined]
        if len(pattern) <= MAX_ENTRY_LENGTH
    }
)

PORTED = len(ISSUERS_CASES) + len(COMPILE_CASES) + len(CHECK_CASES) + len(ANCHORED) + 4
FIXED = sum(case.differs == "fixed" for case in ISSUERS_CASES)
# Rows that expect a policy to load: as written (without permissions) ours refuses it.
WITHOUT_PERMISSIONS = sum(not case.refused for case in COMPILE_CASES) + len(CHECK_CASES)


def _difference_documented(name: str) -> bool:
    text = DOCS.read_text()
    section = text.split("## Deliberate differences", 1)[-1].split("\n## ", 1)[0]
    return f"`{name}`" in section


def test_every_difference_is_documented() -> None:
    """Rows where our outcome differs from the original's name a documented difference."""
    differing = {c.differs for c in ISSUERS_CASES if c.differs not in {None, "fixed"}}
    differing.add("permissions-required")  # every trust-policy row (see the module docstring)
    assert all(_difference_documented(name) for name in differing), differing


def test_the_docs_count_the_ported_cases() -> None:
    """docs/policies.md says how many cases were ported and how they compare; keep it true."""
    found = re.search(
        r"(\d+)\s+cases\s+ported.*?(\d+)\s+disagreed.*?(\d+)\s+trust-policy\s+rows",
        DOCS.read_text(),
        re.DOTALL,
    )
    assert found is not None
    assert tuple(map(int, found.groups())) == (PORTED, FIXED, WITHOUT_PERMISSIONS)
