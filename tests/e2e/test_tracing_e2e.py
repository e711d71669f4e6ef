"""One exchange through Envoy yields one trace: caller -> Envoy span -> service RPC span -> stages.

An OTLP/gRPC receiver (opentelemetry-proto's ``TraceService`` on a grpc.aio
server, port 0) stands in for the collector. The real stack (``DevStack``:
dev issuer, GitHub emulator, an STS replica, Envoy over TLS) runs with
tracing on: the replica exports through its OTEL_* environment, Envoy through
its OpenTelemetry tracer; the caller sends a W3C ``traceparent``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack
from tests.polling import eventually

pytestmark = pytest.mark.e2e

CALLER_TRACE_ID = "5b8efff798038103d269b633813fc60c"
CALLER_SPAN_ID = "eee19b7ec3c1b174"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
REPO_SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
STAGES = {
    "token_parse",
    "issuer_validate",
    "signature_verify",
    "claims_validate",
    "installation_lookup",
    "policy_fetch",
    "policy_match",
    "token_mint",
}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span, flattened with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=attrs.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, port
    finally:
        await server.stop(None)


@pytest.fixture
async def traced_stack(receiver: tuple[Receiver, int], tmp_path: Path) -> AsyncIterator[DevStack]:
    _, port = receiver
    # In a thread: start() polls synchronously while this loop keeps serving the receiver.
    stack = await asyncio.to_thread(
        start_stack,
        tmp_path / "stack",
        replicas=1,
        otlp_collector=f"127.0.0.1:{port}",
        extra_env={"OTEL_BSP_SCHEDULE_DELAY": "50"},  # export within ~50 ms
    )
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def test_exchange_through_envoy_is_one_trace_with_nested_spans(
    receiver: tuple[Receiver, int], traced_stack: DevStack
) -> None:
    collector, _ = receiver
    stack = traced_stack
    token = stack.token(REPO_SUB, workflow_ref=WORKFLOW)
    creds = grpc.ssl_channel_credentials(stack.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{stack.ports.gateway}", creds) as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Exchange(
            sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=(("authorization", f"Bearer {token}"), ("traceparent", TRACEPARENT)),
            timeout=15,
        )
        reply = await call
        request_id = dict(await call.initial_metadata() or ()).get("x-request-id")
    assert reply.token.startswith("ghs_")

    def trace() -> list[Span]:
        return [s for s in collector.spans if s.trace_id == CALLER_TRACE_ID]

    def complete() -> bool:
        # Every span asserted on below: Envoy and the service export in separate batches, so
        # one batch having arrived says nothing about the others.
        spans = trace()
        ids = {s.span_id for s in spans}
        named = {s.name: s for s in spans}
        rpc = named.get("octosts.v1.SecurityTokenService/Exchange")
        check = named.get("envoy.service.auth.v3.Authorization/Check")
        return (
            any(s.service == "octo-sts-gateway" and s.parent_id == CALLER_SPAN_ID for s in spans)
            and rpc is not None
            and rpc.parent_id in ids
            and check is not None
            and check.parent_id in ids
            and {s.name for s in spans if s.parent_id in {rpc.span_id, check.span_id}} >= STAGES
        )

    await eventually(
        complete,
        lambda: f"the whole trace; so far: {[(s.service, s.name) for s in trace()]}",
        timeout=20,
        interval=0.05,
    )

    spans = trace()
    by_id = {s.span_id: s for s in spans}
    # Envoy's ingress span is the child of the caller's span.
    (ingress,) = [
        s for s in spans if s.service == "octo-sts-gateway" and s.parent_id == CALLER_SPAN_ID
    ]
    # The service's RPC span hangs under Envoy (directly or under an Envoy upstream span).
    (rpc,) = [s for s in spans if s.name == "octosts.v1.SecurityTokenService/Exchange"]
    assert rpc.service == "octo-sts"
    parent = by_id[rpc.parent_id]
    assert parent.service == "octo-sts-gateway"
    assert parent is ingress or parent.parent_id == ingress.span_id
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    # Envoy's request id is the service's (and the caller sees it).
    assert rpc.attributes["octosts.request_id"] == request_id
    # Stage spans are children of the RPC span.
    stages = {s.name for s in spans if s.parent_id == rpc.span_id}
    assert stages >= STAGES - {
        "token_parse",
        "issuer_validate",
        "signature_verify",
        "claims_validate",
    }
    # ext_authz verified the token first, in the same trace; its stages carry the OIDC work.
    (check,) = [s for s in spans if s.name == "envoy.service.auth.v3.Authorization/Check"]
    assert by_id[check.parent_id].service == "octo-sts-gateway"
    verified_under = {s.name for s in spans if s.parent_id in {check.span_id, rpc.span_id}}
    assert verified_under >= STAGES
    # Nothing secret in any attribute.
    flat = repr([s.attributes for s in spans])
    assert token not in flat
    assert reply.token not in flat
