"""Google Cloud KMS as the App JWT's signer (``GITHUB_APP_SIGNER=gcp-kms``; ``octo-sts[gcp]``).

``AsymmetricSign`` with the SHA-256 digest of the JWS signing input, on a key
version whose algorithm is ``RSA_SIGN_PKCS1_{2048,3072,4096}_SHA256``. Google's
integrity fields are used as Google documents them: the request carries the
digest's CRC32C, and an answer is used only if KMS says it verified that CRC, names
the same key version, and its signature matches its own CRC32C.

Cloud KMS signs whatever digest it gets with whatever algorithm the version has:
an ``EC_SIGN_P256_SHA256`` or ``RSA_SIGN_PSS_*`` version would answer with a
signature GitHub refuses. So the first signature is preceded, once per process, by
``GetPublicKey`` to read the version's algorithm (permission
``cloudkms.cryptoKeyVersions.viewPublicKey``; the public key itself is not used).

The client is the library's own grpc.aio client, made on first use (in the serving
event loop) with Application Default Credentials, read in a thread as they may
involve the metadata server. Each call has the outbound timeout, and only
UNAVAILABLE is retried (backoff from 0.1 s, within that timeout; the library's own
default retries for a minute).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import google.auth
import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports.base import (
    KeyManagementServiceTransport,
)

from octosts.adapters.kms import clean_message
from octosts.domain.errors import (
    KMS_ACCESS_DENIED,
    KMS_KEY_UNUSABLE,
    KMS_RESPONSE_INVALID,
    KMS_THROTTLED,
    KMS_UNREACHABLE,
    KmsUnavailable,
)

LABEL = "Cloud KMS"
_Algorithm = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm
RS256_ALGORITHMS = frozenset(
    {
        _Algorithm.RSA_SIGN_PKCS1_2048_SHA256,
        _Algorithm.RSA_SIGN_PKCS1_3072_SHA256,
        _Algorithm.RSA_SIGN_PKCS1_4096_SHA256,
    }
)
ClientFactory = Callable[[], Awaitable[kms_v1.KeyManagementServiceAsyncClient]]

# gRPC status name -> reason. Anything else: the class's own reason.
_REASONS = {
    "UNAVAILABLE": KMS_UNREACHABLE,
    "DEADLINE_EXCEEDED": KMS_UNREACHABLE,
    "INTERNAL": KMS_UNREACHABLE,
    "UNKNOWN": KMS_UNREACHABLE,
    "ABORTED": KMS_UNREACHABLE,
    "RESOURCE_EXHAUSTED": KMS_THROTTLED,
    "PERMISSION_DENIED": KMS_ACCESS_DENIED,
    "UNAUTHENTICATED": KMS_ACCESS_DENIED,
    "NOT_FOUND": KMS_KEY_UNUSABLE,
    "FAILED_PRECONDITION": KMS_KEY_UNUSABLE,  # version disabled, destroyed, not yet enabled
    "INVALID_ARGUMENT": KMS_KEY_UNUSABLE,  # the fixed request only fails against this key
    "OUT_OF_RANGE": KMS_KEY_UNUSABLE,
}


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


async def default_client() -> kms_v1.KeyManagementServiceAsyncClient:
    """The production client: Application Default Credentials, Google's endpoint."""
    scopes = list(KeyManagementServiceTransport.AUTH_SCOPES)  # the library's own
    credentials, _project = await asyncio.to_thread(google.auth.default, scopes=scopes)
    return kms_v1.KeyManagementServiceAsyncClient(credentials=credentials)


class GcpKmsBackend:
    """``KmsBackend`` over Cloud KMS ``AsymmetricSign`` on one key version."""

    label = LABEL

    def __init__(
        self, version_name: str, *, timeout: float, client: ClientFactory = default_client
    ) -> None:
        self.key = version_name
        self._timeout = timeout
        self._make_client = client
        self._client: kms_v1.KeyManagementServiceAsyncClient | None = None
        self._algorithm_checked = False

    async def sign(self, signing_input: bytes) -> bytes:
        try:
            client = await self._connected()
            if not self._algorithm_checked:
                await self._check_algorithm(client)
                self._algorithm_checked = True
            digest = hashlib.sha256(signing_input).digest()
            answer = await client.asymmetric_sign(
                request=kms_v1.AsymmetricSignRequest(
                    name=self.key,
                    digest=kms_v1.Digest(sha256=digest),
                    digest_crc32c=crc32c(digest),
                ),
                timeout=self._timeout,
                retry=_retry(self._timeout),
            )
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
            # `from None`: the library's exception may carry request metadata.
            raise gcp_error(exc, self.key) from None
        self._check_answer(answer)
        return bytes(answer.signature)

    async def _connected(self) -> kms_v1.KeyManagementServiceAsyncClient:
        if self._client is None:
            self._client = await self._make_client()
        return self._client

    async def _check_algorithm(self, client: kms_v1.KeyManagementServiceAsyncClient) -> None:
        public = await client.get_public_key(
            name=self.key, timeout=self._timeout, retry=_retry(self._timeout)
        )
        if public.name != self.key or public.pem_crc32c != crc32c(public.pem.encode()):
            raise KmsUnavailable(
                f"{LABEL} GetPublicKey for {self.key} answered for another version or failed"
                " its CRC32C check",
                reason=KMS_RESPONSE_INVALID,
            )
        if public.algorithm not in RS256_ALGORITHMS:
            raise KmsUnavailable(
                f"{LABEL} key version {self.key} has algorithm {public.algorithm.name}; GitHub"
                " App JWTs need RSA_SIGN_PKCS1_2048_SHA256 (or the 3072/4096-bit SHA256 ones)",
                reason=KMS_KEY_UNUSABLE,
            )

    def _check_answer(self, answer: kms_v1.AsymmetricSignResponse) -> None:
        problem = None
        if not answer.verified_digest_crc32c:
            problem = "did not verify the digest's CRC32C (corrupted in transit?)"
        elif answer.name != self.key:
            problem = f"was made by {answer.name!r}"
        elif answer.signature_crc32c != crc32c(answer.signature):
            problem = "does not match its CRC32C (corrupted in transit?)"
        if problem is not None:
            raise KmsUnavailable(
                f"{LABEL} signature for {self.key} {problem}", reason=KMS_RESPONSE_INVALID
            )

    async def aclose(self) -> None:
        if self._client is not None:
            # Closes the client's channel; the library leaves this method unannotated.
            await self._client.transport.close()  # type: ignore[no-untyped-call]


def _retry(timeout: float) -> api_retry.AsyncRetry:
    """Retry UNAVAILABLE within ``timeout`` (the library's default retries for 60 s, far past
    any caller's deadline)."""
    return api_retry.AsyncRetry(
        initial=0.1,
        maximum=0.5,
        multiplier=2.0,
        predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable),
        timeout=timeout,
    )


def gcp_error(
    exc: api_exceptions.GoogleAPIError | auth_exceptions.GoogleAuthError, key: str
) -> KmsUnavailable:
    """The one mapper from google-api-core / google-auth exceptions to ``KmsUnavailable``."""
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause
        if isinstance(cause, api_exceptions.GoogleAPIError | auth_exceptions.GoogleAuthError):
            return gcp_error(cause, key)
        return KmsUnavailable(f"{LABEL} call for {key} kept failing", reason=KMS_UNREACHABLE)
    if isinstance(exc, auth_exceptions.TransportError):
        return KmsUnavailable(
            f"{LABEL}: Google credentials could not be refreshed (token endpoint unreachable)",
            reason=KMS_UNREACHABLE,
        )
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        # Token endpoints' answers are not repeated: only what kind of failure it was.
        return KmsUnavailable(
            f"{LABEL}: no usable Google credentials ({type(exc).__name__}; workload identity,"
            " GOOGLE_APPLICATION_CREDENTIALS or the metadata server)",
            reason=KMS_ACCESS_DENIED,
        )
    status = getattr(exc, "grpc_status_code", None)
    name = status.name if status is not None else type(exc).__name__
    message = clean_message(getattr(exc, "message", "") or "")
    detail = f"{LABEL} call for {key} failed: {name}" + (f": {message}" if message else "")
    reason = _REASONS.get(name)
    if reason is None and isinstance(exc, api_exceptions.TooManyRequests):
        reason = KMS_THROTTLED
    if reason is None and isinstance(exc, api_exceptions.ServerError):
        reason = KMS_UNREACHABLE
    return KmsUnavailable(detail, reason=reason)


__all__ = ["RS256_ALGORITHMS", "GcpKmsBackend", "crc32c", "default_client", "gcp_error"]
