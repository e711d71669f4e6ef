"""Stopping the dev stack's child processes: one rule for every server it starts."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import IO, Any


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


def log_tail(path: Path, lines: int = 10) -> str:
    """The last ``lines`` of a child's log: what an error saying it did not start shows."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class ChildProcess:
    """A server run as a child process writing to a log file: its pid, kill and stop.

    Subclasses start it (setting ``_proc`` and ``_log``); stopping follows ``stop_process``.
    """

    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL: the server gone at once, mid-request."""
        if self._proc is not None:
            kill_process(self._proc)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None
