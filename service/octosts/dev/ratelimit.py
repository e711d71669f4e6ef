"""The real Envoy global rate-limit service (``envoyproxy/ratelimit``, Go) as a child process.

Built by ``scripts/install-ratelimit.sh`` (``make ratelimit``) into ``.tools/bin/ratelimit``
at a pinned version. It reads the per-tenant limits file (``octosts.dev.tenant_limits``,
``envoy/ratelimits.yaml``) and counts in the fleet's Redis. ``start`` polls its
``/healthcheck`` with a deadline; ``stop`` sends SIGTERM and waits, ``kill`` SIGKILLs.

It refuses to start while its Redis is down (start Redis first); once running, a Redis
failure makes its answers errors, which Envoy treats as "allowed" (fail open).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from octosts.dev.envoy import free_port
from octosts.dev.processes import ChildProcess, log_tail
from octosts.dev.tenant_limits import DOMAIN

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILT = REPO_ROOT / ".tools" / "bin" / "ratelimit"
# Keys of the service's counters in the shared Redis (beside the STS's own, "octosts:...").
KEY_PREFIX = "octosts-ratelimit:"


class RateLimitUnavailable(RuntimeError):
    """The binary is missing, or the service did not start (the message has its log's tail)."""


def ratelimit_binary() -> str | None:
    """``.tools/bin/ratelimit`` when built, else a ``ratelimit`` on PATH, else None."""
    if os.access(BUILT, os.X_OK):
        return str(BUILT)
    return shutil.which("ratelimit")


@dataclass
class RateLimitService(ChildProcess):
    """One ``ratelimit`` process: ``limits`` (its config file), counting in ``redis``
    (``host:port``). Its gRPC port is what Envoy's ``ratelimit`` cluster points at."""

    workdir: Path
    limits: Path
    redis: str
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    debug_port: int = field(default_factory=free_port)

    def _env(self, runtime: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "LOG_LEVEL": "warn",
            "LOG_FORMAT": "json",
            "USE_STATSD": "false",
            "HOST": "127.0.0.1",
            "PORT": str(self.http_port),
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.grpc_port),
            "DEBUG_HOST": "127.0.0.1",
            "DEBUG_PORT": str(self.debug_port),
            "RUNTIME_ROOT": str(runtime),
            "RUNTIME_SUBDIRECTORY": "",
            "RUNTIME_APPDIRECTORY": "config",
            "RUNTIME_WATCH_ROOT": "false",
            "REDIS_SOCKET_TYPE": "tcp",
            "REDIS_URL": self.redis,
            # Its default is 10 s; Envoy gives up (and lets the request through) far sooner.
            "REDIS_TIMEOUT": "500ms",
            "CACHE_KEY_PREFIX": KEY_PREFIX,
        }

    def start(self, timeout: float = 15.0) -> Self:
        binary = ratelimit_binary()
        if binary is None:
            raise RateLimitUnavailable("ratelimit not built: run `make ratelimit`")
        runtime = self.workdir / "runtime"
        (runtime / "config").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.limits, runtime / "config" / f"{DOMAIN}.yaml")
        log_path = self.workdir / "ratelimit.log"
        self._log = log_path.open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - our own build, no arguments
            [binary],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env(runtime),
        )
        health = f"http://127.0.0.1:{self.http_port}/healthcheck"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RateLimitUnavailable(f"ratelimit exited: {log_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RateLimitUnavailable(f"ratelimit not ready: {log_tail(log_path)}")
            time.sleep(0.05)  # the poll interval; the deadline decides
