"""Token payloads (the claims), mutated as JSON rather than as base64.

Input: the payload's JSON text. The target wraps it in a compact JWS with a fixed
header and signature and sends it the way a caller would:
``bearer_from_values`` -> ``parse_unverified`` -> ``check_token_times`` ->
``token_from_claims`` -> ``policy.decide_trust`` against a few policies.

Property: only ``AuthenticationError`` escapes the token checks; ``decide_trust``
never raises and answers with a known reason; a payload accepted by
``parse_unverified`` nests no deeper than the claim depth cap.
"""

from __future__ import annotations

from octosts.adapters.oidc import parse_unverified
from octosts.adapters.policy_yaml import parse_trust_policy
from octosts.domain.decision import REASONS
from octosts.domain.errors import AuthenticationError
from octosts.domain.policy import decide_trust
from octosts.domain.tokens import MAX_CLAIM_DEPTH, check_token_times, token_from_claims
from octosts.transport.metadata import bearer_from_values
from tests.fuzz.targets._support import DOMAIN, NOW, b64url, depth

HEADER = b64url(b'{"alg":"ES256","typ":"JWT","kid":"fuzz"}')
SIGNATURE = b64url(bytes(range(64)))

POLICIES = tuple(
    parse_trust_policy(source.encode(), kind="repo")
    for source in (
        (
            "issuer: https://token.actions.githubusercontent.com\n"
            "subject: repo:octo-org/demo:ref:refs/heads/main\n"
            "permissions: {contents: read}\n"
        ),
        (
            "issuer_pattern: https://[a-z.]+\n"
            "subject_pattern: 'repo:octo-org/.*'\n"
            "audience_pattern: '.*'\n"
            "claim_pattern:\n  ref: 'refs/heads/.*'\n  actor: '[a-z]+'\n  x: '.*'\n"
            "  email_verified: 'true'\n"
            "permissions: {issues: write}\n"
        ),
        (
            "issuer: http://localhost:8080\nsubject_pattern: '(?s).*'\naudience: octo-sts.dev\n"
            "permissions: {contents: read}\n"
        ),
    )
)


def one_input(data: bytes) -> None:
    token = f"{HEADER}.{b64url(data)}.{SIGNATURE}"
    try:
        bearer = bearer_from_values([f"Bearer {token}"])
        unverified = parse_unverified(bearer)
        assert depth(unverified.payload) <= MAX_CLAIM_DEPTH, "a deeper payload was parsed"
        check_token_times(unverified.payload, now=NOW, leeway=30.0)
        verified = token_from_claims(unverified.payload, allow_insecure=True)
    except AuthenticationError:
        return
    for policy in POLICIES:
        decision = decide_trust(policy, verified, domain=DOMAIN)
        assert decision.reason in REASONS, decision
