"""`octo-sts dev issuer` (a real subprocess) and `octo-sts dev token`."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from octosts.adapters.oidc import OidcConfig, OidcVerifier, make_http_client
from octosts.cli import main
from tests.polling import first_line


@pytest.fixture
def dev_issuer(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "octosts", "dev", "issuer"),
            *("--listen", "127.0.0.1:0", "--state-dir", str(state)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = first_line(proc, "the dev issuer's URL")
        yield url, state, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_token_from_cli_verifies_against_running_issuer(
    dev_issuer: tuple[str, Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state, proc = dev_issuer
    code = main(
        [
            *("dev", "token", "--sub", "repo:octo/app:ref:refs/heads/main"),
            *("--aud", "octo-sts.dev", "--aud", "other", "--claim", "ref=refs/heads/main"),
            *("--claim-json", "ref_protected=true", "--state-dir", str(state)),
        ]
    )
    assert code == 0
    token = capsys.readouterr().out.strip()
    config = OidcConfig(insecure_issuers=frozenset({url}))
    async with make_http_client(config) as http:
        verified = await OidcVerifier(config, http=http).verify(token)
    assert verified.issuer == url
    assert verified.audience == ("octo-sts.dev", "other")
    assert verified.claims["ref_protected"] is True
    assert verified.claims["ref"] == "refs/heads/main"
    # SIGTERM ends it cleanly
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_token_without_state_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["dev", "token", "--sub", "s", "--aud", "a", "--state-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "dev issuer" in err
    assert "Traceback" not in err


def test_token_cli_options(
    dev_issuer: tuple[str, Path, subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, state, _ = dev_issuer
    base = ["dev", "token", "--sub", "s", "--aud", "a", "--state-dir", str(state)]
    assert main([*base, "--claim-json", "x={bad"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main([*base, "--claim", "novalue"]) == 2
    capsys.readouterr()
    assert main([*base, "--ttl", "30", "--issuer-url", "https://elsewhere.example"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["iss"] == "https://elsewhere.example"
    assert claims["exp"] - claims["iat"] == 30
    assert claims["aud"] == "a"
