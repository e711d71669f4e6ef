"""Signing the App JWT with a key that never leaves a KMS (``GITHUB_APP_SIGNER``).

``KmsSigner`` is the ``AppSigner`` for every KMS: it bounds each signature by the
outbound timeout, turns a timeout into ``KmsUnavailable(kms_unreachable)``, logs
failures (key name and reason, never a credential) and remembers a failure for
``FAILURE_HOLD_SECONDS`` so the exchanges queued behind one App JWT (the GitHub
client signs under a lock) fail at once instead of each waiting out its own
timeout. What talks to the KMS is a ``KmsBackend``: ``kms_aws`` (boto3) or
``kms_gcp`` (google-cloud-kms), imported only when configured, as their
packages are optional extras (``octo-sts[aws]``, ``octo-sts[gcp]``).

This module also holds the rules for the key names, which ``settings`` checks at
start-up. It imports no KMS library.

Cost: the GitHub client reuses an App JWT for 5 minutes, so each worker process
asks the KMS for about 12 signatures an hour (one more at start), whatever the
exchange rate (docs/kms.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from octosts.domain.errors import KMS_UNREACHABLE, KmsUnavailable

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

_log = structlog.get_logger("octosts.kms")

SignerKind = Literal["pem", "aws-kms", "gcp-kms"]
SIGNER_KINDS: tuple[SignerKind, ...] = ("pem", "aws-kms", "gcp-kms")
# The module each KMS signer needs, and the extra that installs it.
_EXTRAS: dict[SignerKind, tuple[str, str]] = {
    "aws-kms": ("boto3", "aws"),
    "gcp-kms": ("google.cloud.kms_v1", "gcp"),
}

# Queued exchanges fail at once for this long after a failed signature.
FAILURE_HOLD_SECONDS = 1.0

# arn:PARTITION:kms:REGION:ACCOUNT:key/ID or alias/NAME
_AWS_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:kms:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:"
    r"(?:key/(?:mrk-[0-9a-f]{32}|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})"
    r"|alias/[A-Za-z0-9/_-]{1,250})"
)
_GCP_VERSION = re.compile(
    r"projects/[a-z0-9.:-]{6,63}/locations/[a-z0-9-]{1,63}/keyRings/[A-Za-z0-9_-]{1,63}"
    r"/cryptoKeys/[A-Za-z0-9_-]{1,63}/cryptoKeyVersions/[1-9][0-9]{0,18}"
)
# An AWS access key id: not a secret on its own, but never worth repeating.
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_MAX_MESSAGE = 240


def kms_key_problem(kind: SignerKind, key: str) -> str | None:
    """What is wrong with ``key`` as the KMS key of a ``kind`` signer, or None."""
    if kind == "aws-kms" and not _AWS_ARN.fullmatch(key):
        return (
            "for aws-kms, the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID or"
            " arn:aws:kms:REGION:ACCOUNT:alias/NAME)"
        )
    if kind == "gcp-kms" and not _GCP_VERSION.fullmatch(key):
        return (
            "for gcp-kms, the key version's resource name (projects/P/locations/L/keyRings/R"
            "/cryptoKeys/K/cryptoKeyVersions/N): Cloud KMS signs with one version"
        )
    return None


def aws_region(arn: str) -> str:
    """The region of a KMS key ARN (checked by ``kms_key_problem``)."""
    match = _AWS_ARN.fullmatch(arn)
    if match is None:
        raise ValueError("not an AWS KMS key ARN")
    return match["region"]


def missing_extra(kind: SignerKind) -> str | None:
    """The install hint when the library a ``kind`` signer needs is absent, else None."""
    if kind not in _EXTRAS:
        return None
    module, extra = _EXTRAS[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google.cloud) is absent
        found = False
    return None if found else f"{kind} needs the {extra!r} extra: pip install 'octo-sts[{extra}]'"


def clean_message(message: str) -> str:
    """A KMS's error message as it may appear in an error detail: one line, bounded,
    without access key ids."""
    text = _AWS_ACCESS_KEY_ID.sub("<access-key-id>", " ".join(message.split()))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class KmsBackend(Protocol):
    """One KMS API signing with RSASSA-PKCS1-v1_5 SHA-256 under one key."""

    label: str  # "AWS KMS", for messages
    key: str  # the key's ARN or resource name (not a secret)

    async def sign(self, signing_input: bytes) -> bytes:
        """The signature of ``signing_input``; each KMS call has the backend's timeout.

        Raises KmsUnavailable with one of the ``KMS_*`` reasons.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class KmsSigner:
    """``AppSigner`` (RS256) over a ``KmsBackend``: bounded, logged, failures held briefly."""

    algorithm = "RS256"
    __slots__ = ("_backend", "_clock", "_failure_hold", "_held", "_timeout")

    def __init__(
        self,
        backend: KmsBackend,
        *,
        clock: Clock,
        timeout: float,
        failure_hold: float = FAILURE_HOLD_SECONDS,
    ) -> None:
        if timeout <= 0:
            raise ValueError("KmsSigner: timeout must be positive")
        self._backend = backend
        self._clock = clock
        self._timeout = timeout
        self._failure_hold = failure_hold
        self._held: tuple[KmsUnavailable, float] | None = None

    def __repr__(self) -> str:
        return f"KmsSigner({self._backend.label}, key={self._backend.key!r})"

    async def sign(self, signing_input: bytes) -> bytes:
        """Raises KmsUnavailable (reasons ``KMS_*`` in ``domain.errors``)."""
        if self._held is not None:
            error, until = self._held
            if self._clock.now() < until:
                raise KmsUnavailable(f"{error.detail} (failed moments ago)", reason=error.reason)
        # The caller's deadline is deliberately not applied: the signed JWT serves every
        # exchange for minutes, and a cut-short signature would be held against them all.
        try:
            async with asyncio.timeout(self._timeout):
                signature = await self._backend.sign(signing_input)
        except TimeoutError:
            error = KmsUnavailable(
                f"{self._backend.label} did not sign with {self._backend.key} within"
                f" {self._timeout:g} s",
                reason=KMS_UNREACHABLE,
            )
        except KmsUnavailable as exc:
            error = exc
        else:
            self._held = None
            return signature
        self._held = (error, self._clock.now() + self._failure_hold)
        _log.warning(
            "kms_sign_failed",
            kms=self._backend.label,
            key=self._backend.key,
            reason=error.reason,
            detail=error.detail,
        )
        raise error

    async def aclose(self) -> None:
        await self._backend.aclose()


__all__ = [
    "FAILURE_HOLD_SECONDS",
    "SIGNER_KINDS",
    "KmsBackend",
    "KmsSigner",
    "SignerKind",
    "aws_region",
    "clean_message",
    "kms_key_problem",
    "missing_extra",
]
