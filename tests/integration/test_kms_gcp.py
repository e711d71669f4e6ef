"""The gcp-kms signer against a local Cloud KMS over real gRPC (``tests/cloud_kms_fake.py``).

The fake holds ``app_key()`` as an imported key version, the key the GitHub emulator trusts:
an App JWT it signs is accepted by the emulator only if every byte of the KMS path is right.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1

from octosts.adapters.github import GitHubAppClient, GitHubConfig
from octosts.adapters.github_rest import GitHubRest, RestConfig, http_client
from octosts.adapters.kms import KmsSigner
from octosts.adapters.kms_gcp import GcpKmsBackend, crc32c
from octosts.adapters.signer import AppSigner, app_jwt
from octosts.domain.errors import (
    KMS_ACCESS_DENIED,
    KMS_KEY_UNUSABLE,
    KMS_RESPONSE_INVALID,
    KMS_THROTTLED,
    KMS_UNREACHABLE,
    KmsUnavailable,
)
from octosts.domain.ports import NullObserver
from tests.cloud_kms_fake import Algorithm, FakeCloudKms, FakeVersion, State, insecure_client
from tests.emulator import APP_ID, app_key, make_emulator
from tests.fakes import FakeClock

KEY = "projects/octo-sts-test/locations/global/keyRings/sts/cryptoKeys/github-app"
VERSION = f"{KEY}/cryptoKeyVersions/1"
TIMEOUT = 5.0


@pytest.fixture
async def kms() -> AsyncIterator[FakeCloudKms]:
    fake = FakeCloudKms(versions={VERSION: FakeVersion(app_key())})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def backend(kms: FakeCloudKms, name: str = VERSION, timeout: float = TIMEOUT) -> GcpKmsBackend:
    async def client() -> kms_v1.KeyManagementServiceAsyncClient:
        return insecure_client(kms.endpoint)

    return GcpKmsBackend(name, timeout=timeout, client=client)


@pytest.fixture
async def signers(kms: FakeCloudKms) -> AsyncIterator[list[KmsSigner]]:
    """Signers made by the test; their clients' channels are closed afterwards."""
    made: list[KmsSigner] = []
    yield made
    for signer in made:
        await signer.aclose()


@pytest.fixture
def make_signer(kms: FakeCloudKms, signers: list[KmsSigner], clock: FakeClock):
    def make(name: str = VERSION, timeout: float = TIMEOUT) -> KmsSigner:
        signer = KmsSigner(backend(kms, name, timeout), clock=clock, timeout=timeout)
        signers.append(signer)
        return signer

    return make


async def test_app_jwt_signed_by_cloud_kms_verifies_with_the_app_key(make_signer, kms, clock):
    signer: AppSigner = make_signer()
    token = await app_jwt(signer, APP_ID, clock)
    claims = jwt.decode(
        token,
        app_key().public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == str(APP_ID)
    # The version's algorithm is read once, then every JWT is one AsymmetricSign.
    await app_jwt(signer, APP_ID, clock)
    assert kms.calls == ["GetPublicKey", "AsymmetricSign", "AsymmetricSign"]


async def test_the_github_emulator_accepts_the_kms_signed_app_jwt(
    tmp_path: Path, make_signer, kms, clock
) -> None:
    with make_emulator(tmp_path, clock) as emulator:
        async with http_client() as http:
            github = GitHubAppClient(
                GitHubConfig(app_id=APP_ID),
                rest=GitHubRest(RestConfig(base_url=emulator.url), http=http, clock=clock),
                signer=make_signer(),
                clock=clock,
                observer=NullObserver(),
            )
            assert await github.installation_id("octo-org") == emulator.installation_id("octo-org")
            await github.installation_id("octo-user")
    # Two App-authenticated calls, one App JWT (reused for 5 minutes): one signature.
    assert kms.count("AsymmetricSign") == 1
    assert emulator.count("GET", "/orgs/octo-org/installation") == 1


async def test_a_key_version_with_another_algorithm_is_refused_before_signing(
    make_signer, kms
) -> None:
    """PSS and ECDSA versions sign a SHA-256 digest happily; GitHub would refuse the JWT."""
    for index, (key, algorithm) in enumerate(
        [
            (app_key(), Algorithm.RSA_SIGN_PSS_2048_SHA256),
            (ec.generate_private_key(ec.SECP256R1()), Algorithm.EC_SIGN_P256_SHA256),
        ],
        start=2,
    ):
        name = f"{KEY}/cryptoKeyVersions/{index}"
        kms.versions[name] = FakeVersion(key, algorithm)
        with pytest.raises(KmsUnavailable) as caught:
            await make_signer(name).sign(b"header.payload")
        assert caught.value.reason == KMS_KEY_UNUSABLE
        assert algorithm.name in caught.value.detail
    assert kms.count("AsymmetricSign") == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, KMS_ACCESS_DENIED),
        (grpc.StatusCode.UNAUTHENTICATED, KMS_ACCESS_DENIED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, KMS_THROTTLED),
        (grpc.StatusCode.INTERNAL, KMS_UNREACHABLE),
    ],
)
async def test_refusals_map_to_reasons(make_signer, kms, status, reason) -> None:
    signer = make_signer()
    await signer.sign(b"warm.up")  # the algorithm check is behind us
    kms.fail["AsymmetricSign"] = [status]
    with pytest.raises(KmsUnavailable) as caught:
        await signer.sign(b"header.payload")
    assert caught.value.reason == reason
    assert status.name in caught.value.detail
    assert VERSION in caught.value.detail


async def test_unavailable_is_retried_once_then_reported(make_signer, kms, clock) -> None:
    signer = make_signer()
    await signer.sign(b"warm.up")
    kms.fail["AsymmetricSign"] = [grpc.StatusCode.UNAVAILABLE]
    assert await signer.sign(b"header.payload")  # the second attempt answers
    assert kms.count("AsymmetricSign") == 3
    # An outage outlasting the timeout: retries stop at the bound. How many fit in it depends on
    # the library's jittered backoff, so only "more than one" is promised (a fixed count of
    # failures could be outlasted by lucky jitter).
    kms.down.add("AsymmetricSign")
    with pytest.raises(KmsUnavailable) as caught:
        await make_signer(timeout=0.5).sign(b"header.payload")
    assert caught.value.reason == KMS_UNREACHABLE
    # The library's retry deadline (its last status) or the signer's own timeout, whichever
    # the jitter lets fire first: both say the KMS could not be reached.
    detail = caught.value.detail
    assert "UNAVAILABLE" in detail or ("did not sign" in detail and "within 0.5 s" in detail)
    assert kms.count("AsymmetricSign") >= 5  # 3 above, then at least 2 attempts


async def test_missing_or_disabled_versions_are_unusable(make_signer, kms) -> None:
    with pytest.raises(KmsUnavailable) as caught:
        await make_signer(f"{KEY}/cryptoKeyVersions/9").sign(b"header.payload")
    assert caught.value.reason == KMS_KEY_UNUSABLE
    assert "NOT_FOUND" in caught.value.detail
    kms.versions[f"{KEY}/cryptoKeyVersions/3"] = FakeVersion(app_key(), state=State.DISABLED)
    with pytest.raises(KmsUnavailable) as caught:
        await make_signer(f"{KEY}/cryptoKeyVersions/3").sign(b"header.payload")
    assert caught.value.reason == KMS_KEY_UNUSABLE
    assert "FAILED_PRECONDITION" in caught.value.detail


async def test_a_hanging_kms_is_cut_at_the_timeout(make_signer, kms) -> None:
    kms.hang.add("GetPublicKey")
    with pytest.raises(KmsUnavailable) as caught:
        await make_signer(timeout=0.3).sign(b"header.payload")
    assert caught.value.reason == KMS_UNREACHABLE


async def test_a_signature_corrupted_in_transit_is_not_used(make_signer, kms) -> None:
    kms.corrupt = True
    with pytest.raises(KmsUnavailable) as caught:
        await make_signer().sign(b"header.payload")
    assert caught.value.reason == KMS_RESPONSE_INVALID


async def test_nothing_listens_is_unreachable(signers, clock) -> None:
    closed = FakeCloudKms()
    await closed.start()
    await closed.stop()  # the port is now closed
    signer = KmsSigner(backend(closed, timeout=1.0), clock=clock, timeout=1.0)
    signers.append(signer)
    with pytest.raises(KmsUnavailable) as caught:
        await signer.sign(b"header.payload")
    assert caught.value.reason == KMS_UNREACHABLE


# -- the fake refuses what the real API refuses ----------------------------------------------


async def test_the_fake_checks_requests_like_cloud_kms(kms) -> None:
    client = insecure_client(kms.endpoint)
    digest = bytes(32)
    try:
        answer = await client.asymmetric_sign(
            name=VERSION, digest=kms_v1.Digest(sha256=digest), timeout=5
        )
        assert answer.name == VERSION
        assert not answer.verified_digest_crc32c  # no CRC sent, none verified
        assert answer.signature_crc32c == crc32c(answer.signature)
        refused = [
            ({"name": KEY, "digest": {"sha256": digest}}, api_exceptions.InvalidArgument),
            ({"name": VERSION, "digest": {"sha256": bytes(31)}}, api_exceptions.InvalidArgument),
            ({"name": VERSION, "digest": {"sha384": bytes(48)}}, api_exceptions.InvalidArgument),
            ({"name": VERSION, "data": b"raw"}, api_exceptions.InvalidArgument),
            (
                {"name": VERSION, "digest": {"sha256": digest}, "digest_crc32c": crc32c(b"x")},
                api_exceptions.InvalidArgument,
            ),
            ({"name": f"{KEY}/cryptoKeyVersions/7", "digest": {"sha256": digest}},
             api_exceptions.NotFound),
        ]  # fmt: skip
        for request, error in refused:
            with pytest.raises(error):
                await client.asymmetric_sign(request=request, timeout=5, retry=None)
    finally:
        await client.transport.close()


async def test_no_google_credentials_is_access_denied(monkeypatch, tmp_path, clock) -> None:
    """The production client (Application Default Credentials) with none to be found."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    signer = KmsSigner(GcpKmsBackend(VERSION, timeout=TIMEOUT), clock=clock, timeout=TIMEOUT)
    with pytest.raises(KmsUnavailable) as caught:
        await signer.sign(b"header.payload")
    assert caught.value.reason == KMS_ACCESS_DENIED
    assert "DefaultCredentialsError" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail
