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
from typing import Self

from octosts.dev.envoy import free_port
from octosts.dev.processes import ChildProcess, log_tail

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
class RedisServer(ChildProcess):
    workdir: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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
                raise RedisUnavailable(f"redis-server exited: {log_tail(log_path)}")
            with contextlib.suppress(OSError):
                if _pong(self.port):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"redis-server not ready: {log_tail(log_path)}")
            time.sleep(0.02)  # the poll interval; the deadline decides

    def restart(self, timeout: float = 10.0) -> Self:
        """Start again on the same port (after ``kill`` or ``stop``)."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
