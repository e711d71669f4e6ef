"""A real exchange through the stack with the App JWT signed by AWS KMS (moto's server).

The replica has no private key at all (``GITHUB_APP_SIGNER=aws-kms``, no
``GITHUB_APP_PRIVATE_KEY*``); the GitHub emulator is given the KMS key's public half
(``GetPublicKey``) as the App's key, as GitHub holds the public half of an App key imported
into KMS. A token minted through Envoy therefore proves the emulator accepted a KMS signature.
With the KMS gone, a fresh replica (no App JWT cached yet) answers 503 ``kms_unreachable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    assert_error_json,
    assert_token_json,
    bearer,
    http,
    repo_token,
)
from tests.moto_kms import SECRET_ACCESS_KEY, MotoKms, start_moto

pytestmark = pytest.mark.e2e


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoKms]:
    server = start_moto(tmp_path / "moto")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kms_stack(tmp_path: Path, moto: MotoKms) -> Iterator[DevStack]:
    arn = moto.create_key("RSA_2048", "SIGN_VERIFY")
    public_pem = moto.public_key_pem(arn)

    def trust_the_kms_key(stack: DevStack) -> None:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stack.app_key.write_bytes(public_pem)  # the emulator's --create-key leaves it as is

    running = start_stack(
        tmp_path / "stack",
        replicas=1,
        prepare=trust_the_kms_key,
        extra_env={
            **moto.service_env(tmp_path),
            "GITHUB_APP_SIGNER": "aws-kms",
            "GITHUB_APP_KMS_KEY": arn,
            "GITHUB_APP_PRIVATE_KEY_FILE": "",  # the stack's default: no key in the service
        },
    )
    try:
        yield running
    finally:
        running.stop()


async def test_exchange_with_the_app_jwt_signed_in_kms(kms_stack: DevStack, moto: MotoKms):
    assert b"PRIVATE" not in kms_stack.app_key.read_bytes()
    async with http(kms_stack) as client:
        for _ in range(2):
            resp = await client.post(
                EXCHANGE, json=REPO_QUERY, headers=bearer(repo_token(kms_stack))
            )
            assert_token_json(resp)

    # The KMS goes away; a fresh replica has no App JWT yet and cannot make one.
    moto.stop()
    kms_stack.stop_server(0)
    kms_stack.start_server(0)
    async with http(kms_stack) as client:
        resp = await client.post(EXCHANGE, json=REPO_QUERY, headers=bearer(repo_token(kms_stack)))
    body = assert_error_json(resp, 503, 14)
    assert "reason: kms_unreachable" in body["message"]
    log = (kms_stack.workdir / "logs" / "sts-0.log").read_text()
    assert "kms_sign_failed" in log
    assert SECRET_ACCESS_KEY not in log
