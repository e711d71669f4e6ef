"""JWKS documents, as an issuer the attacker runs may publish them.

Input: the JWKS response body. Path: ``json.loads`` (what ``OidcVerifier`` does
with a body, mapping ValueError/RecursionError to IssuerUnavailable) ->
``adapters.oidc.parse_jwks`` -> ``usable()`` -> every (kid, alg) lookup a token
could make -> the key object it would be verified with.

Property: only ``IssuerRejected`` escapes parsing; every key kept passes the RSA
cost caps; a key offered for an algorithm loads for it (``IssuerKeys.pyjwk``).
"""

from __future__ import annotations

import json

from octosts.adapters.oidc import IssuerKeys, parse_jwks
from octosts.domain.errors import IssuerRejected
from octosts.domain.jwks import ALLOWED_ALGORITHMS, rsa_key_refusal


def one_input(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(doc, dict):
        return
    try:
        keys = parse_jwks(doc).usable()
    except IssuerRejected:
        return
    issuer_keys = IssuerKeys(
        issuer="https://issuer.example", jwks_uri="https://issuer.example/k", keys=keys
    )
    for key in keys:
        if key.jwk.get("kty") == "RSA":
            assert rsa_key_refusal(key.jwk) is None, "a key past the RSA caps was kept"
    for kid in {None, *(key.kid for key in keys)}:
        for alg in sorted(ALLOWED_ALGORITHMS):
            for index in issuer_keys.candidates(kid, alg):
                issuer_keys.pyjwk(index, alg)
