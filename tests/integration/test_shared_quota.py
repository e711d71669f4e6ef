"""Quota routing over several GitHub Apps, fleet-wide through a real redis-server ([fleet]).

Two in-process replicas (each its own caches and rate-limit readings, as two worker processes)
share only Redis; GitHub is the emulator serving three Apps, whose call log counts what reached
it. Holds travel on the invalidation channel (``adapters.shared_cache.Fleet``), remaining counts
are synced every second (``adapters.shared_quota``): the tests poll with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.dev.redis import RedisServer
from tests.emulator import real_time_clock
from tests.fakes import FakeClock
from tests.integration.service_harness import Stack, running, servers
from tests.integration.test_github_apps import APPS, KEYS, app_settings, gauge, mint_path, minted_by
from tests.polling import eventually

HMAC_KEY = "q" * 40
Backends = tuple[DevIssuer, GitHubEmulator, FakeClock]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    clock = real_time_clock()
    with servers(tmp_path, clock) as (issuer, github):
        for app in APPS[1:]:
            github.add_app(app, KEYS[app].public_key())
        yield issuer, github, clock


@asynccontextmanager
async def replicas(
    backends: Backends, redis_server: RedisServer, count: int = 2
) -> AsyncIterator[list[Stack]]:
    issuer, github, clock = backends
    settings: dict[str, Any] = {
        **app_settings(),
        "redis_url": redis_server.url,
        "redis_hmac_key": HMAC_KEY,
    }
    async with AsyncExitStack() as stack:
        apps = [
            await stack.enter_async_context(running(issuer, github, clock=clock, **settings))
            for _ in range(count)
        ]
        # Subscribed before anything is published: holds are never queued for later.
        for app in apps:
            assert app.app.fleet is not None
            await asyncio.wait_for(app.app.fleet.subscribed.wait(), 10)
        yield apps


def app_gauges(stack: Stack, name: str) -> list[float | None]:
    return [gauge(stack, name, installation=f"app:{app}") for app in APPS]


async def test_an_app_held_for_one_replica_is_skipped_by_every_replica(
    backends: Backends, redis_server: RedisServer
) -> None:
    github, clock = backends[1], backends[2]
    async with replicas(backends, redis_server) as (a, b):
        for stack in (a, b):  # each knows where every App is installed
            assert set(await minted_by(stack, 3)) == set(APPS)
        limited = mint_path(a, 7)
        github.force_primary_limit(reset_in=120, path_prefix=limited)
        before = github.count("POST", limited)
        assert 7 not in await minted_by(a, 3)  # A is refused once, and holds App 7
        assert github.count("POST", limited) == before + 1
        # B takes A's hold in, and never asks App 7 while it lasts.
        until = await eventually(
            lambda: gauge(b, "octo_sts_github_rate_limited_until", installation="app:7"),
            "replica B holds App 7",
        )
        assert until == pytest.approx(clock.now() + 120, abs=2)
        assert 7 not in await minted_by(b, 6)
        assert github.count("POST", limited) == before + 1
        # Redis gone: each replica routes on what it knows itself, and serves.
        redis_server.stop()
        assert 7 not in await minted_by(b, 3)
        assert 7 not in await minted_by(a, 3)


async def test_each_replica_routes_on_the_counts_the_fleet_has_seen(
    backends: Backends, redis_server: RedisServer
) -> None:
    async with replicas(backends, redis_server) as (a, b):
        assert sorted(await minted_by(a, 9)) == sorted(APPS * 3)
        seen = app_gauges(a, "octo_sts_github_rate_limit_remaining")
        assert None not in seen
        # B made no call with any App, yet knows what GitHub last told A of each.
        await eventually(
            lambda: app_gauges(b, "octo_sts_github_rate_limit_remaining") == seen,
            lambda: (
                f"replica B's counts {app_gauges(b, 'octo_sts_github_rate_limit_remaining')}"
                f" are A's {seen}"
            ),
        )
