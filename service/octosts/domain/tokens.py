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
