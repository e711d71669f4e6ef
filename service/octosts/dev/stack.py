"""The whole local stack as real processes: dev issuer, GitHub emulator, STS replicas, Envoy.

``make run`` (``octo-sts dev stack``) and the end-to-end tests start the same
thing, so what the tests prove is what a user sees. Every process is started
with the ``octo-sts`` CLI, polled for readiness with a deadline (never a
sleep) and stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts.dev.certs import CertPaths, ensure_dev_certs
from octosts.dev.edge_jwt import DEFAULT_CLOCK_SKEW_S, EdgeJwt, clock_skew, discover
from octosts.dev.envoy import (
    DEFAULT_EGRESS_ROUTES,
    DEFAULT_MAX_CONCURRENT_RPCS,
    EgressRoute,
    EnvoyParams,
    EnvoyProcess,
    Upstream,
    free_ports,
    render_config,
)
from octosts.dev.issuer import load_state, mint_token
from octosts.dev.processes import stop_process
from octosts.dev.tenant_limits import TenantLimits

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_REPOS = REPO_ROOT / "examples" / "repos"
DESCRIPTOR_SET = REPO_ROOT / "build" / "octosts.pb"
# The examples name this issuer; the stack rewrites it to the issuer it starts.
EXAMPLE_ISSUER = "http://127.0.0.1:8780"
DEFAULT_DOMAIN = "octo-sts.local"
# Signs GitHub webhook deliveries in the dev stack only (a real deployment sets its own).
DEV_WEBHOOK_SECRET = "octo-sts-dev-webhook-secret"  # noqa: S105 - dev stack only
APP_ID = 1  # the first GitHub App; a stack with several Apps numbers them 1, 2, 3...
# The egress gateway's routes in the dev stack: the default ones, and one with scope and identity
# fixed (a client that cannot send headers, e.g. gh's porcelain commands, uses such a route).
FIXED_EGRESS_ROUTE = EgressRoute("/fixed/octo-org/demo/ci/", scope="octo-org/demo", identity="ci")
EGRESS_ROUTES = (*DEFAULT_EGRESS_ROUTES, FIXED_EGRESS_ROUTE)
# How long Envoy waits for a Check, all tries together. The production default (0.5 s) is for
# replicas with cores of their own; this stack shares a developer's (or CI's) few cores with
# everything else, where a replica is at times descheduled for longer than that: the Check was
# cut (503, nothing retried: no time left), under load the first exchange of a fresh stack.
AUTHZ_TIMEOUT_S = 2.0
# The highest fixed port (9902, and 9464 + 8 replicas) stays below 65536.
MAX_PORT_OFFSET = 55_000


class StackError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class StackPorts:
    issuer: int
    github: int
    grpc: tuple[int, ...]
    metrics: tuple[int, ...]
    gateway: int
    envoy_admin: int
    webhook: tuple[int, ...] = ()
    envoy_metrics: int | None = None  # Envoy's internal /metrics listener

    @classmethod
    def fixed(cls, replicas: int = 2, offset: int = 0) -> StackPorts:
        """The documented ports of ``make run``, each moved by ``offset`` (several stacks on
        one machine). Raises ValueError when that leaves the port range."""
        if not 0 <= offset <= MAX_PORT_OFFSET:
            raise ValueError(f"port offset must be 0..{MAX_PORT_OFFSET}")
        return cls(
            issuer=8780 + offset,
            github=8781 + offset,
            grpc=tuple(8080 + offset + 2 * i for i in range(replicas)),
            metrics=tuple(9464 + offset + i for i in range(replicas)),
            gateway=8443 + offset,
            envoy_admin=9901 + offset,
            webhook=tuple(8090 + offset + i for i in range(replicas)),
            envoy_metrics=9902 + offset,
        )

    @classmethod
    def free(cls, replicas: int = 2) -> StackPorts:
        """Free loopback ports, all distinct (tests)."""
        ports = iter(free_ports(5 + 3 * replicas))
        return cls(
            issuer=next(ports),
            github=next(ports),
            grpc=tuple(next(ports) for _ in range(replicas)),
            metrics=tuple(next(ports) for _ in range(replicas)),
            gateway=next(ports),
            envoy_admin=next(ports),
            webhook=tuple(next(ports) for _ in range(replicas)),
            envoy_metrics=next(ports),
        )


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.popen, timeout)
        self.log.close()


def _deadline_poll(what: str, check: Any, timeout: float, proc: _Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.popen.poll() is not None:
            raise StackError(f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            tail = proc.tail() if proc is not None else ""
            raise StackError(f"{what} not ready after {timeout:.0f} s\n{tail}")
        time.sleep(0.05)  # poll interval, not a readiness guess: the deadline decides


def _http_ok(url: str, *, verify: Any = True) -> bool:
    return httpx.get(url, timeout=1.0, verify=verify).status_code == 200


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class DevStack:
    """Start with ``start()``; stop with ``stop()`` (or use as a context manager)."""

    workdir: Path
    ports: StackPorts
    repos: Path = EXAMPLE_REPOS
    domain: str = DEFAULT_DOMAIN
    base_id: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    github_args: tuple[str, ...] = ()
    # "host:port" of an OTLP/gRPC collector: traces on for Envoy and every replica.
    otlp_collector: str = ""
    # GitHub Apps the emulator serves and the replicas mint with (docs/github-apps.md).
    apps: int = 1
    # The GitHub API of an emulator already running (docs/self-hosting.md): none is started,
    # and the App the replicas run as comes from ``extra_env`` (GITHUB_APP_ID, ...).
    github: str | None = None
    # Per-tenant rate limits at the edge (octosts.dev.tenant_limits); None: none.
    tenant_limits: TenantLimits | None = None
    # Edge JWT verification (octosts.dev.edge_jwt) for the replicas' exact allowlisted
    # issuers (the dev issuer unless ``extra_env`` sets OCTOSTS_ISSUER_ALLOWLIST).
    edge_jwt: bool = False
    _procs: list[_Proc] = field(default_factory=list)
    _servers: dict[int, _Proc] = field(default_factory=dict)
    envoy: EnvoyProcess | None = None
    certs: CertPaths | None = None

    # -- addresses -----------------------------------------------------------------------

    @property
    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.issuer}"

    @property
    def github_url(self) -> str:
        return self.github or f"http://127.0.0.1:{self.ports.github}"

    @property
    def gateway_url(self) -> str:
        return f"https://localhost:{self.ports.gateway}"

    @property
    def ca_cert(self) -> Path:
        assert self.certs is not None
        return self.certs.ca_cert

    @property
    def app_key(self) -> Path:
        return self.workdir / "app.pem"

    def app_keys(self) -> dict[int, Path]:
        """Every App's key file, by App id (the first is ``app_key``)."""
        others = {APP_ID + i: self.workdir / f"app{APP_ID + i}.pem" for i in range(1, self.apps)}
        return {APP_ID: self.app_key, **others}

    def _apps_env(self) -> dict[str, str]:
        if self.github is not None:
            return {}  # the App of the GitHub given comes with extra_env
        if self.apps == 1:
            return {"GITHUB_APP_ID": str(APP_ID), "GITHUB_APP_PRIVATE_KEY_FILE": str(self.app_key)}
        listed = ", ".join(
            f"{{id: {a}, private_key_file: {json.dumps(str(k))}}}"
            for a, k in self.app_keys().items()
        )
        return {"GITHUB_APPS": f"[{listed}]"}

    def client_tls(self) -> ssl.SSLContext:
        """A client context trusting the stack's CA.

        An SSLContext, not a path: httpx deprecates ``verify=<str>``, and under
        ``filterwarnings=error`` the warning would be swallowed by a poll as "not ready".
        """
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def token(self, sub: str, aud: str | None = None, ttl: int = 600, **claims: Any) -> str:
        """A token signed by the running dev issuer (like ``octo-sts dev token``).

        Each has its own ``jti``, as a CI provider's tokens do: with the same claims in the same
        second RS256 signs the same bytes, and caches keyed by the token (verified tokens, held
        GitHub tokens) would take a new token for one seen before.
        """
        state = load_state(self.workdir / "dev-issuer")
        if state is None:
            raise StackError("dev issuer state missing")
        body = {"sub": sub, "aud": aud or self.domain, "jti": uuid.uuid4().hex, **claims}
        return mint_token(state.key, state.issuer_url, body, ttl=ttl)

    def pids(self) -> dict[str, int]:
        """The running processes by name (``issuer``, ``github``, ``sts-0``..., ``envoy``)."""
        found = {proc.name: proc.popen.pid for proc in self._procs if proc.popen.poll() is None}
        if self.envoy is not None and self.envoy.pid is not None:
            found["envoy"] = self.envoy.pid
        return found

    # -- lifecycle -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
        popen = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "octosts", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
        )
        proc = _Proc(name, popen, log_path, log)
        self._procs.append(proc)
        return proc

    def _seed_repos(self) -> Path:
        """Copy the example repos with their issuer pointed at this stack's issuer."""
        target = self.workdir / "repos"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.repos, target)
        for path in target.rglob("*.yaml"):
            text = path.read_text()
            if EXAMPLE_ISSUER in text:
                path.write_text(text.replace(EXAMPLE_ISSUER, self.issuer_url))
        return target

    def server_env(self, index: int) -> dict[str, str]:
        return {
            "STS_DOMAIN": self.domain,
            **self._apps_env(),
            "GITHUB_BASE_URL": self.github_url,
            "OCTOSTS_GRPC_ADDR": f"127.0.0.1:{self.ports.grpc[index]}",
            "OCTOSTS_METRICS_ADDR": f"127.0.0.1:{self.ports.metrics[index]}",
            "OCTOSTS_INSECURE_ISSUERS": self.issuer_url,
            **({"OCTOSTS_ISSUER_ALLOWLIST": self.issuer_url} if self.edge_jwt else {}),
            "OCTOSTS_LOG_FORMAT": "json",
            "OCTOSTS_SHUTDOWN_GRACE_SECONDS": "2",
            **self._otel_env(),
            **self._webhook_env(index),
            **self.extra_env,
        }

    def _otel_env(self) -> dict[str, str]:
        if not self.otlp_collector:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{self.otlp_collector}",
            "OTEL_SERVICE_NAME": "octo-sts",
        }

    def _webhook_env(self, index: int) -> dict[str, str]:
        if index >= len(self.ports.webhook):
            return {}
        return {
            "OCTOSTS_WEBHOOK_ADDR": f"127.0.0.1:{self.ports.webhook[index]}",
            "OCTOSTS_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET,
        }

    def start_server(self, index: int, timeout: float = 30.0) -> None:
        proc = self._spawn(f"sts-{index}", ["serve"], self.server_env(index))
        self._servers[index] = proc
        port = self.ports.grpc[index]
        _deadline_poll(f"sts replica {index}", lambda: _grpc_serving(port), timeout, proc)

    def stop_server(self, index: int, *, kill: bool = False) -> None:
        proc = self._servers.pop(index)
        if kill:
            proc.popen.kill()
            proc.popen.wait(10)
            proc.log.close()
        else:
            proc.stop()
        self._procs.remove(proc)

    def start(self, timeout: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.certs = ensure_dev_certs(self.workdir / "certs")
        issuer = self._spawn_issuer()
        if self.github is None:
            self._start_github(timeout)
        self._wait_issuer(issuer, timeout)
        for index in range(len(self.ports.grpc)):
            self.start_server(index, timeout)
        self._start_envoy(timeout)

    def _start_github(self, timeout: float) -> None:
        github = self._spawn(
            "github",
            [
                "dev", "github",
                "--listen", f"127.0.0.1:{self.ports.github}",
                "--repos", str(self._seed_repos()),
                "--app-key", str(self.app_key),
                "--create-key",
                "--app-id", str(APP_ID),
                *(f"--app=id={a},key={k}" for a, k in self.app_keys().items() if a != APP_ID),
                *self.github_args,
            ],
        )  # fmt: skip
        health = f"{self.github_url}/_emulator/health"
        _deadline_poll("GitHub emulator", lambda: _http_ok(health), timeout, github)

    def _spawn_issuer(self) -> _Proc:
        return self._spawn(
            "issuer",
            [
                "dev", "issuer",
                "--listen", f"127.0.0.1:{self.ports.issuer}",
                "--state-dir", str(self.workdir / "dev-issuer"),
                "--issuer-url", self.issuer_url,
            ],
        )  # fmt: skip

    def _wait_issuer(self, issuer: _Proc, timeout: float) -> None:
        discovery = f"{self.issuer_url}/.well-known/openid-configuration"
        _deadline_poll("dev issuer", lambda: _http_ok(discovery), timeout, issuer)

    def stop_issuer(self) -> None:
        """Stop the dev issuer (the replicas keep the keys they have cached)."""
        proc = next(p for p in self._procs if p.name == "issuer")
        proc.stop()
        self._procs.remove(proc)

    def start_issuer(self, timeout: float = 30.0) -> None:
        """Start the dev issuer again, with the same keys (its state directory)."""
        self._wait_issuer(self._spawn_issuer(), timeout)

    def _start_envoy(self, timeout: float) -> None:
        assert self.certs is not None
        if not DESCRIPTOR_SET.exists():
            raise StackError(f"{DESCRIPTOR_SET} missing: run `make proto`")
        params = EnvoyParams(
            listen_host="127.0.0.1",
            listen_port=self.ports.gateway,
            admin_port=self.ports.envoy_admin,
            cert_path=self.certs.cert,
            key_path=self.certs.key,
            descriptor_path=DESCRIPTOR_SET,
            upstreams=[Upstream("127.0.0.1", port) for port in self.ports.grpc],
            webhook_upstreams=[Upstream("127.0.0.1", port) for port in self.ports.webhook],
            access_log_path=str(self.workdir / "logs" / "envoy-access.log"),
            metrics_port=self.ports.envoy_metrics,
            health_check_interval_s=1.0,
            authz_timeout_s=AUTHZ_TIMEOUT_S,
            github_api_url=self.github_url,
            egress_routes=EGRESS_ROUTES,
            otlp_collector=Upstream.parse(self.otlp_collector) if self.otlp_collector else None,
            replica_capacity=self._replica_capacity(),
            tenant_limits=self.tenant_limits,
            edge_jwt=self._edge_jwt(),
        )
        config = self.workdir / "envoy.yaml"
        config.write_text(render_config(params))
        self.envoy = EnvoyProcess(
            config,
            admin_port=self.ports.envoy_admin,
            log_path=self.workdir / "logs" / "envoy.log",
            base_id=self.base_id or None,
        )
        self.envoy.start(timeout=timeout)
        # Ready means Envoy is up *and* sees a healthy replica (active health checks).
        ca = self.client_tls()
        _deadline_poll(
            "gateway", lambda: _http_ok(f"{self.gateway_url}/healthz", verify=ca), timeout
        )

    def _edge_jwt(self) -> EdgeJwt | None:
        """Providers for the replicas' exact allowlisted issuers, their JWKS URLs discovered
        now, and the replicas' leeway as Envoy's clock skew."""
        if not self.edge_jwt:
            return None
        env = {**os.environ, **self.server_env(0)}
        issuers = [i.strip() for i in env.get("OCTOSTS_ISSUER_ALLOWLIST", "").split(",")]
        leeway = env.get("OCTOSTS_OIDC_LEEWAY_SECONDS")
        try:
            # Parsed as the replicas parse it: a value they refuse is refused here, clearly.
            skew = DEFAULT_CLOCK_SKEW_S if leeway is None else clock_skew(leeway)
            return EdgeJwt(discover(i for i in issuers if i), clock_skew_s=skew)
        except ValueError as exc:  # SettingsError too
            raise StackError(f"edge JWT verification: {exc}") from exc

    def _replica_capacity(self) -> int:
        """Calls one replica takes at once, as its settings say (Envoy's circuit breakers)."""
        env = {**os.environ, **self.server_env(0)}
        per_worker = int(env.get("OCTOSTS_MAX_CONCURRENT_RPCS", DEFAULT_MAX_CONCURRENT_RPCS))
        return per_worker * int(env.get("OCTOSTS_WORKERS", "1"))

    def stop(self) -> None:
        if self.envoy is not None:
            with contextlib.suppress(Exception):
                self.envoy.stop()
            self.envoy = None
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()
        self._servers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
