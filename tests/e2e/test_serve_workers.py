"""`octo-sts serve` with several worker processes on one port: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.stack import DevStack, StackPorts
from tests.e2e.conftest import start_stack
from tests.emulator import app_key, pem
from tests.polling import eventually

SUB = "repo:octo-org/demo:ref:refs/heads/main"
PEM = pem(app_key()).decode()
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"


@pytest.fixture
def workers_stack(tmp_path: Path) -> Iterator[DevStack]:
    stack = start_stack(tmp_path / "stack", replicas=1, extra_env={"OCTOSTS_WORKERS": "2"})
    try:
        yield stack
    finally:
        stack.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["/usr/bin/pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def _exchanges_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "octo_sts_exchanges":
            total += sum(s.value for s in family.samples if s.name == "octo_sts_exchanges_total")
    return total


async def test_two_workers_share_the_port_and_metrics_are_aggregated(
    workers_stack: DevStack,
) -> None:
    stack = workers_stack
    supervisor = stack._servers[0].popen
    workers = _children(supervisor.pid)
    # The supervisor spawns 2 workers (multiprocessing may add a resource tracker).
    assert len(workers) >= 2
    before = _exchanges_total(stack.ports.metrics[0])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc[0]}") as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        for _ in range(20):
            # A fresh channel per call would spread over workers; one channel still proves
            # the aggregation, since the parent reads every worker's values.
            reply = await stub.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=(("authorization", f"Bearer {stack.token(SUB, workflow_ref=WORKFLOW)}"),),
            )
            assert reply.token.startswith("ghs_")
    assert _exchanges_total(stack.ports.metrics[0]) - before == 20


async def test_sigterm_stops_every_worker_and_exits_zero(workers_stack: DevStack) -> None:
    proc = workers_stack._servers[0].popen
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    # The supervisor joined its workers before exiting; multiprocessing's resource tracker
    # follows once its pipe closes: none may stay running.
    await eventually(
        lambda: not any(_running(pid) for pid in workers), "every worker to exit", timeout=10
    )


def _running(pid: int) -> bool:
    """Alive and not a zombie (orphans are reparented to a PID 1 that may never reap them)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def test_a_worker_dying_on_its_own_takes_the_replica_down(workers_stack: DevStack) -> None:
    # A replica quietly serving on fewer workers is worse than a restart by the orchestrator.
    proc = workers_stack._servers[0].popen
    workers = [pid for pid in _children(proc.pid) if _is_worker(pid)]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=20) == 1


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline


async def test_sigterm_while_workers_are_still_starting_exits_zero(tmp_path: Path) -> None:
    # Workers that get the forwarded SIGTERM before installing their handlers die of the
    # signal itself: that is the shutdown asked for, not a failure.
    stack = DevStack(workdir=tmp_path / "stack", ports=StackPorts.free(1))
    env = {**os.environ, **stack.server_env(0), "OCTOSTS_WORKERS": "2"}
    env["GITHUB_APP_PRIVATE_KEY"] = PEM
    env.pop("GITHUB_APP_PRIVATE_KEY_FILE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "octosts", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(
            lambda: len([p for p in _children(proc.pid) if _is_worker(p)]) >= 2,
            "both workers to start",
            timeout=20,
        )
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_workers_exit_when_the_supervisor_is_killed(workers_stack: DevStack) -> None:
    # SIGKILL gives the supervisor no chance to forward anything: the workers must notice on
    # their own, or they keep serving the port and a restarted replica shares it with them.
    proc = workers_stack._servers[0].popen
    workers = [pid for pid in _children(proc.pid) if _is_worker(pid)]
    assert len(workers) == 2
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        await eventually(
            lambda: not any(_running(pid) for pid in workers), "every worker to exit", timeout=20
        )
    finally:
        for pid in workers:  # the fixture stops the supervisor only
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
