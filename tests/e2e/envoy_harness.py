"""A real Envoy over real TLS in front of an in-process grpc.aio server.

The server hosts the real ext_authz servicer (with a fake verifier), small
stand-ins for both STS services that record what reached them, and gRPC
health. Envoy is started in a worker thread so the event loop keeps serving
its health checks and Check calls while we wait for ``/ready``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.certs import CertPaths, ensure_dev_certs
from octosts.dev.envoy import EnvoyParams, EnvoyProcess, Upstream, free_port, render_config
from octosts.domain.errors import TokenSignatureInvalid
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import VerifiedToken
from octosts.transport.ext_authz import AuthorizationServicer, add_to_server

REPO = Path(__file__).resolve().parents[2]
DESCRIPTORS = REPO / "build" / "octosts.pb"
GOOD_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZXBvOm9jdG8vYXBwIn0.Z29vZC1zaWduYXR1cmU"
GITHUB_TOKEN = "ghs_standInInstallationToken0001"
SUBJECT = "repo:octo/app:ref:refs/heads/main"
ISSUER = "https://issuer.example"

_base_ids = itertools.count()


def unique_base_id() -> int:
    # Distinct across xdist-style parallel processes (pid) and instances in one process.
    return (os.getpid() % 40_000) * 100 + next(_base_ids) % 100


class FakeVerifier:
    """Accepts GOOD_TOKEN only."""

    def __init__(self) -> None:
        self.calls = 0

    async def verify(self, bearer: str) -> VerifiedToken:
        self.calls += 1
        if bearer != GOOD_TOKEN:
            raise TokenSignatureInvalid("signature does not verify")
        return VerifiedToken(ISSUER, SUBJECT, ("octo-sts",), 4_000_000_000.0, {"sub": SUBJECT})


_: TokenVerifier = FakeVerifier()


@dataclass
class StandInSts:
    """octosts.v1.SecurityTokenService stand-in: records the metadata of every call."""

    calls: list[dict[str, str]] = field(default_factory=list)

    async def Exchange(self, request: Any, context: Any) -> Any:
        self.calls.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        if request.scope == "deny/me":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "policy_denied")
        return sts_pb2.ExchangeResponse(
            token=GITHUB_TOKEN,
            access_token=GITHUB_TOKEN,
            token_type="bearer",
            expires_in=3599,
            permissions={"contents": "read"},
            repositories=[request.scope.partition("/")[2]] if "/" in request.scope else [],
        )


@dataclass
class StandInChainguard:
    calls: int = 0

    async def Exchange(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return oidc_pb2.RawToken(token=f"{GITHUB_TOKEN}:{request.scope}")


@dataclass
class Upstreams:
    server: Any
    port: int
    verifier: FakeVerifier
    sts: StandInSts
    chainguard: StandInChainguard
    health: Any


async def start_upstream() -> Upstreams:
    server = grpc.aio.server()
    verifier, sts, chainguard = FakeVerifier(), StandInSts(), StandInChainguard()
    health = grpc_health.aio.HealthServicer()
    add_to_server(server, AuthorizationServicer(verifier))
    sts_pb2_grpc.add_SecurityTokenServiceServicer_to_server(sts, server)
    oidc_pb2_grpc.add_SecurityTokenServiceServicer_to_server(chainguard, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return Upstreams(server, port, verifier, sts, chainguard, health)


@dataclass
class Edge:
    envoy: EnvoyProcess
    port: int
    certs: CertPaths
    config_path: Path
    access_log: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca_cert))

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.ssl_context(), timeout=10.0)

    def grpc_channel(self) -> Any:
        creds = grpc.ssl_channel_credentials(self.certs.ca_cert.read_bytes())
        return grpc.aio.secure_channel(f"localhost:{self.port}", creds)


def write_config(tmp_path: Path, upstream_ports: list[int]) -> tuple[EnvoyParams, Path, CertPaths]:
    certs = ensure_dev_certs(tmp_path / "certs")
    params = EnvoyParams(
        listen_host="127.0.0.1",
        listen_port=free_port(),
        admin_port=free_port(),
        cert_path=certs.cert,
        key_path=certs.key,
        descriptor_path=DESCRIPTORS,
        upstreams=[Upstream("127.0.0.1", p) for p in upstream_ports],
        access_log_path=str(tmp_path / "access.log"),
        authz_timeout_s=2.0,
        health_check_interval_s=1.0,
    )
    config_path = tmp_path / "envoy.yaml"
    config_path.write_text(render_config(params))
    return params, config_path, certs


@asynccontextmanager
async def running_edge(tmp_path: Path, upstream_ports: list[int]) -> AsyncIterator[Edge]:
    params, config_path, certs = write_config(tmp_path, upstream_ports)
    envoy = EnvoyProcess(
        config_path,
        admin_port=params.admin_port,
        log_path=tmp_path / "envoy.log",
        base_id=unique_base_id(),
    )
    try:
        await asyncio.to_thread(envoy.start)
        yield Edge(envoy, params.listen_port, certs, config_path, tmp_path / "access.log")
    finally:
        await asyncio.to_thread(envoy.stop)
