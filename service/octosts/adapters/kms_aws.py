"""AWS KMS as the App JWT's signer (``GITHUB_APP_SIGNER=aws-kms``; needs ``octo-sts[aws]``).

``Sign`` with ``RSASSA_PKCS1_V1_5_SHA_256`` and ``MessageType=RAW``: KMS hashes the
JWS signing input itself. RAW rather than a local SHA-256 with ``MessageType=DIGEST``
because the signing input is ~150 bytes of public claims (app id, iat, exp), far
under RAW's 4096-byte limit, so KMS sees exactly what it signs and the key policy
can insist on it (``kms:MessageType``); and RAW is what moto's KMS implements
(it ignores ``MessageType`` and always hashes), so the signer runs in tests against
a real KMS API server.

boto3 is synchronous: each call runs in a worker thread, bounded by botocore's own
connect and read timeouts (the outbound timeout) and two attempts in botocore's
``standard`` retry mode (throttling and transient errors, with jittered backoff);
``KmsSigner`` bounds the whole. Credentials, region endpoint overrides
(``AWS_ENDPOINT_URL_KMS``) and proxies come from the standard AWS chain; the region
is the key ARN's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from octosts.adapters.kms import aws_region, clean_message
from octosts.domain.errors import (
    KMS_ACCESS_DENIED,
    KMS_KEY_UNUSABLE,
    KMS_RESPONSE_INVALID,
    KMS_THROTTLED,
    KMS_UNREACHABLE,
    KmsUnavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_kms.literals import SigningAlgorithmSpecType

ALGORITHM: SigningAlgorithmSpecType = "RSASSA_PKCS1_V1_5_SHA_256"
ATTEMPTS = 2
LABEL = "AWS KMS"

# Credential problems: AWS's message may describe the request's signature; only the code is kept.
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
    }
)
# AWS error code -> reason; otherwise 429 is throttling, 5xx unreachable, the rest the class's.
_REASONS = {
    **dict.fromkeys(("ThrottlingException", "Throttling", "RequestLimitExceeded"), KMS_THROTTLED),
    **dict.fromkeys(_BAD_CREDENTIALS, KMS_ACCESS_DENIED),
    **dict.fromkeys(("AccessDeniedException", "AccessDenied"), KMS_ACCESS_DENIED),
    **dict.fromkeys(
        (
            "NotFoundException",
            "DisabledException",
            "KMSInvalidStateException",
            "InvalidKeyUsageException",
            "IncorrectKeyException",
            "InvalidArnException",
            "UnsupportedOperationException",
            "ValidationException",  # the fixed request only fails validation against the key
        ),
        KMS_KEY_UNUSABLE,
    ),
    **dict.fromkeys(
        (
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
            "ServiceUnavailable",
            "ServiceUnavailableException",
            "InternalFailure",
        ),
        KMS_UNREACHABLE,
    ),
}
# Refused, unresolvable, TLS, connect or read timeouts, dropped connections.
_NO_ANSWER = (BotoConnectionError, HTTPClientError)
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def make_client(key_arn: str, *, timeout: float, endpoint_url: str | None = None) -> KMSClient:
    """A KMS client in the key's region with bounded connects, reads and retries."""
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
        user_agent_extra="octo-sts",
    )
    session = boto3.session.Session()
    return session.client(
        "kms", region_name=aws_region(key_arn), endpoint_url=endpoint_url, config=config
    )


class AwsKmsBackend:
    """``KmsBackend`` over AWS KMS ``Sign``."""

    label = LABEL

    def __init__(self, key_arn: str, *, client: KMSClient) -> None:
        self.key = key_arn
        self._client = client

    async def sign(self, signing_input: bytes) -> bytes:
        try:
            answer = await asyncio.to_thread(
                self._client.sign,
                KeyId=self.key,
                Message=signing_input,
                MessageType="RAW",
                SigningAlgorithm=ALGORITHM,
            )
        except (BotoCoreError, ClientError) as exc:
            # `from None`: botocore's exception may carry the request; the detail has what matters.
            raise aws_error(exc, self.key) from None
        if answer.get("SigningAlgorithm") != ALGORITHM or not answer.get("Signature"):
            raise KmsUnavailable(
                f"{LABEL} answered for {self.key} without an {ALGORITHM} signature",
                reason=KMS_RESPONSE_INVALID,
            )
        return answer["Signature"]

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)


def aws_error(exc: BotoCoreError | ClientError, key: str) -> KmsUnavailable:
    """The one mapper from botocore's exceptions to ``KmsUnavailable``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "") or "unknown"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        shown = "" if code in _BAD_CREDENTIALS else clean_message(error.get("Message", ""))
        detail = f"{LABEL} Sign with {key} failed: {code}" + (f": {shown}" if shown else "")
        reason = _REASONS.get(code)
        if reason is None and status == 429:
            reason = KMS_THROTTLED
        elif reason is None and status >= 500:
            reason = KMS_UNREACHABLE
        return KmsUnavailable(detail, reason=reason)
    name = type(exc).__name__
    if isinstance(exc, _NO_CREDENTIALS):
        return KmsUnavailable(
            f"{LABEL}: no usable AWS credentials ({name}; instance or pod role, AWS_* variables,"
            " or web identity)",
            reason=KMS_ACCESS_DENIED,
        )
    if isinstance(exc, _NO_ANSWER):
        return KmsUnavailable(
            f"{LABEL} did not answer a Sign with {key} ({name})", reason=KMS_UNREACHABLE
        )
    return KmsUnavailable(f"{LABEL} Sign with {key} failed ({name})")


__all__ = ["ALGORITHM", "AwsKmsBackend", "aws_error", "make_client"]
