"""``octo-sts probe`` against the live stack: dev issuer, GitHub emulator, replicas, Envoy (TLS).

The prober's policies are examples/repos/octo-org/prober's (``prober`` grants contents: read to
the prober's service account, ``prober-negative`` names another one). Each run is the real CLI
in a subprocess: its exit code, its one JSON line, its metrics; the GitHub emulator's token
ledger shows what became of every token minted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octosts.dev.envoy import free_port
from octosts.dev.stack import DevStack
from tests.polling import eventually_blocking, first_line

pytestmark = pytest.mark.e2e

PROBER_SUB = "system:serviceaccount:octo-sts:octo-sts-prober"
SCOPE = "octo-org/prober"


@pytest.fixture
def token_file(stack: DevStack, tmp_path: Path) -> Path:
    """The prober's OIDC token where a Kubernetes projected token would be."""
    path = tmp_path / "token"
    path.write_text(stack.token(PROBER_SUB))
    return path


def probe_args(stack: DevStack, token_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "octosts", "probe",
        "--endpoint", stack.gateway_url,
        "--ca-file", str(stack.ca_cert),
        "--token-source", f"file:{token_file}",
        "--github-api", stack.github_url,
        "--scope", SCOPE,
        *extra,
    ]  # fmt: skip


def probe(stack: DevStack, token_file: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        probe_args(stack, token_file, *extra),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)  # one JSON line per run
    result = json.loads(lines[0])
    assert result["exit_code"] == done.returncode
    return done.returncode, result, done.stderr


BOTH = (
    "--identity",
    "prober",
    "--expect",
    "contents=read",
    "--negative-identity",
    "prober-negative",
)


class Ledger:
    """The emulator's token ledger, from a point on."""

    def __init__(self, stack: DevStack) -> None:
        self._url = f"{stack.github_url}/_emulator/tokens"
        self._start = max((t["id"] for t in self._tokens()), default=0)

    def _tokens(self) -> list[dict[str, Any]]:
        tokens: list[dict[str, Any]] = httpx.get(self._url, timeout=5).json()["tokens"]
        return tokens

    def minted(self) -> list[dict[str, Any]]:
        """Tokens minted for the prober's repository since this ledger was made (the service's
        own, to read policies, cover every repository)."""
        return [
            t for t in self._tokens() if t["id"] > self._start and t["repositories"] == ["prober"]
        ]


def test_positive_and_negative_pass_and_the_probe_token_is_revoked(
    stack: DevStack, token_file: Path
) -> None:
    ledger = Ledger(stack)
    code, result, stderr = probe(stack, token_file, *BOTH)
    assert code == 0, result
    assert result["result"] == "pass"
    positive, negative = result["checks"]
    assert positive["check"] == "positive"
    assert positive["permissions"] == {"contents": "read"}
    assert positive["revoked"] is True
    assert negative["code"] == "PERMISSION_DENIED"
    (minted,) = ledger.minted()  # the refused exchange minted nothing
    assert minted["repositories"] == ["prober"]
    assert minted["state"] == "revoked"
    assert stderr == ""


def test_other_permissions_than_expected_exit_1_and_the_token_is_still_revoked(
    stack: DevStack, token_file: Path
) -> None:
    ledger = Ledger(stack)
    code, result, _ = probe(
        stack, token_file, "--identity", "prober", "--expect", "contents=read",
        "--expect", "issues=read", "--transport", "http",
    )  # fmt: skip
    assert code == 1
    (check,) = result["checks"]
    assert check["problem"] == "permissions differ: issues expected read, granted none"
    assert [t["state"] for t in ledger.minted()] == ["revoked"]


def test_a_negative_exchange_allowed_exits_1_and_its_token_is_revoked(
    stack: DevStack, token_file: Path
) -> None:
    ledger = Ledger(stack)
    # "prober" does match the prober's token: as a negative check it must be the alarm.
    code, result, _ = probe(stack, token_file, "--negative-identity", "prober")
    assert code == 1
    (check,) = result["checks"]
    assert check["problem"] == "exchange unexpectedly allowed"
    assert check["revoked"] is True
    assert [t["state"] for t in ledger.minted()] == ["revoked"]


def test_service_down_exits_6_for_both_checks(stack: DevStack, token_file: Path) -> None:
    args = probe_args(stack, token_file, *BOTH)
    args[args.index("--endpoint") + 1] = f"https://localhost:{free_port()}"
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout)
    assert done.returncode == 6
    assert [c["code"] for c in result["checks"]] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert result["result"] == "fail"


def test_no_token_exits_3(stack: DevStack, tmp_path: Path) -> None:
    code, result, _ = probe(stack, tmp_path / "missing", *BOTH)
    assert code == 3
    assert all("no OIDC token" in c["problem"] for c in result["checks"])


def test_revocation_failing_exits_6(stack: DevStack, token_file: Path) -> None:
    args = probe_args(stack, token_file, "--identity", "prober", "--expect", "contents=read")
    args[args.index("--github-api") + 1] = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    (check,) = json.loads(done.stdout)["checks"]
    assert done.returncode == 6
    assert check["revoked"] is False
    assert "could not be revoked" in check["problem"]


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_textfile_for_node_exporter(stack: DevStack, token_file: Path, tmp_path: Path) -> None:
    textfile = tmp_path / "octo_sts_probe.prom"
    code, _, _ = probe(stack, token_file, *BOTH, "--textfile", str(textfile))
    assert code == 0
    found = metrics(textfile.read_text())
    assert found[("octo_sts_probe_success", (("check", "positive"),))] == 1
    assert found[("octo_sts_probe_success", (("check", "negative"),))] == 1
    # A failing run rewrites it.
    code, _, _ = probe(
        stack, token_file, "--negative-identity", "prober", "--textfile", str(textfile)
    )
    assert code == 1
    found = metrics(textfile.read_text())
    assert found[("octo_sts_probe_success", (("check", "negative"),))] == 0
    assert ("octo_sts_probe_success", (("check", "positive"),)) not in found


@pytest.fixture
def loop(stack: DevStack, token_file: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    args = probe_args(stack, token_file, *BOTH, "--interval", "0.2")
    proc = subprocess.Popen(
        [*args, "--metrics-addr", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_loop_serves_metrics_and_stops_on_sigterm(
    loop: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = loop
    assert json.loads(first_line(proc, "a JSON line"))["result"] == "pass"

    def runs() -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            return 0.0
        key = ("octo_sts_probe_runs_total", (("check", "positive"), ("result", "pass")))
        return metrics(text).get(key, 0.0)

    eventually_blocking(lambda: runs() >= 2, "two passing runs counted on /metrics", timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
