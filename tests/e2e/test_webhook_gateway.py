"""GitHub webhook deliveries reach the service through Envoy: no bearer token, HMAC checked."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from octosts.dev.stack import DEV_WEBHOOK_SECRET, DevStack
from tests.e2e.test_gateway_stack import http
from tests.polling import eventually


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


def _push_payload() -> bytes:
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "repository": {
                "name": "demo",
                "owner": {"login": "octo-org"},
                "default_branch": "main",
            },
            "commits": [
                {"added": [], "modified": [".github/chainguard/ci.sts.yaml"], "removed": []}
            ],
            "head_commit": None,
            "sender": {"login": "octocat", "type": "User"},
        }
    ).encode()


def _pushes_seen(stack: DevStack, index: int) -> int:
    log = stack.workdir / "logs" / f"sts-{index}.log"
    return sum('"webhook_push"' in line for line in log.read_text().splitlines())


async def test_push_reaches_every_replica_so_each_drops_its_cache(stack: DevStack) -> None:
    before = [_pushes_seen(stack, i) for i in range(len(stack.ports.grpc))]
    body = _push_payload()
    headers = {"x-github-event": "push", "x-hub-signature-256": signed(body)}
    async with http(stack) as client:
        reply = await client.post("/webhook", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    # Mirrors are sent asynchronously: wait until every replica logged one.

    def seen() -> list[int]:
        return [_pushes_seen(stack, i) - before[i] for i in range(len(before))]

    await eventually(
        lambda: all(count >= 1 for count in seen()),
        lambda: f"a push logged by every replica; new per replica: {seen()}",
        interval=0.05,
    )


async def test_unauthenticated_flood_is_rate_limited_by_envoy(stack: DevStack) -> None:
    body = b'{"zen": "x"}'
    statuses: list[int] = []

    async def post() -> int:
        reply = await client.post("/webhook", content=body, headers={"x-github-event": "push"})
        return reply.status_code

    async with http(stack) as client:
        # The bucket holds 40 and refills 20/s. One request after another, a loaded machine
        # answers too slowly to empty it; a round of 40 at once (on the connections the first
        # round opened) arrives far faster than it refills.
        for _ in range(5):
            statuses += await asyncio.gather(*(post() for _ in range(40)))
            if 429 in statuses:
                break
        assert 429 in statuses  # answered by Envoy before any replica reads the body
        assert set(statuses) <= {401, 429}
        # Leave the shared stack usable: wait for the bucket to refill.
        ping = json.dumps({"zen": "y"}).encode()
        headers = {"x-github-event": "ping", "x-hub-signature-256": signed(ping)}

        async def refilled() -> bool:
            reply = await client.post("/webhook", content=ping, headers=headers)
            return reply.status_code != 429

        await eventually(refilled, "the webhook rate-limit bucket to refill", interval=0.1)
