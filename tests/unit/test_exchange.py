from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octosts.domain.errors import (
    InvalidRequest,
    NoInstallation,
    PolicyDenied,
    PolicyNotFound,
    TokenClaimsInvalid,
    TokenSignatureInvalid,
)
from octosts.domain.exchange import (
    ExchangeAttempt,
    Exchanger,
    ExchangeRequest,
    _check_requested_audience,
)
from octosts.domain.ports import NullObserver
from octosts.domain.tokens import check_audience
from tests.fakes import FakeGitHub, FakePolicies, FakeVerifier, policy, verified

REPO_PATH = ".github/chainguard/ci.sts.yaml"


def make(policies: dict, tokens: dict | None = None) -> tuple[Exchanger, FakeGitHub, FakePolicies]:
    github = FakeGitHub({"octo-org": 7})
    source = FakePolicies(policies)
    exchanger = Exchanger(
        verifier=FakeVerifier(tokens if tokens is not None else {"good": verified()}),
        github=github,
        policies=source,
        observer=NullObserver(),
        domain="octo-sts.dev",
    )
    return exchanger, github, source


async def test_repo_scope_mints_token_restricted_to_the_repo() -> None:
    exchanger, github, source = make({("octo-org", "demo", REPO_PATH): policy()})
    attempt = ExchangeAttempt()
    result = await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"), attempt)
    assert result.token.token == "ghs_fake1"
    assert github.minted == [(7, {"contents": "read"}, ("demo",))]
    assert source.asked[0].kind == "repo"
    assert attempt.installation_id == 7
    assert attempt.matched_claims["sub"] == "repo:octo-org/demo:ref:refs/heads/main"


@pytest.mark.parametrize("scope", ["octo-org", "octo-org/.github"])
async def test_org_scope_reads_org_policy_and_its_repositories(scope: str) -> None:
    org = policy(kind="org", repositories=["demo", "infra"])
    exchanger, github, source = make({("octo-org", ".github", REPO_PATH): org})
    await exchanger.exchange(ExchangeRequest("good", scope, "ci"))
    assert source.asked[0].kind == "org"
    assert github.minted[0][2] == ("demo", "infra")


async def test_org_policy_without_repositories_covers_the_installation() -> None:
    exchanger, github, _ = make({("octo-org", ".github", REPO_PATH): policy(kind="org")})
    await exchanger.exchange(ExchangeRequest("good", "octo-org", "ci"))
    assert github.minted[0][2] == ()


async def test_policy_mismatch_is_denied_with_reason_and_nothing_minted() -> None:
    exchanger, github, _ = make(
        {("octo-org", "demo", REPO_PATH): policy(subject="repo:octo-org/demo:ref:refs/heads/prod")}
    )
    attempt = ExchangeAttempt()
    with pytest.raises(PolicyDenied) as info:
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"), attempt)
    assert info.value.reason == "subject_mismatch"
    assert github.minted == []
    assert attempt.caller is not None


@pytest.mark.parametrize(
    ("scope", "identity"),
    [("", "ci"), ("a/b/c", "ci"), ("octo-org/demo", "../x"), ("octo-org/demo", ""), ("-x", "ci")],
)
async def test_bad_request_fields_fail_before_the_token_is_verified(
    scope: str, identity: str
) -> None:
    exchanger, _, _ = make({})
    # "forged" would fail verification: InvalidRequest proves the fields were checked first.
    with pytest.raises(InvalidRequest):
        await exchanger.exchange(ExchangeRequest("forged", scope, identity))


async def test_untrusted_token_is_rejected_and_nothing_minted() -> None:
    # The policy is read first (it might pin keys: tests/unit/test_pinned_keys.py); a token
    # that cannot be read at all is refused before that.
    exchanger, github, source = make({("octo-org", "demo", REPO_PATH): policy()})
    with pytest.raises(TokenSignatureInvalid):
        await exchanger.exchange(ExchangeRequest("forged", "octo-org/demo", "ci"))
    assert github.minted == []
    assert len(source.asked) == 1


async def test_missing_installation_and_policy_are_permission_denied() -> None:
    exchanger, _, _ = make({})
    with pytest.raises(NoInstallation):
        await exchanger.exchange(ExchangeRequest("good", "other-org/demo", "ci"))
    with pytest.raises(PolicyNotFound):
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"))


async def test_requested_audience_must_be_in_token() -> None:
    exchanger, _, _ = make({("octo-org", "demo", REPO_PATH): policy()})
    with pytest.raises(PolicyDenied) as info:
        await exchanger.exchange(
            ExchangeRequest("good", "octo-org/demo", "ci", audience="someone-else")
        )
    assert info.value.reason == "audience_mismatch"
    result = await exchanger.exchange(
        ExchangeRequest("good", "octo-org/demo", "ci", audience="octo-sts.dev")
    )
    assert result.identity == "ci"


def test_request_repr_hides_the_bearer() -> None:
    assert "s3cret" not in repr(ExchangeRequest("s3cret.token", "o/r", "ci"))


@pytest.mark.parametrize("repo", [".github", ".GITHUB", ".GitHub"])
def test_org_policy_repo_is_matched_case_insensitively(repo: str) -> None:
    from octosts.domain.exchange import policy_location  # noqa: PLC0415
    from octosts.domain.names import parse_scope  # noqa: PLC0415

    location = policy_location(parse_scope(f"acme/{repo}"), "ci", ".github")
    assert location.kind == "org"
    assert location.repo == ".github"


BAD_REQUESTED_AUDIENCES = [
    "",
    "a" * 256,
    "a b",
    "a\tb",
    "a|b",
    "a@b",
    "a\x7fb",
    "a\u200bb",  # zero-width space
    *[f"a{c}b" for c in "\"'`\\<>;&$(){}[]"],
]


@pytest.mark.parametrize("audience", BAD_REQUESTED_AUDIENCES)
async def test_a_bad_requested_audience_is_invalid_before_the_token_is_checked(
    audience: str,
) -> None:
    verifier = FakeVerifier({"good": verified(aud=(audience,))})
    exchanger = Exchanger(
        verifier=verifier,
        github=FakeGitHub({"octo-org": 7}),
        policies=FakePolicies({("octo-org", "demo", REPO_PATH): policy()}),
        observer=NullObserver(),
        domain="octo-sts.dev",
    )
    with pytest.raises(InvalidRequest, match=r"^requested audience ") as info:
        await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci", audience=audience))
    assert info.value.reason == "invalid_request"
    assert verifier.calls == 0


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_requested_audience_follows_the_token_aud_rule(audience: str) -> None:
    try:
        check_audience(audience)
        token_rule_accepts = True
    except TokenClaimsInvalid:
        token_rule_accepts = False
    try:
        _check_requested_audience(audience)
        request_rule_accepts = True
    except InvalidRequest:
        request_rule_accepts = False
    assert request_rule_accepts is token_rule_accepts


async def test_matched_claims_show_each_claim_as_the_policy_matched_it() -> None:
    # A boolean claim is matched as "true" and audited as "true" (one rule: policy.claim_text).
    pol = policy(claim_pattern={"protected": "true", "workflow": "ci.*"})
    tokens = {"good": verified(protected=True, workflow="ci.yaml")}
    exchanger, _, _ = make({("octo-org", "demo", REPO_PATH): pol}, tokens)
    attempt = ExchangeAttempt()
    await exchanger.exchange(ExchangeRequest("good", "octo-org/demo", "ci"), attempt)
    assert attempt.matched_claims["protected"] == "true"
    assert attempt.matched_claims["workflow"] == "ci.yaml"
