"""The GitHub Action's scripts (clients/github-action) run by Node.js against local stand-ins:
a fake Actions OIDC token endpoint, the HTTP/JSON gateway and GitHub's revoke endpoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_client_standins import (
    ACTIONS_REQUEST_TOKEN,
    MINTED_TOKEN,
    OIDC_TOKEN,
    HttpStandIn,
)

ACTION = Path(__file__).resolve().parents[2] / "clients" / "github-action"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node (>= 20) is not installed")


@pytest.fixture
def stack() -> Iterator[HttpStandIn]:
    server = HttpStandIn()
    yield server
    server.stop()


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(ACTION / script)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _read_file_command(path: Path) -> dict[str, str]:
    text = path.read_text() if path.exists() else ""
    blocks = re.findall(r"^(\w+)<<(\S+)\n(.*?)\n\2$", text, flags=re.MULTILINE | re.DOTALL)
    return {name: value for name, _, value in blocks}


def test_action_exchanges_masks_outputs_and_revokes(stack: HttpStandIn, tmp_path: Path) -> None:
    output, state = tmp_path / "output", tmp_path / "state"
    env = {
        "INPUT_SCOPE": "org/app",
        "INPUT_IDENTITY": "deploy",
        "INPUT_DOMAIN": "sts.example",
        "INPUT_ENDPOINT": stack.endpoint,
        "INPUT_REVOKE": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": stack.actions_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ACTIONS_REQUEST_TOKEN,
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STATE": str(state),
    }
    main = _run("main.js", env)
    assert main.returncode == 0, main.stdout + main.stderr
    lines = main.stdout.splitlines()
    assert f"::add-mask::{MINTED_TOKEN}" in lines
    assert f"::add-mask::{OIDC_TOKEN}" in lines
    # Outside the mask commands the token never reaches the log.
    assert all(MINTED_TOKEN not in line for line in lines if not line.startswith("::add-mask::"))
    assert _read_file_command(output) == {"token": MINTED_TOKEN}
    assert _read_file_command(state) == {"token": MINTED_TOKEN}
    actions_call, exchange_call = stack.script.calls
    assert actions_call["query"] == {"api-version": "2.0", "audience": "sts.example"}
    # The request octo-sts's own action makes: GET /sts/exchange?scope&identity with a Bearer token.
    assert exchange_call == {
        "scope": "org/app",
        "identity": "deploy",
        "authorization": f"Bearer {OIDC_TOKEN}",
    }

    post_env = {"STATE_token": MINTED_TOKEN, "GITHUB_API_URL": stack.github_api}
    post = _run("post.js", post_env)
    assert post.returncode == 0
    assert "Revoked" in post.stdout
    assert stack.script.revoked == [MINTED_TOKEN]
    again = _run("post.js", post_env)
    assert again.returncode == 0
    assert "already invalid" in again.stdout


def test_action_fails_clearly_on_denial(stack: HttpStandIn, tmp_path: Path) -> None:
    stack.script.deny = True
    env = {
        "INPUT_SCOPE": "org",
        "INPUT_IDENTITY": "deploy",
        "INPUT_DOMAIN": "sts.example",
        "INPUT_ENDPOINT": stack.endpoint,
        "ACTIONS_ID_TOKEN_REQUEST_URL": stack.actions_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ACTIONS_REQUEST_TOKEN,
        "GITHUB_OUTPUT": str(tmp_path / "o"),
        "GITHUB_STATE": str(tmp_path / "s"),
    }
    result = _run("main.js", env)
    assert result.returncode == 1
    assert (
        "::error::exchange failed: HTTP 403: no trust policy matched (request id r-7)"
        in result.stdout
    )
    assert not (tmp_path / "o").exists()


def test_action_without_id_token_permission(tmp_path: Path) -> None:
    env = {
        "INPUT_SCOPE": "org",
        "INPUT_IDENTITY": "x",
        "INPUT_DOMAIN": "d",
        "GITHUB_OUTPUT": str(tmp_path / "o"),
    }
    result = _run("main.js", env)
    assert result.returncode == 1
    assert "id-token: write" in result.stdout
