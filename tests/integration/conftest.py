"""Fixtures shared by the integration tests: real servers on loopback, one shared clock.

``backends`` is the dev issuer and the GitHub emulator seeded for ``service_harness`` (policies
in octo-org/demo and octo-org/.github); ``stack`` is an in-process service in front of them
(tests needing other settings call ``running`` themselves or override ``stack``). ``emulator``
is a stand-alone emulator over ``tests.emulator``'s seed tree, sharing ``clock`` with the client
under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from octosts.dev.certs import CertPaths, ensure_dev_certs
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.dev.redis import RedisServer
from tests.emulator import make_emulator, real_time_clock
from tests.fakes import FakeClock
from tests.integration.service_harness import Stack, running, servers
from tests.redis_harness import start_redis


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """The dev CA and a localhost/127.0.0.1 server certificate."""
    return ensure_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real time; tests move it forward."""
    return real_time_clock()


@pytest.fixture
def emulator(tmp_path: Path, clock: FakeClock) -> Iterator[GitHubEmulator]:
    with make_emulator(tmp_path, clock) as emu:
        yield emu


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[DevIssuer, GitHubEmulator]]:
    with servers(tmp_path) as pair:
        yield pair


@pytest.fixture
async def stack(backends: tuple[DevIssuer, GitHubEmulator]) -> AsyncIterator[Stack]:
    async with running(*backends) as s:
        yield s


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped by its PID afterwards."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
