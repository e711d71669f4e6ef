"""Verified OIDC tokens and the syntax rules for their fields.

Pure functions: no network, no clock (times are passed in). The OIDC adapter
runs them after the signature check; ``octo-sts policy check`` runs
``token_from_claims`` on a JSON claims file.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from octosts.domain.errors import IssuerRejected, TokenClaimsInvalid, TokenExpired

# The largest bearer token accepted, checked where a token enters (the transport's
# bearer_from_values, the CLI); the client library mirrors it (a test holds them equal).
# An Actions or Kubernetes OIDC token is 1-2 KiB: anything near this is a mistake or an
# attempt to make every layer carry a huge header.
MAX_TOKEN_BYTES = 16 * 1024
MAX_ISSUER_LENGTH = 255
MAX_PATH_SEGMENT_LENGTH = 150
MAX_SUBJECT_LENGTH = 255
MAX_AUDIENCE_LENGTH = 255
# exp/nbf/iat are NumericDates (RFC 7519 section 2): seconds from 1970 to the end of year 9999.
# Outside that they mean nothing, and an integer past ~1e308 cannot even become a float.
MAX_NUMERIC_DATE = 253_402_300_799
# How deep a token's JSON may nest (the payload object is level 1, each object or list inside
# it one more). Real tokens use 1-3 levels (Kubernetes: kubernetes.io.pod.name); more is an
# attempt to make a parser or a copy recurse until the stack runs out.
MAX_CLAIM_DEPTH = 16

# Characters that have a meaning in shells, HTML, SQL or policy patterns: a
# subject or audience carrying them is far more likely an attack than an identity.
_SUBJECT_FORBIDDEN = frozenset("\"'`\\<>;&$(){}[]")
_AUDIENCE_FORBIDDEN = _SUBJECT_FORBIDDEN | frozenset("|@")

_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~/]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6_LITERAL = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature, expiry and field syntax have been checked.

    ``pinned_keys``: the digests of the pinned key sets that alone verified it, and
    ``pinned_by`` the ``owner/repo`` whose policy pins them; empty when the issuer's
    published keys verified it. A pinned token's ``issuer`` and ``subject`` are only what
    whoever holds the pinned keys claims: they must not stand for the real issuer's
    tenant (rate limits, audit).
    """

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: float  # epoch seconds
    claims: Mapping[str, object]  # the whole verified payload (read-only copy)
    pinned_keys: tuple[str, ...] = ()
    pinned_by: str = ""


@dataclass(frozen=True, slots=True)
class IssuerUrl:
    """The parts of an issuer (or jwks_uri) URL that passed ``check_issuer_url``."""

    scheme: str
    host: str  # without brackets for IPv6 literals
    port: int | None
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (
            self.scheme,
            self.host.lower(),
            self.port or (443 if self.scheme == "https" else 80),
        )


def _reject(issuer_rule: str) -> IssuerRejected:
    return IssuerRejected(f"issuer URL rejected: {issuer_rule}")


def _check_host(hostport: str) -> tuple[str, int | None]:
    if not hostport:
        raise _reject("empty host")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _reject("unterminated IPv6 literal")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if not _IPV6_LITERAL.fullmatch(host):
            raise _reject("bad IPv6 literal")
        host = host[1:-1]
    else:
        host, sep, rest = hostport.partition(":")
        rest = sep + rest
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise _reject("host must be an ASCII DNS name or IP literal")
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not _PORT.fullmatch(digits) or not 0 < int(digits) < 65536:
            raise _reject("bad port")
        port = int(digits)
    return host, port


def _check_path(path: str) -> None:
    if not path:
        return  # ``https://host`` is a fine issuer
    if not path.startswith("/"):
        raise _reject("path must start with '/'")
    if not _PATH_CHARS.fullmatch(path):
        raise _reject("path may only contain [A-Za-z0-9-._~/]")
    for bad in ("..", "//", "~~"):
        if bad in path:
            raise _reject(f"path must not contain {bad!r}")
    if path.endswith("~"):
        raise _reject("path must not end with '~'")
    segments = path[1:].split("/")
    # a single trailing slash leaves one empty last segment; "//" was refused above
    for segment in segments[:-1] if segments[-1] == "" else segments:
        if segment in {"", ".", "..", "~"}:
            raise _reject(f"path segment {segment!r} not allowed")
        if len(segment) > MAX_PATH_SEGMENT_LENGTH:
            raise _reject(f"path segment longer than {MAX_PATH_SEGMENT_LENGTH} characters")


def parse_issuer_url(issuer: str, *, allow_insecure: bool = False) -> IssuerUrl:
    """Validate an issuer (or jwks_uri) URL and return its parts.

    Raises IssuerRejected naming the broken rule (see ``check_issuer_url``).
    """
    if not isinstance(issuer, str) or not issuer:
        raise _reject("empty or not a string")
    if len(issuer) > MAX_ISSUER_LENGTH:
        raise _reject(f"longer than {MAX_ISSUER_LENGTH} characters")
    if not issuer.isascii() or not issuer.isprintable() or any(c.isspace() for c in issuer):
        raise _reject("must be printable ASCII without whitespace")
    if "?" in issuer:
        raise _reject("query not allowed")
    if "#" in issuer:
        raise _reject("fragment not allowed")
    if issuer.startswith("https://"):
        scheme = "https"
    elif issuer.startswith("http://"):
        if not allow_insecure:
            raise _reject("scheme must be https")
        scheme = "http"
    else:
        raise _reject("scheme must be https")
    rest = issuer[len(scheme) + 3 :]
    slash = rest.find("/")
    hostport, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if "@" in hostport:
        raise _reject("userinfo not allowed")
    host, port = _check_host(hostport)
    _check_path(path)
    return IssuerUrl(scheme=scheme, host=host, port=port, path=path)


def check_issuer_url(issuer: str, *, allow_insecure: bool = False) -> None:
    """Validate an issuer (or jwks_uri) URL before any network call.

    Rules: ``https`` only (``http`` too when ``allow_insecure``, for explicitly
    allowed local issuers); no query, fragment or userinfo; ASCII host; the
    path is empty or starts with ``/``, has no ``..``, ``//``, ``~~`` or
    trailing ``~``, only ``[A-Za-z0-9-._~/]``, no ``.``/``..``/``~`` segment,
    segments <= 150 characters; the whole URL <= 255 characters.

    Raises IssuerRejected naming the broken rule.
    """
    parse_issuer_url(issuer, allow_insecure=allow_insecure)


def _is_bad_char(c: str) -> bool:
    # every "other" category (control, format such as bidi overrides and
    # zero-width characters, surrogates, unassigned) plus any whitespace
    return c.isspace() or unicodedata.category(c).startswith(("C", "Z"))


def check_subject(subject: object) -> str:
    """Raises TokenClaimsInvalid(reason="invalid_token_subject")."""
    if not isinstance(subject, str) or not subject:
        raise TokenClaimsInvalid(
            "sub claim missing, empty or not a string", reason="invalid_token_subject"
        )
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise TokenClaimsInvalid(
            f"sub longer than {MAX_SUBJECT_LENGTH} characters", reason="invalid_token_subject"
        )
    if any(_is_bad_char(c) for c in subject):
        raise TokenClaimsInvalid(
            "sub contains control or whitespace characters", reason="invalid_token_subject"
        )
    if any(c in _SUBJECT_FORBIDDEN for c in subject):
        raise TokenClaimsInvalid(
            "sub contains a forbidden character (one of \" ' ` \\ < > ; & $ ( ) { } [ ])",
            reason="invalid_token_subject",
        )
    return subject


def audience_problem(entry: object) -> str | None:
    """Why ``entry`` is not an audience value, or None when it is.

    The one rule for a token's ``aud`` entries and for the audience a caller
    asks for: 1-255 characters, no control or whitespace characters, none of
    ``" ' ` \\ < > ; & $ ( ) { } [ ] | @``.
    """
    if not isinstance(entry, str) or not entry:
        return "empty or not a string"
    if len(entry) > MAX_AUDIENCE_LENGTH:
        return f"longer than {MAX_AUDIENCE_LENGTH} characters"
    if any(_is_bad_char(c) for c in entry):
        return "contains control or whitespace characters"
    if any(c in _AUDIENCE_FORBIDDEN for c in entry):
        return "contains a forbidden character (one of \" ' ` \\ < > ; & $ ( ) { } [ ] | @)"
    return None


def _check_audience_entry(entry: object) -> str:
    problem = audience_problem(entry)
    if problem is not None or not isinstance(entry, str):
        raise TokenClaimsInvalid(f"aud entry {problem}", reason="invalid_token_audience")
    return entry


def check_audience(aud: object) -> tuple[str, ...]:
    """``aud`` as a tuple; absent means no audience.

    Raises TokenClaimsInvalid(reason="invalid_token_audience").
    """
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (_check_audience_entry(aud),)
    if isinstance(aud, list | tuple):
        return tuple(_check_audience_entry(a) for a in aud)
    raise TokenClaimsInvalid(
        "aud must be a string or a list of strings", reason="invalid_token_audience"
    )


# A JSON string with its escapes. The closing quote is optional so an unterminated string
# ends the scan at once instead of being retried from every later quote (quadratic).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_INNERMOST = re.compile(rb"\(\)")


def json_too_deep(raw: bytes, *, limit: int = MAX_CLAIM_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests more than ``limit`` levels, without parsing it.

    Run before ``json.loads`` so no parser ever recurses deeper than claims may nest.
    Strings are dropped, then each of ``limit`` passes removes the innermost pairs of
    brackets: a pair left after that was deeper. Every step is a linear pass in C.
    Text that is not JSON is judged on its brackets; the parser refuses it anyway.
    """
    shape = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw)).translate(_BRACKETS)
    for _ in range(limit):
        if not shape:
            return False
        shape = _INNERMOST.sub(b"", shape)
    return _INNERMOST.search(shape) is not None


def _copy_claim(value: object, parent_level: int) -> object:
    """A copy of one JSON value; recursion stops at ``MAX_CLAIM_DEPTH`` levels.

    Strings (names and values) are interned: a replica keeps up to its cache bound of
    verified tokens, whose claim names and most values (iss, aud, sub, workflow_ref...)
    repeat from token to token; one copy of each is about half a cached token's memory.
    Interned strings are freed with their last user, so this keeps nothing alive.
    """
    if isinstance(value, str):
        return _interned(value)
    if isinstance(value, dict | list | tuple):
        if parent_level >= MAX_CLAIM_DEPTH:
            raise TokenClaimsInvalid(f"claims nest deeper than {MAX_CLAIM_DEPTH} levels")
        if isinstance(value, dict):
            return {
                _interned(key): _copy_claim(item, parent_level + 1) for key, item in value.items()
            }
        return [_copy_claim(item, parent_level + 1) for item in value]
    return value


def _interned(text: str) -> str:
    return sys.intern(text) if type(text) is str else text  # a subclass cannot be interned


def _required_number(claims: Mapping[str, object], name: str) -> float:
    value = _numeric_claim(claims, name)
    if value is None:
        raise TokenClaimsInvalid(f"{name} claim is required")
    return value


def _numeric_claim(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass; ``"exp": true`` is not a time
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenClaimsInvalid(f"{name} claim must be a number")
    # Compared before any float conversion (10**400 has none); NaN fails every comparison.
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise TokenClaimsInvalid(f"{name} claim must be seconds between 1970 and 9999")
    return float(value)


def token_from_claims(
    claims: Mapping[str, object], *, allow_insecure: bool = False
) -> VerifiedToken:
    """Apply the token field syntax rules to a verified payload.

    ``iss`` must pass ``check_issuer_url`` (``allow_insecure`` lets ``http``
    issuers through, for explicitly allowed local issuers and development);
    ``sub`` and every ``aud`` entry must pass the subject/audience rules;
    ``exp`` is required and numeric, ``nbf``/``iat`` numeric when present, each
    within 0..``MAX_NUMERIC_DATE``; the claims nest at most ``MAX_CLAIM_DEPTH``
    levels. No clock is consulted: see ``check_token_times``.

    Raises IssuerRejected (reason ``invalid_token_issuer``), TokenClaimsInvalid
    with reason ``invalid_token_subject`` / ``invalid_token_audience`` /
    ``token_claims_invalid``.
    """
    if not isinstance(claims, Mapping):
        raise TokenClaimsInvalid("claims must be a JSON object")
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise IssuerRejected("iss claim missing or not a string")
    check_issuer_url(issuer, allow_insecure=allow_insecure)
    subject = check_subject(claims.get("sub"))
    audience = check_audience(claims.get("aud"))
    exp = _required_number(claims, "exp")
    _numeric_claim(claims, "nbf")
    _numeric_claim(claims, "iat")
    copied = {_interned(key): _copy_claim(value, 1) for key, value in claims.items()}
    frozen: Mapping[str, object] = MappingProxyType(copied)
    return VerifiedToken(
        issuer=_interned(issuer),
        subject=_interned(subject),
        audience=tuple(_interned(entry) for entry in audience),
        expires_at=exp,
        claims=frozen,
    )


def check_token_times(claims: Mapping[str, object], *, now: float, leeway: float) -> None:
    """Check ``exp`` (required), ``nbf`` and ``iat`` against ``now`` with ``leeway`` seconds.

    Raises TokenExpired, or TokenClaimsInvalid for a missing or non-numeric time.
    """
    exp = _required_number(claims, "exp")
    if exp <= now - leeway:
        raise TokenExpired("token has expired (exp)")
    nbf = _numeric_claim(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise TokenExpired("token is not valid yet (nbf)")
    iat = _numeric_claim(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise TokenExpired("token was issued in the future (iat)")
