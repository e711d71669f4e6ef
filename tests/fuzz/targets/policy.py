"""Trust policy files, as a repository (or org) owner may commit them.

Input: the file's bytes. Path: ``adapters.policy_yaml.parse_trust_policy`` (strict
YAML, then ``domain.policy.compile_policy``) for a repository and an organization
policy; the webhook's ``validate_file`` and ``check_outcome`` (the check run a pull
request gets); ``decide_trust`` of a compiled policy against a few tokens.

Property: only ``PolicyInvalid`` escapes; every problem renders, names a line
inside the file (or none), and fits a check-run annotation; ``decide_trust`` never
raises and answers with a known reason.
"""

from __future__ import annotations

from types import MappingProxyType

from octosts.adapters.policy_yaml import parse_trust_policy
from octosts.domain.decision import REASONS
from octosts.domain.errors import PolicyInvalid, PolicyProblem
from octosts.domain.policy import PolicyKind, TrustPolicy, decide_trust
from octosts.domain.tokens import VerifiedToken
from octosts.webhook.validate import MAX_ANNOTATIONS, check_outcome, validate_file
from tests.fuzz.targets._support import DOMAIN

PATH = ".github/chainguard/fuzz.sts.yaml"
TOKENS = (
    VerifiedToken(
        issuer="https://token.actions.githubusercontent.com",
        subject="repo:octo-org/demo:ref:refs/heads/main",
        audience=(DOMAIN,),
        expires_at=2e9,
        claims=MappingProxyType(
            {
                "ref": "refs/heads/main",
                "actor": "octocat",
                "n": 3,
                "ok": True,
                "l": [1],
                "u": "\udcff",
            }
        ),
    ),
    VerifiedToken(
        issuer="https://accounts.google.com",
        subject="1234567890",
        audience=(),
        expires_at=2e9,
        claims=MappingProxyType({}),
    ),
)
# YAML's line breaks (PyYAML reads YAML 1.1: NEL, LS and PS too).
_BREAKS = ("\r\n", "\r", "\x85", "\u2028", "\u2029")


def _lines(data: bytes) -> int:
    source = data.decode("utf-8", "replace")
    for brk in _BREAKS:
        source = source.replace(brk, "\n")
    return source.count("\n") + 1


def one_input(data: bytes) -> None:
    lines = _lines(data)
    for kind in ("repo", "org"):
        parsed = _parse(data, kind)
        if isinstance(parsed, TrustPolicy):
            _decide(parsed)
            continue
        assert parsed
        for problem in parsed:
            problem.render()
            assert problem.line is None or 1 <= problem.line <= lines, problem
    problems = validate_file(PATH, data, repo="demo", org_policy_repo=".github")
    outcome = check_outcome([PATH], problems)
    assert outcome.conclusion == ("failure" if problems else "success")
    assert len(outcome.annotations) <= MAX_ANNOTATIONS
    assert all(len(p.message) <= 500 for p in problems)


def _parse(data: bytes, kind: PolicyKind) -> TrustPolicy | list[PolicyProblem]:
    try:
        return parse_trust_policy(data, kind=kind)
    except PolicyInvalid as exc:
        return exc.problems


def _decide(policy: TrustPolicy) -> None:
    for token in TOKENS:
        decision = decide_trust(policy, token, domain=DOMAIN)
        assert decision.reason in REASONS, decision
