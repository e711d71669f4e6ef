"""A throw-away ``redis-server`` (Debian package) on a loopback port: tests, bench, dev fleets.

Nothing is persisted (no RDB, no AOF). ``start`` polls ``PING`` with a deadline; ``stop``
sends SIGTERM and waits, ``kill`` SIGKILLs (a Redis dying under load).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from octosts.dev.envoy import free_port
from octosts.dev.processes import kill_process, stop_process

BINARY = "redis-server"


class RedisUnavailable(RuntimeError):
    """redis-server is not installed, or did not start (the message has its log's tail)."""


def redis_binary() -> str | None:
    return shutil.which(BINARY)


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> Self:
        binary = redis_binary()
        if binary is None:
            raise RedisUnavailable("redis-server not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "redis.log"
        self._log = log_path.open("ab")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--loglevel", "warning"]
        # DEBUG SLEEP from loopback: how tests make a Redis that stops answering.
        args += ["--enable-debug-command", "local"]
        self._proc = subprocess.Popen(  # noqa: S603 - a fixed command line
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited: {self._tail(log_path)}")
            with contextlib.suppress(OSError):
                if _pong(self.port):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"redis-server not ready: {self._tail(log_path)}")
            time.sleep(0.02)  # the poll interval; the deadline decides

    def restart(self, timeout: float = 10.0) -> Self:
        """Start again on the same port (after ``kill`` or ``stop``)."""
        self.stop()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, mid-request."""
        if self._proc is not None:
            kill_process(self._proc)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _tail(path: Path) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-10:])
        return ""
