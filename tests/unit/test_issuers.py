"""Trusted-token-issuers: the file's rules, judging issuers (the guard: test_slash_guard.py)."""

from __future__ import annotations

import pytest

from octosts.adapters.policy_yaml import parse_trusted_issuers
from octosts.domain.errors import PolicyInvalid
from octosts.domain.issuers import (
    NO_RESTRICTION,
    AllowlistInvalid,
    IssuerAllowlist,
    TrustedIssuers,
    compile_allowlist,
    compile_trusted_issuers,
    judge_issuer,
)
from tests.unit.test_slash_guard import REFUSED

GHA = "https://token.actions.githubusercontent.com"


def test_file_errors_name_the_pattern_and_line() -> None:
    text = f"mode: enforce\nissuers:\n  - {GHA}\nissuer_patterns:\n  - 'https://x\\.com.*'\n"
    with pytest.raises(PolicyInvalid) as info:
        parse_trusted_issuers(text)
    [problem] = info.value.problems
    assert problem.line == 5
    assert problem.field == "issuer_patterns[0]"
    assert '"https://x\\.com.*"' in problem.message  # as written: backslashes not doubled


def test_valid_file_parses_with_defaults() -> None:
    trusted = parse_trusted_issuers(f"issuers: [{GHA}]\n")
    assert trusted.mode == "enforce"
    assert trusted.allows(GHA)
    assert not trusted.allows(GHA + "/x")


@pytest.mark.parametrize(
    "issuer", ["https://a.example:8443/Tenant/V2", "https://a.example/ABC", "https://[::a]/x"]
)
def test_only_scheme_and_host_must_be_lowercase(issuer: str) -> None:
    assert parse_trusted_issuers(f"issuers: ['{issuer}']\n").allows(issuer)


def test_patterns_are_full_match() -> None:
    trusted = parse_trusted_issuers(
        "mode: audit\nissuer_patterns: ['https://[a-z]+\\.example\\.com']\n"
    )
    assert trusted.mode == "audit"
    assert trusted.allows("https://abc.example.com")
    assert not trusted.allows("https://abc.example.com.evil")
    assert not trusted.allows("xhttps://abc.example.com")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mode: Enforce\nissuers: [https://a.example]\n", "mode"),
        ("mode: warn\nissuers: [https://a.example]\n", "mode"),
        ("issuers: []\n", "at least one entry"),
        ("mode: audit\n", "at least one entry"),
        ("issuers: [http://a.example]\n", "https"),
        ("issuers: [https://A.example]\n", "lowercase"),
        ("issuers: ['https://a.Example:8443/x']\n", "lowercase"),
        ("issuers: ['https://[::A]/x']\n", "lowercase"),
        ("issuers: [HTTPS://a.example]\n", "issuers[0]"),
        ("issuers: ['https://a.example?x=1']\n", "query"),
        ("issuers: [https://a.example, https://a.example]\n", "duplicate"),
        ("issuers: https://a.example\n", "list"),
        ("issuers: [1]\n", "string"),
        ("issuers: [https://a.example]\nextra: 1\n", "unknown field"),
        ("issuers: [https://a.example]\nissuers: [https://b.example]\n", "duplicate key"),
        ("issuer_patterns: ['(']\n", "invalid RE2"),
        ("issuer_patterns: ['']\n", "non-empty"),
        ("- a\n", "mapping"),
        ("issuers: &a [https://a.example]\n", "anchors"),
        ("issuers: [https://a.example/" + "a" * 260 + "]\n", "256"),
    ],
)
def test_invalid_files(text: str, needle: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse_trusted_issuers(text)
    assert needle in str(info.value)


def test_limits_on_entry_counts() -> None:
    many = [f"https://i{n}.example" for n in range(65)]
    with pytest.raises(PolicyInvalid, match="at most 64"):
        compile_trusted_issuers({"issuers": many})
    patterns = [f"https://p{n}\\.example" for n in range(17)]
    with pytest.raises(PolicyInvalid, match="at most 16"):
        compile_trusted_issuers({"issuer_patterns": patterns})
    ok = compile_trusted_issuers({"issuers": many[:64], "issuer_patterns": patterns[:16]})
    assert len(ok.allowlist.issuers) == 64
    assert len(ok.allowlist.patterns) == 16


def test_insecure_issuer_only_when_the_operator_allows_it() -> None:
    with pytest.raises(PolicyInvalid, match="OCTOSTS_INSECURE_ISSUERS"):
        compile_trusted_issuers({"issuers": ["http://issuer.internal:8000"]})
    ok = compile_trusted_issuers(
        {"issuers": ["http://issuer.internal:8000"]},
        insecure_issuers=frozenset({"http://issuer.internal:8000"}),
    )
    assert ok.allows("http://issuer.internal:8000")


@pytest.mark.parametrize(
    "issuer",
    ["http://localhost", "http://127.0.0.1", "http://127.0.0.1:5556/dex", "http://[::1]:8080"],
)
def test_org_file_accepts_loopback_http_issuers_as_the_original_does(issuer: str) -> None:
    assert compile_trusted_issuers({"issuers": [issuer]}).allows(issuer)
    # The deployment's own allowlist still needs OCTOSTS_INSECURE_ISSUERS.
    with pytest.raises(AllowlistInvalid, match="scheme must be https"):
        compile_allowlist([issuer], [])


@pytest.mark.parametrize(
    "issuer", ["http://localhost.evil.example", "http://127.0.0.2", "http://LOCALHOST"]
)
def test_org_file_refuses_other_http_issuers(issuer: str) -> None:
    with pytest.raises(PolicyInvalid):
        compile_trusted_issuers({"issuers": [issuer]})


@pytest.mark.parametrize(
    "text",
    [
        "mode:\nissuers: [https://a.example]\n",
        "mode: ''\nissuers: [https://a.example]\n",
        "issuers:\nissuer_patterns: ['https://a\\.example']\n",
    ],
)
def test_fields_left_empty_are_unset(text: str) -> None:
    """``mode:`` and ``issuers:`` with no value read as absent, as the original reads them."""
    trusted = parse_trusted_issuers(text)
    assert trusted.mode == "enforce"
    assert trusted.allows("https://a.example")


def test_judge_issuer_modes() -> None:
    enforce = TrustedIssuers("enforce", IssuerAllowlist(frozenset({GHA})))
    audit = TrustedIssuers("audit", IssuerAllowlist(frozenset({GHA})))
    assert judge_issuer(None, "https://x.example") == NO_RESTRICTION
    assert judge_issuer(enforce, GHA).allowed
    refused = judge_issuer(enforce, "https://x.example")
    assert (refused.allowed, refused.audited, refused.reason) == (
        False,
        False,
        "issuer_not_trusted",
    )
    audited = judge_issuer(audit, "https://x.example")
    assert (audited.allowed, audited.audited) == (True, True)
    assert not judge_issuer(audit, GHA).audited


def test_allowlist_reports_every_bad_entry_naming_it() -> None:
    with pytest.raises(AllowlistInvalid) as info:
        compile_allowlist(
            [GHA, "http://a.example", "https://A.example"],
            [r"https://a\.example", "(unclosed", r"https://x\.com.*"],
        )
    problems = info.value.problems
    assert [(p.field, p.index) for p in problems] == [
        ("issuers", 1),
        ("issuers", 2),
        ("issuer_patterns", 1),
        ("issuer_patterns", 2),
    ]
    assert problems[0].message.startswith(
        "'http://a.example': issuer URL rejected: scheme must be https (http:// only for issuers "
        "the deployment lists in OCTOSTS_INSECURE_ISSUERS"
    )
    assert "'https://A.example'" in problems[1].message
    assert 'pattern "(unclosed": invalid RE2 pattern' in problems[2].message
    assert "may match '/'" in problems[3].message


def test_allowlist_value() -> None:
    assert not IssuerAllowlist().restricts
    allowlist = compile_allowlist([GHA], [r"https://[a-z]+\.example\.com"])
    assert allowlist.restricts
    assert allowlist.allows(GHA)
    assert allowlist.allows("https://abc.example.com")
    assert not allowlist.allows("https://abc.example.com/x")
    insecure = "http://127.0.0.1:8000"
    assert compile_allowlist([insecure], [], insecure_issuers=frozenset({insecure})).allows(
        insecure
    )


@pytest.mark.parametrize("pattern", REFUSED)
def test_the_file_and_the_deployment_refuse_the_same_patterns(pattern: str) -> None:
    with pytest.raises(PolicyInvalid, match="may match '/'"):
        compile_trusted_issuers({"issuer_patterns": [pattern]})
    with pytest.raises(AllowlistInvalid, match="may match '/'"):
        compile_allowlist([], [pattern])
