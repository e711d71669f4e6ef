"""The hostile inputs of the [hardening-2] findings, as data.

The regression tests import them from here, and the fuzz targets' seed corpus is
collected from here: each constant is one input (or a small family of inputs) that
once made the service answer wrongly. Keep this module to plain values and pure
builders; nothing here needs a running server.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any


def case_ids(cases: tuple[tuple[str, Any], ...]) -> list[str]:
    """Short pytest ids for (name, value) cases: ``exp=1000000000...``."""
    return [f"{name}={str(value)[:12]}-{index}" for index, (name, value) in enumerate(cases)]


# -- finding 1: numeric claims no float can hold, or times before 1970 --------------------

HUGE_INT = 10**400  # "1" followed by 400 zeros: OverflowError on float()
# (claim, value) pairs: each made the numeric-claim check fail with INTERNAL / HTTP 503.
HOSTILE_TIMES: tuple[tuple[str, Any], ...] = (
    ("exp", HUGE_INT),
    ("exp", -HUGE_INT),
    ("nbf", HUGE_INT),
    ("iat", -HUGE_INT),
    ("exp", -1),
    ("exp", 2**64),
    ("exp", 1e308),
    ("nbf", float("nan")),  # Python's json reads and writes NaN / Infinity
    ("exp", float("inf")),
)


# -- finding 2: claims nested far deeper than any real token --------------------------------


def nested_lists(depth: int) -> Any:
    """``[[[...]]]``, ``depth`` lists deep (built without recursion)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_objects(depth: int) -> Any:
    """``{"a": {"a": ...}}``, ``depth`` objects deep."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# (claim name, value): ~1.4 KB each, RecursionError while copying claims -> INTERNAL / 503.
DEEP_CLAIMS: tuple[tuple[str, Any], ...] = (
    ("x", nested_lists(700)),
    ("x", nested_objects(600)),
)
# Every hostile claim of findings 1 and 2 as (name, value, the reason a verifier refuses it for).
HOSTILE_CLAIMS: tuple[tuple[str, Any, str], ...] = tuple(
    [(name, value, "token_claims_invalid") for name, value in HOSTILE_TIMES]
    + [(name, value, "token_malformed") for name, value in DEEP_CLAIMS]
)
HOSTILE_CLAIM_IDS = case_ids(HOSTILE_TIMES + DEEP_CLAIMS)
# Raw JSON texts the depth scan must judge without being fooled by strings or made slow.
DEEP_JSON_TEXTS: tuple[bytes, ...] = (
    b"[" * 6000 + b"]" * 6000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"[" * 12000,  # unbalanced: not JSON at all
    b'"' + b'\\"' * 6000,  # escaped quotes, no closing quote
    b'"\\' * 6000,
    b'"' * 12000,
)
# Shallow JSON whose strings are full of brackets: not deep.
SHALLOW_JSON_TEXTS: tuple[bytes, ...] = (
    json.dumps({"sub": "[" * 2000, "x": ["{" * 100, "]" * 100]}).encode(),
    json.dumps({"a": '\\"[[[[[[[[[[[[[[[[[[[[[[[[["'}).encode(),
)


# -- finding 3: an issuer whose keys make every verification expensive ----------------------


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def rsa_jwk(bits: int, exponent: int, *, seed: int, **extra: Any) -> dict[str, Any]:
    """An RSA public JWK with a random odd modulus of exactly ``bits`` bits.

    Publishing a key needs no private key: the modulus need not even be a product of
    two primes for a verifier to spend the work of checking signatures against it.
    """
    modulus = random.Random(seed).getrandbits(bits) | (1 << (bits - 1)) | 1
    jwk = {"kty": "RSA", "use": "sig", "n": _b64url_uint(modulus), "e": _b64url_uint(exponent)}
    return jwk | extra


def rsa_jwks(
    count: int, bits: int, exponent: int, *, seed: int = 1, **extra: Any
) -> dict[str, Any]:
    return {"keys": [rsa_jwk(bits, exponent, seed=seed + i, **extra) for i in range(count)]}


# The issuer of the finding: 30 keys of 16384 bits, e = 2**64-1 (83 KB, under the 100 KiB cap).
EXPENSIVE_JWKS = rsa_jwks(30, 16384, 2**64 - 1)
# Each refused alone, whatever the rest of the JWKS holds: (jwk, reason).
REFUSED_RSA_KEYS: tuple[tuple[dict[str, Any], str], ...] = (
    (rsa_jwk(16384, 65537, seed=11), "rsa_modulus_too_large"),
    (rsa_jwk(4097, 65537, seed=12), "rsa_modulus_too_large"),
    (rsa_jwk(1024, 65537, seed=13), "rsa_modulus_too_small"),
    (rsa_jwk(2048, 2**64 - 1, seed=14), "rsa_exponent_not_allowed"),
    (rsa_jwk(2048, 65539, seed=15), "rsa_exponent_not_allowed"),
    (rsa_jwk(2048, 65536, seed=16), "rsa_exponent_not_allowed"),
    (rsa_jwk(2048, 1, seed=17), "rsa_exponent_not_allowed"),
)
# Within the caps: the largest and the smallest a JWKS may publish.
ALLOWED_RSA_KEYS: tuple[dict[str, Any], ...] = (
    rsa_jwk(4096, 65537, seed=21),
    rsa_jwk(2048, 3, seed=22),
)


def bogus_signature_token(
    issuer: str, *, seed: int, signature_bytes: int = 512, kid: str | None = None
) -> str:
    """An RS256 token for ``issuer`` with a unique random signature (no kid unless given)."""
    rng = random.Random(seed)
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    payload = {"iss": issuer, "sub": "repo:o/r:ref:refs/heads/main", "exp": 4_000_000_000}
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    parts.append(rng.randbytes(signature_bytes))
    return ".".join(base64.urlsafe_b64encode(p).decode().rstrip("=") for p in parts)


# -- finding 4: request bytes that are not the method's protobuf message --------------------

# The finding's input: a varint that never ends its length, then noise (grpc.aio answered
# UNKNOWN "Unexpected <class 'google.protobuf.message.DecodeError'>" and logged an error).
MALFORMED_PROTOBUF = b"\xff\xff\xff\xff\x0f" + random.Random(4).randbytes(64)
MALFORMED_PROTOBUFS: tuple[bytes, ...] = (
    MALFORMED_PROTOBUF,
    b"\x0a\xff",  # a length that runs past the end
    b"\x0a\x05ab",  # a string shorter than its length
    b"\x0a\x02\xc3\x28",  # a string field that is not UTF-8
    b"\x0b",  # a group start (wire type 3) that never ends
    b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    b"\x00",  # field number 0
)


# -- finding 5: more (or larger) request headers than the edge can pass on --------------------

# The finding: 90 spoofed identity headers. Envoy took the request (under its 100-header limit),
# then ext_authz's answer (which removes them) left more than 100 after Envoy's own additions:
# UAEX ext_authz_invalid, HTTP 500 with an empty body. Any header name did it.
MANY_IDENTITY_HEADERS: dict[str, str] = {f"x-octo-sts-h{i}": "v" for i in range(90)}
MANY_HEADERS: dict[str, str] = {f"x-foo-{i}": "v" for i in range(90)}
# Past Envoy's own limit (100): its codec answered 431 text/plain.
TOO_MANY_HEADERS: dict[str, str] = {f"x-foo-{i}": "v" for i in range(120)}
# ~30 KB in one header: over the service's gRPC metadata limit it came back as 429 (a retry
# signal); near Envoy's 60 KiB it was UAEX / 500 again.
LARGE_HEADER: dict[str, str] = {"x-foo": "a" * 30_000}
HUGE_HEADER: dict[str, str] = {"x-foo": "a" * 61_000}


# -- finding 6: a webhook body larger than the service takes --------------------------------

OVERSIZED_WEBHOOK_BODY = b'{"zen":"' + b"a" * (3 * 1024 * 1024) + b'"}'  # 3 MB


def webhook_body_of(size: int) -> bytes:
    """A JSON ping body of exactly ``size`` bytes."""
    return b'{"zen":"' + b"a" * (size - 10) + b'"}'


# -- finding 7: paths of the public listener that must not reach Envoy's admin API ---------------

ADMIN_PATHS: tuple[str, ...] = (
    "/metrics",
    "/stats/prometheus",
    "/stats",
    "/config_dump",
    "/quitquitquit",
    "/clusters",
)


# -- finding 8: a signed webhook delivery sent twice -------------------------------------------

REPLAYED_PUSH_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
# A push to the default branch touching a policy: each copy used to drop cached policies.
REPLAYED_PUSH = json.dumps(
    {
        "ref": "refs/heads/main",
        "repository": {"name": "demo", "owner": {"login": "octo-org"}, "default_branch": "main"},
        "commits": [{"added": [], "modified": [".github/chainguard/ci.sts.yaml"], "removed": []}],
        "head_commit": None,
        "sender": {"login": "octocat", "type": "User"},
    }
).encode()
