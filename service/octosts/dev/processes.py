"""Stopping the dev stack's child processes: one rule for every server it starts."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds. Idempotent."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def kill_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL: the process gone at once (tests of a dependency dying mid-request)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout)
