"""Bearer tokens through every check that runs before a key is fetched.

Input: an ``authorization`` value as a caller sends it (``Bearer <jwt>``), UTF-8.
Path: ``transport.metadata.bearer_from_values`` -> ``adapters.oidc.parse_unverified``
-> ``domain.tokens.check_token_times`` and ``token_from_claims`` (what
``OidcVerifier.verify`` runs on the payload after the signature).

Property: only ``AuthenticationError`` escapes (TokenMalformed, IssuerRejected,
TokenSignatureInvalid, TokenClaimsInvalid, TokenExpired): never OverflowError,
RecursionError, UnicodeError, KeyError, TypeError... No error message quotes the
token or its signature. A parsed payload nests no deeper than the claim depth cap;
an accepted token's fields are the payload's, its expiry between 1970 and 9999.
"""

from __future__ import annotations

from octosts.adapters.oidc import parse_unverified
from octosts.domain.errors import AuthenticationError
from octosts.domain.tokens import (
    MAX_CLAIM_DEPTH,
    MAX_NUMERIC_DATE,
    check_token_times,
    token_from_claims,
)
from octosts.transport.metadata import bearer_from_values
from tests.fuzz.targets._support import NOW, depth, not_quoted, text


def one_input(data: bytes) -> None:
    value = text(data)
    token = value.strip().partition(" ")[2].strip()
    try:
        bearer = bearer_from_values([value])
        unverified = parse_unverified(bearer)
        assert depth(unverified.payload) <= MAX_CLAIM_DEPTH, "a deeper payload was parsed"
        check_token_times(unverified.payload, now=NOW, leeway=30.0)
        verified = token_from_claims(unverified.payload, allow_insecure=True)
        strict = token_from_claims(unverified.payload, allow_insecure=False)
    except AuthenticationError as exc:
        not_quoted(token, exc, exc.detail)
        not_quoted(token.rpartition(".")[2], exc, exc.detail)
        return
    assert bearer == token
    assert verified.issuer == unverified.issuer == strict.issuer
    assert verified.subject == unverified.payload["sub"]
    assert 0 <= verified.expires_at <= MAX_NUMERIC_DATE
