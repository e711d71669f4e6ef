"""Keys a trust policy pins: a key file (``jwks_file``), and the same keys inline (``jwks:``).

Input: the key file's bytes. Path: ``adapters.pinned_keys.parse_jwks_file`` (size, UTF-8,
depth, duplicate members, then ``domain.jwks.compile_pinned_jwks`` and the key material);
the webhook's ``validate_file`` for it; then, when it is a JSON object, a trust policy
carrying that object as ``jwks:`` through ``adapters.policy_yaml.parse_trust_policy``, and
every (kid, alg) lookup a token could make on the keys accepted.

Property: only ``PolicyInvalid`` escapes; every problem renders; an accepted key set holds
1..``MAX_KEYS`` public keys of RSA/EC/OKP with no private or unknown member, within the RSA
caps, each key building a key object for every algorithm it is offered for; the inline
reading agrees with the file's (one home for the rules): a key set the file accepts is
accepted inline with the same digest.
"""

from __future__ import annotations

import json

import yaml

from octosts.adapters.oidc import IssuerKeys, _Key
from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_yaml import MAX_POLICY_BYTES, parse_trust_policy
from octosts.domain.errors import PolicyInvalid
from octosts.domain.jwks import (
    ALLOWED_ALGORITHMS,
    KEY_MEMBERS,
    MAX_KEYS,
    PRIVATE_MEMBERS,
    PinnedJwks,
    rsa_key_refusal,
)
from octosts.webhook.validate import validate_file

PATH = ".github/chainguard/fuzz.jwks.json"
POLICY = {
    "issuer": "https://kubernetes.default.svc",
    "subject": "system:serviceaccount:ci:deployer",
    "permissions": {"contents": "read"},
}


def one_input(data: bytes) -> None:
    keys = _file(data)
    problems = validate_file(PATH, data, repo="demo", org_policy_repo=".github")
    assert (keys is None) == bool(problems), problems
    if keys is not None:
        _check(keys)
    inline = _inline(data)
    if keys is not None and inline is not None:
        assert inline.digest == keys.digest


def _file(data: bytes) -> PinnedJwks | None:
    try:
        return parse_jwks_file(data, path=PATH)
    except PolicyInvalid as exc:
        problems = exc.problems
    assert problems
    for problem in problems:
        problem.render()
    return None


def _inline(data: bytes) -> PinnedJwks | None:
    """The input's JSON object as a policy's ``jwks:``; None when it is not one or the
    policy does not pass. Raises AssertionError when the file's keys are refused inline."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:
        text = yaml.safe_dump({**POLICY, "jwks": value}, allow_unicode=True).encode()
    except (yaml.YAMLError, RecursionError, UnicodeEncodeError):
        return None
    if len(text) > MAX_POLICY_BYTES:
        return None
    try:
        policy = parse_trust_policy(text, kind="repo")
    except PolicyInvalid as exc:
        refused = exc
    else:
        assert policy.jwks is not None
        _check(policy.jwks)
        return policy.jwks
    for problem in refused.problems:
        problem.render()
    assert not _file_accepts(data), f"the key file is accepted, the same keys inline not: {refused}"
    return None


def _file_accepts(data: bytes) -> bool:
    try:
        parse_jwks_file(data, path=PATH)
    except PolicyInvalid:
        return False
    return True


def _check(keys: PinnedJwks) -> None:
    assert 1 <= len(keys.keys) <= MAX_KEYS
    kids = [key.kid for key in keys.keys if key.kid is not None]
    assert len(kids) == len(set(kids)), "duplicate kid accepted"
    parsed = []
    for key in keys.keys:
        kty = key.jwk.get("kty")
        assert kty in KEY_MEMBERS, kty
        assert not set(key.jwk) & set(PRIVATE_MEMBERS), "private member accepted"
        assert key.algorithms, "a key verifying nothing accepted"
        assert key.algorithms <= ALLOWED_ALGORITHMS, key.algorithms
        if kty == "RSA":
            assert rsa_key_refusal(key.jwk) is None, "a key past the RSA caps was accepted"
        parsed.append(_Key(key.kid, key.algorithms, dict(key.jwk)))
    issuer_keys = IssuerKeys(issuer="", jwks_uri=f"pinned:{PATH}", keys=tuple(parsed))
    for kid in {None, *kids}:
        for alg in sorted(ALLOWED_ALGORITHMS):
            for index in issuer_keys.candidates(kid, alg):
                issuer_keys.pyjwk(index, alg)
