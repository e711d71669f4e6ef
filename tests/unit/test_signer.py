from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from octosts.adapters.signer import AppSigner, PemSigner, app_jwt
from octosts.domain.errors import StsError
from tests.emulator import app_key, pem
from tests.fakes import FakeClock

_: AppSigner = PemSigner(app_key())


def _segments(token: str) -> list[dict[str, object]]:
    parts = token.split(".")
    assert len(parts) == 3
    return [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2]]


async def test_app_jwt_claims_and_signature_verify_with_the_public_key() -> None:
    clock = FakeClock(start=1_700_000_000.5)
    token = await app_jwt(PemSigner(app_key()), 123, clock)
    header, payload = _segments(token)
    assert header == {"alg": "RS256", "typ": "JWT"}
    assert payload == {"iat": 1_700_000_000 - 60, "exp": 1_700_000_000 + 540, "iss": "123"}
    claims = jwt.decode(
        token,
        app_key().public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == "123"


async def test_app_jwt_uses_any_signer_by_its_algorithm() -> None:
    class Fixed:
        algorithm = "ES256"

        async def sign(self, signing_input: bytes) -> bytes:
            self.seen = signing_input
            return b"\x01\x02"

    fixed = Fixed()
    token = await app_jwt(fixed, 7, FakeClock())
    header, _payload = _segments(token)
    assert header["alg"] == "ES256"
    assert token.rsplit(".", 1)[0].encode() == fixed.seen
    assert token.endswith(".AQI")


def test_pem_signer_loads_pkcs1_and_pkcs8() -> None:
    pkcs8 = app_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for data in (pem(app_key()), pkcs8, pem(app_key()).decode()):
        assert PemSigner.from_pem(data).algorithm == "RS256"


def test_key_never_in_repr_or_errors(tmp_path) -> None:
    key_pem = pem(app_key()).decode()
    signer = PemSigner.from_pem(key_pem)
    body = key_pem.splitlines()[1]
    assert body not in repr(signer)
    assert "bits=2048" in repr(signer)
    broken = key_pem.replace(body, body[::-1])
    with pytest.raises(StsError) as info:
        PemSigner.from_pem(broken)
    assert info.value.reason == "app_key_invalid"
    assert body[::-1] not in str(info.value)
    assert info.value.__cause__ is None


def test_rejects_non_rsa_small_and_missing_keys(tmp_path) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(StsError, match="RSA"):
        PemSigner.from_pem(ec_pem)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(StsError, match="too small"):
        PemSigner(small)
    with pytest.raises(StsError, match="cannot read"):
        PemSigner.from_file(tmp_path / "missing.pem")
    with pytest.raises(StsError, match="not a readable"):
        PemSigner.from_pem(b"hello")


def test_from_env_file_or_inline(tmp_path) -> None:
    path = tmp_path / "app.pem"
    path.write_bytes(pem(app_key()))
    assert PemSigner.from_env({"GITHUB_APP_PRIVATE_KEY_FILE": str(path)})
    one_line = pem(app_key()).decode().replace("\n", "\\n")
    assert PemSigner.from_env({"GITHUB_APP_PRIVATE_KEY": one_line})
    with pytest.raises(StsError, match="exactly one"):
        PemSigner.from_env({})
    with pytest.raises(StsError, match="exactly one"):
        PemSigner.from_env(
            {"GITHUB_APP_PRIVATE_KEY_FILE": str(path), "GITHUB_APP_PRIVATE_KEY": one_line}
        )
