"""docs/self-hosting.md's emulator walkthrough, run as written, so it stays true.

The doc marks its runnable blocks with an HTML comment (invisible when rendered):
``<!-- walkthrough: run -->`` before a block bash runs to completion (exit 0 required), and
``<!-- walkthrough: background until="TEXT" -->`` before one that keeps running (the stack),
ready once its output shows TEXT. The commands run in a scratch directory holding a copy of
examples/repos, with the venv's ``octo-sts`` on PATH and one change only: the documented ports
(8780, 8781, 8443 and the stack's others) moved by a free offset, so the test can run beside
``make run`` and other suites. Every process a block starts is in that block's own session
and killed with it at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.dev.stack import EXAMPLE_ISSUER, EXAMPLE_REPOS, REPO_ROOT, StackPorts
from octosts.ops.conversion import ConvertedApp, app_files, check_writable, write_app_files
from tests.polling import eventually_blocking

pytestmark = pytest.mark.e2e

DOC = REPO_ROOT / "docs" / "self-hosting.md"
_BLOCK = re.compile(
    r"<!-- walkthrough: (?P<kind>run|background)(?: until=\"(?P<until>[^\"]+)\")? -->\n"
    r"```sh\n(?P<body>.*?)```",
    re.DOTALL,
)
DOC_PORTS = (8780, 8781, 8443)  # what the doc's commands name


@dataclass(frozen=True)
class Step:
    kind: str
    body: str
    until: str | None


def steps(text: str) -> list[Step]:
    return [Step(m["kind"], m["body"], m["until"]) for m in _BLOCK.finditer(text)]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_offset() -> int:
    """An offset moving every port of the stack (and the doc's) to a free one, below the
    ephemeral range."""
    for offset in range(10_000 + os.getpid() % 997 * 11, 22_000, 131):
        ports = StackPorts.fixed(2, offset)
        wanted = [
            ports.issuer, ports.github, ports.gateway, ports.envoy_admin,
            *ports.grpc, *ports.metrics, *ports.webhook,
            *([ports.envoy_metrics] if ports.envoy_metrics else []),
        ]  # fmt: skip
        if all(_free(p) for p in wanted):
            return offset
    raise AssertionError("no free port offset")


def moved(body: str, offset: int) -> str:
    for port in DOC_PORTS:
        body = re.sub(rf"(?<=[:/]){port}\b", str(port + offset), body)
    return body.replace("octo-sts dev stack ", f"octo-sts dev stack --port-offset {offset} ")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of examples/repos whose policies trust the dev issuer on its moved port."""
    work = tmp_path / "w"
    shutil.copytree(EXAMPLE_REPOS, work / "examples" / "repos")
    return work


class Sessions:
    """Every block's process group, killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Orphans left in a finished block's group (the emulator started with `&`).
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    running = Sessions()
    try:
        yield running
    finally:
        running.stop()


def test_the_doc_marks_the_whole_walkthrough() -> None:
    found = steps(DOC.read_text())
    assert [s.kind for s in found].count("background") == 1
    joined = "\n".join(s.body for s in found)
    for command in ("setup manifest", "setup convert", "dev stack", "octo-sts probe"):
        assert command in joined, command


def test_the_emulator_walkthrough_runs_as_written(workdir: Path, sessions: Sessions) -> None:
    offset = free_offset()
    issuer = f"http://127.0.0.1:{8780 + offset}"
    for path in (workdir / "examples" / "repos").rglob("*.yaml"):
        text = path.read_text()
        if EXAMPLE_ISSUER in text:
            path.write_text(text.replace(EXAMPLE_ISSUER, issuer))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    outputs: list[str] = []
    for number, step in enumerate(steps(DOC.read_text()), 1):
        script = moved(step.body, offset)
        if step.kind == "run":
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            sessions.procs.append(proc)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (number, script, out.decode(), err.decode())
            outputs.append(out.decode())
            continue
        log = workdir / f"step{number}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=workdir,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        sessions.procs.append(proc)
        assert step.until is not None

        def ready(proc: subprocess.Popen[bytes] = proc, log: Path = log) -> bool:
            assert proc.poll() is None, log.read_text()
            return step.until in log.read_text()  # noqa: B023 - called in this iteration

        eventually_blocking(ready, f"step {number}: {step.until!r}", timeout=90)
        shown = log.read_text()
        # The stack's own demo: a real exchange through Envoy, as the App made from the manifest.
        assert "A real exchange through Envoy -> HTTP 200" in shown, shown
        outputs.append(shown)

    app = json.loads((workdir / ".selfhost" / "app" / "app.json").read_text())
    apps = json.loads(outputs[3])["apps"]  # GET /_emulator/apps: the new App, on octo-org
    (made,) = [a for a in apps if a["id"] == app["id"]]
    assert "octo-org" in made["installations"]
    assert json.loads(outputs[-2]) == {"ok": True}  # the signed ping through Envoy
    result = json.loads(outputs[-1].strip().splitlines()[-1])  # the probe's one line
    assert result["result"] == "pass", result
    assert result["exit_code"] == 0
    positive, negative = result["checks"]
    assert positive["permissions"] == {"contents": "read"}
    assert negative["code"] == "PERMISSION_DENIED"
    settings = dict(
        line.split("=", 1)
        for line in (workdir / ".selfhost" / "app" / "octo-sts.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert settings["GITHUB_APP_ID"] == str(app["id"])


def test_compose_accepts_the_env_file_convert_writes(tmp_path: Path) -> None:
    """Step 5's `docker-compose --env-file octo-sts.env` (validated, as no engine runs here)."""
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is required in CI (Debian package docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    app = ConvertedApp(
        app_id=123, slug="my-octo-sts", name="my-octo-sts", owner="acme",
        html_url="https://github.com/apps/my-octo-sts", permissions={}, events=(),
        pem=rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
        webhook_secret="0123abcd",
    )  # fmt: skip
    files = app_files(tmp_path / "app")
    check_writable(files, force=False)
    write_app_files(app, files, "https://api.github.com")
    env_file, key = files.env, files.key
    done = subprocess.run(
        [compose, "-f", str(REPO_ROOT / "docker-compose.yml"), "--env-file", str(env_file),
         "config"],
        env={**os.environ, "STS_DOMAIN": "sts.example.com", "OCTOSTS_CERTS_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    sts = config["services"]["sts"]["environment"]
    assert sts["GITHUB_APP_ID"] == "123"
    assert sts["STS_DOMAIN"] == "sts.example.com"
    assert config["secrets"]["github_app_key"]["file"] == str(key)
    # The webhook listener Envoy's /webhook route goes to (envoy/envoy.compose.yaml: sts:8090).
    assert sts["OCTOSTS_WEBHOOK_ADDR"] == "0.0.0.0:8090"
    assert sts["OCTOSTS_WEBHOOK_SECRETS"] == "0123abcd"
    envoy = (REPO_ROOT / "envoy" / "envoy.compose.yaml").read_text()
    assert '"socket_address": {"address": "sts", "port_value": 8090}' in envoy
