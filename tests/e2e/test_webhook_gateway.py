"""GitHub webhook deliveries reach the service through Envoy: no bearer token, HMAC checked."""

from __future__ import annotations

import hashlib
import hmac
import json

from octosts.dev.stack import DEV_WEBHOOK_SECRET, DevStack
from tests.e2e.test_gateway_stack import http


def signed(body: bytes, secret: str = DEV_WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_signed_delivery_is_accepted_through_envoy_without_a_bearer(stack: DevStack) -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    headers = {
        "x-github-event": "ping",
        "x-github-delivery": "d-1",
        "x-hub-signature-256": signed(body),
        "content-type": "application/json",
    }
    async with http(stack) as client:
        reply = await client.post("/webhook", content=body, headers=headers)
    assert reply.status_code == 200, reply.text


async def test_unsigned_or_forged_delivery_is_refused_by_the_service(stack: DevStack) -> None:
    body = b'{"zen": "x"}'
    async with http(stack) as client:
        missing = await client.post("/webhook", content=body, headers={"x-github-event": "ping"})
        forged = await client.post(
            "/webhook",
            content=body,
            headers={
                "x-github-event": "ping",
                "x-hub-signature-256": signed(body, "wrong-secret-0123456789"),
            },
        )
        get = await client.get("/webhook")
    assert missing.status_code == 401
    assert forged.status_code == 401
    assert get.status_code == 404  # only POST is routed
