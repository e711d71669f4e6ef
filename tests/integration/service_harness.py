"""An in-process Octo STS on a real port, with a real dev issuer and the GitHub emulator.

Everything talks over real sockets: the service fetches discovery/JWKS from
the issuer over HTTP and calls the emulator's REST API; tests call the service
with a real gRPC channel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.app import App, build_app
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.settings import Settings
from tests.emulator import APP_ID, app_key, pem
from tests.fakes import FakeClock

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

DOMAIN = "octo-sts.test"
SUBJECT = "repo:octo-org/demo:ref:refs/heads/main"


def repo_policy(issuer: str, **extra: str) -> bytes:
    lines = [f"issuer: {issuer}", f"subject: {SUBJECT}", "permissions:", "  contents: read"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\n".join(lines) + "\n").encode()


def org_policy(issuer: str) -> bytes:
    return (
        f"issuer: {issuer}\n"
        'subject_pattern: "repo:octo-org/.*"\n'
        "permissions:\n  contents: read\n  issues: write\n"
        "repositories: [demo]\n"
    ).encode()


@dataclass
class Stack:
    issuer: DevIssuer
    github: GitHubEmulator
    app: App
    port: int
    clock: FakeClock
    channel: grpc.aio.Channel

    @property
    def stub(self) -> Any:
        return sts_pb2_grpc.SecurityTokenServiceStub(self.channel)

    @property
    def chainguard(self) -> Any:
        return oidc_pb2_grpc.SecurityTokenServiceStub(self.channel)

    def token(self, **claims: Any) -> str:
        base: dict[str, Any] = {"sub": SUBJECT, "aud": DOMAIN}
        base.update(claims)
        return self.issuer.mint(base, iat=int(self.clock.now()), ttl=600)

    async def exchange(
        self, scope: str = "octo-org/demo", identity: str = "ci", token: str | None = None
    ) -> sts_pb2.ExchangeResponse:
        bearer = token if token is not None else self.token()
        return await self.stub.Exchange(
            sts_pb2.ExchangeRequest(scope=scope, identity=identity),
            metadata=(("authorization", f"Bearer {bearer}"),),
        )

    def github_calls(self) -> int:
        return len(self.github.calls())

    async def chainguard_exchange(self, token: str, scope: str, identity: str) -> Any:
        return await self.chainguard.Exchange(
            oidc_pb2.ExchangeRequest(scope=scope, identity=identity),
            metadata=(("authorization", f"Bearer {token}"),),
        )


@contextmanager
def servers(
    tmp_path: Path,
    clock: FakeClock | None = None,
    app_public_key: rsa.RSAPublicKey | None = None,
) -> Iterator[tuple[DevIssuer, GitHubEmulator]]:
    """The dev issuer and the emulator (on ``clock`` when given: share it with ``running``).

    ``app_public_key``: the App key the emulator trusts (a KMS key's public half), if not the
    test key of tests/emulator.py.
    """
    issuer = DevIssuer().start()
    issuer.add_key("rsa")
    trusted = app_public_key or app_key().public_key()
    github = GitHubEmulator(app_public_key=trusted, app_id=APP_ID, clock=clock)
    github.start()
    try:
        github.add_owner("octo-org")
        for repo in ("demo", "other", ".github"):
            github.add_repo("octo-org", repo)
        github.set_file(
            "octo-org", "demo", ".github/chainguard/ci.sts.yaml", repo_policy(issuer.url)
        )
        github.set_file(
            "octo-org", ".github", ".github/chainguard/ci.sts.yaml", org_policy(issuer.url)
        )
        yield issuer, github
    finally:
        github.stop()
        issuer.stop()


def settings_for(issuer: DevIssuer, github: GitHubEmulator, **overrides: Any) -> Settings:
    base = Settings(
        sts_domain=DOMAIN,
        github_app_id=APP_ID,
        github_app_private_key=pem(app_key()).decode(),
        grpc_addr="127.0.0.1:0",
        github_base_url=github.url,
        insecure_issuers=(issuer.url,),
        # Generous: tests are not about speed, and on a loaded machine 50 concurrent exchanges
        # (issuer, emulator and service share this process's GIL) need more than 2 s.
        # Tests of timeouts set their own.
        outbound_timeout_seconds=15.0,
    )
    return dataclasses.replace(base, **overrides)


@asynccontextmanager
async def running(
    issuer: DevIssuer, github: GitHubEmulator, clock: FakeClock | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    import time  # noqa: PLC0415

    clock = clock or FakeClock(start=time.time())
    app = build_app(
        settings_for(issuer, github, **overrides),
        clock=clock,
        registry=CollectorRegistry(),
        environ={},
    )
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(issuer, github, app, port, clock, channel)
    finally:
        await channel.close()
        await app.stop()
