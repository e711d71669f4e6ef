"""The aws-kms signer against real local servers: moto's KMS (server mode) for signatures and
its refusals, a stand-in HTTP server for what moto cannot be made to answer (throttling,
access denied, bad credentials, internal errors), a socket that never answers, a closed port.

The signer is built as the service builds it (``build_signer``), its client configured by the
standard AWS variables (``AWS_ENDPOINT_URL_KMS``, credentials) set for each test.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from octosts.adapters.github import GitHubAppClient, GitHubConfig
from octosts.adapters.github_rest import GitHubRest, RestConfig, http_client
from octosts.adapters.kms import FAILURE_HOLD_SECONDS
from octosts.adapters.signer import AppSigner, SignerConfig, app_jwt, build_signer
from octosts.dev.github import GitHubEmulator
from octosts.dev.httpserver import DevHTTPServer
from octosts.domain.errors import (
    KMS_ACCESS_DENIED,
    KMS_KEY_UNUSABLE,
    KMS_THROTTLED,
    KMS_UNREACHABLE,
    KmsUnavailable,
)
from octosts.domain.ports import NullObserver
from tests.emulator import APP_ID, seed_repos
from tests.fakes import FakeClock
from tests.moto_kms import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoKms, start_moto

TIMEOUT = 5.0
ARN_ELSEWHERE = "arn:aws:kms:eu-west-1:123456789012:key/0b0b0b0b-1111-2222-3333-444444444444"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoKms, tmp_path: Path) -> dict[str, str]:
    """The process environment of a service configured for moto; returned for edits."""
    env = moto.service_env(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def signer_for(key: str, clock: FakeClock, timeout: float = TIMEOUT) -> AppSigner:
    return build_signer(SignerConfig(kind="aws-kms", kms_key=key), clock=clock, timeout=timeout)


async def sign(signer: AppSigner) -> bytes:
    try:
        return await signer.sign(b"header.payload")
    finally:
        await signer.aclose()


async def test_app_jwt_signed_by_aws_kms_verifies_with_the_kms_public_key(moto, aws_env, clock):
    arn = moto.create_key()
    signer = signer_for(arn, clock)
    try:
        token = await app_jwt(signer, APP_ID, clock)
    finally:
        await signer.aclose()
    public = serialization.load_pem_public_key(moto.public_key_pem(arn))
    claims = jwt.decode(
        token, public, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["iss"] == str(APP_ID)
    with pytest.raises(jwt.InvalidSignatureError):  # another KMS key does not verify it
        jwt.decode(
            token,
            serialization.load_pem_public_key(moto.public_key_pem(moto.create_key())),
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_iat": False},
        )


async def test_the_github_emulator_accepts_it_and_one_signature_serves_many_calls(
    moto, aws_env, clock, tmp_path
) -> None:
    arn = moto.create_key()
    public = serialization.load_pem_public_key(moto.public_key_pem(arn))
    signer = signer_for(arn, clock)
    emulator = GitHubEmulator(
        app_public_key=public,  # type: ignore[arg-type]
        app_id=APP_ID,
        repos_dir=seed_repos(tmp_path / "repos"),
        clock=clock,
    )
    with emulator, structlog.testing.capture_logs() as logs:
        async with http_client() as http:
            github = GitHubAppClient(
                GitHubConfig(app_id=APP_ID),
                rest=GitHubRest(RestConfig(base_url=emulator.url), http=http, clock=clock),
                signer=signer,
                clock=clock,
                observer=NullObserver(),
            )
            assert await github.installation_id("octo-org") == emulator.installation_id("octo-org")
            assert await github.installation_id("octo-user")
        await signer.aclose()
    assert emulator.count("GET", "/orgs/octo-org/installation") == 1
    assert not [entry for entry in logs if entry["event"] == "kms_sign_failed"]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (ARN_ELSEWHERE, "NotFoundException"),
        ("SYMMETRIC_DEFAULT/ENCRYPT_DECRYPT", "ValidationException"),
        ("ECC_NIST_P256/SIGN_VERIFY", "ValidationException"),
    ],
)
async def test_keys_that_cannot_sign_rs256_are_unusable(moto, aws_env, clock, key, why) -> None:
    if "/" in key and not key.startswith("arn:"):
        spec, usage = key.split("/")
        key = moto.create_key(spec, usage)
    with pytest.raises(KmsUnavailable) as caught:
        await sign(signer_for(key, clock))
    assert caught.value.reason == KMS_KEY_UNUSABLE
    assert why in caught.value.detail
    assert key in caught.value.detail


async def test_a_closed_port_is_unreachable(aws_env, monkeypatch, clock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{port}")
    with pytest.raises(KmsUnavailable) as caught:
        await sign(signer_for(ARN_ELSEWHERE, clock))
    assert caught.value.reason == KMS_UNREACHABLE


async def test_a_kms_that_never_answers_is_cut_at_the_timeout(aws_env, monkeypatch, clock):
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(KmsUnavailable) as caught:
            await sign(signer_for(ARN_ELSEWHERE, clock, timeout=0.3))
    assert caught.value.reason == KMS_UNREACHABLE
    assert "0.3 s" in caught.value.detail


async def test_no_credentials_is_access_denied(aws_env, monkeypatch, clock) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(KmsUnavailable) as caught:
        await sign(signer_for(ARN_ELSEWHERE, clock))
    assert caught.value.reason == KMS_ACCESS_DENIED
    assert "NoCredentialsError" in caught.value.detail


# -- what moto cannot be made to answer: a stand-in speaking KMS's JSON error protocol -----------


class KmsErrors(DevHTTPServer):
    """Answers every KMS call with one AWS JSON error; records each request's headers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.answer = (status, code, message)
        self.requests: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _ErrorHandler)


class _ErrorHandler(BaseHTTPRequestHandler):
    server: KmsErrors

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.requests.append(dict(self.headers))
        status, code, message = self.server.answer
        body = json.dumps({"__type": code, "message": message}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-errortype", code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def kms_errors(aws_env, monkeypatch) -> Iterator[KmsErrors]:
    server = KmsErrors(500, "", "").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{server.port}")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("status", "code", "message", "reason", "attempts"),
    [
        (400, "ThrottlingException", "Rate exceeded", KMS_THROTTLED, 2),
        (
            400,
            "AccessDeniedException",
            f"User: arn:aws:iam::123456789012:user/ci ({ACCESS_KEY_ID}) may not kms:Sign",
            KMS_ACCESS_DENIED,
            1,
        ),
        (
            400,
            "UnrecognizedClientException",
            f"The security token included in the request is invalid: {SECRET_ACCESS_KEY}",
            KMS_ACCESS_DENIED,
            1,
        ),
        (400, "InvalidSignatureException", f"by {SECRET_ACCESS_KEY}", KMS_ACCESS_DENIED, 1),
        (400, "KMSInvalidStateException", "key is pending deletion", KMS_KEY_UNUSABLE, 1),
        (500, "KMSInternalException", "internal", KMS_UNREACHABLE, 2),
        (503, "", "", KMS_UNREACHABLE, 2),
    ],
)
async def test_kms_refusals_map_to_reasons_without_credentials(
    kms_errors, clock, status, code, message, reason, attempts
) -> None:
    kms_errors.answer = (status, code, message)
    with structlog.testing.capture_logs() as logs, pytest.raises(KmsUnavailable) as caught:
        await sign(signer_for(ARN_ELSEWHERE, clock))
    error = caught.value
    assert error.reason == reason
    assert code in error.detail
    assert len(kms_errors.requests) == attempts  # botocore retries throttling and 5xx once
    # The request was signed with the credentials; nothing of them comes back out.
    assert ACCESS_KEY_ID in kms_errors.requests[0]["Authorization"]
    shown = f"{error} {error.detail} {logs}"
    assert ACCESS_KEY_ID not in shown
    assert SECRET_ACCESS_KEY not in shown
    assert [entry["reason"] for entry in logs if entry["event"] == "kms_sign_failed"] == [reason]


async def test_a_failure_is_held_briefly_then_retried(kms_errors, clock) -> None:
    """Exchanges queued behind one App JWT fail at once instead of each waiting for the KMS."""
    kms_errors.answer = (400, "AccessDeniedException", "not authorized")
    signer = signer_for(ARN_ELSEWHERE, clock)
    try:
        for _ in range(3):
            with pytest.raises(KmsUnavailable) as caught:
                await signer.sign(b"header.payload")
            assert caught.value.reason == KMS_ACCESS_DENIED
        assert len(kms_errors.requests) == 1
        clock.advance(FAILURE_HOLD_SECONDS)
        with pytest.raises(KmsUnavailable):
            await signer.sign(b"header.payload")
        assert len(kms_errors.requests) == 2
    finally:
        await signer.aclose()
