"""A local Google Cloud KMS: ``KeyManagementService.AsymmetricSign`` and ``GetPublicKey`` over
real gRPC (the library's own messages on the wire), with the checks the real API makes.

The real service refuses, and so does this one: a name that is not a key version's resource
name (INVALID_ARGUMENT), an unknown version (NOT_FOUND), a version that is not enabled
(FAILED_PRECONDITION), a digest of the wrong kind or length for the version's algorithm, a
``data`` field where the algorithm signs digests, a ``digest_crc32c`` that does not match the
digest (INVALID_ARGUMENT), and a routing header (``x-goog-request-params``) naming another
resource. Its answers carry what the real one's do: ``signature_crc32c``,
``verified_digest_crc32c``, the version's ``name``; ``GetPublicKey`` gives the PEM, its CRC32C
and the algorithm. What it does not check: credentials (the channel is insecure and
unauthenticated; IAM is the real service's business).

Faults for tests: ``fail`` (answer a status once per entry), ``down`` (answer UNAVAILABLE for
as long as the method is in the set, as an outage does), ``hang`` (never answer),
``corrupt`` (flip a signature bit after its CRC32C was computed, as a bad link would).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports.grpc_asyncio import (
    KeyManagementServiceGrpcAsyncIOTransport,
)

SERVICE = "google.cloud.kms.v1.KeyManagementService"
Algorithm = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
_VERSION = re.compile(
    r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+/cryptoKeyVersions/[^/]+"
)
# algorithm -> (digest field, digest length, how it signs)
_SIGNERS: dict[Any, tuple[str, int, Callable[[Any, bytes], bytes]]] = {
    Algorithm.RSA_SIGN_PKCS1_2048_SHA256: (
        "sha256",
        32,
        lambda key, d: key.sign(d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
    ),
    Algorithm.RSA_SIGN_PSS_2048_SHA256: (
        "sha256",
        32,
        lambda key, d: key.sign(
            d,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            utils.Prehashed(hashes.SHA256()),
        ),
    ),
    Algorithm.EC_SIGN_P256_SHA256: (
        "sha256",
        32,
        lambda key, d: key.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256()))),
    ),
}


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FakeVersion:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: Any = Algorithm.RSA_SIGN_PKCS1_2048_SHA256
    state: Any = State.ENABLED


@dataclass
class FakeCloudKms:
    versions: dict[str, FakeVersion] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # method names, in order
    fail: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)  # method -> statuses
    down: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    corrupt: bool = False
    port: int = 0
    _server: grpc.aio.Server | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeCloudKms:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AsymmetricSign": grpc.unary_unary_rpc_method_handler(
                    self._handler("AsymmetricSign", self._sign),
                    request_deserializer=kms_v1.AsymmetricSignRequest.deserialize,
                    response_serializer=kms_v1.AsymmetricSignResponse.serialize,
                ),
                "GetPublicKey": grpc.unary_unary_rpc_method_handler(
                    self._handler("GetPublicKey", self._public_key),
                    request_deserializer=kms_v1.GetPublicKeyRequest.deserialize,
                    response_serializer=kms_v1.PublicKey.serialize,
                ),
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            await self._server.stop(grace=None)

    def count(self, method: str) -> int:
        return self.calls.count(method)

    def _handler(
        self, method: str, answer: Callable[[Any, grpc.aio.ServicerContext], Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls.append(method)
            if method in self.hang:
                await self._released.wait()
            if method in self.down:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"injected {method} outage")
            queued = self.fail.get(method)
            if queued:
                await context.abort(queued.pop(0), f"injected {method} failure")
            try:
                self._check_routing(request.name, context)
                return answer(request, context)
            except _Refused as refused:
                await context.abort(refused.code, refused.message)

        return handle

    @staticmethod
    def _check_routing(name: str, context: grpc.aio.ServicerContext) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "x-goog-request-params":
                params = urllib.parse.parse_qs(str(value))
                if params.get("name") != [name]:
                    raise _Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, "routing header does not match name"
                    )

    def _version(self, name: str) -> FakeVersion:
        if not _VERSION.fullmatch(name):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Resource name [{name}] does not represent a valid CryptoKeyVersion",
            )
        version = self.versions.get(name)
        if version is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        if version.state != State.ENABLED:
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name} is not enabled, current state is: {version.state.name}.",
            )
        return version

    def _sign(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        version = self._version(request.name)
        kind, length, sign = _SIGNERS[version.algorithm]
        if request.data:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Algorithm {version.algorithm.name} requires a digest, not data",
            )
        which = kms_v1.Digest.pb(request.digest).WhichOneof("digest")
        digest = bytes(getattr(request.digest, kind)) if which == kind else b""
        if which != kind or len(digest) != length:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Digest must be {kind} of {length} bytes for {version.algorithm.name}",
            )
        has_crc = "digest_crc32c" in request
        if has_crc and request.digest_crc32c != crc32c(digest):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The checksum in field digest_crc32c did not match the data in field digest.",
            )
        signature = sign(version.key, digest)
        signature_crc = crc32c(signature)
        if self.corrupt:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        return kms_v1.AsymmetricSignResponse(
            signature=signature,
            signature_crc32c=signature_crc,
            verified_digest_crc32c=has_crc,
            name=request.name,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def _public_key(self, request: Any, _context: grpc.aio.ServicerContext) -> Any:
        version = self._version(request.name)
        pem = (
            version.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return kms_v1.PublicKey(
            pem=pem,
            algorithm=version.algorithm,
            pem_crc32c=crc32c(pem.encode()),
            name=request.name,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )


def insecure_client(endpoint: str) -> kms_v1.KeyManagementServiceAsyncClient:
    """The library's own async client, at ``endpoint`` (``api_endpoint``), over an insecure
    channel: no credentials are looked up."""

    def transport(**kwargs: Any) -> KeyManagementServiceGrpcAsyncIOTransport:
        host = kwargs["host"]
        return KeyManagementServiceGrpcAsyncIOTransport(
            host=host, channel=grpc.aio.insecure_channel(host)
        )

    return kms_v1.KeyManagementServiceAsyncClient(
        client_options={"api_endpoint": endpoint}, transport=transport
    )
