"""[hardening-2] findings through the whole stack: Envoy over TLS, ext_authz, two replicas.

The dev issuer signs whatever it is given, so it plays the attacker's own issuer. Inputs come
from tests/hostile.py; what is asserted is what a client of the edge sees.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import grpc
import httpx
import pytest

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.envoy import MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS
from octosts.dev.stack import DevStack
from octosts.transport import compat
from octosts.transport.server import MAX_MESSAGE_BYTES
from octosts.webhook.server import DEFAULT_MAX_BODY
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    bearer,
    grpc_channel,
    http,
    metric_sum,
    repo_token,
)
from tests.e2e.test_webhook_gateway import signed
from tests.hostile import (
    ADMIN_PATHS,
    HOSTILE_CLAIM_IDS,
    HOSTILE_CLAIMS,
    HUGE_HEADER,
    LARGE_HEADER,
    MALFORMED_PROTOBUF,
    MANY_HEADERS,
    MANY_IDENTITY_HEADERS,
    OVERSIZED_WEBHOOK_BODY,
    REPLAYED_PUSH,
    REPLAYED_PUSH_DELIVERY,
    TOO_MANY_HEADERS,
    webhook_body_of,
)
from tests.polling import eventually

pytestmark = pytest.mark.e2e


def assert_json_error(reply: httpx.Response, status: int, code: int, text: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["code"] == code
    assert text in body["message"], body
    return body


@pytest.mark.parametrize(("name", "value", "reason"), HOSTILE_CLAIMS, ids=HOSTILE_CLAIM_IDS)
async def test_hostile_claims_are_401_at_the_edge(
    stack: DevStack, name: str, value: Any, reason: str
) -> None:
    token = repo_token(stack, **{name: value})
    async with http(stack) as client:
        reply = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
    assert_json_error(reply, 401, 16, f"({reason})")
    assert reply.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_undecodable_grpc_request_is_invalid_argument_through_envoy(stack: DevStack) -> None:
    metadata = (("authorization", f"Bearer {repo_token(stack)}"),)
    async with grpc_channel(stack) as channel:
        raw = channel.unary_unary(
            "/octosts.v1.SecurityTokenService/Exchange",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(MALFORMED_PROTOBUF, metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable_request" in (info.value.details() or "")
    assert "DecodeError" not in (info.value.details() or "")


# -- finding 5: header count and size ---------------------------------------------------------


def edge_decisions(stack: DevStack) -> float:
    return metric_sum(stack, "octo_sts_ext_authz_decisions_total")


@pytest.mark.parametrize(
    "extra",
    [MANY_IDENTITY_HEADERS, MANY_HEADERS, TOO_MANY_HEADERS, LARGE_HEADER, HUGE_HEADER],
    ids=["90-identity", "90-other", "120", "30KB", "61KB"],
)
async def test_too_many_or_too_large_headers_are_431_json(
    stack: DevStack, extra: dict[str, str]
) -> None:
    before = edge_decisions(stack)
    async with http(stack) as client:
        reply = await client.get(
            EXCHANGE, params=REPO_QUERY, headers={**bearer(repo_token(stack)), **extra}
        )
    assert_json_error(reply, 431, 3, "(request_headers_too_large)")
    assert edge_decisions(stack) == before  # refused before ext_authz


async def test_requests_well_within_the_header_caps_pass(stack: DevStack) -> None:
    extra = {f"x-foo-{i}": "v" for i in range(MAX_REQUEST_HEADERS - 24)}
    extra["x-bar"] = "a" * (MAX_REQUEST_HEADER_BYTES - 4096)
    async with http(stack) as client:
        reply = await client.get(
            EXCHANGE, params=REPO_QUERY, headers={**bearer(repo_token(stack)), **extra}
        )
    assert reply.status_code == 200, reply.text


async def test_too_many_metadata_entries_are_invalid_argument_for_grpc(stack: DevStack) -> None:
    metadata = (("authorization", f"Bearer {repo_token(stack)}"), *MANY_HEADERS.items())
    async with grpc_channel(stack) as channel:
        stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=metadata,
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_headers_too_large" in (info.value.details() or "")


# -- finding 6: webhook body size ---------------------------------------------------------------


async def test_an_oversized_webhook_is_413_json_from_the_edge(stack: DevStack) -> None:
    body = OVERSIZED_WEBHOOK_BODY
    headers = {"x-github-event": "ping", "x-hub-signature-256": signed(body)}
    async with http(stack) as client:
        over = await client.post("/webhook", content=body, headers=headers)
        just_over = webhook_body_of(DEFAULT_MAX_BODY + 1)
        over_by_one = await client.post(
            "/webhook",
            content=just_over,
            headers={"x-github-event": "ping", "x-hub-signature-256": signed(just_over)},
        )
    for reply in (over, over_by_one):
        assert_json_error(reply, 413, 3, "(body_too_large)")


async def test_a_webhook_at_the_size_limit_reaches_the_service(stack: DevStack) -> None:
    body = webhook_body_of(DEFAULT_MAX_BODY)
    headers = {"x-github-event": "ping", "x-hub-signature-256": signed(body)}
    async with http(stack) as client:
        reply = await client.post("/webhook", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json() in ({"ok": True}, {"ignored": "delivery already processed"})


# -- finding 7: Envoy's metrics -----------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_the_public_listener_serves_no_admin_or_metrics(stack: DevStack, path: str) -> None:
    async with http(stack) as client:
        reply = await client.get(path)
    assert_json_error(reply, 404, 5, "not_found")
    assert "envoy_" not in reply.text


@pytest.mark.parametrize("path", ADMIN_PATHS[1:])
def test_the_internal_listener_serves_metrics_only(stack: DevStack, path: str) -> None:
    base = f"http://127.0.0.1:{stack.ports.envoy_metrics}"
    metrics = httpx.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "envoy_cluster_upstream_rq" in metrics.text
    assert httpx.get(f"{base}{path}", timeout=5).status_code == 404
    assert httpx.post(f"{base}{path}", timeout=5).status_code == 404


# -- finding 8: webhook replays -----------------------------------------------------------------


def log_events(stack: DevStack, event: str) -> int:
    logs = [stack.workdir / "logs" / f"sts-{i}.log" for i in range(len(stack.ports.grpc))]
    return sum(f'"{event}"' in line for log in logs for line in log.read_text().splitlines())


async def test_a_replayed_ping_is_answered_already_processed(stack: DevStack) -> None:
    body = json.dumps({"zen": f"replay-{uuid.uuid4()}", "hook_id": 1}).encode()
    headers = {
        "x-github-event": "ping",
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": signed(body),
    }
    async with http(stack) as client:
        first = await client.post("/webhook", content=body, headers=headers)
        again = await client.post("/webhook", content=body, headers=headers)
        renamed = await client.post(
            "/webhook", content=body, headers={**headers, "x-github-delivery": "another-id"}
        )
    assert (first.status_code, first.json()) == (200, {"ok": True})
    for reply in (again, renamed):
        assert (reply.status_code, reply.json()) == (200, {"ignored": "delivery already processed"})


async def test_a_replayed_push_acts_once_per_replica(stack: DevStack) -> None:
    # Envoy sends a push to one replica and mirrors it to each: every replica acts on it once,
    # and every later copy (the mirror to the same replica, the replay) is recognised.
    pushes, replays = log_events(stack, "webhook_push"), log_events(stack, "webhook_replay")
    body = json.dumps({**json.loads(REPLAYED_PUSH), "after": uuid.uuid4().hex}).encode()
    headers = {
        "x-github-event": "push",
        "x-github-delivery": REPLAYED_PUSH_DELIVERY + "-" + uuid.uuid4().hex[:8],
        "x-hub-signature-256": signed(body),
    }
    async with http(stack) as client:
        first = await client.post("/webhook", content=body, headers=headers)
        again = await client.post("/webhook", content=body, headers=headers)
    assert first.status_code == 200
    assert first.json()["invalidated"] >= 0
    assert again.json() == {"ignored": "delivery already processed"}
    replicas = len(stack.ports.grpc)
    # Per send: one copy to the pool plus one mirror per replica.
    expected = (replicas, 2 * (replicas + 1) - replicas)

    def seen() -> tuple[int, int]:
        return (
            log_events(stack, "webhook_push") - pushes,
            log_events(stack, "webhook_replay") - replays,
        )

    await eventually(lambda: seen() == expected, lambda: f"{expected} (push, replay), saw {seen()}")


# -- exchange bodies over the edge's limit --------------------------------------------------------


def json_body_of(size: int) -> bytes:
    """The demo exchange as JSON, padded with whitespace to ``size`` bytes."""
    body = json.dumps(REPO_QUERY).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def form_body_of(size: int) -> bytes:
    """The demo exchange as a form, padded with a field the service ignores to ``size`` bytes."""
    body = urllib.parse.urlencode({**REPO_QUERY, "pad": ""}).encode()
    return body + b"a" * (size - len(body))


def exchange_bodies(size: int) -> list[tuple[bytes, dict[str, str]]]:
    """(body, content type) for the JSON route and the compat form route."""
    return [
        (json_body_of(size), {"content-type": "application/json"}),
        (form_body_of(size), {"content-type": compat.FORM_CONTENT_TYPE}),
    ]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        *exchange_bodies(MAX_MESSAGE_BYTES + 1)[:1],
        *exchange_bodies(compat.MAX_FORM_BYTES + 1)[1:],
        *exchange_bodies(3 * 1024 * 1024),
    ],
    ids=["json-over-by-one", "form-over-by-one", "json-3mb", "form-3mb"],
)
async def test_an_oversized_exchange_body_is_413_json_from_the_edge(
    stack: DevStack, body: bytes, kind: dict[str, str]
) -> None:
    headers = {**bearer(repo_token(stack)), **kind}
    async with http(stack) as client:
        reply = await client.post(EXCHANGE, content=body, headers=headers)
    assert_json_error(reply, 413, 3, "(body_too_large)")


@pytest.mark.parametrize(
    ("body", "kind"),
    [*exchange_bodies(MAX_MESSAGE_BYTES)[:1], *exchange_bodies(compat.MAX_FORM_BYTES)[1:]],
    ids=["json", "form"],
)
async def test_an_exchange_body_at_the_limit_is_exchanged(
    stack: DevStack, body: bytes, kind: dict[str, str]
) -> None:
    headers = {**bearer(repo_token(stack)), **kind}
    async with http(stack) as client:
        reply = await client.post(EXCHANGE, content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["token"]
