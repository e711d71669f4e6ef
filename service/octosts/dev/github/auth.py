"""Who is calling and what they may do: App JWTs, installation tokens, permission levels.

An App authenticates with an RS256 JWT (``iss`` = app id, ``iat``/``exp`` at most 10 minutes
apart, a minute of clock skew allowed), checked with the key of the App its ``iss`` names; an
installation authenticates with a token from the ledger. Each principal spends its own
rate-limit budget (``app:ID``, ``installation:ID``, ``anon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.dev.github.answers import HttpError, not_found
from octosts.dev.github.ledger import Grant, TokenLedger
from octosts.dev.github.state import Repos

MAX_JWT_LIFETIME = 600
JWT_SKEW = 60

LEVELS = {"read": 1, "write": 2, "admin": 3}

AuthKind = Literal["app", "token", "none"]


def covers(granted: str | None, wanted: str) -> bool:
    """Whether permission level ``granted`` (None: not granted) includes ``wanted``."""
    return wanted in LEVELS and LEVELS.get(granted or "", 0) >= LEVELS[wanted]


def load_app_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The public half of an app key given as a private or public PEM. Raises ValueError."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        private = None
    if private is not None:
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("the app key must be an RSA key")
        return private.public_key()
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("the app key is not a PEM RSA private or public key") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("the app key must be an RSA key")  # noqa: TRY004 - a CLI input error
    return public


def ensure_app_key(path: Path) -> Path:
    """Write a new 2048-bit RSA app private key (mode 0600) unless ``path`` exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


APP_SLUG = "octo-sts-emulated"


@dataclass(frozen=True, slots=True)
class App:
    """A GitHub App the emulator serves: its id, the public half of its key, the permissions
    every installation grants it, and its slug."""

    app_id: int
    public_key: rsa.RSAPublicKey
    permissions: Mapping[str, str]
    slug: str = APP_SLUG


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request and the rate-limit budget it spends."""

    kind: AuthKind
    budget: str
    token: str = ""  # the installation token presented (kind "token")
    grant: Grant | None = None
    app_id: int | None = None  # the App calling, or whose installation the token is of

    def require_grant(self) -> Grant:
        if self.grant is None:  # pragma: no cover - routes needing a token are token-only
            raise HttpError(401, "Bad credentials")
        return self.grant


ANONYMOUS = Principal("none", "anon")


def authenticate(
    headers: Mapping[str, str], apps: Mapping[int, App], ledger: TokenLedger, now: float
) -> Principal:
    """The principal named by the Authorization header. Raises HttpError 401.

    ``apps`` by id, the first one the default: a JWT whose ``iss`` names no App is checked
    against it (and refused with GitHub's message for what is wrong).
    """
    value = headers.get("authorization", "")
    if not value:
        return ANONYMOUS
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer" and credential.count(".") == 2:
        app = apps.get(_claimed_app(credential) or 0) or next(iter(apps.values()))
        verify_app_jwt(credential, app, now)
        return Principal("app", f"app:{app.app_id}", app_id=app.app_id)
    if scheme.lower() in {"bearer", "token"}:
        grant = ledger.lookup(credential, now)
        if grant is None:
            raise HttpError(401, "Bad credentials")
        budget = f"installation:{grant.installation_id}"
        return Principal("token", budget, credential, grant, grant.app_id)
    raise HttpError(401, "Bad credentials")


def _claimed_app(token: str) -> int | None:
    """The App id a JWT's ``iss`` names, unverified (it only picks the key to verify with)."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        return None
    text = str(iss)
    return int(text) if text.isdecimal() and len(text) < 19 else None


def verify_app_jwt(token: str, app: App, now: float) -> None:
    """Check an App JWT as GitHub does, with GitHub's messages. Raises HttpError 401."""
    try:
        claims = jwt.decode(
            token,
            app.public_key,
            algorithms=["RS256"],
            options={"require": ["iat", "exp", "iss"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidTokenError:
        raise HttpError(401, "A JSON web token could not be decoded") from None
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise HttpError(401, "'iat' and 'exp' claims must be numeric")
    if exp <= now:
        raise HttpError(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the"
            " future time at which the assertion expires",
        )
    if iat > now + JWT_SKEW:
        raise HttpError(
            401,
            "'Issued at' claim ('iat') must be an Integer representing the"
            " time that the assertion was issued",
        )
    if exp - iat > MAX_JWT_LIFETIME or exp > now + MAX_JWT_LIFETIME + JWT_SKEW:
        raise HttpError(401, "'Expiration time' claim ('exp') is too far in the future")
    if str(claims.get("iss")) != str(app.app_id):
        raise HttpError(401, "'Issuer' claim ('iss') must be an Integer")


def authorize_repo(
    repos: Repos, grant: Grant, owner: str, repo: str, level: str, permission: str = "contents"
) -> None:
    """Raise 404 for a repository the token cannot see (as GitHub does), 403 without ``level``."""
    visible = (
        repos.has_repo(owner, repo)
        and grant.owner.lower() == owner.lower()
        and (grant.repositories is None or repo.lower() in grant.repositories)
    )
    if not visible:
        raise not_found()
    if permission == "metadata" and level == "read":
        return  # GitHub grants every installation token metadata: read
    if not covers(grant.permissions.get(permission), level):
        raise HttpError(403, "Resource not accessible by integration")
