"""Every client we ship, against the live stack: Envoy over TLS in front of real replicas.

Python (sync and async, gRPC and HTTP/JSON), the ``octo-sts exchange|revoke`` CLI, the Go and
TypeScript clients (their own live tests, driven from here with the stack's endpoint, CA and
tokens) and the GitHub Action's scripts with a stand-in Actions OIDC token endpoint. A minted
token is proven usable by asking the GitHub emulator for the demo repo's README with it.

Go and Node.js: a missing toolchain fails the test when ``CI`` is set and skips it (with the
reason) otherwise; the driven suites must report every live test as passed, so a skip inside
them is never taken for a pass.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import httpx
import pytest

from octosts.client import (
    AsyncClient,
    Client,
    EnvTokenSource,
    ExchangeError,
    ExchangeResult,
    FileTokenSource,
    Forbidden,
    RetryPolicy,
)
from octosts.dev.httpserver import DevHTTPServer
from octosts.dev.stack import DevStack

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = REPO_ROOT / "clients"
SCOPE = "octo-org/demo"
IDENTITY = "ci"
# Repositories whose ci policy trusts the demo workflow (examples/repos): one token for both
# gets what both grant.
SCOPES = ("octo-org/demo", "octo-org/infra")
REPO_SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
# Same repository and workflow, another branch: the demo policy refuses it.
DENIED_SUB = "repo:octo-org/demo:ref:refs/heads/feature"
RETRY = RetryPolicy(max_attempts=2, deadline=20.0)


# -- helpers shared with test_compat.py ------------------------------------------------------


def allowed_token(stack: DevStack, aud: str | None = None) -> str:
    return stack.token(REPO_SUB, aud=aud, workflow_ref=WORKFLOW)


def denied_token(stack: DevStack) -> str:
    return stack.token(DENIED_SUB, workflow_ref=WORKFLOW)


def github_status(stack: DevStack, token: str) -> int:
    """What the GitHub emulator says to ``token`` reading the demo repo: 200 usable, 401 not."""
    resp = httpx.get(
        f"{stack.github_url}/repos/{SCOPE}/contents/README.md",
        headers={"authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    return resp.status_code


def toolchain(name: str) -> str:
    """Path of ``name``; fail under CI, skip with the reason elsewhere."""
    path = shutil.which(name)
    if path is None:
        why = f"`{name}` is not installed (the {name} client's live test needs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must provide it")
        pytest.skip(why)
    return path


def assert_request_id(value: str | None) -> str:
    assert value is not None
    UUID(value)  # Envoy's x-request-id, which the service puts in its ErrorInfo
    return value


def assert_denied(error: ExchangeError, oidc: str) -> None:
    assert error.code == "PERMISSION_DENIED"
    assert error.reason == "permission_denied"
    request_id = assert_request_id(error.request_id)
    # The server's own message names the same request id: both came from the one request.
    assert request_id in error.message
    assert oidc not in str(error)


def assert_usable(stack: DevStack, result: ExchangeResult) -> None:
    assert result.token.startswith("ghs_")
    assert result.repositories == ("demo",)
    assert dict(result.permissions) == {"contents": "read", "issues": "write"}
    assert_request_id(result.request_id)
    assert result.token not in repr(result)
    assert github_status(stack, result.token) == 200


# -- Python client ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_python_sync_client(stack: DevStack, transport: Any) -> None:
    denied = denied_token(stack)
    source = EnvTokenSource("OIDC", {"OIDC": allowed_token(stack)})
    with Client(
        stack.gateway_url,
        transport=transport,
        ca_file=stack.ca_cert,
        retry=RETRY,
        token_source=source,
    ) as client:
        result = client.exchange(SCOPE, IDENTITY)
        with pytest.raises(Forbidden) as refused:
            client.exchange(SCOPE, IDENTITY, token=denied)
    assert_usable(stack, result)
    assert_denied(refused.value, denied)
    if transport == "http":
        assert refused.value.status == 403


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_python_async_client(stack: DevStack, transport: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "oidc"
    token_file.write_text(allowed_token(stack) + "\n")
    denied = denied_token(stack)
    async with AsyncClient(
        stack.gateway_url,
        transport=transport,
        ca_file=stack.ca_cert,
        retry=RETRY,
        token_source=FileTokenSource(token_file),
    ) as client:
        result = await client.exchange(SCOPE, IDENTITY, audience=stack.domain)
        with pytest.raises(Forbidden) as refused:
            await client.exchange(SCOPE, IDENTITY, token=denied)
    assert_usable(stack, result)
    assert_denied(refused.value, denied)


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_python_clients_ask_for_several_repositories(stack: DevStack, transport: Any) -> None:
    oidc = allowed_token(stack)
    with Client(stack.gateway_url, transport=transport, ca_file=stack.ca_cert, retry=RETRY) as sync:
        one = sync.exchange(list(SCOPES), IDENTITY, token=oidc)
    async with AsyncClient(
        stack.gateway_url, transport=transport, ca_file=stack.ca_cert, retry=RETRY
    ) as client:
        other = await client.exchange(SCOPES, IDENTITY, token=oidc)
        with pytest.raises(Forbidden):
            await client.exchange(SCOPES, IDENTITY, token=denied_token(stack))
    for result in (one, other):
        assert_several(stack, result)


def assert_several(stack: DevStack, result: ExchangeResult) -> None:
    """A token for SCOPES: what both policies grant, usable in both repositories only."""
    assert sorted(result.repositories) == ["demo", "infra"]
    assert dict(result.permissions) == {"contents": "read"}
    for scope in SCOPES:
        resp = httpx.get(
            f"{stack.github_url}/repos/{scope}/contents/README.md",
            headers={"authorization": f"Bearer {result.token}"},
            timeout=10.0,
        )
        assert resp.status_code == 200, scope


# -- CLI -------------------------------------------------------------------------------------


def octo_sts(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    # A clean environment: the caller's OCTO_STS_ENDPOINT / GITHUB_TOKEN must not leak in.
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT"}}
    return subprocess.run(
        [sys.executable, "-m", "octosts", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        input=stdin,
        timeout=40,
        check=False,
    )


def cli_exchange(stack: DevStack, *args: str, env: dict[str, str] | None = None) -> Any:
    return octo_sts(
        "exchange",
        "--scope", SCOPE,
        "--identity", IDENTITY,
        "--endpoint", stack.gateway_url,
        "--ca-file", str(stack.ca_cert),
        "--attempts", "2",
        *args,
        env=env,
    )  # fmt: skip


def test_cli_exchange_outputs_and_token_sources(stack: DevStack, tmp_path: Path) -> None:
    oidc = allowed_token(stack)
    token_file = tmp_path / "token"
    token_file.write_text(oidc)

    plain = cli_exchange(stack, "--token-source", "env:OIDC", env={"OIDC": oidc})
    assert plain.returncode == 0, plain.stderr
    token = plain.stdout.strip()
    assert plain.stdout == token + "\n"
    assert github_status(stack, token) == 200

    as_json = cli_exchange(
        stack, "--token-source", f"file:{token_file}", "--transport", "http", "--output", "json"
    )
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["token"] == body["access_token"]
    assert body["token_type"] == "Bearer"
    assert type(body["expires_in"]) is int
    assert 0 < body["expires_in"] <= 3600
    assert body["repositories"] == ["demo"]
    assert github_status(stack, body["token"]) == 200

    as_env = cli_exchange(
        stack, "--token-source", "env:OIDC", "--output", "env", "--env-name", "GH_TOKEN",
        env={"OIDC": oidc},
    )  # fmt: skip
    assert as_env.returncode == 0, as_env.stderr
    # What `eval "$(octo-sts exchange --output env ...)"` would set.
    shown = dict(line.split("=", 1) for line in as_env.stdout.splitlines())
    assert set(shown) == {"GH_TOKEN", "OCTO_STS_EXPIRES_AT"}
    assert github_status(stack, shlex.split(shown["GH_TOKEN"])[0]) == 200

    for run in (plain, as_json, as_env):
        assert oidc not in run.stdout + run.stderr


def test_cli_scope_repeated_is_one_token_for_several_repositories(stack: DevStack) -> None:
    run = octo_sts(
        "exchange",
        "--scope", SCOPES[0], "--scope", SCOPES[1],
        "--identity", IDENTITY,
        "--endpoint", stack.gateway_url,
        "--ca-file", str(stack.ca_cert),
        "--token-source", "env:OIDC",
        "--output", "json",
        env={"OIDC": allowed_token(stack)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["repositories"] == ["demo", "infra"]
    assert body["permissions"] == {"contents": "read"}
    assert github_status(stack, body["token"]) == 200


def test_cli_exchange_refused_and_bad_source(stack: DevStack, tmp_path: Path) -> None:
    denied = denied_token(stack)
    refused = cli_exchange(stack, "--token-source", "env:OIDC", env={"OIDC": denied})
    assert refused.returncode == 4
    assert refused.stdout == ""
    assert "PERMISSION_DENIED" in refused.stderr
    assert "reason=permission_denied" in refused.stderr
    match = re.search(r"request_id=([0-9a-f-]{36})", refused.stderr)
    assert match is not None, refused.stderr
    assert denied not in refused.stderr

    missing = cli_exchange(stack, "--token-source", f"file:{tmp_path / 'absent'}")
    assert missing.returncode == 3
    assert "cannot read token file" in missing.stderr
    unset = cli_exchange(stack, "--token-source", "env:NOT_SET_ANYWHERE")
    assert unset.returncode == 3


def test_cli_revoke_makes_the_token_unusable(stack: DevStack) -> None:
    with Client(stack.gateway_url, transport="http", ca_file=stack.ca_cert) as client:
        token = client.exchange(SCOPE, IDENTITY, token=allowed_token(stack)).token
    assert github_status(stack, token) == 200

    revoked = octo_sts("revoke", "--github-api", stack.github_url, env={"GITHUB_TOKEN": token})
    assert revoked.returncode == 0, revoked.stderr
    assert github_status(stack, token) == 401
    # GITHUB_API_URL is honoured (what Actions sets); the token is already gone: refused.
    again = octo_sts("revoke", env={"GITHUB_TOKEN": token, "GITHUB_API_URL": stack.github_url})
    assert again.returncode == 4
    assert token not in revoked.stderr + again.stderr


# -- Go and TypeScript clients ---------------------------------------------------------------


def live_env(stack: DevStack) -> dict[str, str]:
    """What clients/go/live_test.go and clients/typescript/test/live.test.ts read."""
    return {
        "OCTO_STS_LIVE_ENDPOINT": stack.gateway_url,
        "OCTO_STS_LIVE_CA": str(stack.ca_cert),
        "OCTO_STS_LIVE_SCOPE": SCOPE,
        "OCTO_STS_LIVE_IDENTITY": IDENTITY,
        "OCTO_STS_LIVE_SCOPES": ",".join(SCOPES),
        "OCTO_STS_LIVE_TOKEN": allowed_token(stack),
        "OCTO_STS_LIVE_DENIED_TOKEN": denied_token(stack),
        "OCTO_STS_LIVE_GITHUB": stack.github_url,
    }


def test_go_client_live(stack: DevStack) -> None:
    go = toolchain("go")
    proc = subprocess.run(
        [go, "test", "-count=1", "-run", "Live", "-v", "."],
        cwd=CLIENTS / "go",
        env={**os.environ, **live_env(stack)},
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for name in (
        "TestLiveExchangeOverTLS",
        "TestLiveDeniedCarriesReasonAndRequestID",
        "TestLiveChainguardServiceNames",
        "TestLiveSeveralRepositoriesInOneToken",
    ):
        assert f"--- PASS: {name}" in out, out
    assert "--- SKIP" not in out, out


def build_typescript() -> tuple[str, Path]:
    """``node`` and the TypeScript package, compiled to ``dist/`` (tests included)."""
    node = toolchain("node")
    package = CLIENTS / "typescript"
    tsc = package / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        why = "clients/typescript/node_modules is missing: run `npm ci` there (make test-ts does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    built = subprocess.run(
        [node, str(tsc), "-p", "."],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return node, package


def test_typescript_client_live(stack: DevStack) -> None:
    node, package = build_typescript()
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", "dist/test/live.test.js"],
        cwd=package,
        env={**os.environ, **live_env(stack)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # Six tests: {grpc, http} x {allowed, several repositories, denied}; none skipped.
    assert re.search(r"^# pass 6$", out, re.MULTILINE), out
    assert re.search(r"^# skipped 0$", out, re.MULTILINE), out
    assert re.search(r"^# fail 0$", out, re.MULTILINE), out


# -- GitHub Action ---------------------------------------------------------------------------


@dataclass
class ActionsTokenEndpoint:
    """Stands in for the Actions runtime's OIDC token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL)."""

    stack: DevStack
    request_token: str = "actions-runtime-secret"
    deny: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, str]]:
        query = parse_qs(urlsplit(path).query)
        self.calls.append({"query": query, "authorization": authorization})
        if authorization != f"bearer {self.request_token}":
            return 401, {"message": "bad request token"}
        audience = query.get("audience", [""])[0]
        sub = DENIED_SUB if self.deny else REPO_SUB
        return 200, {"value": self.stack.token(sub, aud=audience, workflow_ref=WORKFLOW)}


@pytest.fixture
def actions_endpoint(stack: DevStack) -> Iterator[ActionsTokenEndpoint]:
    endpoint = ActionsTokenEndpoint(stack)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = endpoint.answer(self.path, self.headers.get("authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass  # keep the test output quiet

    server = DevHTTPServer(("127.0.0.1", 0), Handler).start("actions-token")
    endpoint.url = f"http://127.0.0.1:{server.port}/token?api-version=2.0"
    try:
        yield endpoint
    finally:
        server.stop()


def file_commands(path: Path) -> dict[str, str]:
    """Parse a GITHUB_OUTPUT / GITHUB_STATE file (``name<<DELIM`` blocks) like the runner does."""
    values: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        name, _, delim = line.partition("<<")
        assert delim, f"not a multi-line file command: {line!r}"
        body: list[str] = []
        for inner in lines:
            if inner == delim:
                break
            body.append(inner)
        else:
            pytest.fail(f"unterminated value for {name}")
        values[name] = "\n".join(body)
    return values


def run_action(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    node = toolchain("node")
    return subprocess.run(
        [node, str(CLIENTS / "github-action" / script)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )


def action_env(stack: DevStack, tokens: ActionsTokenEndpoint, tmp_path: Path) -> dict[str, str]:
    output, state = tmp_path / "output", tmp_path / "state"
    output.touch()
    state.touch()
    return {
        "INPUT_SCOPE": SCOPE,
        "INPUT_IDENTITY": IDENTITY,
        "INPUT_DOMAIN": stack.domain,
        "INPUT_ENDPOINT": stack.gateway_url,
        "ACTIONS_ID_TOKEN_REQUEST_URL": tokens.url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": tokens.request_token,
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STATE": str(state),
        "NODE_EXTRA_CA_CERTS": str(stack.ca_cert),
    }


def test_github_action_main_masks_outputs_and_post_revokes(
    stack: DevStack, actions_endpoint: ActionsTokenEndpoint, tmp_path: Path
) -> None:
    env = action_env(stack, actions_endpoint, tmp_path)
    main = run_action("main.js", env)
    assert main.returncode == 0, main.stdout + main.stderr
    # The OIDC token was requested for the STS domain, keeping the runtime's api-version.
    [call] = actions_endpoint.calls
    assert call["query"] == {"api-version": ["2.0"], "audience": [stack.domain]}

    token = file_commands(Path(env["GITHUB_OUTPUT"]))["token"]
    assert token.startswith("ghs_")
    assert github_status(stack, token) == 200
    # Masked before anything else could print it, and only ever printed inside the mask command.
    lines = main.stdout.splitlines()
    mask = lines.index(f"::add-mask::{token}")
    assert all(token not in line for line in lines[:mask])
    assert all(token not in line for i, line in enumerate(lines) if i != mask)
    assert token not in main.stderr

    state = file_commands(Path(env["GITHUB_STATE"]))
    assert state == {"token": token}
    # The runner hands GITHUB_STATE entries to the post step as STATE_<name>.
    post = run_action(
        "post.js",
        {"STATE_token": state["token"], "GITHUB_API_URL": stack.github_url,
         "NODE_EXTRA_CA_CERTS": str(stack.ca_cert)},
    )  # fmt: skip
    assert post.returncode == 0, post.stdout + post.stderr
    assert "Revoked the Octo STS token." in post.stdout
    assert token not in post.stdout + post.stderr
    assert github_status(stack, token) == 401


def test_github_action_denied_fails_the_step_with_request_id(
    stack: DevStack, actions_endpoint: ActionsTokenEndpoint, tmp_path: Path
) -> None:
    actions_endpoint.deny = True
    env = action_env(stack, actions_endpoint, tmp_path)
    main = run_action("main.js", env)
    assert main.returncode == 1
    [error] = [line for line in main.stdout.splitlines() if line.startswith("::error::")]
    assert "HTTP 403" in error
    assert re.search(r"request id [0-9a-f-]{36}", error), error
    assert Path(env["GITHUB_OUTPUT"]).read_text() == ""
    assert Path(env["GITHUB_STATE"]).read_text() == ""
