"""The one rule for stopping the dev stack's child processes (real child processes)."""

from __future__ import annotations

import signal
import subprocess
import sys

from octosts.dev.processes import kill_process, stop_process

# A child that says when its SIGTERM disposition is in place, then waits for its stdin to close.
_CHILD = """
import signal, sys
signal.signal(signal.SIGTERM, {handler})
print("ready", flush=True)
sys.stdin.read()
"""


def _child(handler: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(handler=handler)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_child_that_honours_sigterm_exits_by_it() -> None:
    with _child("signal.SIG_DFL") as proc:
        stop_process(proc, 10)
    assert proc.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    with _child("signal.SIG_IGN") as proc:
        stop_process(proc, 0.2)
    assert proc.returncode == -signal.SIGKILL


def test_stopping_or_killing_an_exited_child_changes_nothing() -> None:
    with _child("signal.SIG_DFL") as proc:
        kill_process(proc)
        assert proc.returncode == -signal.SIGKILL
        stop_process(proc, 10)
        kill_process(proc)
    assert proc.returncode == -signal.SIGKILL
