"""Public signature keys (JWK): the one home of the rules a key must pass (pure).

Two readers apply them:

* the OIDC adapter, to the JWKS documents it fetches from issuers
  (``adapters.oidc.parse_jwks``): keys that break a rule are skipped or refused and
  counted, since an issuer's document is not ours to fix;
* trust policies that pin their issuer's keys (``jwks:`` inline or ``jwks_file:``,
  ``compile_pinned_jwks``): every break is a policy problem naming the key and member,
  because the policy author can fix it, and a pinned key is never "skipped".

What a key may cost decides some rules: anyone can run an issuer, and an RSA
verification costs about bits(n)**2 * bits(e). 30 keys of 16384 bits with e = 2**64-1
cost 112-281 ms of CPU per bogus token where a real one costs ~1 ms; with these caps the
worst rejection is ``MAX_KEYS_TRIED`` RSA-4096 checks with e = 65537
(``bench/hostile_verify.py``). The key material itself (an EC point on its curve, an
Ed25519 key of 32 bytes) is checked by the adapters, which build the key objects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from octosts.domain.errors import PolicyProblem
from octosts.domain.text import clip, show

# Asymmetric algorithms only: "none" and HMAC (whose "key" would be public material) never.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVE_ALGORITHM: Mapping[str, str] = MappingProxyType({"P-256": "ES256", "P-384": "ES384"})
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
B64URL = re.compile(r"[A-Za-z0-9_-]+")
# x5c entries are base64 (not base64url) DER certificates, padded (RFC 7517 4.7).
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
MAX_X5C = 10  # certificates in a chain

MAX_KEYS = 100  # a JWKS document with more keys than this is refused
MIN_RSA_MODULUS_BITS = 2048  # below this a key is too weak to trust, whatever it costs
MAX_RSA_MODULUS_BITS = 4096
MAX_RSA_EXPONENT = 65537  # e must be odd and 3 <= e <= 65537 (65537 in practice)
# Keys one token's signature is checked against when its kid does not single one out (no
# kid, or a kid several keys share): the first ones whose use and alg match.
MAX_KEYS_TRIED = 4
MAX_KID_LENGTH = 256

# Reasons counted in octo_sts_refusals_total (via stage annotations ``refused.<reason>``).
RSA_MODULUS_TOO_LARGE = "rsa_modulus_too_large"
RSA_MODULUS_TOO_SMALL = "rsa_modulus_too_small"
RSA_EXPONENT_NOT_ALLOWED = "rsa_exponent_not_allowed"
TOO_MANY_CANDIDATE_KEYS = "too_many_candidate_keys"

# Members that carry private or symmetric key material (RFC 7518 section 6).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Members a pinned key may have: its type's public members and the common ones. The x5*
# certificate members are accepted and ignored (keys are never looked up by certificate).
KEY_MEMBERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
)
COMMON_MEMBERS = ("kty", "use", "key_ops", "alg", "kid", "x5c", "x5t", "x5t#S256")


def key_algorithms(jwk: Mapping[str, object]) -> frozenset[str]:
    """Algorithms a JWK may verify: its ``alg`` if stated, else what its type implies."""
    kty, crv = jwk.get("kty"), _text(jwk.get("crv"))
    if kty == "RSA":
        implied = RSA_ALGORITHMS
    elif kty == "EC":
        curve_alg = EC_CURVE_ALGORITHM.get(crv)
        implied = frozenset({curve_alg}) if curve_alg else frozenset()
    elif kty == "OKP" and crv in OKP_CURVES:
        implied = frozenset({"EdDSA"})
    else:
        implied = frozenset()  # "oct" (HMAC) and anything unknown
    stated = jwk.get("alg")
    if stated is None:
        return implied
    return implied & {stated} if isinstance(stated, str) else frozenset()


def _text(value: object) -> str:
    """A member compared with names: members of hostile JSON may be lists (unhashable)."""
    return value if isinstance(value, str) else ""


def b64_uint(value: object) -> int | None:
    """A JWK base64url unsigned integer (``n``, ``e``), or None when it is not one."""
    if not isinstance(value, str) or not B64URL.fullmatch(value):
        return None
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        return None


def rsa_key_refusal(jwk: Mapping[str, object]) -> str | None:
    """Why an RSA JWK is refused for what it would cost (or its weakness), or None.

    Checked on the numbers, before any key object is built from them.
    """
    modulus, exponent = b64_uint(jwk.get("n")), b64_uint(jwk.get("e"))
    if modulus is None or exponent is None:
        return None  # not RSA material at all: the key object cannot be built
    if modulus.bit_length() > MAX_RSA_MODULUS_BITS:
        return RSA_MODULUS_TOO_LARGE
    if modulus.bit_length() < MIN_RSA_MODULUS_BITS:
        return RSA_MODULUS_TOO_SMALL
    if exponent % 2 == 0 or not 3 <= exponent <= MAX_RSA_EXPONENT:
        return RSA_EXPONENT_NOT_ALLOWED
    return None


# -- keys pinned in a trust policy ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """One public key of a policy: its ``kid`` (optional), the algorithms it verifies, and
    its members as written (public members only: ``compile_pinned_jwks`` refused the rest)."""

    kid: str | None
    algorithms: frozenset[str]
    jwk: Mapping[str, object] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PinnedJwks:
    """The issuer keys a trust policy pins: only these verify its tokens, nothing is fetched.

    ``digest`` (SHA-256 of the keys' canonical JSON) names the key set in logs and audit
    events and keys the adapter's parsed-key objects; ``source`` is ``jwks`` (inline) or the
    ``jwks_file`` path.
    """

    keys: tuple[PinnedKey, ...]
    digest: str
    source: str


_RSA_REFUSALS = {
    RSA_MODULUS_TOO_LARGE: f"longer than {MAX_RSA_MODULUS_BITS} bits",
    RSA_MODULUS_TOO_SMALL: f"shorter than {MIN_RSA_MODULUS_BITS} bits (too weak)",
    RSA_EXPONENT_NOT_ALLOWED: f"the exponent must be odd and 3..{MAX_RSA_EXPONENT} (AQAB)",
}
_PRIVATE_WHY = (
    "private key material: a policy holds public keys only. It is published now: "
    "replace this key pair at the issuer and pin the new public key"
)


def compile_pinned_jwks(
    value: object, *, where: str, source: str, lines: Mapping[str, int] | None = None
) -> tuple[PinnedJwks | None, list[PolicyProblem]]:
    """Validate a pinned JWKS object (``{"keys": [...]}``); problems name ``where.keys[i].x``
    (``keys[i].x`` when ``where`` is empty: a key file).

    Rules, each a problem: a mapping with only ``keys``, a list of 1..``MAX_KEYS`` keys; each
    key a mapping whose ``kty`` is RSA, EC or OKP (``oct`` and other symmetric or unknown
    types are refused), with no private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``,
    ``oth``, ``k``) and no member outside its type's and the common ones; ``use``, when
    given, ``sig``; ``key_ops``, when given, ``[verify]``; ``alg``, when given, one of the
    algorithms its type implies (``ALLOWED_ALGORITHMS``); ``kid`` a non-empty string of at
    most ``MAX_KID_LENGTH`` printable ASCII characters, unique; RSA ``n``/``e`` within the
    caps of ``rsa_key_refusal``; EC ``crv`` P-256 or P-384 with ``x`` and ``y``; OKP
    ``crv`` Ed25519 or Ed448 with ``x``. Returns the keys (None when there is a problem).
    """
    return _JwksCompiler(where, lines or {}).run(value, source)


class _JwksCompiler:
    def __init__(self, where: str, lines: Mapping[str, int]) -> None:
        self.where = where
        self.lines = lines
        self.problems: list[PolicyProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(path, message, self.lines.get(path)))

    def member(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def run(self, value: object, source: str) -> tuple[PinnedJwks | None, list[PolicyProblem]]:
        if not isinstance(value, Mapping):
            self.problem(self.where, 'must be a JWKS object: {"keys": [ ...public keys... ]}')
            return None, self.problems
        for name in value:
            if name != "keys":
                self.problem(self.member(clip(str(name), 40)), "unknown member (only keys)")
        raw = value.get("keys")
        path = self.member("keys")
        if not isinstance(raw, list) or not raw:
            self.problem(path, "must be a non-empty list of public keys")
            return None, self.problems
        if len(raw) > MAX_KEYS:
            self.problem(path, f"at most {MAX_KEYS} keys")
            return None, self.problems
        keys = self.keys(path, raw)
        if self.problems:
            return None, self.problems
        try:
            canonical = json.dumps(
                [dict(k.jwk) for k in keys], sort_keys=True, separators=(",", ":")
            )
        except (TypeError, ValueError):  # pragma: no cover - every member is typed above
            self.problem(path, "keys must hold JSON values only")
            return None, self.problems
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return PinnedJwks(tuple(keys), digest, source), []

    def keys(self, path: str, raw: list[object]) -> list[PinnedKey]:
        keys: list[PinnedKey] = []
        kids: dict[str, int] = {}
        for index, item in enumerate(raw):
            key = self.key(f"{path}[{index}]", item)
            if key is None:
                continue
            if key.kid is not None and key.kid in kids:
                self.problem(f"{path}[{index}].kid", f"duplicate kid (also keys[{kids[key.kid]}])")
                continue
            if key.kid is not None:
                kids[key.kid] = index
            keys.append(key)
        return keys

    def key(self, path: str, item: object) -> PinnedKey | None:
        if not isinstance(item, Mapping):
            self.problem(path, "must be a JWK object")
            return None
        before = len(self.problems)
        kty = _text(item.get("kty"))
        if kty == "oct":
            self.problem(
                f"{path}.kty",
                "symmetric keys (oct) are never accepted: a shared secret in a policy would "
                "let anyone who reads it sign tokens",
            )
            return None
        if kty not in KEY_MEMBERS:
            self.problem(f"{path}.kty", "must be RSA, EC or OKP (a public signature key)")
            return None
        allowed = (*COMMON_MEMBERS, *KEY_MEMBERS[kty])
        for name in item:
            member = f"{path}.{clip(str(name), 40)}"
            if name in PRIVATE_MEMBERS:
                self.problem(member, _PRIVATE_WHY)
            elif name not in allowed:
                self.problem(
                    member, f"unknown member for kty {kty} (allowed: {', '.join(allowed)})"
                )
        self.use_and_ops(path, item)
        self.certificates(path, item)
        kid = self.kid(path, item.get("kid"))
        self.material(path, kty, item)
        algorithms = key_algorithms(item)
        if not algorithms and len(self.problems) == before:
            self.problem(
                f"{path}.alg",
                f"{show(str(item.get('alg')), 20)} does not fit this key "
                f"(accepted: {', '.join(sorted(ALLOWED_ALGORITHMS))})",
            )
        if len(self.problems) != before:
            return None
        return PinnedKey(kid, algorithms, MappingProxyType(dict(item)))

    def use_and_ops(self, path: str, item: Mapping[str, object]) -> None:
        if "use" in item and item["use"] != "sig":
            self.problem(f"{path}.use", "must be sig (signature keys only)")
        if "key_ops" in item and item["key_ops"] != ["verify"]:
            self.problem(f"{path}.key_ops", "must be [verify] (or left out)")

    def certificates(self, path: str, item: Mapping[str, object]) -> None:
        """x5c, x5t, x5t#S256: never used to verify, but in the digest; JSON types only (a
        policy's YAML could hold a date, bytes or a mapping with integer keys there)."""
        if "x5c" in item:
            chain = item["x5c"]
            if (
                not isinstance(chain, list)
                or not 1 <= len(chain) <= MAX_X5C
                or not all(isinstance(c, str) and _B64.fullmatch(c) for c in chain)
            ):
                self.problem(
                    f"{path}.x5c", f"must be a list of 1..{MAX_X5C} base64 DER certificates"
                )
        for name in ("x5t", "x5t#S256"):
            if name in item and not (
                isinstance(item[name], str) and B64URL.fullmatch(str(item[name]))
            ):
                self.problem(f"{path}.{name}", "must be base64url without padding")

    def kid(self, path: str, kid: object) -> str | None:
        if kid is None:
            return None
        if (
            not isinstance(kid, str)
            or not kid
            or len(kid) > MAX_KID_LENGTH
            or not all(" " <= c <= "~" for c in kid)
        ):
            self.problem(
                f"{path}.kid",
                f"must be a non-empty string of at most {MAX_KID_LENGTH} printable ASCII "
                "characters",
            )
            return None
        return kid

    def material(self, path: str, kty: str, item: Mapping[str, object]) -> None:
        for name in KEY_MEMBERS[kty]:
            if name == "crv":
                continue
            if not isinstance(item.get(name), str) or not B64URL.fullmatch(str(item[name])):
                self.problem(f"{path}.{name}", "is required: base64url without padding")
        if kty == "RSA":
            refusal = rsa_key_refusal(item)
            if refusal is not None:
                modulus = b64_uint(item.get("n")) or 0
                if refusal == RSA_EXPONENT_NOT_ALLOWED:
                    self.problem(f"{path}.e", _RSA_REFUSALS[refusal])
                else:
                    bits = modulus.bit_length()
                    self.problem(
                        f"{path}.n", f"RSA modulus of {bits} bits: {_RSA_REFUSALS[refusal]}"
                    )
        elif kty == "EC" and _text(item.get("crv")) not in EC_CURVE_ALGORITHM:
            self.problem(f"{path}.crv", "must be P-256 or P-384 (ES256, ES384)")
        elif kty == "OKP" and _text(item.get("crv")) not in OKP_CURVES:
            self.problem(f"{path}.crv", "must be Ed25519 or Ed448 (EdDSA)")
