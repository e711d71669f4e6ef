"""Verified OIDC tokens and the syntax rules for their fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature, expiry and field syntax have been checked."""

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: float  # epoch seconds
    claims: Mapping[str, object]  # the whole verified payload


def check_issuer_url(issuer: str, *, allow_insecure: bool = False) -> None:
    """Validate an issuer (or jwks_uri) URL before any network call.

    ``allow_insecure`` permits plain ``http`` (explicitly allowed local
    issuers only). Raises IssuerRejected naming the broken rule.
    """
    raise NotImplementedError


def token_from_claims(claims: Mapping[str, object]) -> VerifiedToken:
    """Apply the token field syntax rules to a verified payload.

    Raises TokenClaimsInvalid with reason ``invalid_token_subject`` /
    ``invalid_token_audience`` / ``invalid_token_issuer`` (IssuerRejected) as
    appropriate.
    """
    raise NotImplementedError
