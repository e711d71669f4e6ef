"""The outcome of checking a verified token against a trust policy."""

from __future__ import annotations

from dataclasses import dataclass

# Stable reason codes: metrics, audit events and the CLI's JSON output use them,
# so they are part of the contract and never renamed.
ALLOWED = "allowed"
ISSUER_MISMATCH = "issuer_mismatch"
SUBJECT_MISMATCH = "subject_mismatch"
AUDIENCE_MISMATCH = "audience_mismatch"
CLAIM_MISSING = "claim_missing"
CLAIM_MISMATCH = "claim_mismatch"
CLAIM_NOT_STRING = "claim_not_string"

REASONS = frozenset(
    {
        ALLOWED,
        ISSUER_MISMATCH,
        SUBJECT_MISMATCH,
        AUDIENCE_MISMATCH,
        CLAIM_MISSING,
        CLAIM_MISMATCH,
        CLAIM_NOT_STRING,
    }
)


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed`` with a stable ``reason`` code and a ``detail`` for the policy owner.

    ``detail`` may quote policy patterns and claim values (never a token); the
    transport shows it to callers only when verbose errors are enabled.
    """

    allowed: bool
    reason: str
    detail: str

    @classmethod
    def allow(cls, detail: str = "token satisfies the trust policy") -> Decision:
        return cls(allowed=True, reason=ALLOWED, detail=detail)

    @classmethod
    def deny(cls, reason: str, detail: str) -> Decision:
        return cls(allowed=False, reason=reason, detail=detail)
