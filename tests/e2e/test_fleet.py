"""The fleet as real processes: 3 replicas x 2 workers + Redis + Envoy, dev issuer, emulator.

One test in three phases, in the only order they can happen (cold, warm, Redis gone):

1. 200 concurrent cold exchanges spread over the fleet (through Envoy and straight to each
   replica on fresh connections, which SO_REUSEPORT spreads over its workers) make one
   policy read, one installation lookup, one discovery and one JWKS fetch in total;
2. a push delivered to one worker is honoured by all six within 1 s (each logs the entries
   it dropped, with its pid), and the next exchanges read the policy once for the fleet;
3. Redis killed in the middle of a load (with pushes sending workers back to it) fails no
   exchange.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.issuer import REQUEST_COUNTS_PATH
from octosts.dev.redis import RedisServer
from octosts.dev.stack import DEV_WEBHOOK_SECRET, DevStack
from octosts.domain.layout import ISSUERS_FILE
from tests.e2e.conftest import start_stack
from tests.polling import eventually
from tests.redis_harness import start_redis

pytestmark = pytest.mark.e2e

REPLICAS = 3
WORKERS = 2
SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
POLICY = ".github/chainguard/ci.sts.yaml"
HMAC_KEY = "fleet-test-hmac-key-0123456789abcdef"
# One TCP connection per channel (gRPC would otherwise share one per target and process).
FRESH_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_deliveries = itertools.count()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[DevStack, RedisServer]]:
    redis = start_redis(tmp_path / "redis")
    try:
        stack = start_stack(
            tmp_path / "stack",
            replicas=REPLICAS,
            timeout=60,
            extra_env={
                "OCTOSTS_WORKERS": str(WORKERS),
                "OCTOSTS_REDIS_URL": redis.url,
                "OCTOSTS_REDIS_HMAC_KEY": HMAC_KEY,
                # Nothing expires on its own during the test: only invalidation makes a refetch.
                "OCTOSTS_POLICY_FRESH_SECONDS": "600",
                "OCTOSTS_ISSUERS_FRESH_SECONDS": "600",
            },
        )
    except BaseException:
        redis.stop()
        raise
    try:
        yield stack, redis
    finally:
        stack.stop()
        redis.stop()


def github_calls(stack: DevStack, method: str, path: str) -> int:
    calls = httpx.get(f"{stack.github_url}/_emulator/calls", timeout=5).json()
    return sum(1 for c in calls if c["method"] == method and c["path"] == path)


def issuer_requests(stack: DevStack) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(stack.issuer_url + REQUEST_COUNTS_PATH, timeout=5).json()
    return counts


def fleet_metrics(stack: DevStack) -> dict[str, float]:
    """The fleet's Redis and second-level counters, summed over replicas (failure messages)."""
    totals: dict[str, float] = {}
    for port in stack.ports.metrics:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in {"octo_sts_redis_requests_total", "octo_sts_shared_cache_total"}:
                    key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def workers(stack: DevStack) -> set[int]:
    """The pids of every worker process (children of the replicas' supervisors)."""
    found: set[int] = set()
    for index in range(REPLICAS):
        parent = stack.pids()[f"sts-{index}"]
        out = subprocess.run(
            ["/usr/bin/pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
        )
        for pid in map(int, out.stdout.split()):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
                found.add(pid)
    return found


def invalidations(stack: DevStack) -> dict[int, int]:
    """pid -> entries dropped, from every replica's log (``shared_invalidation`` events)."""
    dropped: dict[int, int] = {}
    for index in range(REPLICAS):
        for line in (stack.workdir / "logs" / f"sts-{index}.log").read_text().splitlines():
            if '"shared_invalidation"' not in line:
                continue
            event = json.loads(line)
            dropped[event["pid"]] = dropped.get(event["pid"], 0) + event["dropped"]
    return dropped


class Clients:
    """gRPC channels into the fleet: one through Envoy (TLS, multiplexed), and per replica
    ``per_replica`` channels of their own connection each (SO_REUSEPORT gives each
    connection to one of the replica's workers)."""

    def __init__(self, stack: DevStack, per_replica: int) -> None:
        creds = grpc.ssl_channel_credentials(stack.ca_cert.read_bytes())
        self.edge = grpc.aio.secure_channel(f"localhost:{stack.ports.gateway}", creds)
        self.direct = [
            [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=FRESH_CONNECTION)
                for _ in range(per_replica)
            ]
            for port in stack.ports.grpc
        ]
        self._turn = itertools.count()

    def spread(self, count: int, *, edge: bool = True) -> list[grpc.aio.Channel]:
        """Channels for ``count`` exchanges: a quarter through Envoy (``edge``), the rest
        straight to each replica in turn, over its connections."""
        chosen = []
        for i in range(count):
            if edge and i % 4 == 0:
                chosen.append(self.edge)
            else:
                pool = self.direct[i % REPLICAS]
                chosen.append(pool[next(self._turn) % len(pool)])
        return chosen

    def every_connection(self) -> list[grpc.aio.Channel]:
        return [channel for pool in self.direct for channel in pool]

    async def close(self) -> None:
        for channel in (self.edge, *self.every_connection()):
            await channel.close()


async def exchange(channel: grpc.aio.Channel, token: str) -> str:
    stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
    reply = await stub.Exchange(
        sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=30,
    )
    return str(reply.token)


async def push(stack: DevStack, replica: int) -> None:
    """A signed push touching the demo policy, straight to one replica's webhook port."""
    n = next(_deliveries)
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": hashlib.sha1(str(n).encode()).hexdigest(),
            "repository": {
                "name": "demo",
                "owner": {"login": "octo-org"},
                "default_branch": "main",
            },
            "commits": [{"added": [], "modified": [POLICY], "removed": []}],
            "sender": {"type": "User"},
        }
    ).encode()
    signature = hmac.new(DEV_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": f"fleet-{n}",
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    url = f"http://127.0.0.1:{stack.ports.webhook[replica]}/webhook"
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(url, content=body, headers=headers)
    assert reply.status_code == 200, reply.text


@pytest.mark.timeout(240)
async def test_three_replicas_of_two_workers_share_one_redis(
    fleet: tuple[DevStack, RedisServer],
) -> None:
    stack, redis = fleet
    clients = Clients(stack, per_replica=16)
    try:
        await phases(stack, redis, clients)
    finally:
        await clients.close()


async def phases(stack: DevStack, redis: RedisServer, clients: Clients) -> None:
    token = stack.token(SUB, workflow_ref=WORKFLOW)
    policy_reads = ("GET", f"/repos/octo-org/demo/contents/{POLICY}")

    # 1. Cold: 200 exchanges at once make one fetch of each thing for the whole fleet.
    #    Straight to the replicas: through Envoy, a cold burst this size on two cores makes
    #    some ext_authz Checks overrun Envoy's authz timeout, with or without Redis (the
    #    Checks wait for the issuer's keys like everyone else); Envoy joins once warm.
    cold = clients.spread(200, edge=False)
    probed = issuer_requests(stack)  # the stack's readiness probe read discovery once
    tokens = await asyncio.gather(*(exchange(c, token) for c in cold))
    assert all(t.startswith("ghs_") for t in tokens)
    seen = {
        "policy reads": github_calls(stack, *policy_reads),
        "installation lookups": github_calls(stack, "GET", "/orgs/octo-org/installation"),
        "issuers file reads": github_calls(
            stack, "GET", f"/repos/octo-org/.github/contents/{ISSUERS_FILE}"
        ),
        **{
            what: issuer_requests(stack).get(path, 0) - probed.get(path, 0)
            for what, path in (
                ("discoveries", "/.well-known/openid-configuration"),
                ("JWKS fetches", "/.well-known/jwks"),
            )
        },
    }
    assert seen == dict.fromkeys(seen, 1), fleet_metrics(stack)

    # 2. A push reaching one worker is honoured by all six. Every worker holds the policy
    #    first: 16 connections per replica reach both of its workers.
    pids = workers(stack)
    assert len(pids) == REPLICAS * WORKERS
    await asyncio.gather(*(exchange(c, token) for c in clients.every_connection()))
    await push(stack, replica=0)
    await eventually(
        lambda: all(invalidations(stack).get(pid, 0) >= 1 for pid in pids),
        lambda: f"every worker to drop the policy: {invalidations(stack)} of {sorted(pids)}",
        timeout=1.0,
    )
    before = github_calls(stack, *policy_reads)
    await asyncio.gather(*(exchange(c, token) for c in clients.spread(60)))
    assert github_calls(stack, *policy_reads) == before + 1  # read again, once for the fleet

    # 3. Redis killed mid-load (pushes keep sending workers back to it): no exchange fails.
    done = 0
    failures: list[Any] = []

    async def one(channel: grpc.aio.Channel) -> None:
        nonlocal done
        try:
            await exchange(channel, token)
        except grpc.aio.AioRpcError as exc:
            failures.append(exc.code())
        done += 1

    async def disturb() -> None:
        for round_ in range(6):
            await eventually(lambda r=round_: done >= 25 * (r + 1), "load to progress", timeout=60)
            if round_ == 2:
                redis.kill()
            await push(stack, replica=round_ % REPLICAS)

    limit = asyncio.Semaphore(16)

    async def limited(channel: grpc.aio.Channel) -> None:
        async with limit:
            await one(channel)

    await asyncio.gather(disturb(), *(limited(c) for c in clients.spread(200)))
    assert done == 200
    assert failures == []
