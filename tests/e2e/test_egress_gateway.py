"""The GitHub egress gateway through the real stack (docs/egress.md).

Dev issuer, GitHub emulator, two ``octo-sts serve`` replicas and Envoy over TLS: a workload
sends its GitHub API requests to ``https://<gateway>/github/...`` with its OIDC token and never
holds a GitHub token. Responses are read as raw bytes off the TLS socket, so "the token never
reaches the workload" is asserted on every byte returned. The emulator's call log and token
ledger say what reached GitHub and with which token.

The last tests put a second Envoy (same replicas) in front of a recording stand-in for a GHES
API at ``/api/v3``: it shows every header and path that reaches the upstream, which is how
"no other host, nothing outside the API base, no x-octo-sts-* or hop-by-hop header, never the
OIDC token" is asserted.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from octosts.adapters.github import POLICY_READ_PERMISSIONS
from octosts.cli.dev_stack import egress_demo
from octosts.dev.envoy import (
    EnvoyParams,
    EnvoyProcess,
    Upstream,
    free_port,
    render_config,
    validate,
)
from octosts.dev.stack import DESCRIPTOR_SET, DevStack
from tests.e2e.envoy_harness import unique_base_id
from tests.polling import eventually_blocking

pytestmark = pytest.mark.e2e

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
ASK = {"x-octo-sts-scope": "octo-org/demo", "x-octo-sts-identity": "ci"}
GITHUB_TOKEN = re.compile(rb"gh[soupr]_[A-Za-z0-9]{20,}")


# -- raw HTTP/1.1 over TLS: every byte the workload gets ----------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """One answer, as bytes off the socket and parsed."""

    data: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, ca: Path, head: str, body: bytes = b"") -> Raw:
    """Send ``head`` (request line + headers, no blank line) and read until the server closes."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    request = head.replace("\n", "\r\n") + "\r\nconnection: close\r\n"
    if body:
        request += f"content-length: {len(body)}\r\n"
    data = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(request.encode() + b"\r\n" + body)
        while chunk := tls.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Raw(data, int(lines[0].split()[1]), headers, payload)


def workload_token(stack: DevStack, **claims: Any) -> str:
    return stack.token(SUB, **{"workflow_ref": WORKFLOW, **claims})


def request_head(method: str, path: str, token: str | None, **headers: str) -> str:
    lines = [f"{method} {path} HTTP/1.1", "host: localhost"]
    if token is not None:
        lines.append(f"authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return "\n".join(lines)


def egress(
    stack: DevStack,
    method: str,
    path: str,
    token: str | None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Raw:
    extra = dict(ASK if headers is None else headers)
    payload = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        extra["content-type"] = "application/json"
    raw = send(
        stack.ports.gateway, stack.ca_cert, request_head(method, path, token, **extra), payload
    )
    assert_no_secret(raw.data, token)
    return raw


def assert_no_secret(data: bytes, oidc_token: str | None) -> None:
    """No GitHub token, and not the workload's own OIDC token, in any byte returned."""
    assert GITHUB_TOKEN.search(data) is None, data[:2000]
    if oidc_token:
        assert oidc_token.encode() not in data
        assert oidc_token.split(".")[2].encode() not in data  # not even its signature


# -- the emulator, as GitHub ------------------------------------------------------------------


def github_calls(stack: DevStack, since: float) -> list[dict[str, Any]]:
    resp = httpx.get(f"{stack.github_url}/_emulator/calls", params={"since": since}, timeout=5)
    calls: list[dict[str, Any]] = resp.json()
    return calls


def workload_calls(stack: DevStack, since: float) -> list[dict[str, Any]]:
    """Calls made with an installation token, less the service's own (policy and issuers files:
    the app's installation lookups and mints use its JWT)."""
    return [
        c
        for c in github_calls(stack, since)
        if c["auth"] != "app" and "/contents/.github/" not in c["path"]
    ]


def mints(stack: DevStack, since: float) -> int:
    """Tokens minted for workloads since ``since``: the emulator's ledger less the service's
    own contents:read tokens for reading policies, which each replica mints once per
    installation (how many depends on which tests warmed the replicas before)."""
    resp = httpx.get(f"{stack.github_url}/_emulator/tokens", timeout=5)
    return sum(
        1
        for t in resp.json()["tokens"]
        if t["created_at"] >= since
        and not (t["permissions"] == POLICY_READ_PERMISSIONS and t["repositories"] is None)
    )


def live_token_hashes(stack: DevStack) -> set[str]:
    resp = httpx.get(f"{stack.github_url}/_emulator/tokens", params={"state": "live"}, timeout=5)
    return {t["token_sha256"] for t in resp.json()["tokens"]}


def emulator_now(stack: DevStack) -> float:
    """A point in time on the emulator's clock (the call log's ``since``): this machine's."""
    return time.time()


# -- through the gateway to the emulator --------------------------------------------------


def test_a_workload_lists_contents_and_creates_an_issue_without_holding_a_github_token(
    stack: DevStack,
) -> None:
    token = workload_token(stack)
    since = emulator_now(stack)
    listing = egress(stack, "GET", "/github/repos/octo-org/demo/contents", token)
    assert listing.status == 200, listing.data
    assert {e["name"] for e in listing.json()} == {".github", "README.md"}
    assert "x-github-request-id" in listing.headers  # GitHub's answer, passed through

    created = egress(
        stack, "POST", "/github/repos/octo-org/demo/issues", token, {"title": "from egress"}
    )
    assert created.status == 201, created.data
    number = created.json()["number"]
    again = egress(stack, "GET", f"/github/repos/octo-org/demo/issues/{number}", token)
    assert again.json()["title"] == "from egress"

    assert [(c["method"], c["status"], c["auth"]) for c in workload_calls(stack, since)] == [
        ("GET", 200, "token"),
        ("POST", 201, "token"),
        ("GET", 200, "token"),
    ]


def test_a_write_beyond_the_policy_is_refused_by_github_and_passed_through_unchanged(
    stack: DevStack,
) -> None:
    # The demo policy grants contents: read and issues: write; this is a contents write.
    token = workload_token(stack)
    since = emulator_now(stack)
    body = {"message": "x", "content": "eA=="}
    refused = egress(stack, "PUT", "/github/repos/octo-org/demo/contents/new.txt", token, body)
    assert refused.status == 403
    assert refused.json() == {
        "message": "Resource not accessible by integration",
        "documentation_url": "https://docs.github.com/rest",
    }
    assert "x-github-request-id" in refused.headers
    puts = [c for c in github_calls(stack, since) if c["method"] == "PUT"]
    assert [(c["path"], c["status"], c["auth"]) for c in puts] == [
        ("/repos/octo-org/demo/contents/new.txt", 403, "token")
    ]


@pytest.mark.parametrize(
    ("claims", "token_given", "headers", "status", "reason"),
    [
        (
            {"workflow_ref": "octo-org/demo/.github/workflows/evil.yaml@refs/heads/x"},
            True,
            ASK,
            403,
            "permission_denied",
        ),
        (
            {},
            True,
            {"x-octo-sts-scope": "octo-org/demo", "x-octo-sts-identity": "nope"},
            403,
            "permission_denied",
        ),
        ({}, False, ASK, 401, "token_missing"),
        ({}, True, {"x-octo-sts-scope": "octo-org/demo"}, 400, "missing_egress_header"),
    ],
)
def test_a_refused_workload_gets_our_json_error_before_any_call_on_its_behalf(
    stack: DevStack,
    claims: dict[str, str],
    token_given: bool,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    token = workload_token(stack, **claims) if token_given else None
    since = emulator_now(stack)
    refused = egress(
        stack, "POST", "/github/repos/octo-org/demo/issues", token, {"title": "x"}, headers
    )
    assert refused.status == status, refused.data
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["message"].endswith(f"({reason})")
    assert body["request_id"] == refused.headers["x-request-id"]
    # Nothing was done for the workload at GitHub: no mint, no issue (policy reads may happen).
    assert workload_calls(stack, since) == []
    assert mints(stack, since) == 0


def replica_cache(stack: DevStack, index: int, result: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports.metrics[index]}/metrics", timeout=5).text
    pattern = (
        rf'octo_sts_cache_requests_total{{cache="egress_token_cache",result="{result}"}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_a_cache_hit_makes_no_mint_and_uses_the_token_already_minted(stack: DevStack) -> None:
    token = workload_token(stack)
    path = "/github/repos/octo-org/demo/contents/README.md"
    since = emulator_now(stack)
    # Each replica holds its own tokens: warm both (Envoy picks the replica per request).
    replicas = range(len(stack.ports.metrics))
    misses = [replica_cache(stack, i, "miss") for i in replicas]
    for _ in range(200):
        assert egress(stack, "GET", path, token).status == 200
        if all(replica_cache(stack, i, "miss") > misses[i] for i in replicas):
            break
    else:
        pytest.fail("Envoy never sent this workload's Check to every replica")
    assert mints(stack, since) == len(stack.ports.metrics)
    hits = sum(replica_cache(stack, i, "hit") for i in replicas)
    live = live_token_hashes(stack)

    warm = emulator_now(stack)
    for _ in range(10):
        assert egress(stack, "GET", path, token).status == 200
    assert mints(stack, warm) == 0
    eventually_blocking(
        lambda: sum(replica_cache(stack, i, "hit") for i in replicas) >= hits + 10, "hits"
    )
    assert live_token_hashes(stack) == live  # the same tokens, still live


def test_a_route_that_fixes_scope_and_identity_needs_no_headers(stack: DevStack) -> None:
    token = workload_token(stack)
    fixed = "/fixed/octo-org/demo/ci/repos/octo-org/demo/contents/README.md"
    assert egress(stack, "GET", fixed, token, headers={}).status == 200
    other = {"x-octo-sts-scope": "octo-org/other"}
    refused = egress(stack, "GET", fixed, token, headers=other)
    assert refused.status == 400
    assert refused.json()["message"].endswith("(fixed_by_route)")


@pytest.mark.parametrize(
    "head",
    [
        "GET http://evil.example/github/repos/octo-org/demo/contents HTTP/1.1\nhost: evil.example",
        "CONNECT evil.example:443 HTTP/1.1\nhost: evil.example:443",
        "GET /github/..%2f..%2f_emulator/reset HTTP/1.1\nhost: localhost",
        "GET /github/%2e%2e/%2e%2e/_emulator/reset HTTP/1.1\nhost: localhost",
        "GET /github/../_emulator/reset HTTP/1.1\nhost: localhost",
        "GET /github/repos%2focto-org%2fdemo HTTP/1.1\nhost: localhost",
        "GET /GitHub/repos/octo-org/demo HTTP/1.1\nhost: localhost",
    ],
)
def test_what_is_no_github_api_request_never_reaches_github(stack: DevStack, head: str) -> None:
    token = workload_token(stack)
    since = emulator_now(stack)
    auth = "\n".join(f"{k}: {v}" for k, v in {**ASK, "authorization": f"Bearer {token}"}.items())
    answer = send(stack.ports.gateway, stack.ca_cert, f"{head}\n{auth}")
    assert answer.status in {400, 404}, answer.data
    assert answer.headers["content-type"] == "application/json"
    assert_no_secret(answer.data, token)
    assert github_calls(stack, since) == []


# -- a second Envoy in front of a recording GHES stand-in -----------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class RecordingGitHub(http.server.ThreadingHTTPServer):
    """Answers everything 200 with hostile response headers; records what it received."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        super().__init__(("127.0.0.1", 0), _Recorder)


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingGitHub

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(
            Seen(self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()], body)
        )
        payload = b'{"ok": true}'
        self.send_response(200)
        for name, value in (
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("x-octo-sts-leak", "1"),
            ("x-octo-sts-scope", "octo-org/other"),
            ("proxy-authenticate", "Basic realm=x"),
            ("keep-alive", "timeout=5"),
            ("x-github-request-id", "STANDIN"),
        ):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815 - http.server names

    def log_message(self, *args: Any) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Ghes:
    upstream: RecordingGitHub
    port: int  # the second Envoy's TLS listener

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.upstream.server_address[1]}"


@pytest.fixture(scope="module")
def ghes(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ghes]:
    upstream = RecordingGitHub()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    workdir = tmp_path_factory.mktemp("ghes-envoy")
    assert stack.certs is not None
    params = EnvoyParams(
        listen_host="127.0.0.1",
        listen_port=free_port(),
        admin_port=free_port(),
        cert_path=stack.certs.cert,
        key_path=stack.certs.key,
        descriptor_path=DESCRIPTOR_SET,
        upstreams=[Upstream("127.0.0.1", port) for port in stack.ports.grpc],
        access_log_path=str(workdir / "access.log"),
        github_api_url=f"http://127.0.0.1:{upstream.server_address[1]}/api/v3",
    )
    config = workdir / "envoy.yaml"
    config.write_text(render_config(params))
    envoy = EnvoyProcess(
        config,
        admin_port=params.admin_port,
        log_path=workdir / "envoy.log",
        base_id=unique_base_id(),
    )
    try:
        envoy.start()
        # Ready when Envoy sees a healthy replica (its first health check answered).
        ca = stack.client_tls()
        eventually_blocking(
            lambda: (
                httpx.get(f"https://localhost:{params.listen_port}/healthz", verify=ca).status_code
                == 200
            ),
            "the second Envoy to see a healthy replica",
        )
        yield Ghes(upstream, params.listen_port)
    finally:
        envoy.stop()
        upstream.shutdown()
        upstream.server_close()


def ghes_send(stack: DevStack, ghes: Ghes, head: str, body: bytes = b"") -> Raw:
    return send(ghes.port, stack.ca_cert, head, body)


def test_upstream_gets_the_github_token_and_none_of_the_workloads_secrets(
    stack: DevStack, ghes: Ghes
) -> None:
    token = workload_token(stack)
    before = len(ghes.upstream.seen)
    head = request_head(
        "POST",
        "/github/repos/octo-org/demo/issues?per_page=5",
        token,
        **ASK,
        **{
            "x-octo-sts-subject": "repo:evil/evil",
            "x-octo-sts-anything": "1",
            "proxy-authorization": f"Bearer {token}",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "user-agent": "egress-test",
            "content-type": "application/json",
        },
    )
    answer = ghes_send(stack, ghes, head, b'{"title": "x"}')
    assert answer.status == 200, answer.data
    (seen,) = ghes.upstream.seen[before:]
    assert (seen.method, seen.path, seen.body) == (
        "POST",
        "/api/v3/repos/octo-org/demo/issues?per_page=5",
        b'{"title": "x"}',
    )
    headers = dict(seen.headers)
    assert headers["host"] == ghes.host
    assert headers["user-agent"] == "egress-test"
    scheme, _, github_token = headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    assert hashlib.sha256(github_token.encode()).hexdigest() in live_token_hashes(stack)
    names = [name for name, _ in seen.headers]
    assert names.count("authorization") == 1
    assert not [n for n in names if n.startswith("x-octo-sts-")]
    assert not {"proxy-authorization", "keep-alive", "te"} & set(names)
    everything = repr(seen.headers).encode() + seen.body
    assert token.encode() not in everything
    assert token.split(".")[2].encode() not in everything
    # Back to the workload: GitHub's answer, minus our headers and hop-by-hop ones.
    assert_no_secret(answer.data, token)
    assert github_token.encode() not in answer.data
    assert answer.headers["x-github-request-id"] == "STANDIN"
    assert not [n for n in answer.headers if n.startswith("x-octo-sts-")]
    assert not {"proxy-authenticate", "keep-alive"} & set(answer.headers)
    assert answer.json() == {"ok": True}


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/github/repos/octo-org/demo", "/api/v3/repos/octo-org/demo"),
        ("/api/v3/repos/octo-org/demo", "/api/v3/repos/octo-org/demo"),  # gh's GH_HOST base
        ("/github//repos///octo-org/demo", "/api/v3/repos/octo-org/demo"),
        ("/github/x/../repos/octo-org/demo", "/api/v3/repos/octo-org/demo"),
        ("/github/x/%2e%2e/repos/octo-org/demo", "/api/v3/repos/octo-org/demo"),
        ("/api/graphql", "/api/graphql"),  # GHES's GraphQL, beside /api/v3
        ("/github/graphql", "/api/graphql"),
        ("/github/../api/v3/../../admin", None),  # normalised to /admin: no route
        ("/api/v3/../../admin", None),
        ("/github/%2e%2e/%2e%2e/admin", None),
        ("/github/..%2f..%2fadmin", None),  # encoded slashes are refused outright
        ("/github/..%5c..%5cadmin", None),
    ],
)
def test_only_the_api_base_of_the_one_host_is_reachable(
    stack: DevStack, ghes: Ghes, path: str, upstream_path: str | None
) -> None:
    token = workload_token(stack)
    before = len(ghes.upstream.seen)
    answer = ghes_send(stack, ghes, request_head("GET", path, token, **ASK, host="evil.example"))
    assert_no_secret(answer.data, token)
    seen = ghes.upstream.seen[before:]
    if upstream_path is None:
        assert answer.status in {400, 404}, answer.data
        assert seen == []
        return
    assert answer.status == 200, answer.data
    assert [(s.path, dict(s.headers)["host"]) for s in seen] == [(upstream_path, ghes.host)]


@pytest.mark.parametrize(
    "head",
    [
        "GET http://evil.example/github/repos/octo-org/demo HTTP/1.1\nhost: evil.example",
        "GET https://localhost/github/repos/octo-org/demo HTTP/1.1\nhost: localhost",
        "CONNECT evil.example:443 HTTP/1.1\nhost: evil.example:443",
        "CONNECT localhost:443 HTTP/1.1\nhost: localhost:443",
    ],
)
def test_no_proxy_requests(stack: DevStack, ghes: Ghes, head: str) -> None:
    token = workload_token(stack)
    before = len(ghes.upstream.seen)
    auth = "\n".join(f"{k}: {v}" for k, v in {**ASK, "authorization": f"Bearer {token}"}.items())
    answer = ghes_send(stack, ghes, f"{head}\n{auth}")
    assert answer.status in {400, 404}, answer.data
    assert ghes.upstream.seen[before:] == []
    assert_no_secret(answer.data, token)


def test_an_https_ghes_upstream_is_a_config_envoy_accepts(stack: DevStack, tmp_path: Path) -> None:
    assert stack.certs is not None
    params = EnvoyParams(
        listen_port=free_port(),
        admin_port=free_port(),
        cert_path=stack.certs.cert,
        key_path=stack.certs.key,
        descriptor_path=DESCRIPTOR_SET,
        upstreams=[Upstream("sts", 8080)],
        github_api_url="https://ghes.example.com/api/v3",
        github_ca_path=stack.ca_cert,
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(render_config(params))
    validate(config)


def test_make_run_shows_an_egress_call_and_how_to_make_one(
    stack: DevStack, capsys: pytest.CaptureFixture[str]
) -> None:
    token = workload_token(stack)
    assert egress_demo(stack, token, "octo-sts dev token ...")
    shown = capsys.readouterr().out
    assert "-> HTTP 200" in shown
    assert f"{stack.gateway_url}/github/repos/octo-org/demo/contents" in shown
    assert f"GH_HOST=localhost:{stack.ports.gateway}" in shown
    assert GITHUB_TOKEN.search(shown.encode()) is None
    assert token not in shown


# -- real clients: the gh CLI and Octokit, the gateway as their GitHub API ------------------

OCTOKIT = Path(__file__).resolve().parent / "octokit"


def client_env(stack: DevStack, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no user config, the stack's CA trusted (Go and Node read these)."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SSL_CERT_FILE": str(stack.ca_cert),
        "NODE_EXTRA_CA_CERTS": str(stack.ca_cert),
        **extra,
    }


def test_the_gh_cli_uses_the_gateway_as_an_enterprise_host(stack: DevStack, tmp_path: Path) -> None:
    token = workload_token(stack)
    gh = str(Path(sys.executable).parent / "gh")
    env = client_env(
        stack,
        tmp_path,
        GH_HOST=f"localhost:{stack.ports.gateway}",
        GH_ENTERPRISE_TOKEN=token,
        GH_CONFIG_DIR=str(tmp_path / "gh"),
        GH_NO_UPDATE_NOTIFIER="1",
        GH_PROMPT_DISABLED="1",
    )
    ask = [arg for k, v in ASK.items() for arg in ("-H", f"{k}: {v}")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [gh, "api", *ask, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert GITHUB_TOKEN.search((done.stdout + done.stderr).encode()) is None
        return done

    listing = run("repos/octo-org/demo/contents")
    assert listing.returncode == 0, listing.stderr
    assert {e["name"] for e in json.loads(listing.stdout)} == {".github", "README.md"}
    created = run("-X", "POST", "repos/octo-org/demo/issues", "-f", "title=from gh")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["title"] == "from gh"
    beyond = run(
        "-X", "PUT", "repos/octo-org/demo/contents/gh.txt", "-f", "content=eA==", "-f", "message=m"
    )
    assert beyond.returncode == 1
    assert "Resource not accessible by integration (HTTP 403)" in beyond.stderr


def test_octokit_uses_the_gateway_as_its_base_url(stack: DevStack, tmp_path: Path) -> None:
    token = workload_token(stack)
    env = client_env(stack, tmp_path, OCTO_BASE_URL=f"{stack.gateway_url}/github", OCTO_TOKEN=token)
    done = subprocess.run(
        ["node", str(OCTOKIT / "egress.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert GITHUB_TOKEN.search((done.stdout + done.stderr).encode()) is None
    seen = json.loads(done.stdout)
    assert seen["listing"] == [".github", "README.md"]
    assert seen["issue"]["status"] == 201
    assert seen["issue"]["title"] == "from octokit"
    assert seen["refused"] == {"status": 403, "message": "Resource not accessible by integration"}
