"""The interceptor skips the x-request-id echo for ext_authz Check only (Envoy ignores it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry

from octosts.domain.errors import TokenSignatureInvalid
from octosts.observability.metrics import Metrics
from octosts.transport.ext_authz import AuthorizationServicer, add_to_server
from octosts.transport.interceptors import NO_REQUEST_ID_ECHO, ObservabilityInterceptor
from tests.unit.test_ext_authz import GOOD, FakeVerifier, check_request


def test_the_skipped_method_is_the_real_check_method() -> None:
    service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert {f"/{service.full_name}/Check"} == NO_REQUEST_ID_ECHO


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(
        interceptors=[ObservabilityInterceptor(Metrics(CollectorRegistry()), NoOpTracer())]
    )
    add_to_server(server, AuthorizationServicer(FakeVerifier(TokenSignatureInvalid("bad"))))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(0)


async def test_check_answers_without_the_echo_other_rpcs_keep_it(
    channel: grpc.aio.Channel,
) -> None:
    metadata = (("x-request-id", "rid-1"),)
    call = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
        check_request({"authorization": f"Bearer {GOOD}", "x-request-id": "rid-1"}),
        metadata=metadata,
    )
    response = await call
    assert response.denied_response.status.code == 401
    assert '"request_id": "rid-1"' in response.denied_response.body  # the id still reaches Envoy
    assert "x-request-id" not in dict(tuple(await call.initial_metadata() or ()))

    health_call = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), metadata=metadata
    )
    await health_call
    assert ("x-request-id", "rid-1") in tuple(await health_call.initial_metadata())
