"""The manifest conversion's answer and the files it becomes (``ops.conversion``)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from octosts import settings
from octosts.ops.conversion import (
    ConversionError,
    app_files,
    check_code,
    check_writable,
    parse_app,
    write_app_files,
)

SECRET = "0123456789abcdef0123456789abcdef01234567"


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def answer(rsa_pem: str, **changes: object) -> bytes:
    body: dict[str, object] = {
        "id": 42,
        "slug": "octo-sts-example",
        "name": "octo-sts example",
        "owner": {"login": "octo-org", "type": "Organization"},
        "html_url": "https://github.com/apps/octo-sts-example",
        "permissions": {"contents": "read", "metadata": "read"},
        "events": ["push"],
        "pem": rsa_pem,
        "webhook_secret": SECRET,
        "client_id": "Iv1.0123",
        "client_secret": "not-kept",
    }
    body.update(changes)
    return json.dumps(body).encode()


def test_the_answer_becomes_an_app_whose_repr_shows_no_secret(rsa_pem: str) -> None:
    app = parse_app(answer(rsa_pem))
    assert (app.app_id, app.slug, app.owner) == (42, "octo-sts-example", "octo-org")
    assert app.install_url == "https://github.com/apps/octo-sts-example/installations/new"
    shown = repr(app) + json.dumps(app.describe())
    for secret in (SECRET, "PRIVATE KEY", "not-kept"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": 0}, "no App id"),
        ({"id": True}, "no App id"),
        ({"pem": "-----BEGIN RSA PRIVATE KEY-----\nnope\n"}, "no RSA private key"),
        ({"pem": None}, "no RSA private key"),
        ({"webhook_secret": "a,b"}, "not a plain token"),
        ({"webhook_secret": 7}, "not a plain token"),
    ],
)
def test_answers_that_are_not_an_app_are_refused(
    rsa_pem: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        parse_app(answer(rsa_pem, **changes))


def test_an_ec_key_is_not_an_app_key() -> None:
    ec_pem = pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConversionError, match="no RSA private key"):
        parse_app(answer(ec_pem))


@pytest.mark.parametrize("body", [b"", b"[]", b"not json", b'{"id": "42"}'])
def test_malformed_answers(body: bytes) -> None:
    with pytest.raises(ConversionError):
        parse_app(body)


@pytest.mark.parametrize("code", ["", "a/b", "../x", "a b", "x" * 257, "c\u00e9"])
def test_codes_that_cannot_be_put_in_the_path(code: str) -> None:
    with pytest.raises(ValueError, match="not a GitHub manifest code") as caught:
        check_code(code)
    assert code not in str(caught.value) or not code


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_files_are_private_and_the_env_file_is_what_the_service_loads(
    rsa_pem: str, tmp_path: Path, umask_zero: None
) -> None:
    files = app_files(tmp_path / "app")
    check_writable(files, force=False)
    written = write_app_files(parse_app(answer(rsa_pem)), files, "https://api.github.com/")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.env.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.app.stat().st_mode) == 0o644
    assert files.key.read_text() == rsa_pem
    assert SECRET not in files.app.read_text()
    env = dict(
        line.split("=", 1)
        for line in files.env.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env == written
    assert env["GITHUB_BASE_URL"] == "https://api.github.com"
    assert env["OCTOSTS_WEBHOOK_SECRETS"] == SECRET
    loaded = settings.load({**env, "STS_DOMAIN": "sts.example.com"})
    assert loaded.github_app_id == 42
    assert loaded.webhook_secrets == (SECRET,)
    assert loaded.webhook_addr == "0.0.0.0:8090"  # docker-compose.yml's, Envoy's /webhook
    assert list(tmp_path.glob("app/.*")) == []  # no temporary file left


def test_an_app_without_webhook_has_no_secret_line(rsa_pem: str, tmp_path: Path) -> None:
    files = app_files(tmp_path)
    written = write_app_files(parse_app(answer(rsa_pem, webhook_secret=None)), files, "http://x")
    assert "OCTOSTS_WEBHOOK_SECRETS" not in written
    assert "OCTOSTS_WEBHOOK_ADDR" not in written


def test_nothing_is_overwritten_without_force(rsa_pem: str, tmp_path: Path) -> None:
    files = app_files(tmp_path)
    files.env.write_text("precious")
    with pytest.raises(FileExistsError):
        check_writable(files, force=False)
    check_writable(files, force=True)
    write_app_files(parse_app(answer(rsa_pem)), files, "http://x")
    assert files.env.read_text() != "precious"
    assert stat.S_IMODE(files.env.stat().st_mode) == 0o600


def test_a_directory_the_env_file_cannot_name_verbatim(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no spaces or shell characters"):
        app_files(tmp_path / "my app")
