"""[resilience], the edge's half: Envoy retries a replica's UNAVAILABLE on another replica.

Real processes: the dev issuer, the GitHub emulator, two ``octo-sts serve`` replicas and Envoy
(``DevStack``). What is asserted is what a caller sees (status, code) and Envoy's own counters
(``cluster.sts.upstream_rq_retry``): a retry that Envoy did not count did not happen.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    assert_token_json,
    bearer,
    grpc_channel,
    http,
    replica_metric,
    repo_token,
)
from tests.polling import eventually

pytestmark = pytest.mark.e2e

MINT_PREFIX = "/app/installations/"  # POST /app/installations/{id}/access_tokens


def envoy_counter(stack: DevStack, name: str) -> int:
    """One of Envoy's counters, read from its admin API."""
    assert stack.envoy is not None
    text = httpx.get(f"{stack.envoy.admin_url}/stats", params={"filter": f"^{name}$"}).text
    values = [line.partition(": ")[2] for line in text.splitlines() if line.startswith(name)]
    assert len(values) == 1, text
    return int(values[0])


def retries(stack: DevStack) -> int:
    return envoy_counter(stack, "cluster.sts.upstream_rq_retry")


def fail_mints(stack: DevStack, times: int) -> None:
    """The next ``times`` token mints at the emulator answer 503."""
    fault = {"kind": "error", "status": 503, "times": times, "path_prefix": MINT_PREFIX}
    httpx.post(f"{stack.github_url}/_emulator/faults", json=fault).raise_for_status()


def clear_faults(stack: DevStack) -> None:
    httpx.delete(f"{stack.github_url}/_emulator/faults").raise_for_status()


async def test_unavailable_exchange_is_retried_by_envoy_on_grpc_and_http(stack: DevStack) -> None:
    # A replica answering UNAVAILABLE (GitHub 5xx on the mint) must be an answer Envoy can
    # retry: trailers-only. With x-request-id sent as initial metadata first, Envoy saw no
    # grpc-status in the headers, never retried and the caller got the 503.
    token = repo_token(stack)
    metadata = tuple(bearer(token).items())
    request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
    try:
        async with grpc_channel(stack) as channel, http(stack) as client:
            sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
            await sts.Exchange(request, metadata=metadata, timeout=15)  # caches warm
            # Two failures: one attempt fails even if the service retried the mint itself.
            before = retries(stack)
            fail_mints(stack, times=2)
            call = sts.Exchange(request, metadata=metadata, timeout=15)
            reply = await call
            assert reply.token.startswith("ghs_")
            assert retries(stack) > before
            # The request id still reaches the caller on success (initial metadata).
            assert dict(await call.initial_metadata()).get("x-request-id")

            before = retries(stack)
            fail_mints(stack, times=2)
            resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
            assert_token_json(resp)
            assert resp.headers["x-request-id"]
            assert retries(stack) > before
    finally:
        await asyncio.to_thread(clear_faults, stack)


async def test_an_error_after_every_retry_still_carries_its_request_id(stack: DevStack) -> None:
    # Trailers-only errors carry x-request-id in the trailers (and in the ErrorInfo).
    token = repo_token(stack)
    try:
        async with grpc_channel(stack) as channel:
            sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
            fail_mints(stack, times=100)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await sts.Exchange(
                    sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                    metadata=(*bearer(token).items(), ("x-request-id", "rid-kept-1")),
                    timeout=15,
                )
    finally:
        await asyncio.to_thread(clear_faults, stack)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "github_unavailable" in (failed.value.details() or "")
    trailers = dict(failed.value.trailing_metadata() or ())
    assert trailers.get("x-request-id")


# -- defect 5: one replica cannot fetch an issuer's keys ---------------------------------------


def replica_serving(stack: DevStack, index: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.grpc[index]}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def warm_one_replica(stack: DevStack, index: int, token: str) -> None:
    """An exchange straight to one replica: it caches the issuer's keys, the others do not."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.grpc[index]}") as channel:
        reply = sts_pb2_grpc.SecurityTokenServiceStub(channel).Exchange(
            sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=tuple(bearer(token).items()),
            timeout=15,
        )
    assert reply.token.startswith("ghs_")


async def test_a_replica_without_the_issuers_keys_is_routed_around(own_stack: DevStack) -> None:
    # Replica 1 has the issuer's keys cached, replica 0 has not, and the issuer goes down:
    # replica 0 answers UNAVAILABLE fast, to Check and to Exchange. Envoy must ask replica 1
    # instead (before: the Check's 503 was a *successful* RPC, never retried; ~half failed).
    stack = own_stack
    token = repo_token(stack)
    await asyncio.to_thread(warm_one_replica, stack, 1, token)
    issuer = next(proc for proc in stack._procs if proc.name == "issuer")
    await asyncio.to_thread(issuer.stop)
    before = retries(stack)
    statuses: list[int] = []
    async with http(stack) as client:
        for _ in range(20):
            resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
            statuses.append(resp.status_code)
    codes: list[grpc.StatusCode] = []
    async with grpc_channel(stack) as channel:
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        for _ in range(10):
            call = sts.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=tuple(bearer(token).items()),
                timeout=15,
            )
            codes.append(await call.code())
    assert statuses == [200] * 20
    assert codes == [grpc.StatusCode.OK] * 10
    # Replica 0 was tried and failed over (else the test proves nothing)...
    assert retries(stack) > before
    # ...and an issuer being down is not replica 0's fault: it stays ready.
    assert await asyncio.to_thread(replica_serving, stack, 0)


async def test_no_replica_can_verify_is_503_json_with_retry_after(own_stack: DevStack) -> None:
    stack = own_stack
    token = repo_token(stack)
    issuer = next(proc for proc in stack._procs if proc.name == "issuer")
    await asyncio.to_thread(issuer.stop)
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "retry later (authz_unavailable)" in body["message"]
    assert body["request_id"] == resp.headers["x-request-id"]
    assert token not in resp.text
    async with grpc_channel(stack) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await sts_pb2_grpc.SecurityTokenServiceStub(channel).Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=tuple(bearer(token).items()),
                timeout=15,
            )
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def lowest_free_fd(pid: int) -> int:
    used = {int(path.name) for path in Path(f"/proc/{pid}/fd").iterdir()}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


async def test_a_replica_out_of_file_descriptors_leaves_the_rotation(tmp_path: Path) -> None:
    # The replica's own fault (EMFILE on its first outbound call: the installation lookup,
    # then the issuer fetch), unlike an upstream that is down:
    # NOT_SERVING for OCTOSTS_LOCAL_FAULT_UNREADY_SECONDS, then SERVING again.
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "stack",
        replicas=1,
        extra_env={"OCTOSTS_LOCAL_FAULT_UNREADY_SECONDS": "5"},
    )
    try:
        pid = stack._servers[0].popen.pid
        token = repo_token(stack)
        request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
        # Connected before the limit: the replica needs no new descriptor to answer us.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc[0]}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)

            async def status() -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return int(reply.status)

            assert await status() == health_pb2.HealthCheckResponse.SERVING
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), hard))
            try:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await sts.Exchange(request, metadata=tuple(bearer(token).items()), timeout=15)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

                async def not_serving() -> bool:
                    return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

                await eventually(not_serving, "NOT_SERVING after EMFILE", timeout=4)
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))

            async def serving_again() -> bool:
                return await status() == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving_again, "SERVING after the hold", timeout=20)
    finally:
        await asyncio.to_thread(stack.stop)


# -- defect 6: admission control -----------------------------------------------------------------


def slow_mints(stack: DevStack, latency_ms: int, times: int | None = None) -> None:
    """Token mints at the emulator take ``latency_ms`` (the next ``times`` ones, or all)."""
    rule: dict[str, object] = {"kind": "latency", "latency_ms": latency_ms}
    rule |= {"path_prefix": MINT_PREFIX, **({} if times is None else {"times": times})}
    httpx.post(f"{stack.github_url}/_emulator/faults", json=rule).raise_for_status()


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call's rich status details."""
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


@pytest.fixture
def small_stack(tmp_path: Path) -> Iterator[DevStack]:
    """Two replicas taking two calls at once each, shutting down with a 1 s grace period."""
    env = {"OCTOSTS_MAX_CONCURRENT_RPCS": "2", "OCTOSTS_SHUTDOWN_GRACE_SECONDS": "1"}
    stack = start_stack(tmp_path / "stack", extra_env=env)
    try:
        yield stack
    finally:
        stack.stop()


async def test_calls_past_the_limit_are_shed_at_once(small_stack: DevStack) -> None:
    # Straight to one replica taking 2 calls at once, minting slowly: of 6 concurrent calls,
    # 2 run and 4 are answered RESOURCE_EXHAUSTED `overloaded` with retry-after, before the
    # admitted ones finish (before: all 6 queued in the process, each slower).
    stack = small_stack
    token = repo_token(stack)
    metadata = tuple(bearer(token).items())
    request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
    await asyncio.to_thread(warm_one_replica, stack, 0, token)
    await asyncio.to_thread(slow_mints, stack, 2000)
    finished: list[grpc.StatusCode] = []
    shed: list[grpc.aio.AioRpcError] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc[0]}") as channel:
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)

        async def one() -> None:
            try:
                await sts.Exchange(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                finished.append(exc.code())
                shed.append(exc)
            else:
                finished.append(grpc.StatusCode.OK)

        await asyncio.gather(*(one() for _ in range(6)))
    ok, exhausted = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert finished == [exhausted] * 4 + [ok] * 2
    for error in shed:
        assert error_reason(error) == "overloaded"
        assert dict(error.trailing_metadata() or ())["retry-after"] == "1"
    assert replica_metric(stack, 0, "octo_sts_shed_total", reason="overloaded") == 4


async def test_the_edge_sheds_with_503_or_429_and_retry_after(small_stack: DevStack) -> None:
    # Through Envoy, whose circuit breakers admit what the two replicas take (2 x 2 calls):
    # the excess is answered at once, 503 from Envoy or 429 from a replica, always JSON with
    # Retry-After; the admitted exchanges succeed.
    stack = small_stack
    token = repo_token(stack)
    async with http(stack) as client:
        assert_token_json(await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)))
        await asyncio.to_thread(slow_mints, stack, 2000)
        order: list[int] = []

        async def one() -> httpx.Response:
            resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
            order.append(resp.status_code)
            return resp

        answers = await asyncio.gather(*(one() for _ in range(12)))
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert ok
    assert refused
    for resp in refused:
        assert resp.status_code in (429, 503), resp.text
        assert resp.headers["retry-after"] == "1"
        reason = resp.json()["message"]
        assert "(overloaded)" in reason or "overloaded," in reason or "authz_unavailable" in reason
    # Shed at once: every refusal came back before the first (slow) success.
    assert order == sorted(order, key=lambda status: status == 200)
    # Envoy's circuit breaker (sized to the replicas' 2 x 2) shed them, before any Python ran
    # (a breaker at Envoy's default, 1024, would have let all of them through).
    assert envoy_counter(stack, "cluster.sts.upstream_rq_active_overflow") > 0


# -- defect 8: calls still running when the grace period ends ------------------------------------


async def test_a_call_cut_by_the_drain_answers_shutting_down(small_stack: DevStack) -> None:
    stack = small_stack
    token = repo_token(stack)
    await asyncio.to_thread(warm_one_replica, stack, 0, token)
    await asyncio.to_thread(slow_mints, stack, 10_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc[0]}") as channel:
        call = sts_pb2_grpc.SecurityTokenServiceStub(channel).Exchange(
            sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=tuple(bearer(token).items()),
            timeout=30,
        )
        await eventually(
            lambda: asyncio.to_thread(replica_metric, stack, 0, "octo_sts_rpcs_in_flight"),
            "the call to be in flight",
        )
        stack._servers[0].popen.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
    # Before: UNAVAILABLE "Cancelling all calls", no details, not retried by Envoy.
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(cut.value) == "shutting_down"
    assert dict(cut.value.trailing_metadata() or ())["retry-after"] == "1"


async def test_envoy_retries_a_call_cut_by_the_drain_elsewhere(small_stack: DevStack) -> None:
    stack = small_stack
    token = repo_token(stack)
    async with http(stack) as client:
        assert_token_json(await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)))
        await asyncio.to_thread(slow_mints, stack, 10_000, times=1)  # only the first attempt
        before = retries(stack)
        pending = asyncio.ensure_future(
            client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
        )

        def minting() -> bool:  # the rule is used up as its delay starts
            return not httpx.get(f"{stack.github_url}/_emulator/faults").json()["faults"]

        # Only then is the Exchange the one call in flight (its Check is over).
        await eventually(lambda: asyncio.to_thread(minting), "the slow mint to start")

        def holder() -> subprocess.Popen[bytes] | None:
            for index in (0, 1):
                if replica_metric(stack, index, "octo_sts_rpcs_in_flight") > 0:
                    return stack._servers[index].popen
            return None

        replica = await eventually(lambda: asyncio.to_thread(holder), "a replica to hold it")
        replica.send_signal(signal.SIGTERM)
        resp = await pending
    assert_token_json(resp)
    assert retries(stack) > before


# -- defect 9: a burst of calls on one channel -----------------------------------------------------


async def test_a_burst_on_one_channel_is_answered_never_silently_cancelled(
    tmp_path: Path,
) -> None:
    # 1,500 concurrent calls on one channel straight to a replica: gRPC core used to cancel
    # ~50 of them with no detail (its backlog of calls not yet picked up is capped at 1,000,
    # then it drops at random). Now each is answered: OK, or shed with our overload answer.
    stack = await asyncio.to_thread(start_stack, tmp_path / "stack", replicas=1)
    try:
        token = repo_token(stack)
        metadata = tuple(bearer(token).items())
        request = sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc[0]}") as channel:
            sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
            await sts.Exchange(request, metadata=metadata, timeout=15)

            async def one() -> str:
                try:
                    await sts.Exchange(request, metadata=metadata, timeout=120)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return error_reason(exc)
                    return exc.code().name
                return "ok"

            answers = await asyncio.gather(*(one() for _ in range(1500)))
    finally:
        await asyncio.to_thread(stack.stop)
    counts = {answer: answers.count(answer) for answer in set(answers)}
    assert set(counts) <= {"ok", "overloaded"}, counts
    assert counts.get("ok", 0) > 0
