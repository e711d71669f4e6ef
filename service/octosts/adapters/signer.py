"""Signing GitHub App JWTs.

The service authenticates to GitHub as the App with a short-lived JWT signed by
the App's private key. Signing goes through ``AppSigner`` so the key can live
elsewhere: in memory (``PemSigner``) or in a KMS that never lets it out
(``adapters.kms``: AWS KMS, Google Cloud KMS). The JWT itself is assembled here
from the signing input, never by a library that needs the key.

``build_signer`` makes the signer of one App from its ``SignerConfig``; each App
has its own (several Apps, one per config).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from octosts.adapters.kms import KmsBackend, KmsSigner, SignerKind, missing_extra
from octosts.domain.errors import StsError

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

# GitHub accepts app JWTs valid for at most 10 minutes; back-dating iat by a
# minute absorbs clock drift between us and GitHub (GitHub's own advice).
JWT_BACKDATE_SECONDS = 60
JWT_LIFETIME_SECONDS = 9 * 60
# RSA signing is cheap but not free; keys smaller than this are refused by GitHub.
MIN_RSA_BITS = 2048


class AppSigner(Protocol):
    """Signs the JWS signing input (``b64(header).b64(payload)``) of an app JWT."""

    algorithm: str

    async def sign(self, signing_input: bytes) -> bytes:
        """Return the raw signature bytes. Raises StsError when signing fails."""
        ...

    async def aclose(self) -> None:
        """Release what the signer holds (a KMS client's connections)."""
        ...


class PemSigner:
    """RS256 signer over an RSA private key held in memory.

    The key never appears in ``repr``, logs or error messages.
    """

    algorithm = "RS256"
    __slots__ = ("_key",)

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        if key.key_size < MIN_RSA_BITS:
            raise StsError(
                f"GitHub App private key is too small ({key.key_size} bits; need {MIN_RSA_BITS})",
                reason="app_key_invalid",
            )
        self._key = key

    @classmethod
    def from_pem(cls, pem: bytes | str) -> PemSigner:
        """Load a PEM private key (PKCS#1 as GitHub issues it, or PKCS#8).

        Raises StsError(reason="app_key_invalid") with a message that never
        contains the key.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # `from None`: the parser's message is not needed and the data must not travel.
            raise StsError(
                "GitHub App private key is not a readable unencrypted PEM private key",
                reason="app_key_invalid",
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise StsError(
                "GitHub App private key must be an RSA key (GitHub signs app JWTs with RS256)",
                reason="app_key_invalid",
            )
        return cls(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PemSigner:
        """Load the key from a PEM file. Raises StsError(reason="app_key_invalid")."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise StsError(
                f"cannot read GitHub App private key file {os.fspath(path)!r}: {exc.strerror}",
                reason="app_key_invalid",
            ) from exc
        return cls.from_pem(data)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PemSigner:
        """Load from ``GITHUB_APP_PRIVATE_KEY_FILE`` or ``GITHUB_APP_PRIVATE_KEY`` (PEM text).

        Raises StsError(reason="app_key_invalid") when neither or both are set.
        """
        env = os.environ if environ is None else environ
        path = env.get("GITHUB_APP_PRIVATE_KEY_FILE", "")
        pem = env.get("GITHUB_APP_PRIVATE_KEY", "")
        if bool(path) == bool(pem):
            raise StsError(
                "set exactly one of GITHUB_APP_PRIVATE_KEY_FILE or GITHUB_APP_PRIVATE_KEY",
                reason="app_key_invalid",
            )
        # Env values often arrive with literal "\n" (one-line secrets); accept both forms.
        return cls.from_file(path) if path else cls.from_pem(pem.replace("\\n", "\n"))

    def __repr__(self) -> str:
        return f"PemSigner(algorithm={self.algorithm!r}, bits={self._key.key_size})"

    async def sign(self, signing_input: bytes) -> bytes:
        # ~1 ms of CPU; not worth a thread hop, and app JWTs are cached by the client.
        return self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SignerConfig:
    """How one GitHub App's JWTs are signed: ``GITHUB_APP_SIGNER`` and its key."""

    kind: SignerKind = "pem"
    private_key_pem: str = field(default="", repr=False)  # kind "pem"
    kms_key: str = ""  # the KMS kinds: key ARN or key version resource name


def build_signer(config: SignerConfig, *, clock: Clock, timeout: float) -> AppSigner:
    """The signer ``config`` names; each KMS call bounded by ``timeout`` seconds.

    The KMS libraries are imported here, only when configured. Raises
    StsError(reason="app_key_invalid") for a bad PEM key or a missing extra.
    """
    if config.kind == "pem":
        return PemSigner.from_pem(config.private_key_pem)
    hint = missing_extra(config.kind)
    if hint is not None:
        raise StsError(f"GITHUB_APP_SIGNER={hint}", reason="app_key_invalid")
    backend: KmsBackend
    if config.kind == "aws-kms":
        from octosts.adapters import kms_aws  # noqa: PLC0415 - optional extra, imported when used

        client = kms_aws.make_client(config.kms_key, timeout=timeout)
        backend = kms_aws.AwsKmsBackend(config.kms_key, client=client)
    else:
        from octosts.adapters import kms_gcp  # noqa: PLC0415 - optional extra, imported when used

        backend = kms_gcp.GcpKmsBackend(config.kms_key, timeout=timeout)
    return KmsSigner(backend, clock=clock, timeout=timeout)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def app_jwt(signer: AppSigner, app_id: int | str, clock: Clock) -> str:
    """A GitHub App JWT: ``iat`` = now - 60 s, ``exp`` = now + 9 min, ``iss`` = app id.

    Raises StsError when the signer fails.
    """
    now = int(clock.now())
    header = {"alg": signer.algorithm, "typ": "JWT"}
    payload = {
        "iat": now - JWT_BACKDATE_SECONDS,
        "exp": now + JWT_LIFETIME_SECONDS,
        "iss": str(app_id),
    }
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = await signer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"


__all__ = ["AppSigner", "PemSigner", "SignerConfig", "app_jwt", "build_signer"]
