"""The "Trust Policy Validation" check run's text: what it says about each kind of file."""

from __future__ import annotations

from octosts.domain.layout import ISSUERS_FILE
from octosts.webhook.validate import check_outcome, validate_file

GHA = b"issuer: https://token.actions.githubusercontent.com\nsubject: x\n"


def issuers_outcome(text: str) -> tuple[str, list[dict[str, object]], str]:
    problems = validate_file(ISSUERS_FILE, text.encode(), repo=".github", org_policy_repo=".github")
    outcome = check_outcome([ISSUERS_FILE], problems)
    return outcome.conclusion, list(outcome.annotations), outcome.summary


def test_the_alternation_octo_sts_accepts_passes() -> None:
    conclusion, _annotations, _summary = issuers_outcome(
        "issuer_patterns:\n  - 'https://a\\.example\\.com|https://b\\.example\\.com'\n"
    )
    assert conclusion == "success"


def test_an_invalid_issuers_file_says_it_will_refuse_the_org_and_names_the_pattern() -> None:
    conclusion, [annotation], summary = issuers_outcome(
        "issuers: [https://token.actions.githubusercontent.com]\n"
        "issuer_patterns:\n  - 'https://a\\.com/x|https://b\\.com/y'\n"
    )
    assert conclusion == "failure"
    assert "exchanges into the organization will be refused" in str(annotation["title"])
    assert annotation["start_line"] == 3
    message = str(annotation["message"])
    assert message.startswith('issuer_patterns[0]: pattern "https://a\\.com/x|https://b\\.com/y"')
    assert "in an alternation" in message
    assert "every token exchange into the organization is refused" in summary
    assert "trusted_issuers_invalid" in summary
    assert 'pattern "https://a\\.com/x|https://b\\.com/y"' in summary


def test_a_pattern_the_guard_cannot_read_is_reported_with_its_reason() -> None:
    conclusion, [annotation], summary = issuers_outcome("issuer_patterns: ['https://a\\kb']\n")
    assert conclusion == "failure"
    # RE2 refuses \k itself: the reason is RE2's, still naming the pattern as written.
    assert 'pattern "https://a\\kb"' in str(annotation["message"])
    assert "trusted_issuers_invalid" in summary


def test_a_trust_policy_without_permissions_says_why_and_what_to_add() -> None:
    path = ".github/chainguard/ci.sts.yaml"
    problems = validate_file(path, GHA, repo="demo", org_policy_repo=".github")
    outcome = check_outcome([path], problems)
    [annotation] = outcome.annotations
    assert annotation["title"] == "Invalid trust policy"
    message = str(annotation["message"])
    assert message.startswith("permissions: is required")
    assert "every permission the App installation holds" in message
    assert "permissions: {contents: read}" in message
    assert "trusted_issuers_invalid" not in outcome.summary  # only said for the issuers file
