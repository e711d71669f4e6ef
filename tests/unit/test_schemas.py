"""The shipped JSON Schemas and the parser agree on a table of samples.

Known, deliberate differences (the parser is stricter; the schema cannot say):
* regex validity (RE2 syntax, no backreferences/lookarounds) is parser-only;
* duplicate keys, anchors/aliases, merge keys and the size cap are YAML-level,
  parser-only (the schema sees the already-loaded data);
* JSON Schema ``pattern`` is a search in which ``$`` also matches before a final
  newline, so ``"demo\\n"`` as a repository name passes the schema and fails
  the parser;
* pinned keys (``jwks``, key files): the schema bounds an RSA modulus by its base64
  length, the parser by its bits; the exponent's value, duplicate ``kid``s, an ``alg``
  that does not fit an EC key's curve, key material (an EC point off its curve) and the
  pinned issuer's URL syntax are parser-only.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import pytest

from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_yaml import (
    load_document,
    parse_permission_ceiling,
    parse_trust_policy,
)
from octosts.dev.issuer import generate_key
from octosts.domain.errors import PolicyInvalid
from octosts.domain.permissions import PERMISSION_LEVELS
from octosts.domain.policy import ORG_FIELDS, REPO_FIELDS


def schema(name: str) -> dict[str, Any]:
    text = resources.files("octosts").joinpath(f"schemas/{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


TRUST = schema("trust-policy")
ORG = schema("org-trust-policy")
ISSUERS = schema("trusted-token-issuers")
JWKS = schema("jwks")
CEILING = schema("permission-ceiling")

RSA_JWK = generate_key("rsa", kid="r1").public_jwk(publish_alg=True)
EC_JWK = generate_key("ec", kid="e1").public_jwk(publish_alg=False)
ED_JWK = generate_key("ed25519", kid="d1").public_jwk(publish_alg=True)


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


PINNED = "issuer: https://k8s.cluster.invalid\nsubject: system:serviceaccount:ci:deploy\n"

HEAD = (
    "issuer: https://token.actions.githubusercontent.com\nsubject: repo:o/r:ref:refs/heads/main\n"
)
PERMS = "permissions:\n  contents: read\n"

# (yaml, valid as repo policy, valid as org policy)
SAMPLES: list[tuple[str, bool, bool]] = [
    (HEAD + PERMS, True, True),
    (HEAD + PERMS + "audience: sts\n", True, True),
    (HEAD + PERMS + "audience_pattern: sts-.*\n", True, True),
    (HEAD + PERMS + "audience: a\naudience_pattern: b\n", False, False),
    (HEAD + PERMS + "claim_pattern:\n  ref: refs/heads/.*\n  ok: 'true'\n", True, True),
    (HEAD + PERMS + "claim_pattern:\n  ref: 1\n", False, False),
    (HEAD + PERMS + "claim_pattern: []\n", False, False),
    (HEAD + PERMS + "claim_pattern:\n", False, False),
    (HEAD + PERMS + "repositories: [a, b]\n", False, True),
    (HEAD + PERMS + "repositories: []\n", False, False),
    (HEAD + PERMS + "repositories: [a, a]\n", False, False),
    (HEAD + PERMS + "repositories: [o/a]\n", False, False),
    (HEAD + PERMS + "repositories: ['..']\n", False, False),
    (HEAD + PERMS + "repositories: a\n", False, False),
    (HEAD + PERMS + "extra: 1\n", False, False),
    (HEAD, False, False),
    (HEAD + "permissions: {}\n", False, False),
    (HEAD + "permissions:\n  contents: admin\n", False, False),
    (HEAD + "permissions:\n  workflows: read\n", False, False),
    (HEAD + "permissions:\n  workflows: write\n", True, True),
    (HEAD + "permissions:\n  organization_projects: admin\n", True, True),
    (HEAD + "permissions:\n  contnts: read\n", False, False),
    (HEAD + "permissions:\n  contents: true\n", False, False),
    ("subject: s\n" + PERMS, False, False),
    ("issuer: i\n" + PERMS, False, False),
    ("issuer: ''\nsubject: s\n" + PERMS, False, False),
    ("issuer: 1\nsubject: s\n" + PERMS, False, False),
    ("issuer_pattern: https://.*\nsubject_pattern: repo:.*\n" + PERMS, True, True),
    ("issuer: i\nissuer_pattern: i\nsubject: s\n" + PERMS, False, False),
    ("- a\n", False, False),
    # Pinned keys.
    (PINNED + PERMS + f"jwks: {jwks(RSA_JWK, EC_JWK, ED_JWK)}\n", True, True),
    (PINNED + PERMS + "jwks_file: .github/chainguard/keys/k8s.jwks.json\n", True, True),
    (PINNED + PERMS + "jwks_file: .github/chainguard/../k8s.jwks.json\n", False, False),
    (PINNED + PERMS + "jwks_file: keys/k8s.jwks.json\n", False, False),
    (PINNED + PERMS + "jwks_file: .github/chainguard/k8s.json\n", False, False),
    (PINNED + PERMS + "jwks_file: .github/chainguard/.jwks.json\n", False, False),
    (
        PINNED + PERMS + f"jwks: {jwks(RSA_JWK)}\njwks_file: .github/chainguard/a.jwks.json\n",
        False,
        False,
    ),
    ("issuer_pattern: https://.*\nsubject: s\n" + PERMS + f"jwks: {jwks(RSA_JWK)}\n", False, False),
    (PINNED + PERMS + "jwks: {keys: []}\n", False, False),
    (PINNED + PERMS + f'jwks: {jwks(RSA_JWK)[:-1]}, "x": 1}}\n', False, False),
    (PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'd': 'AQAB'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({'kty': 'oct', 'k': 'c2VjcmV0'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'use': 'enc'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'alg': 'HS256'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'n': RSA_JWK['n'][:171]})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**EC_JWK, 'crv': 'P-521'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**ED_JWK, 'crv': 'X25519'})}\n", False, False),
    (PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'extra': 1})}\n", False, False),
]

# Valid for the schema, invalid for the parser: regex validity is parser-only.
PARSER_ONLY: list[str] = [
    "issuer: i\nsubject_pattern: '(a)\\1'\n" + PERMS,
    "issuer: i\nsubject_pattern: '(?=a)a'\n" + PERMS,
    HEAD + PERMS + "claim_pattern:\n  ref: '(unclosed'\n",
    HEAD + PERMS + 'repositories: ["demo\\n"]\n',
    PINNED + PERMS + f"jwks: {jwks({**RSA_JWK, 'e': 'Ag'})}\n",  # an even exponent
    PINNED + PERMS + f"jwks: {jwks(RSA_JWK, RSA_JWK)}\n",  # the kid twice
    PINNED + PERMS + f"jwks: {jwks({**EC_JWK, 'alg': 'ES384'})}\n",  # a P-256 key
    PINNED + PERMS + f"jwks: {jwks({**EC_JWK, 'y': EC_JWK['x']})}\n",  # off the curve
    "issuer: not-a-url\nsubject: s\n" + PERMS + f"jwks: {jwks(RSA_JWK)}\n",
]


def parser_accepts(text: str, kind: str) -> bool:
    try:
        parse_trust_policy(text, kind=kind)  # type: ignore[arg-type]
    except PolicyInvalid:
        return False
    return True


def schema_accepts(text: str, validator: dict[str, Any]) -> bool:
    data = load_document(text).data
    return bool(jsonschema.Draft202012Validator(validator).is_valid(data))


@pytest.mark.parametrize(("text", "repo_ok", "org_ok"), SAMPLES)
def test_schema_and_parser_agree(text: str, repo_ok: bool, org_ok: bool) -> None:
    assert parser_accepts(text, "repo") is repo_ok
    assert schema_accepts(text, TRUST) is repo_ok
    assert parser_accepts(text, "org") is org_ok
    assert schema_accepts(text, ORG) is org_ok


@pytest.mark.parametrize("text", PARSER_ONLY)
def test_known_differences(text: str) -> None:
    assert schema_accepts(text, TRUST) or schema_accepts(text, ORG)
    assert not parser_accepts(text, "repo")
    assert not parser_accepts(text, "org")


def test_schema_tables_match_the_code() -> None:
    # One definition of a pinned key set, in the policies' schemas and the key file's.
    assert TRUST["$defs"] == ORG["$defs"] == JWKS["$defs"]
    for document, fields in ((TRUST, REPO_FIELDS), (ORG, ORG_FIELDS)):
        assert set(document["properties"]) == set(fields)
        permissions = document["properties"]["permissions"]["properties"]
        assert {name: set(p["enum"]) for name, p in permissions.items()} == {
            name: set(levels) for name, levels in PERMISSION_LEVELS.items()
        }


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("issuers: [https://token.actions.githubusercontent.com]\n", True),
        ("mode: audit\nissuer_patterns: ['https://[a-z]+\\.example\\.com']\n", True),
        ("mode: enforce\nissuers: [https://a.example/x]\nissuer_patterns: [x]\n", True),
        ("mode: Enforce\nissuers: [https://a.example]\n", False),
        ("issuers: []\n", False),
        ("mode: audit\n", False),
        ("issuers: [HTTPS://A.example]\n", False),
        ("issuers: ['https://a.example?q=1']\n", False),
        ("issuers: [https://a.example]\nextra: 1\n", False),
        ("issuer_patterns: [" + ", ".join(["x"] * 17) + "]\n", False),
    ],
)
def test_trusted_issuers_schema(text: str, valid: bool) -> None:
    # The parser for this file arrives with [org-allowlist]; until then the
    # schema is checked on its own.
    assert schema_accepts(text, ISSUERS) is valid


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (jwks(RSA_JWK, EC_JWK, ED_JWK), True),
        (jwks({**RSA_JWK, "x5c": ["MIIB"], "key_ops": ["verify"]}), True),
        ('{"keys": []}', False),
        (jwks({**RSA_JWK, "p": "AQAB"}), False),
        (jwks({**EC_JWK, "x": "not base64!"}), False),
        (jwks({k: v for k, v in EC_JWK.items() if k != "y"}), False),
        (jwks({**RSA_JWK, "kid": ""}), False),
        (jwks({**ED_JWK, "alg": "ES256"}), False),
        ('{"keys": [1]}', False),
        ("[]", False),
    ],
)
def test_key_file_schema_and_parser_agree(text: str, valid: bool) -> None:
    assert bool(jsonschema.Draft202012Validator(JWKS).is_valid(json.loads(text))) is valid
    try:
        parse_jwks_file(text.encode(), path=".github/chainguard/k.jwks.json")
    except PolicyInvalid:
        assert not valid
    else:
        assert valid


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("default: read\n", True),
        ("permissions:\n  contents: write\n  workflows: none\n", True),
        ("default:\npermissions:\n  contents: read\n", True),
        ("default: write\nelevated:\n  identities: [release, deploy.prod]\n", True),
        ("default: admin\nelevated:\n  identity_patterns: ['deploy-.*']\n  identities:\n", True),
        ("{}\n", False),
        ("default: rw\n", False),
        ("permissions:\n  contents: admin\n", False),
        ("permissions:\n  contnts: read\n", False),
        ("permissions: [contents]\n", False),
        ("default: read\nelevated: {}\n", False),
        ("default: read\nelevated:\n  identities: ['..']\n", False),
        ("default: read\nelevated:\n  identities: ['a/b']\n", False),
        ("default: read\nelevated:\n  people: [x]\n", False),
        ("default: read\nmode: enforce\n", False),
        ("- default\n", False),
    ],
)
def test_ceiling_schema_and_parser_agree(text: str, valid: bool) -> None:
    try:
        parse_permission_ceiling(text)
    except PolicyInvalid:
        assert not valid
    else:
        assert valid
    assert schema_accepts(text, CEILING) is valid


def test_ceiling_schema_names_every_permission_and_level() -> None:
    caps = CEILING["properties"]["permissions"]["anyOf"][0]["properties"]
    assert {name: set(p["enum"]) for name, p in caps.items()} == {
        name: {"none", *levels} for name, levels in PERMISSION_LEVELS.items()
    }
