"""Per-tenant rate limits at the edge, with real processes (``octosts.dev.tenant_limits``).

Envoy + one replica + the dev issuer and GitHub emulator, and either the real
``envoyproxy/ratelimit`` service counting in a real ``redis-server``, or Envoy's local rate
limit (the single-box fallback). Two workloads of one org, both allowed by the org's
``deploy`` policy: the noisy one runs past its limit and gets 429 (the answer table's JSON,
``Retry-After``) or RESOURCE_EXHAUSTED over gRPC, while the other keeps getting tokens.

Limits are per hour so that no window or bucket refills during a test; a window boundary
could still fall inside one, so "limited" is asserted within two windows' worth of requests.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.envoy import Upstream
from octosts.dev.ratelimit import KEY_PREFIX, RateLimitService
from octosts.dev.redis import RedisServer
from octosts.dev.stack import DevStack
from octosts.dev.tenant_limits import TenantLimits
from octosts.transport.errors import EDGE_RATE_LIMITED
from tests.e2e.conftest import start_stack
from tests.ratelimit_harness import start_ratelimit
from tests.redis_harness import start_redis

pytestmark = pytest.mark.e2e

NOISY = "repo:octo-org/demo:environment:production"
QUIET = "repo:octo-org/infra:environment:production"  # same org, same policy
ORG_REQUEST = {"scope": "octo-org", "identity": "deploy"}
LIMIT = 3  # exchanges an hour for one subject
LIMITS_YAML = f"""\
domain: octo-sts
descriptors:
  - key: subject
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
  - key: issuer
    rate_limit: {{unit: hour, requests_per_unit: 1000}}
"""


def limits_file(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ratelimits.yaml"
    path.write_text(LIMITS_YAML)
    return path


@pytest.fixture
def global_limits(tmp_path: Path) -> Iterator[tuple[DevStack, RateLimitService, RedisServer]]:
    limits = limits_file(tmp_path)
    store = start_redis(tmp_path / "redis")
    service: RateLimitService | None = None
    stack: DevStack | None = None
    try:
        service = start_ratelimit(tmp_path / "ratelimit", limits, store)
        edge = TenantLimits(limits, service=Upstream("127.0.0.1", service.grpc_port))
        stack = start_stack(tmp_path / "stack", replicas=1, tenant_limits=edge)
        yield stack, service, store
    finally:
        if stack is not None:
            stack.stop()
        if service is not None:
            service.stop()
        store.stop()


@pytest.fixture
def local_limits(tmp_path: Path) -> Iterator[DevStack]:
    edge = TenantLimits(limits_file(tmp_path))
    stack = start_stack(tmp_path / "stack", replicas=1, tenant_limits=edge)
    try:
        yield stack
    finally:
        stack.stop()


def http(stack: DevStack) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(stack.ca_cert))
    return httpx.AsyncClient(base_url=stack.gateway_url, verify=ctx, timeout=15.0)


async def exchange(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/sts/exchange", json=ORG_REQUEST, headers={"authorization": f"Bearer {token}"}
    )


async def run_until_limited(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """Exchanges until the first refusal, which must come within two windows' worth."""
    granted = 0
    for _ in range(2 * LIMIT + 1):
        resp = await exchange(client, token)
        if resp.status_code == 429:
            assert granted >= LIMIT, f"limited after {granted} exchanges"
            return resp
        assert resp.status_code == 200, resp.text
        granted += 1
    raise AssertionError(f"{granted} exchanges and never limited")


def assert_limited(resp: httpx.Response) -> None:
    assert resp.status_code == 429
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {
        "code": EDGE_RATE_LIMITED.code.value[0],
        "message": EDGE_RATE_LIMITED.message,
        "request_id": resp.headers["x-request-id"],
    }
    assert 1 <= int(resp.headers["retry-after"]) <= 3600
    assert "grpc-status" not in resp.headers


async def assert_quiet_subject_proceeds(stack: DevStack, client: httpx.AsyncClient) -> None:
    quiet = stack.token(QUIET)
    for _ in range(LIMIT - 1):  # under its own limit in any window
        resp = await exchange(client, quiet)
        assert resp.status_code == 200, resp.text
        assert resp.json()["token"].startswith("ghs_")


async def grpc_code(stack: DevStack, token: str) -> grpc.StatusCode:
    creds = grpc.ssl_channel_credentials(stack.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{stack.ports.gateway}", creds) as channel:
        try:
            await sts_pb2_grpc.SecurityTokenServiceStub(channel).Exchange(
                sts_pb2.ExchangeRequest(**ORG_REQUEST),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=15,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def envoy_counter(stack: DevStack, name: str) -> int:
    stats = httpx.get(f"http://127.0.0.1:{stack.ports.envoy_admin}/stats", timeout=5).text
    for line in stats.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


@pytest.mark.timeout(120)
async def test_with_the_service_a_noisy_subject_is_limited_and_its_org_neighbour_is_not(
    global_limits: tuple[DevStack, RateLimitService, RedisServer],
) -> None:
    stack, _service, store = global_limits
    noisy = stack.token(NOISY)
    async with http(stack) as client:
        assert_limited(await run_until_limited(client, noisy))
        await assert_quiet_subject_proceeds(stack, client)
        assert_limited(await exchange(client, noisy))  # still limited after the other's
    assert await grpc_code(stack, noisy) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await grpc_code(stack, stack.token(QUIET)) is grpc.StatusCode.OK
    assert envoy_counter(stack, "cluster.sts.ratelimit.over_limit") >= 3
    # Counted in the shared Redis, under digests: no claim appears in a key.
    with redis.Redis(host="127.0.0.1", port=store.port) as client_:
        keys = [k.decode() for k in client_.scan_iter(match=f"{KEY_PREFIX}*")]
    digest = hashlib.sha256(f"{stack.issuer_url}\n{NOISY}".encode()).hexdigest()[:32]
    assert any(digest in key for key in keys), keys
    assert not any("octo-org" in key or "127.0.0.1" in key for key in keys), keys


@pytest.mark.timeout(120)
async def test_with_the_service_down_requests_are_let_through(
    global_limits: tuple[DevStack, RateLimitService, RedisServer],
) -> None:
    stack, service, _store = global_limits
    noisy = stack.token(NOISY)
    async with http(stack) as client:
        assert_limited(await run_until_limited(client, noisy))
        service.kill()
        # Fail open: the service is a guard for GitHub budgets, not a gate to every token.
        resp = await exchange(client, noisy)
        assert resp.status_code == 200, resp.text
    assert envoy_counter(stack, "cluster.sts.ratelimit.failure_mode_allowed") >= 1


@pytest.mark.timeout(120)
async def test_without_the_service_envoys_local_limit_is_the_fallback(
    local_limits: DevStack,
) -> None:
    stack = local_limits
    noisy = stack.token(NOISY)
    async with http(stack) as client:
        assert_limited(await run_until_limited(client, noisy))
        await assert_quiet_subject_proceeds(stack, client)
    assert await grpc_code(stack, noisy) is grpc.StatusCode.RESOURCE_EXHAUSTED
