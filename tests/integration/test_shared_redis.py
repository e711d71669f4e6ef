"""The fleet's Redis over real sockets: several in-process replicas, one real redis-server.

Each ``running`` app is a replica with its own caches; they share only Redis, as replicas and
worker processes of a fleet do. GitHub is the emulator (its call log counts what reached
GitHub), the issuer the dev issuer (its per-path request counts).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts.adapters.redis_state import ident
from octosts.app import REDIS_HEALTH
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.dev.redis import RedisServer
from octosts.domain.layout import CEILING_FILE, ISSUERS_FILE
from tests.emulator import APP_ID
from tests.integration.service_harness import Stack, running
from tests.polling import eventually

POLICY = ".github/chainguard/ci.sts.yaml"
HMAC_KEY = "k" * 40
WEBHOOK_SECRET = "fleet-webhook-secret-0123456789"


def redis_of(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


@asynccontextmanager
async def replicas(
    backends: tuple[DevIssuer, GitHubEmulator], server: RedisServer, count: int, **overrides: Any
) -> AsyncIterator[list[Stack]]:
    settings: dict[str, Any] = {
        "redis_url": server.url,
        "redis_hmac_key": HMAC_KEY,
        "webhook_addr": "127.0.0.1:0",
        "webhook_secrets": (WEBHOOK_SECRET,),
        **overrides,
    }
    async with AsyncExitStack() as stack:
        apps = [
            await stack.enter_async_context(running(*backends, **settings)) for _ in range(count)
        ]
        # Subscribed before anything is published: invalidations are never queued for later.
        for app in apps:
            assert app.app.fleet is not None
            await asyncio.wait_for(app.app.fleet.subscribed.wait(), 10)
        yield apps


def contents_reads(github: GitHubEmulator, path: str = POLICY) -> int:
    return github.count("GET", f"/repos/octo-org/demo/contents/{path}")


def installation_lookups(github: GitHubEmulator) -> int:
    return github.count("GET", "/orgs/octo-org/installation")


def issuer_fetches(issuer: DevIssuer) -> tuple[int, int]:
    return issuer.requests[issuer.discovery_path], issuer.requests[issuer.jwks_path]


def sample(stack: Stack, name: str, **labels: str) -> float:
    value = stack.app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def health(stack: Stack, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def test_a_second_replica_reads_what_the_first_fetched(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    issuer, github = backends
    async with replicas(backends, redis_server, 2) as (a, b):
        assert (await a.exchange()).token.startswith("ghs_")
        before = len(github.calls())
        assert (await b.exchange()).token.startswith("ghs_")
        # B made exactly one GitHub call: its own mint (tokens are never shared).
        new = github.calls()[before:]
        assert [(c.method, c.path) for c in new] == [("POST", new[0].path)], new
        assert new[0].path.endswith("/access_tokens")
        assert issuer_fetches(issuer) == (1, 1)
        assert contents_reads(github) == 1
        assert installation_lookups(github) == 1
        assert sample(b, "octo_sts_shared_cache_total", cache="policy", result="hit") == 1


async def test_concurrent_cold_exchanges_across_replicas_make_one_fetch_of_each(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    issuer, github = backends
    issuer.delay = 0.2  # the first fetch is still running when the others arrive
    async with replicas(backends, redis_server, 3) as apps:
        tokens = [apps[0].token() for _ in range(30)]
        replies = await asyncio.gather(
            *(apps[i % 3].exchange(token=t) for i, t in enumerate(tokens))
        )
        assert all(r.token.startswith("ghs_") for r in replies)
        assert issuer_fetches(issuer) == (1, 1)
        assert installation_lookups(github) == 1
        assert contents_reads(github) == 1
        waited = sum(
            sample(s, "octo_sts_shared_cache_total", cache="issuer_keys", result="waited")
            for s in apps
        )
        assert waited == 2  # the two replicas that did not hold the lock


async def test_a_push_to_one_replica_invalidates_every_replica(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    _issuer, github = backends
    async with replicas(
        backends, redis_server, 3, policy_fresh_seconds=600.0, policy_missing_seconds=600.0
    ) as apps:
        for s in apps:
            assert (await s.exchange()).token.startswith("ghs_")  # cached for 600 s everywhere
        github.configure_webhook(
            f"http://127.0.0.1:{apps[0].app.webhook_port}/webhook", WEBHOOK_SECRET
        )
        github.commit("octo-org", "demo", {POLICY: None})  # the push reaches replica 0 only

        async def denied(stack: Stack) -> bool:
            try:
                await stack.exchange()
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.PERMISSION_DENIED
            return False

        for s in apps:
            await eventually(lambda s=s: denied(s), "the deleted policy to be refused", timeout=1)


async def test_a_push_of_the_org_files_invalidates_them_on_every_replica(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    # The trusted-issuers file and the permission ceiling are shared per org; a push must make
    # every replica read them again. (The issuers' entry was bumped under another name than
    # its cache's: each replica dropped its copy, then adopted the old one back from Redis.)
    issuer, github = backends
    github.set_file("octo-org", ".github", CEILING_FILE, "default: read\n")
    github.set_file("octo-org", ".github", ISSUERS_FILE, f"issuers: ['{issuer.url}']\n")
    fresh = {"ceiling_fresh_seconds": 600.0, "issuers_fresh_seconds": 600.0}
    async with replicas(backends, redis_server, 3, verbose_errors=True, **fresh) as apps:

        async def refused(stack: Stack, reason: str) -> bool:
            try:
                await stack.exchange(scope="octo-org")  # the org policy asks issues: write
            except grpc.aio.AioRpcError as exc:
                return reason in (exc.details() or "")
            return False

        async def allowed(stack: Stack) -> bool:
            try:
                return (await stack.exchange(scope="octo-org")).token.startswith("ghs_")
            except grpc.aio.AioRpcError:
                return False

        for s in apps:  # cached for 600 s everywhere
            assert await refused(s, "policy_exceeds_ceiling")
        github.configure_webhook(
            f"http://127.0.0.1:{apps[0].app.webhook_port}/webhook", WEBHOOK_SECRET
        )
        github.commit("octo-org", ".github", {CEILING_FILE: "default: write\n"})  # to replica 0
        for s in apps:
            await eventually(lambda s=s: allowed(s), "the raised ceiling everywhere", timeout=2)
        other = "issuers: [https://token.actions.githubusercontent.com]\n"
        github.commit("octo-org", ".github", {ISSUERS_FILE: other})
        for s in apps:
            new_issuers = lambda s=s: refused(s, "issuer_not_trusted")  # noqa: E731
            await eventually(new_issuers, "the new issuers everywhere", timeout=2)


async def test_a_replayed_delivery_is_refused_by_every_replica(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    async with replicas(backends, redis_server, 2) as (a, b):
        body = json.dumps({"zen": "once", "sender": {"type": "User"}}).encode()
        signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "d-1",
            "X-Hub-Signature-256": signature,
        }
        async with httpx.AsyncClient(timeout=5) as client:
            first = await client.post(
                f"http://127.0.0.1:{a.app.webhook_port}/webhook", content=body, headers=headers
            )
            again = await client.post(
                f"http://127.0.0.1:{b.app.webhook_port}/webhook", content=body, headers=headers
            )
        assert first.json() == {"ok": True}
        assert again.json() == {"ignored": "delivery already processed"}


async def test_redis_killed_fails_no_exchange_and_shows_in_health_and_metrics(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    async with replicas(backends, redis_server, 1) as (a,):
        assert (await a.exchange()).token.startswith("ghs_")
        assert await health(a, REDIS_HEALTH) == health_pb2.HealthCheckResponse.SERVING
        redis_server.kill()
        # Warm entries come from this replica's caches, cold ones (the org policy) from GitHub.
        for _ in range(5):
            assert (await a.exchange(scope="octo-org/.github", identity="ci")).token
        assert sample(a, "octo_sts_redis_requests_total", op="read", result="error") >= 1

        async def not_serving() -> bool:
            return await health(a, REDIS_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, "octosts.redis NOT_SERVING")
        assert sample(a, "octo_sts_redis_breaker_open") == 1
        assert await health(a, "") == health_pb2.HealthCheckResponse.SERVING  # still serving
        # Redis back: the breaker's probe closes it again.
        redis_server.restart()

        async def recovered() -> bool:
            await a.exchange(token=a.token())
            return await health(a, REDIS_HEALTH) == health_pb2.HealthCheckResponse.SERVING

        await eventually(recovered, "octosts.redis SERVING again", timeout=15, interval=0.5)


async def test_a_slow_redis_costs_a_bounded_wait_not_an_exchange(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    async with replicas(backends, redis_server, 1, redis_timeout_seconds=0.2) as (a,):
        # Redis stops answering for 3 s (DEBUG SLEEP blocks the server).
        blocker = threading.Thread(
            target=lambda: redis_of(redis_server).execute_command("DEBUG", "SLEEP", "3")
        )
        blocker.start()
        try:
            await eventually(lambda: _blocked(redis_server), "Redis to stop answering")
            reply = await a.stub.Exchange(
                _request(),
                metadata=(("authorization", f"Bearer {a.token()}"),),
                timeout=3,  # well under the sleep: Redis calls were given up on
            )
            assert reply.token.startswith("ghs_")
            assert sample(a, "octo_sts_redis_requests_total", op="read", result="timeout") >= 1
        finally:
            await asyncio.to_thread(blocker.join)


def _blocked(server: RedisServer) -> bool:
    try:
        redis.Redis.from_url(server.url, socket_timeout=0.05).ping()
    except redis.TimeoutError:
        return True
    return False


def _request() -> Any:
    from octosts._gen.octosts.v1 import sts_pb2  # noqa: PLC0415

    return sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")


async def test_forged_or_unusable_values_are_never_used(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    issuer, github = backends
    client = redis_of(redis_server)
    # What an attacker with write access would plant: a permissive policy, an installation
    # of their choosing, issuer keys of their own.
    evil_policy = (
        f"issuer: {issuer.url}\nsubject_pattern: '.*'\npermissions:\n  administration: write\n"
    )
    planted = {
        ("policy", ("octo-org", "demo", POLICY, "repo")): {
            "content": base64.b64encode(evil_policy.encode()).decode(),
            "etag": None,
        },
        ("installations", (str(APP_ID), "octo-org")): {"id": 999_999},
        ("issuer_keys", (issuer.url,)): {"jwks_uri": issuer.url + "/jwks", "keys": []},
    }
    for (cache, key), value in planted.items():
        body = json.dumps({"gen": 0, "at": 1.0, "fresh": 4e9, "v": value}).encode()
        name = f"octosts:v1:{cache}:{ident(*key)}"
        client.set(name, b"p" + body)  # unsigned
        client.set(name + "x", b"s" + b"0" * 32 + body)  # signed with a wrong key, elsewhere
    async with replicas(backends, redis_server, 1) as (a,):
        reply = await a.exchange()
        assert dict(reply.permissions) == {"contents": "read"}
        assert issuer_fetches(issuer) == (1, 1)
        assert installation_lookups(github) == 1
        assert contents_reads(github) == 1
        refused = sample(a, "octo_sts_redis_requests_total", op="read", result="refused")
        assert refused >= 3


async def test_unsigned_values_are_still_checked_like_fetched_ones(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    issuer, github = backends
    client = redis_of(redis_server)
    huge = base64.urlsafe_b64encode((1 << 8191).to_bytes(1024, "big")).decode().rstrip("=")
    planted = {
        # An 8192-bit RSA key: over the cap fetched JWKS are held to.
        ("issuer_keys", (issuer.url,)): {
            "jwks_uri": issuer.url + "/jwks",
            "keys": [{"kty": "RSA", "kid": "x", "n": huge, "e": "AQAB"}],
        },
        ("policy", ("octo-org", "demo", POLICY, "repo")): {
            "content": "%% not base64 %%",
        },
        ("installations", (str(APP_ID), "octo-org")): {"id": True},
    }
    for (cache, key), value in planted.items():
        body = json.dumps({"gen": 0, "at": 1.0, "fresh": 4e9, "v": value}).encode()
        client.set(f"octosts:v1:{cache}:{ident(*key)}", b"p" + body)
    async with replicas(backends, redis_server, 1, redis_hmac_key="") as (a,):
        assert (await a.exchange()).token.startswith("ghs_")
        assert issuer_fetches(issuer) == (1, 1)
        assert installation_lookups(github) == 1
        assert contents_reads(github) == 1
        for cache in ("issuer_keys", "policy", "installations"):
            assert sample(a, "octo_sts_shared_cache_total", cache=cache, result="unusable") >= 1


async def test_github_and_oidc_tokens_never_reach_redis(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    client = redis_of(redis_server)
    pubsub = client.pubsub()
    pubsub.psubscribe("*")
    async with replicas(backends, redis_server, 2) as (a, b):
        oidc = a.token()
        minted = [(await s.exchange(token=oidc)).token for s in (a, b)]
        minted.append((await a.exchange(scope="octo-org", identity="ci")).token)
        a.github.configure_webhook(f"http://127.0.0.1:{a.app.webhook_port}/webhook", WEBHOOK_SECRET)
        a.github.commit("octo-org", "demo", {"README.md": b"x"})
        await eventually(a.github.deliveries, "push delivery")
        assert a.app.fleet is not None
        await a.app.fleet.settled()
    stored = b"".join(key + (client.dump(key) or b"") for key in client.scan_iter(count=1000))
    messages = b""
    while (message := pubsub.get_message(timeout=0.1)) is not None:
        messages += str(message).encode()
    everything = stored + messages
    assert stored  # something was shared
    for secret in (*minted, oidc):
        assert secret.encode() not in everything
    assert b"ghs_" not in everything
    assert b"-----BEGIN" not in everything


async def test_forged_invalidations_are_not_acted_on(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    _issuer, github = backends
    async with replicas(backends, redis_server, 1, policy_fresh_seconds=600.0) as (a,):
        assert (await a.exchange()).token.startswith("ghs_")
        message = json.dumps({"cache": "policy", "owner": "octo-org", "repo": "demo", "path": None})
        redis_of(redis_server).publish("octosts:invalidate", b"p" + message.encode())
        await eventually(
            lambda: sample(a, "octo_sts_redis_requests_total", op="message", result="refused"),
            "the forged message to be refused",
        )
        assert (await a.exchange()).token.startswith("ghs_")
        assert contents_reads(github) == 1  # the policy was not dropped


async def test_a_replica_back_on_redis_forgets_what_it_may_have_missed(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    _issuer, github = backends
    async with replicas(backends, redis_server, 1, policy_fresh_seconds=600.0) as (a,):
        assert (await a.exchange()).token.startswith("ghs_")
        redis_server.kill()  # pushes published meanwhile would not reach this replica
        redis_server.restart()

        async def read_again() -> bool:
            await a.exchange()
            return contents_reads(github) == 2

        await eventually(read_again, "the policy to be read again", timeout=15, interval=0.2)


async def test_a_github_rate_limit_met_by_one_replica_holds_every_replica(
    backends: tuple[DevIssuer, GitHubEmulator], redis_server: RedisServer
) -> None:
    _issuer, github = backends
    async with replicas(backends, redis_server, 2) as (a, b):
        await a.exchange()
        await b.exchange()  # both warm: an exchange now costs one mint
        github.force_secondary_limit(status=429, retry_after=60)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await a.exchange()
        assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await eventually(
            lambda: sample(b, "octo_sts_github_rate_limited_until", installation="app") > 0,
            "replica b to hear of the limit",
        )
        mints = github.count("POST", "/app/installations/")
        with pytest.raises(grpc.aio.AioRpcError) as held:
            await b.exchange()
        # Refused by b itself, with Retry-After, and GitHub never asked.
        assert held.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert github.count("POST", "/app/installations/") == mints
