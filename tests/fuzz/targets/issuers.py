"""Organization trusted-token-issuers files, and the slash guard on their patterns.

Input: the file's bytes. Path: ``adapters.policy_yaml.parse_trusted_issuers``
(strict YAML, then ``domain.issuers.compile_trusted_issuers``: issuer URL rules,
RE2 compilation and the slash guard), the webhook's ``validate_file``, then
``judge_issuer`` for the file's own issuers and a few hostile ones.

Property: only ``PolicyInvalid`` escapes; judging never raises; the '/' oracle
(``_support.check_fixed_slashes``) holds for every accepted pattern on those
issuers, so no pattern lets a path segment in.
"""

from __future__ import annotations

import contextlib

from octosts.adapters.policy_yaml import load_document, parse_trusted_issuers
from octosts.domain.errors import PolicyInvalid
from octosts.domain.issuers import TrustedIssuers, judge_issuer
from octosts.domain.layout import ISSUERS_FILE
from octosts.webhook.validate import validate_file
from tests.fuzz.targets._support import check_fixed_slashes

INSECURE = frozenset({"http://localhost:8080"})
HOSTILE_ISSUERS = (
    "https://token.actions.githubusercontent.com",
    "https://evil.example/x/.example.com",
    "https://a.example.com",
    "https://a.example.com/",
    "https://a.example.com/x",
    "https://a.oidc.example.com",
    "https://evil.example/.oidc.example.com",
    "http://localhost:8080",
    "https://gitlab.com/group",
    "https://gitlab.com/group/sub",
    "https://good.example.com",
    "https://evil.com/x/trusted.example.com",
    "https://b.com",
    "https://b.com/x",
)


def _parse(data: bytes) -> TrustedIssuers | None:
    try:
        return parse_trusted_issuers(data, insecure_issuers=INSECURE)
    except PolicyInvalid as exc:
        problems = exc.problems
    assert problems
    for problem in problems:
        problem.render()
    return None


def one_input(data: bytes) -> None:
    trusted = _parse(data)
    validate_file(ISSUERS_FILE, data, repo=".github", org_policy_repo=".github")
    if trusted is None:
        return
    listed: list[str] = []
    with contextlib.suppress(PolicyInvalid):
        document = load_document(data).data
        if isinstance(document, dict) and isinstance(document.get("issuers"), list):
            listed = [i for i in document["issuers"] if isinstance(i, str)]
    candidates = (*HOSTILE_ISSUERS, *listed[:8])
    for issuer in candidates:
        verdict = judge_issuer(trusted, issuer)
        assert verdict.allowed or trusted.mode == "enforce"
    for pattern in trusted.allowlist.patterns:
        check_fixed_slashes(pattern, candidates)
