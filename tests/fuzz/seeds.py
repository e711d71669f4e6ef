"""The generated part of the seed corpus: ``python -m tests.fuzz.seeds [--check]``.

Writes ``tests/fuzz/corpus/<target>/<name>`` for every seed below (existing files
of the same name are overwritten; other files, e.g. crashes added by hand, are
left alone). ``--check`` writes nothing and fails when a seed derived from
``tests/hostile.py`` (the [hardening-2] findings) is missing or differs:
tests/fuzz/test_fuzz.py runs it, so an input added there reaches the corpus.

Sources: the hostile inputs of the findings (``finding<N>-*``), the regression
tables of the unit tests (webhook payloads, slash-guard patterns; the original
Octo STS's policy, issuers and pattern tables: ``original-*``), the examples, and hand-written
inputs for each branch of each parser. Names say what a seed is.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.fuzz.registry import CORPUS_DIR, TARGETS

Seeds = dict[str, bytes]
ROOT = Path(__file__).resolve().parents[2]
FINDING_PREFIX = "finding"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def jws(payload: bytes, header: bytes = b'{"alg":"RS256","typ":"JWT","kid":"k1"}') -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(hashlib.sha512(payload).digest())}"


def claims_json(**claims: Any) -> bytes:
    return json.dumps(claims, separators=(",", ":")).encode()


ACTIONS = {
    "iss": "https://token.actions.githubusercontent.com",
    "sub": "repo:octo-org/demo:ref:refs/heads/main",
    "aud": "octo-sts.dev",
    "exp": 2_000_000_000,
    "iat": 1_700_000_000,
    "nbf": 1_700_000_000,
    "ref": "refs/heads/main",
    "ref_protected": True,
    "repository": "octo-org/demo",
    "job_workflow_ref": "octo-org/demo/.github/workflows/release.yaml@refs/heads/main",
}
KUBERNETES = {
    "iss": "https://kubernetes.default.svc.cluster.local",
    "sub": "system:serviceaccount:ci:builder",
    "aud": ["octo-sts.dev", "https://kubernetes.default.svc"],
    "exp": 2_000_000_000,
    "kubernetes.io": {"namespace": "ci", "pod": {"name": "b-1", "uid": "u"}},
}


# -- tokens and claims ---------------------------------------------------------------


def _payloads() -> Seeds:
    def with_(**changes: Any) -> bytes:
        return json.dumps({**ACTIONS, **changes}).encode()

    return {
        "valid-actions": json.dumps(ACTIONS).encode(),
        "valid-kubernetes": json.dumps(KUBERNETES).encode(),
        "exp-string": with_(exp="2000000000"),
        "exp-true": with_(exp=True),
        "exp-float": with_(exp=2e9 + 0.5),
        "exp-missing": json.dumps({k: v for k, v in ACTIONS.items() if k != "exp"}).encode(),
        "exp-1e400-literal": with_(exp=0).replace(b'"exp": 0', b'"exp": 1e400'),
        "exp-nan-literal": with_(exp=0).replace(b'"exp": 0', b'"exp": NaN'),
        "exp-negative-zero": with_(exp=0).replace(b'"exp": 0', b'"exp": -0.0'),
        "expired": with_(exp=1_000_000_000),
        "nbf-future": with_(nbf=1_900_000_000),
        "iss-http": with_(iss="http://issuer.example"),
        "iss-ipv6-port": with_(iss="https://[2001:db8::1]:8443/x"),
        "iss-traversal": with_(iss="https://issuer.example/a/../b"),
        "iss-userinfo": with_(iss="https://user@issuer.example"),
        "iss-unicode-host": with_(iss="https://ex\u00e4mple.com"),
        "iss-missing": json.dumps({k: v for k, v in ACTIONS.items() if k != "iss"}).encode(),
        "sub-forbidden-chars": with_(sub="repo:o/r;rm -rf /"),
        "sub-bidi": with_(sub="repo:o/r\u202e"),
        "sub-lone-surrogate": with_(sub="\ud800"),
        "aud-list": with_(aud=["a", "b", "octo-sts.dev"]),
        "aud-object": with_(aud={"a": 1}),
        "aud-nested-list": with_(aud=[["octo-sts.dev"]]),
        "claim-types": with_(ref=1, ref_protected="true", repository=None, x=[1, {"y": 2}]),
        "not-an-object": b"[1,2,3]",
        "utf8-bom": b"\xef\xbb\xbf" + json.dumps(ACTIONS).encode(),
        "duplicate-keys": b'{"iss":"https://a.example","iss":"https://b.example","sub":"x","exp":2000000000}',
        # Python's json reads UTF-16/32 too; a JWT's JSON is UTF-8 (RFC 7519 section 7.2)
        "utf16-payload": json.dumps(ACTIONS).encode("utf-16-le"),
        # In UTF-16 a '"' byte can be half of another character ("\u0122" is 22 01): a scan of
        # the raw bytes for strings and brackets loses track, and 40 levels hide behind it.
        "utf16-deep-behind-a-string": (
            '{"iss":"https://issuer.example","sub":"x","exp":2000000000,"a":"\u0122","x":'
            + "[" * 40
            + '"y"'
            + "]" * 40
            + "}"
        ).encode("utf-16-le"),
    }


ALG_NONE = b'{"alg":"none"}'
HS256 = b'{"alg":"HS256"}'
CRIT = b'{"alg":"RS256","crit":["x"]}'
KID_NUMBER = b'{"alg":"RS256","kid":1}'


def _bearer() -> Seeds:
    seeds = {f"payload-{name}": f"Bearer {jws(p)}".encode() for name, p in _payloads().items()}
    token = jws(json.dumps(ACTIONS).encode())
    seeds |= {
        "scheme-lowercase": f"bearer {token}".encode(),
        "scheme-basic": b"Basic dXNlcjpwYXNz",
        "empty": b"",
        "bearer-only": b"Bearer ",
        "two-joined": f"Bearer {token},Bearer {token}".encode(),
        "spaces-inside": f"Bearer {token[:20]} {token[20:]}".encode(),
        "alg-none": f"Bearer {b64url(ALG_NONE)}.{b64url(b'{}')}.".encode(),
        "alg-hs256": f"Bearer {jws(json.dumps(ACTIONS).encode(), HS256)}".encode(),
        "crit-header": f"Bearer {jws(b'{}', CRIT)}".encode(),
        "kid-number": f"Bearer {jws(b'{}', KID_NUMBER)}".encode(),
        "header-not-json": f"Bearer {b64url(b'{')}.{b64url(b'{}')}.c2ln".encode(),
        "padding": f"Bearer {token}==".encode(),
        "four-parts": f"Bearer {token}.x".encode(),
        "non-ascii": f"Bearer {token}\u00e9".encode(),
        "too-large": b"Bearer " + b"a" * (16 * 1024 + 1),
    }
    return seeds


def _claims() -> Seeds:
    return {f"payload-{name}": payload for name, payload in _payloads().items()}


def _public_jwks() -> list[dict[str, Any]]:
    """An EC P-256, an EC P-384 and an Ed25519 public key (fixed private numbers)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

    def ec_jwk(curve: ec.EllipticCurve, crv: str, size: int, secret: int) -> dict[str, Any]:
        numbers = ec.derive_private_key(secret, curve).public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "kid": f"ec-{crv}",
            "x": b64url(numbers.x.to_bytes(size, "big")),
            "y": b64url(numbers.y.to_bytes(size, "big")),
        }

    okp = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    raw = okp.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return [
        ec_jwk(ec.SECP256R1(), "P-256", 32, 12345),
        ec_jwk(ec.SECP384R1(), "P-384", 48, 67890),
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(raw)},
    ]


def _jwks() -> Seeds:
    keys = _public_jwks()
    return {
        "ec-and-okp": json.dumps({"keys": keys}).encode(),
        "ec-alg-mismatch": json.dumps({"keys": [{**keys[0], "alg": "ES384"}]}).encode(),
        "ec-off-curve": json.dumps({"keys": [{**keys[0], "y": keys[0]["x"]}]}).encode(),
        "use-enc": json.dumps({"keys": [{**keys[0], "use": "enc"}]}).encode(),
        "oct-hmac": b'{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}',
        "kid-number": json.dumps({"keys": [{**keys[0], "kid": 7}]}).encode(),
        "keys-not-list": b'{"keys":{"kty":"EC"}}',
        "no-keys": b"{}",
        "not-json": b"<html>",
        "too-many-keys": json.dumps({"keys": [keys[0]] * 101}).encode(),
        "deep": b'{"keys":' + b"[" * 5000 + b"]" * 5000 + b"}",
    }


# -- policies and issuers --------------------------------------------------------------


def _policy() -> Seeds:
    seeds = {
        f"example-{path.name}": path.read_bytes()
        for path in sorted((ROOT / "examples").rglob("*.sts.yaml"))
    }
    base = b"issuer: https://token.actions.githubusercontent.com\nsubject: x\n"
    perms = b"permissions:\n  contents: read\n"
    seeds |= {
        "minimal": base + perms,
        "flow-style": (
            b'{issuer: "https://a.example", subject_pattern: ".*", permissions: {issues: write}}'
        ),
        "anchor-alias": b"issuer: &i https://a.example\nsubject: *i\n" + perms,
        "billion-laughs": (
            b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b]\n"
        ),
        "merge-key": b"<<: {issuer: https://a.example}\nsubject: x\n" + perms,
        "duplicate-key": base + b"subject: y\n" + perms,
        "deep-17": b"claim_pattern: " + b"{a: " * 17 + b"x" + b"}" * 17 + b"\n",
        "deep-flow-1000": b"x: " + b"[" * 1000 + b"]" * 1000 + b"\n",
        "python-tag": b"issuer: !!python/object/apply:os.system ['true']\nsubject: x\n",
        "set-tag": b"permissions: !!set {contents}\n" + base,
        "custom-tag": b"issuer: !custom x\n",
        "binary": b"issuer: !!binary aGVsbG8=\nsubject: x\n" + perms,
        "huge-int": b"x: 1" + b"0" * 5000 + b"\n" + base + perms,
        "bad-timestamp": b"issuer: 2001-02-30\nsubject: x\n" + perms,
        "float-inf": b"subject: .inf\nissuer: -.inf\n" + perms,
        "not-utf8": base + b"subject_pattern: '\xff\xfe'\n" + perms,
        "bom": b"\xef\xbb\xbf" + base + perms,
        "nul-byte": base + b"x: \x00\n" + perms,
        "tab-indent": b"permissions:\n\tcontents: read\n" + base,
        "lone-surrogate-escape": b'subject_pattern: "\\ud800"\nissuer: https://a.example\n' + perms,
        "nel-line-breaks": base.replace(b"\n", "\u0085".encode()) + perms,
        "crlf": (base + perms).replace(b"\n", b"\r\n"),
        "bad-re2": base.replace(b"subject: x", b"subject_pattern: '(?<=x)a'") + perms,
        "re2-huge-repeat": base.replace(b"subject: x", b"subject_pattern: 'a{1000}{1000}'") + perms,
        "many-claims": base
        + b"claim_pattern:\n"
        + b"".join(b"  c%d: x\n" % i for i in range(70))
        + perms,
        "many-repositories": base
        + perms
        + b"repositories:\n"
        + b"".join(b"  - r%d\n" % i for i in range(501)),
        "repositories-owner": base + perms + b"repositories: [octo-org/demo, '..', 5]\n",
        "permission-levels": base
        + b"permissions: {contents: admin, issues: 1, x: read, '': write}\n",
        "empty": b"",
        "null": b"~\n",
        "list": b"- a\n- b\n",
        "multi-document": base + perms + b"---\n" + base + perms,
        "oversized": base + perms + b"#" + b"x" * (64 * 1024),
        "unknown-field": base + perms + b"subjet: y\n",
        "non-string-key": base + perms + b"? [a]\n: b\n1: x\n",
    }
    return seeds


# Lines matched against each pattern: the issuers an attacker would try.
SLASH_CANDIDATES = (
    "https://token.actions.githubusercontent.com",
    "https://abc.oidc.example.com",
    "https://evil.example/x/.oidc.example.com",
    "https://oidc.example.com/tenant",
    "https://oidc.example.com/tenant/x",
    "https://gitlab.com/group",
    "https://x.com/a",
    "https://x.com//",
    "https://a.example.com",
    "https://b.example.com",
    "https://a.example.com/x",
    "https://a.example.com/12345",
    "HTTPS://A.example.com",
    "Kttps://a.com",
    "abc/x",
    "https://good.example.com",
    "https://trusted.example.com",
)


def _slash_patterns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(refused, accepted): the slash guard's unit-test tables."""
    from tests.unit import test_slash_guard as t  # noqa: PLC0415

    return (*t.REFUSED, *t.REFUSED_ALTERNATIONS), (*t.ACCEPTED, *t.ACCEPTED_ALTERNATIONS)


def _slash_guard() -> Seeds:
    candidates = "\n".join(SLASH_CANDIDATES)
    refused, accepted = _slash_patterns()
    seeds = {}
    for kind, patterns in (("refused", refused), ("accepted", accepted)):
        for index, pattern in enumerate(patterns):
            seeds[f"{kind}-{index:02d}"] = f"{pattern}\n{candidates}".encode()
    seeds |= {
        "not-re2": b"(?<=a)b\nab",
        "lone-surrogate": "a\ud800".encode("utf-8", "surrogatepass"),
        "long": b"a" * 5000,
        "nested-groups": b"(" * 100 + b"a" + b")" * 100,
        "class-edge": rb"https://[\x{10FFFF}-\x{10FFFF}]\x{0}[\]/]" + b"\nhttps://x",
    }
    return seeds


def _issuers() -> Seeds:
    def file(*lines: str) -> bytes:
        return ("\n".join(lines) + "\n").encode()

    seeds = {
        "valid": file("issuers:", "  - https://token.actions.githubusercontent.com"),
        "audit": file(
            "mode: audit", "issuer_patterns:", r"  - 'https://[a-z0-9-]+\.oidc\.example\.com'"
        ),
        "http-insecure": file("issuers: [http://localhost:8080, http://other:8080]"),
        "uppercase-host": file("issuers: [https://Token.Actions.GithubUserContent.com]"),
        "duplicate": file("issuers: [https://a.example, https://a.example]"),
        "empty-lists": file("issuers: []", "issuer_patterns: []"),
        "mode-wrong": file("mode: Enforce", "issuers: [https://a.example]"),
        "not-a-list": file("issuers: https://a.example"),
        "too-many": file("issuers:", *(f"  - https://i{i}.example" for i in range(65))),
        "long-entry": file(f"issuers: [https://{'a' * 300}.example]"),
        "unknown-field": file("issuer: https://a.example"),
        "list": file("- https://a.example"),
        "null": b"~\n",
    }
    for index, pattern in enumerate(p for ps in _slash_patterns() for p in ps):
        quoted = "'" + pattern.replace("'", "''") + "'"
        seeds[f"pattern-{index:02d}"] = file("issuer_patterns:", f"  - {quoted}")
    return seeds


def _pinned_jwks() -> Seeds:
    """Key files (``jwks_file``): each rule of ``domain.jwks.compile_pinned_jwks`` broken once."""
    from tests import hostile as h  # noqa: PLC0415

    ec256, ec384, okp = _public_jwks()
    rsa = {**h.ALLOWED_RSA_KEYS[1], "kid": "rsa", "alg": "RS256"}

    def doc(*keys: object, **top: object) -> bytes:
        return json.dumps({"keys": list(keys), **top}).encode()

    seeds = {
        "valid-all-types": doc(rsa, ec256, ec384, okp),
        "valid-rsa-4096": doc(h.ALLOWED_RSA_KEYS[0]),
        "valid-key-ops": doc({**ec256, "use": "sig", "key_ops": ["verify"], "alg": "ES256"}),
        "valid-no-kid": doc({k: v for k, v in ec256.items() if k != "kid"}),
        "valid-x5c-ignored": doc({**ec256, "x5c": ["MIIB"], "x5t": "abc"}),
        "private-d": doc({**ec256, "d": "AAAA"}),
        "private-rsa-members": doc({**rsa, "p": "AQAB", "q": "AQAB", "qi": "AQAB"}),
        "oct-secret": doc({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}),
        "kty-unknown": doc({**ec256, "kty": "DSA"}),
        "kty-list": doc({**ec256, "kty": ["EC"]}),
        "unknown-member": doc({**ec256, "n": "AQAB"}),
        "use-enc": doc({**ec256, "use": "enc"}),
        "key-ops-sign": doc({**ec256, "key_ops": ["sign", "verify"]}),
        "alg-mismatch": doc({**ec256, "alg": "ES384"}),
        "alg-hs256-on-rsa": doc({**rsa, "alg": "HS256"}),
        "alg-none": doc({**rsa, "alg": "none"}),
        "kid-empty": doc({**ec256, "kid": ""}),
        "kid-long": doc({**ec256, "kid": "k" * 257}),
        "kid-control": doc({**ec256, "kid": "a\nb"}),
        "kid-number": doc({**ec256, "kid": 7}),
        "kid-duplicate": doc(ec256, {**ec384, "kid": ec256["kid"]}),
        "ec-curve-p521": doc({**ec256, "crv": "P-521"}),
        "ec-no-y": doc({k: v for k, v in ec256.items() if k != "y"}),
        "ec-off-curve": doc({**ec256, "y": ec256["x"]}),
        "ec-padding": doc({**ec256, "x": ec256["x"] + "="}),
        "okp-x25519": doc({**okp, "crv": "X25519"}),
        "okp-short": doc({**okp, "x": "AAAA"}),
        "rsa-no-e": doc({k: v for k, v in rsa.items() if k != "e"}),
        "unknown-top-member": doc(ec256, issuer="https://a.example"),
        "keys-empty": doc(),
        "keys-not-list": b'{"keys": {"kty": "EC"}}',
        "keys-of-strings": doc("a", 1, None),
        "too-many-keys": doc(*[{**ec256, "kid": f"k{i}"} for i in range(101)]),
        "duplicate-member": b'{"keys": [], "keys": []}',
        "duplicate-key-member": b'{"keys": [{"kty": "EC", "kty": "RSA"}]}',
        "deep": b'{"keys": [{"key_ops": [[["verify"]]]}]}',
        "deep-5000": b"[" * 5000 + b"]" * 5000,
        "not-json": b"keys: []\n",
        "not-utf8": b'{"keys": ["\xff"]}',
        "bom": b"\xef\xbb\xbf" + doc(ec256),
        "lone-surrogate-escape": b'{"keys": [{"kty": "EC", "kid": "\\ud800"}]}',
        "huge-number": b'{"keys": [{"kty": "RSA", "e": 1' + b"0" * 5000 + b"}]}",
        "nan": b'{"keys": [{"kty": "EC", "x": NaN}]}',
        "oversized": doc(ec256) + b" " * (64 * 1024),
        "top-level-list": json.dumps([ec256]).encode(),
    }
    for index, (jwk, _reason) in enumerate(h.REFUSED_RSA_KEYS):
        seeds[f"rsa-refused-{index}"] = doc(jwk)
    return seeds


def _ceiling() -> Seeds:
    def file(*lines: str) -> bytes:
        return ("\n".join(lines) + "\n").encode()

    return {
        "documented": file(
            "default: read",
            "permissions:",
            "  contents: write",
            "  pull_requests: write",
            "  issues: write",
            "  workflows: none",
            "  administration: none",
            "elevated:",
            "  identities: [release, deploy]",
            "  identity_patterns: ['deploy-[a-z0-9-]+']",
        ),
        "default-only": file("default: write"),
        "allowlist": file("permissions:", "  contents: read", "  metadata: read"),
        "denylist": file("default: admin", "permissions: {administration: none}"),
        "default-empty": file("default:", "permissions: {contents: read}"),
        "default-false": file("default: no"),  # YAML 1.1: false, refused
        "default-bad": file("default: maintain"),
        "level-not-for-permission": file("permissions: {contents: admin}"),
        "unknown-permission": file("permissions: {contens: read}"),
        "permission-number": file("permissions: {1: read, contents: 2}"),
        "permissions-list": file("permissions: [contents]"),
        "elevated-empty": file("default: write", "elevated: {}"),
        "elevated-not-mapping": file("default: write", "elevated: [release]"),
        "elevated-unknown-field": file("default: write", "elevated: {users: [a]}"),
        "elevated-bad-identity": file("default: write", "elevated: {identities: ['a b', '', 3]}"),
        "elevated-bad-re2": file("default: write", "elevated: {identity_patterns: ['(?<=a)b']}"),
        "elevated-too-many": file(
            "default: write", "elevated:", "  identities:", *(f"  - i{i}" for i in range(65))
        ),
        "elevated-string": file("default: write", "elevated: {identities: release}"),
        "unknown-field": file("default: read", "ceiling: write"),
        "nothing-set": file("elevated: {identities: [a]}"),
        "flow-style": b"{default: read, permissions: {issues: write}}",
        "anchor-alias": file("default: &d read", "permissions: {contents: *d}"),
        "duplicate-key": file("default: read", "default: admin"),
        "empty": b"",
        "null": b"~\n",
        "list": file("- default: read"),
        "not-utf8": b"default: \xff\n",
        "oversized": file("default: read") + b"#" + b"x" * (64 * 1024),
    }


def _policy_pinned() -> Seeds:
    """Policies pinning keys (inline ``jwks:``, a ``jwks_file``, both, neither valid)."""
    ec256, _ec384, okp = _public_jwks()
    head = (
        "issuer: https://kubernetes.default.svc\n"
        "subject: system:serviceaccount:ci:deployer\n"
        "permissions:\n  contents: read\n"
    )

    def policy(extra: str) -> bytes:
        return (head + extra).encode()

    return {
        "pinned-inline": policy("jwks: " + json.dumps({"keys": [ec256, okp]}) + "\n"),
        "pinned-inline-private": policy("jwks: " + json.dumps({"keys": [{**ec256, "d": "AA"}]})),
        "pinned-inline-oct": policy("jwks: {keys: [{kty: oct, k: c2VjcmV0}]}\n"),
        "pinned-inline-not-object": policy("jwks: [a]\n"),
        "pinned-file": policy("jwks_file: .github/chainguard/keys/cluster.jwks.json\n"),
        "pinned-file-escapes": policy("jwks_file: .github/chainguard/../../x.jwks.json\n"),
        "pinned-file-not-json-name": policy("jwks_file: .github/chainguard/keys.json\n"),
        "pinned-both": policy(
            "jwks_file: .github/chainguard/k.jwks.json\njwks: "
            + json.dumps({"keys": [ec256]})
            + "\n"
        ),
        "pinned-file-number": policy("jwks_file: 7\n"),
        # YAML-only types in members that only reach the key set's digest (canonical JSON).
        **{
            f"pinned-inline-yaml-{name}": policy(
                "jwks:\n  keys:\n  - " + json.dumps(ec256)[:-1] + f", {member}}}\n"
            )
            for name, member in {
                "date": "x5t: 2024-01-01",
                "binary": "x5t: !!binary aGVsbG8=",
                "int-keys": "x5c: {1: a, b: c}",
                "date-list": "x5c: [2024-01-01]",
                "set": "x5t#S256: !!set {a}",
            }.items()
        },
    }


# -- names, metadata, compat, protobuf ----------------------------------------------------------


def _names() -> Seeds:
    names = {
        "owner": "octo-org",
        "owner-repo": "octo-org/demo",
        "three-parts": "a/b/c",
        "dot-repo": "octo-org/..",
        "dotted-repo": "octo-org/.github",
        "owner-39": "a" * 39,
        "owner-40": "a" * 40,
        "repo-100": "o/" + "r" * 100,
        "repo-101": "o/" + "r" * 101,
        "double-hyphen": "a--b",
        "leading-hyphen": "-a",
        "trailing-slash": "octo-org/",
        "unicode-digit": "octo\u0663",
        "fullwidth": "\uff4f\uff43\uff54\uff4f",
        "newline-end": "octo-org\n",
        "scopes-same": "octo-org/demo\nocto-org/demo",
        "scopes-differ": "octo-org/demo\nocto-org/other",
        "identity": "ci\ndeploy.prod\n..\n.",
        "empty": "",
    }
    return {name: value.encode() for name, value in names.items()}


TOKEN = jws(json.dumps(ACTIONS).encode())


def _metadata() -> Seeds:
    def request(path: str, *headers: str) -> bytes:
        return "\n".join((path, *headers)).encode()

    auth = f"authorization: Bearer {TOKEN}"
    return {
        "valid": request(
            "/sts/exchange?scope=octo-org/demo&identity=ci", auth, "x-request-id: abc-1"
        ),
        "two-authorizations": request("/", auth, auth),
        "joined-authorizations": request("/", f"authorization: Bearer {TOKEN}, Bearer {TOKEN}"),
        "lowercase-scheme": request("/", f"authorization: bearer {TOKEN}"),
        "no-authorization": request("/", "user-agent: curl/8"),
        "expired": request("/", "authorization: Bearer x-expired-token"),
        "issuer-down": request("/", "authorization: Bearer u-issuer-down"),
        "verifier-bug": request("/", "authorization: Bearer z-verifier-bug"),
        "bad-signature": request("/", "authorization: Bearer b-bad-signature"),
        "subject-control-chars": request("/", auth, "x-fuzz-subject: repo:o/r\x1b[31m"),
        "spoofed-headers": request(
            "/",
            auth,
            "x-octo-sts-issuer: https://evil",
            "x-octo-sts-subject: me",
            "X-Octo-Sts-Admin: yes",
        ),
        "unknown-mode": request("/", auth, "x-fuzz-mode: admin"),
        "no-mode": request("/", auth, "x-fuzz-mode: "),
        "repeated-query": request("/sts/exchange?scope=a&scope=b", auth),
        "scopes-query": request("/sts/exchange?scope=a&scopes=a&scopes=b", auth),
        "query-not-utf8": request("/sts/exchange?scope=%ff", auth),
        "query-many-fields": request("/?" + "&".join(f"a{i}=1" for i in range(101)), auth),
        "request-ids": request(
            "/",
            auth,
            "x-request-id: " + "a" * 129,
            "x-request-id: ok:1.2_3-4",
            "x-request-id: \u00e9",
        ),
        "long-user-agent": request("/", auth, "user-agent: " + "u" * 500),
    }


def _compat() -> Seeds:
    form = "application/x-www-form-urlencoded"

    def seed(content_type: str, path: str, body: str) -> bytes:
        return f"{content_type}\n{path}\n{body}".encode()

    return {
        "sdk-form": seed(
            form,
            "/sts/exchange",
            "aud=octo-sts.dev&scope=octo-org%2Fdemo&identity=ci&scopes=octo-org%2Fdemo",
        ),
        "repeated-scope": seed(form, "/sts/exchange", "scope=a&scope=b"),
        "repeated-identity": seed(form, "/sts/exchange", "identity=a&identity=a"),
        "scopes-differ": seed(form, "/sts/exchange", "scopes=a&scopes=b"),
        "charset": seed(form + '; charset="UTF-8"', "/", "scope=a"),
        "charset-latin1": seed(form + "; charset=latin-1", "/", "scope=a"),
        "json-type": seed("application/json", "/", '{"scope":"a"}'),
        "not-utf8": seed(form, "/", "scope=%ff%fe"),
        "surrogate-escape": seed(form, "/", "scope=%ed%a0%80"),
        "many-fields": seed(form, "/", "&".join(f"aud={i}" for i in range(101))),
        "oversized": seed(form, "/", "aud=" + "a" * (16 * 1024)),
        "semicolons": seed(form, "/", "scope=a;scope=b"),
        "query-action": seed(form, "/sts/exchange?scope=octo-org&scopes=octo-org&identity=ci", ""),
        "query-scopes-only": seed(form, "/sts/exchange?scopes=octo-org", ""),
        "query-several-scopes": seed(
            form, "/sts/exchange?scopes=octo-org/demo&scopes=octo-org/infra&identity=ci", ""
        ),
        "query-scope-not-in-scopes": seed(
            form, "/sts/exchange?scope=octo-org/x&scopes=octo-org/demo&scopes=octo-org/y", ""
        ),
        "query-scopes-two-owners": seed(form, "/sts/exchange?scopes=a/b&scopes=c/d", ""),
        "query-fragment": seed(form, "/sts/exchange?scope=a#scope=b", ""),
        "query-blank": seed(form, "/sts/exchange?scope=&scope=", ""),
    }


def _oauth() -> Seeds:
    form = "application/x-www-form-urlencoded"
    grant = "urn:ietf:params:oauth:grant-type:token-exchange"
    jwt_type = "urn:ietf:params:oauth:token-type:jwt"

    def seed(content_type: str, *pairs: tuple[str, str]) -> bytes:
        return f"{content_type}\n{urllib.parse.urlencode(pairs)}".encode()

    base = (
        ("grant_type", grant),
        ("subject_token", TOKEN),
        ("subject_token_type", jwt_type),
        ("audience", "octo-org/demo"),
        ("scope", "ci"),
    )
    return {
        "rfc8693": seed(form, *base),
        "id-token": seed(
            form, *base[:2], ("subject_token_type", jwt_type[:-3] + "id_token"), *base[3:]
        ),
        "several-audiences": seed(form, *base, ("audience", "octo-org/infra")),
        "audiences-two-owners": seed(form, *base, ("audience", "other-org/lib")),
        "org-audience": seed(form, *base[:3], ("audience", "octo-org"), base[4]),
        "client-credentials": seed(form, ("grant_type", "client_credentials"), *base[1:]),
        "grant-twice": seed(form, *base, ("grant_type", grant)),
        "scope-twice": seed(form, *base, ("scope", "ci")),
        "two-identities": seed(form, *base[:4], ("scope", "ci deploy")),
        "resource": seed(form, *base, ("resource", "https://github.com/octo-org/demo")),
        "actor": seed(form, *base, ("actor_token", TOKEN), ("actor_token_type", jwt_type)),
        "requested-id-token": seed(form, *base, ("requested_token_type", jwt_type)),
        "client-id": seed(form, *base, ("client_id", "x"), ("client_secret", "y")),
        "no-subject": seed(form, base[0], *base[2:]),
        "bad-subject": seed(form, base[0], ("subject_token", "a b"), *base[2:]),
        "oversized-subject": seed(form, base[0], ("subject_token", "a" * 17_000), *base[2:]),
        "json": f"application/json\n{json.dumps(dict(base))}".encode(),
        "charset-latin1": seed(form + "; charset=latin-1", *base),
        "not-utf8": f"{form}\n".encode() + b"grant_type=%ff&scope=\xff",
        "nul-in-name": seed(form, *base, ("scope\x00x", "other")),
    }


def _check_request(headers: dict[str, str]) -> bytes:
    from envoy.service.auth.v3 import external_auth_pb2  # noqa: PLC0415

    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.path = "/sts/exchange?scope=octo-org"
    http.headers["authorization"] = f"Bearer {TOKEN}"
    for key, value in headers.items():
        http.headers[key] = value
    check.attributes.context_extensions["mode"] = "verify"
    serialized: bytes = check.SerializeToString(deterministic=True)
    return serialized


def _protobuf() -> Seeds:
    from google.api import httpbody_pb2  # noqa: PLC0415

    from octosts._gen.chainguard.platform.oidc import oidc_pb2  # noqa: PLC0415
    from octosts._gen.octosts.v1 import sts_pb2  # noqa: PLC0415

    return {
        "octosts-exchange": sts_pb2.ExchangeRequest(
            scope="octo-org/demo", identity="ci", audience="octo-sts.dev"
        ).SerializeToString(deterministic=True),
        "chainguard-exchange": oidc_pb2.ExchangeRequest(
            aud=["octo-sts.dev"], scope="octo-org/demo", identity="ci", scopes=["octo-org/demo"]
        ).SerializeToString(deterministic=True),
        "form-body": httpbody_pb2.HttpBody(
            content_type="application/x-www-form-urlencoded", data=b"scope=a&identity=ci"
        ).SerializeToString(deterministic=True),
        "check-request": _check_request({"x-octo-sts-subject": "spoofed"}),
        "empty": b"",
    }


# -- webhook ---------------------------------------------------------------------------------


def _webhook_payload() -> Seeds:
    from tests.unit.test_webhook_handler import BASES, MALFORMED, mutated  # noqa: PLC0415

    seeds = {f"valid-{event}": _event(event, base) for event, base in BASES.items()}
    for index, (event, path, value) in enumerate(MALFORMED):
        seeds[f"malformed-{index:03d}-{event}"] = _event(event, mutated(BASES[event], path, value))
    push = BASES["push"]
    seeds |= {
        "ping": _event("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}),
        "bot-sender": _event("push", {**push, "sender": {"type": "Bot"}}),
        "push-other-branch": _event("push", {**push, "ref": "refs/heads/dev"}),
        "push-20-commits": _event("push", {**push, "commits": [push["commits"][0]] * 20}),
        "push-no-commits": _event("push", {**push, "commits": []}),
        "push-org-repo": _event("push", mutated(push, "repository.name", ".github")),
        "unknown-event": _event("deployment", push),
        "not-json": b"push\n{",
        "not-object": b"push\n[]",
        "deep": b"push\n" + b"[" * 3000 + b"]" * 3000,
        "event-control-chars": _event("push\x1b[2J", push),
    }
    return seeds


def _event(event: str, payload: object) -> bytes:
    return f"{event}\n".encode() + json.dumps(payload).encode()


def _http(head: str, body: bytes = b"", *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    headers = head.replace("{length}", str(size)).replace("\n", "\r\n")
    return headers.encode("latin-1") + b"\r\n\r\n" + body


SIGNED = (
    "POST /webhook HTTP/1.1\nHost: sts.example\nContent-Type: application/json\n"
    "X-GitHub-Event: {event}\nX-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958\n"
    "X-Hub-Signature-256: sha256=sign-me\nContent-Length: {length}"
)


def _webhook_http() -> Seeds:
    ping = b'{"zen":"Design for failure.","hook_id":1}'
    push = _webhook_payload()["valid-push"].partition(b"\n")[2]
    signed = SIGNED
    return {
        "ping": _http(signed.replace("{event}", "ping"), ping),
        "push": _http(signed.replace("{event}", "push"), push),
        "unsigned": _http(signed.replace("sign-me", "00" * 32).replace("{event}", "ping"), ping),
        "get": _http("GET /webhook HTTP/1.1\nHost: x"),
        "other-path": _http("POST /admin?x=/webhook HTTP/1.1\nContent-Length: 0"),
        "query": _http(signed.replace("{event}", "ping").replace("/webhook", "/webhook?x=1"), ping),
        "chunked": _http(
            "POST /webhook HTTP/1.1\nTransfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n"
        ),
        "no-length": _http("POST /webhook HTTP/1.1\nX-GitHub-Event: ping", ping),
        "length-unicode-digit": _http("POST /webhook HTTP/1.1\nContent-Length: \u00b2", b"{}"),
        "length-huge-digits": _http("POST /webhook HTTP/1.1\nContent-Length: " + "9" * 5000),
        "length-negative": _http("POST /webhook HTTP/1.1\nContent-Length: -1", b"{}"),
        "truncated-body": _http(signed.replace("{event}", "ping"), ping[:10], length=len(ping)),
        "header-over-16k": _http("POST /webhook HTTP/1.1\nX-Pad: " + "p" * (17 * 1024)),
        "no-blank-line": b"POST /webhook HTTP/1.1\r\nContent-Length: 2\r\n",
        "bare-request-line": _http("POST"),
        "latin1-header": _http(
            "POST /webhook HTTP/1.1\nX-GitHub-Event: p\u00efng\nContent-Length: 2", b"{}"
        ),
        "duplicate-signatures": _http(
            signed.replace("{event}", "ping") + "\nX-Hub-Signature-256: sha256=" + "0" * 64, ping
        ),
    }


def tables() -> Iterator[tuple[str, str, bytes]]:
    """The original Octo STS's test tables (tests/unit/test_original_tables.py), as seeds."""
    import yaml  # noqa: PLC0415

    from tests.unit import test_original_tables as t  # noqa: PLC0415

    def dump(data: object) -> bytes:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()

    for index, case in enumerate(t.ISSUERS_CASES):
        data = case.data.encode() if isinstance(case.data, str) else dump(dict(case.data))
        yield "issuers", f"original-{index:03d}", data
        patterns = [] if isinstance(case.data, str) else case.data.get("issuer_patterns", [])
        lines = "\n".join((*case.allows, *case.denies))
        for number, pattern in enumerate(patterns if isinstance(patterns, list) else []):
            if isinstance(pattern, str):
                yield (
                    "slash_guard",
                    f"original-{index:03d}-{number}",
                    f"{pattern}\n{lines}".encode(),
                )
    candidates = "\n".join(SLASH_CANDIDATES)
    for index, (_row, pattern, bypass) in enumerate((*t.SLASH_ATOMS, *t.SEPARATORS)):
        seed = f"{pattern}\n{bypass}\n{candidates}"
        yield "slash_guard", f"original-bypass-{index:02d}", seed.encode()
    for index, case in enumerate(t.COMPILE_CASES):
        yield "policy", f"original-compile-{index:03d}", dump(t._with_permissions(case.policy))
    for index, case in enumerate(t.CHECK_CASES):
        yield "policy", f"original-check-{index:03d}", dump(t._with_permissions(case.policy))
        claims = {"iss": case.iss, "sub": case.sub, "aud": list(case.aud), "exp": 2_000_000_000}
        yield (
            "claims",
            f"original-check-{index:03d}",
            json.dumps({**claims, **case.claims}).encode(),
        )


GENERATORS: dict[str, Callable[[], Seeds]] = {
    "bearer": _bearer,
    "claims": _claims,
    "jwks": _jwks,
    "policy": lambda: _policy() | _policy_pinned(),
    "issuers": _issuers,
    "ceiling": _ceiling,
    "pinned_jwks": _pinned_jwks,
    "slash_guard": _slash_guard,
    "names": _names,
    "metadata": _metadata,
    "compat": _compat,
    "oauth": _oauth,
    "protobuf": _protobuf,
    "webhook_payload": _webhook_payload,
    "webhook_http": _webhook_http,
}


def generated() -> Iterator[tuple[str, str, bytes]]:
    """(target, file name, content) of every generated seed."""
    for target, make in GENERATORS.items():
        for name, content in make().items():
            yield target, name, content
    yield from tables()
    yield from hostile()


def hostile() -> Iterator[tuple[str, str, bytes]]:
    """The inputs of the [hardening-2] findings (tests/hostile.py), as seeds ``finding<N>-*``."""
    from tests import hostile as h  # noqa: PLC0415

    def claim(name: str, value: object) -> bytes:
        return json.dumps(
            {**ACTIONS, name: value}
        ).encode()  # NaN and Infinity as Python writes them

    payloads: list[tuple[str, bytes]] = []
    for index, (name, value) in enumerate(h.HOSTILE_TIMES):
        payloads.append((f"finding1-{index}-{name}", claim(name, value)))
    for index, (name, value) in enumerate(h.DEEP_CLAIMS):
        payloads.append((f"finding2-claim-{index}", claim(name, value)))
    for index, text in enumerate(h.DEEP_JSON_TEXTS):
        payloads.append((f"finding2-deep-text-{index}", text))
    for index, text in enumerate(h.SHALLOW_JSON_TEXTS):
        payloads.append((f"finding2-shallow-text-{index}", text))
    for name, payload in payloads:
        yield "claims", name, payload
        yield "bearer", name, f"Bearer {jws(payload)}".encode()
    issuer = "https://issuer.example"
    for index in range(2):
        yield (
            "bearer",
            f"finding3-bogus-signature-{index}",
            (f"Bearer {h.bogus_signature_token(issuer, seed=index)}".encode()),
        )
    yield "jwks", "finding3-expensive", json.dumps(h.EXPENSIVE_JWKS).encode()
    for index, (jwk, _reason) in enumerate(h.REFUSED_RSA_KEYS):
        yield "jwks", f"finding3-refused-{index}", json.dumps({"keys": [jwk]}).encode()
    for index, jwk in enumerate(h.ALLOWED_RSA_KEYS):
        yield "jwks", f"finding3-allowed-{index}", json.dumps({"keys": [jwk]}).encode()
    for index, raw in enumerate(h.MALFORMED_PROTOBUFS):
        yield "protobuf", f"finding4-{index}", raw
    header_sets = {
        "many-identity-headers": h.MANY_IDENTITY_HEADERS,
        "many-headers": h.MANY_HEADERS,
        "too-many-headers": h.TOO_MANY_HEADERS,
        "large-header": h.LARGE_HEADER,
        "huge-header": h.HUGE_HEADER,
    }
    for name, headers in header_sets.items():
        lines = [f"{key}: {value}" for key, value in headers.items()]
        yield (
            "metadata",
            f"finding5-{name}",
            "\n".join(
                ["/sts/exchange?scope=octo-org", f"authorization: Bearer {TOKEN}", *lines]
            ).encode(),
        )
    check = _check_request(h.MANY_IDENTITY_HEADERS)
    yield "protobuf", "finding5-many-identity-headers", check
    body = h.OVERSIZED_WEBHOOK_BODY
    # The listener answers 413 on the header alone: the 3 MB are not committed, their length is.
    yield (
        "webhook_http",
        "finding6-oversized",
        _http(SIGNED.replace("{event}", "ping"), body[:1024], length=len(body)),
    )
    yield (
        "webhook_http",
        "finding6-just-over",
        _http(SIGNED.replace("{event}", "ping"), h.webhook_body_of(64 * 1024 + 1)),
    )
    for path in h.ADMIN_PATHS:
        name = path.strip("/").replace("/", "-")
        yield "metadata", f"finding7-{name}", f"{path}\nauthorization: Bearer {TOKEN}".encode()
        yield "webhook_http", f"finding7-{name}", _http(f"GET {path} HTTP/1.1\nHost: sts.example")
    yield "webhook_payload", "finding8-replayed-push", b"push\n" + h.REPLAYED_PUSH
    yield (
        "webhook_http",
        "finding8-replayed-push",
        _http(
            SIGNED.replace("{event}", "push").replace(
                "72d3162e-cc78-11e3-81ab-4c9367dc0958", h.REPLAYED_PUSH_DELIVERY
            ),
            h.REPLAYED_PUSH,
        ),
    )


def write() -> int:
    count = 0
    for target, name, content in generated():
        path = CORPUS_DIR / target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            count += 1
    return count


def missing(seeds: Iterator[tuple[str, str, bytes]]) -> list[str]:
    """Seeds not committed as generated."""
    out = []
    for target, name, content in seeds:
        path = CORPUS_DIR / target / name
        if not path.exists() or path.read_bytes() != content:
            out.append(f"{target}/{name}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.seeds", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a finding's seed is missing")
    args = parser.parse_args()
    assert set(GENERATORS) == set(TARGETS)
    if args.check:
        absent = missing(hostile())
        for name in absent:
            print(f"missing or changed: tests/fuzz/corpus/{name}", file=sys.stderr)
        return 1 if absent else 0
    print(f"{write()} seed file(s) written under {CORPUS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
