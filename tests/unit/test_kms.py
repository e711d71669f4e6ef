"""KMS signing without a KMS: key names, settings, the signer's bounds, the error table.

The KMS APIs themselves are exercised in tests/integration/test_kms_aws.py (moto's server) and
test_kms_gcp.py (a local Cloud KMS over gRPC), and end to end in tests/e2e/test_kms_exchange.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from octosts.adapters.kms import (
    FAILURE_HOLD_SECONDS,
    KmsBackend,
    KmsSigner,
    aws_region,
    clean_message,
    kms_key_problem,
    missing_extra,
)
from octosts.adapters.signer import AppSigner, PemSigner, SignerConfig, build_signer
from octosts.domain import errors
from octosts.domain.errors import KMS_ACCESS_DENIED, KMS_UNREACHABLE, KmsUnavailable, StsError
from octosts.settings import SettingsError, load
from octosts.transport.errors import denial, failure
from tests.emulator import app_key, pem
from tests.fakes import FakeClock

ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VERSION = "projects/octo-sts/locations/europe-west1/keyRings/sts/cryptoKeys/app/cryptoKeyVersions/3"
BASE = {"STS_DOMAIN": "sts.example.com", "GITHUB_APP_ID": "42"}
PEM = pem(app_key()).decode()


class FakeBackend:
    label = "Fake KMS"
    key = "fake-key"

    def __init__(self) -> None:
        self.calls = 0
        self.fail: KmsUnavailable | None = None
        self.hang = False
        self.closed = False

    async def sign(self, signing_input: bytes) -> bytes:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        return b"sig:" + signing_input

    async def aclose(self) -> None:
        self.closed = True


_backend: KmsBackend = FakeBackend()
_signer: AppSigner = KmsSigner(FakeBackend(), clock=FakeClock(), timeout=1.0)


# -- key names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        ARN,
        "arn:aws:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        "arn:aws:kms:us-gov-west-1:123456789012:alias/octo-sts/github-app",
        "arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
)
def test_aws_key_arns(key: str) -> None:
    assert kms_key_problem("aws-kms", key) is None
    assert aws_region(key) in {"eu-west-1", "us-east-1", "us-gov-west-1", "cn-north-1"}


@pytest.mark.parametrize(
    "key",
    [
        "1234abcd-12ab-34cd-56ef-1234567890ab",  # a bare key id: which region?
        "alias/github-app",
        "arn:aws:kms:eu-west-1:123456789012:key/not-a-uuid",
        "arn:aws:s3:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:eu-west-1:1234:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        f"{ARN}\n",
        VERSION,
    ],
)
def test_aws_refuses_what_is_not_a_key_arn(key: str) -> None:
    assert "arn:aws:kms:REGION" in (kms_key_problem("aws-kms", key) or "")


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (VERSION, True),
        (
            "projects/example.com:octo/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
            True,
        ),
        (VERSION.rsplit("/", 2)[0], False),  # the key, not a version
        (VERSION.replace("/3", "/0"), False),
        (VERSION.replace("keyRings", "keyrings"), False),
        (f"//cloudkms.googleapis.com/{VERSION}", False),
        (ARN, False),
    ],
)
def test_gcp_wants_a_key_version_name(key: str, ok: bool) -> None:
    assert (kms_key_problem("gcp-kms", key) is None) is ok


def test_error_messages_are_one_bounded_line_without_access_key_ids() -> None:
    text = clean_message("User AKIAABCDEFGHIJKLMNOP\n  is not\tauthorized " + "x" * 500)
    assert "AKIA" not in text
    assert "<access-key-id>" in text
    assert "\n" not in text
    assert len(text) <= 240


def test_the_service_imports_no_kms_library_unless_configured() -> None:
    """boto3 and google-cloud-kms are optional extras: the base install never imports them."""
    code = (
        "import sys, octosts.app, octosts.cli, octosts.settings\n"
        "octosts.settings.load({'STS_DOMAIN': 'x', 'GITHUB_APP_ID': '1',"
        f" 'GITHUB_APP_SIGNER': 'aws-kms', 'GITHUB_APP_KMS_KEY': {ARN!r}}})\n"
        "print([m for m in ('boto3', 'botocore', 'google.cloud.kms_v1', 'google_crc32c')"
        " if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_both_extras_are_installed_for_the_tests() -> None:
    assert missing_extra("aws-kms") is None
    assert missing_extra("gcp-kms") is None
    assert missing_extra("pem") is None


# -- settings ---------------------------------------------------------------------------------


def test_pem_is_the_default_signer_and_needs_the_key() -> None:
    settings = load({**BASE, "GITHUB_APP_PRIVATE_KEY": PEM})
    assert settings.github_app_signer == "pem"
    with pytest.raises(SettingsError, match="GITHUB_APP_PRIVATE_KEY_FILE: required"):
        load(BASE)


@pytest.mark.parametrize(("kind", "key"), [("aws-kms", ARN), ("gcp-kms", VERSION)])
def test_a_kms_signer_needs_its_key_and_no_private_key(kind: str, key: str) -> None:
    settings = load({**BASE, "GITHUB_APP_SIGNER": kind, "GITHUB_APP_KMS_KEY": key})
    assert (settings.github_app_signer, settings.github_app_kms_key) == (kind, key)
    assert settings.github_app_private_key == ""
    with pytest.raises(SettingsError) as info:
        load({**BASE, "GITHUB_APP_SIGNER": kind, "GITHUB_APP_PRIVATE_KEY": PEM})
    text = str(info.value)
    assert f"GITHUB_APP_KMS_KEY: required with GITHUB_APP_SIGNER={kind}" in text
    assert "must not be set with GITHUB_APP_SIGNER" in text  # the key belongs in the KMS
    assert "BEGIN" not in text


def test_kms_key_problems_are_reported_at_load() -> None:
    with pytest.raises(SettingsError) as info:
        load({**BASE, "GITHUB_APP_SIGNER": "gcp-kms", "GITHUB_APP_KMS_KEY": ARN})
    assert "GITHUB_APP_KMS_KEY: for gcp-kms, the key version's resource name" in str(info.value)
    with pytest.raises(SettingsError, match="only used with GITHUB_APP_SIGNER"):
        load({**BASE, "GITHUB_APP_PRIVATE_KEY": PEM, "GITHUB_APP_KMS_KEY": ARN})
    with pytest.raises(SettingsError, match=r"GITHUB_APP_SIGNER: invalid value.*pem, aws-kms or"):
        load({**BASE, "GITHUB_APP_SIGNER": "vault"})


def test_build_signer_makes_what_settings_name() -> None:
    clock = FakeClock()
    assert isinstance(
        build_signer(SignerConfig(private_key_pem=PEM), clock=clock, timeout=1), PemSigner
    )
    for kind, key in (("aws-kms", ARN), ("gcp-kms", VERSION)):
        # No call is made to build one (the GCP client is made on first use).
        signer = build_signer(SignerConfig(kind=kind, kms_key=key), clock=clock, timeout=1)  # type: ignore[arg-type]
        assert isinstance(signer, KmsSigner)
        assert key in repr(signer)
    assert "BEGIN" not in repr(SignerConfig(private_key_pem=PEM))


# -- the signer's bounds ----------------------------------------------------------------------


async def test_a_backend_that_never_answers_is_cut_at_the_timeout() -> None:
    backend = FakeBackend()
    backend.hang = True
    with pytest.raises(KmsUnavailable) as caught:
        await KmsSigner(backend, clock=FakeClock(), timeout=0.05).sign(b"x.y")
    assert caught.value.reason == KMS_UNREACHABLE
    assert "within 0.05 s" in caught.value.detail


async def test_a_failure_is_held_then_the_kms_is_asked_again() -> None:
    backend, clock = FakeBackend(), FakeClock()
    signer = KmsSigner(backend, clock=clock, timeout=1.0)
    backend.fail = KmsUnavailable("Fake KMS: AccessDeniedException", reason=KMS_ACCESS_DENIED)
    for _ in range(5):
        with pytest.raises(KmsUnavailable) as caught:
            await signer.sign(b"x.y")
        assert caught.value.reason == KMS_ACCESS_DENIED
    assert backend.calls == 1
    backend.fail = None
    clock.advance(FAILURE_HOLD_SECONDS)
    assert await signer.sign(b"x.y") == b"sig:x.y"
    assert await signer.sign(b"x.z") == b"sig:x.z"
    assert backend.calls == 3
    await signer.aclose()
    assert backend.closed


async def test_cancelling_a_signature_is_not_held_against_the_next() -> None:
    backend, clock = FakeBackend(), FakeClock()
    signer = KmsSigner(backend, clock=clock, timeout=5.0)
    backend.hang = True
    task = asyncio.ensure_future(signer.sign(b"x.y"))
    await asyncio.sleep(0)  # let it reach the backend
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backend.hang = False
    assert await signer.sign(b"x.y") == b"sig:x.y"


# -- the one error table ----------------------------------------------------------------------


def test_kms_failures_are_unavailable_with_their_reason() -> None:
    exc = KmsUnavailable(
        f"AWS KMS Sign with {ARN} failed: ThrottlingException", reason="kms_throttled"
    )
    assert isinstance(exc, errors.UpstreamUnavailable)
    answer = failure(exc, "req-1")
    assert answer.code == grpc.StatusCode.UNAVAILABLE
    assert "reason: kms_throttled" in answer.message
    assert ARN not in answer.message  # deployment detail is for the log, or verbose errors
    assert ARN in failure(exc, "req-1", verbose=True).message
    assert denial(exc) is None  # at the edge a fault: Envoy tries another replica
    assert issubclass(KmsUnavailable, StsError)


def test_each_of_several_apps_names_its_own_signer(tmp_path: Path) -> None:
    """GITHUB_APPS entries take the same key sources as the one App ([fleet])."""
    key = tmp_path / "app.pem"
    key.write_text(PEM)
    apps = (
        f"[{{id: 1, private_key_file: {key}}}, {{id: 2, signer: aws-kms, kms_key: {ARN!r}}},"
        f" {{id: 3, signer: gcp-kms, kms_key: {VERSION!r}}}]"
    )
    entries = load({"STS_DOMAIN": "sts.example.com", "GITHUB_APPS": apps}).apps()
    assert [(e.app_id, e.signer.kind, e.signer.kms_key) for e in entries] == [
        (1, "pem", ""),
        (2, "aws-kms", ARN),
        (3, "gcp-kms", VERSION),
    ]
    assert entries[0].signer.private_key_pem == PEM
    bad = (
        f"[{{id: 1, signer: aws-kms}}, {{id: 2, signer: gcp-kms, kms_key: {ARN!r}}},"
        f" {{id: 3, signer: vault}}, {{id: 4, private_key_file: {key}, kms_key: {ARN!r}}},"
        f" {{id: 5, signer: aws-kms, kms_key: {ARN!r}, private_key_file: {key}}}]"
    )
    with pytest.raises(SettingsError) as info:
        load({"STS_DOMAIN": "sts.example.com", "GITHUB_APPS": bad})
    text = str(info.value)
    for problem in (
        "[0] (app 1): kms_key: required with signer=aws-kms",
        "[1] (app 2): kms_key: for gcp-kms, the key version's resource name",
        "[2] (app 3): signer must be pem, aws-kms or gcp-kms",
        "[3] (app 4): kms_key: only used with signer=aws-kms or gcp-kms",
        "[4] (app 5): private_key or private_key_file: must not be set with signer=aws-kms",
    ):
        assert problem in text
    assert "BEGIN" not in text
    # The one App's signer settings are not used with GITHUB_APPS.
    with pytest.raises(SettingsError, match="GITHUB_APP_KMS_KEY: not used with GITHUB_APPS"):
        load(
            {
                "STS_DOMAIN": "sts.example.com",
                "GITHUB_APPS": f"[{{id: 1, private_key_file: {key}}}]",
                "GITHUB_APP_SIGNER": "aws-kms",
                "GITHUB_APP_KMS_KEY": ARN,
            }
        )
