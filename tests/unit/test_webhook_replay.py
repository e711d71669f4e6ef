"""Webhook replays ([hardening-2] finding 8): a signed delivery is processed once.

GitHub's HMAC signs the body only, so a captured delivery can be sent again, under its own
X-GitHub-Delivery id or a new one. The handler remembers what it accepted (bounded, for a
day, on an injected clock) and answers repeats 200 saying so, without acting on them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from octosts.webhook.handler import (
    MAX_REMEMBERED_DELIVERIES,
    REPLAY_WINDOW_SECONDS,
    WebhookConfig,
    WebhookHandler,
    WebhookReply,
)
from tests.fakes import FakeClock
from tests.hostile import REPLAYED_PUSH, REPLAYED_PUSH_DELIVERY

SECRET = b"unit-secret-0123456789"
REPEAT = WebhookReply(200, {"ignored": "delivery already processed"})


class CountingPolicies:
    def __init__(self) -> None:
        self.calls = 0

    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int:
        self.calls += 1
        return 1


def headers(body: bytes, delivery: str | None = REPLAYED_PUSH_DELIVERY, event: str = "push") -> Any:
    out = {
        "x-github-event": event,
        "x-hub-signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
    }
    if delivery is not None:
        out["x-github-delivery"] = delivery
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policies() -> CountingPolicies:
    return CountingPolicies()


@pytest.fixture
def handler(clock: FakeClock, policies: CountingPolicies) -> WebhookHandler:
    config = WebhookConfig(secrets=(SECRET,))
    return WebhookHandler(config, checks=None, policies=policies, issuers=None, clock=clock)


async def test_the_same_delivery_twice_is_processed_once(
    handler: WebhookHandler, policies: CountingPolicies
) -> None:
    first = await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)
    assert first.status == 200
    assert "invalidated" in first.body
    calls = policies.calls
    assert calls > 0
    assert await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH) == REPEAT
    assert policies.calls == calls


@pytest.mark.parametrize("delivery", ["another-id", None, ""], ids=["new-id", "no-id", "empty"])
async def test_the_same_body_under_another_id_is_a_replay(
    handler: WebhookHandler, policies: CountingPolicies, delivery: str | None
) -> None:
    await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)
    calls = policies.calls
    assert await handler.handle(headers(REPLAYED_PUSH, delivery), REPLAYED_PUSH) == REPEAT
    assert policies.calls == calls


async def test_a_known_id_with_another_body_is_a_replay(handler: WebhookHandler) -> None:
    await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)
    other = json.dumps({"zen": "other"}).encode()
    assert await handler.handle(headers(other, event="ping"), other) == REPEAT


async def test_deliveries_are_forgotten_after_the_window(
    handler: WebhookHandler, clock: FakeClock, policies: CountingPolicies
) -> None:
    await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)
    clock.advance(REPLAY_WINDOW_SECONDS - 1)
    assert await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH) == REPEAT
    calls = policies.calls
    clock.advance(1)
    assert (await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)).body != REPEAT.body
    assert policies.calls > calls


async def test_refused_deliveries_are_not_remembered(handler: WebhookHandler) -> None:
    # GitHub redelivers what failed: a refusal must not turn the retry into a "repeat".
    malformed = json.dumps({"ref": "refs/heads/main"}).encode()
    assert (await handler.handle(headers(malformed), malformed)).status == 400
    assert (await handler.handle(headers(malformed), malformed)).status == 400
    not_json = b"{"
    assert (await handler.handle(headers(not_json, "d-2"), not_json)).status == 400
    assert (await handler.handle(headers(not_json, "d-2"), not_json)).status == 400


async def test_unsigned_requests_do_not_fill_the_memory(handler: WebhookHandler) -> None:
    forged = {**headers(REPLAYED_PUSH), "x-hub-signature-256": "sha256=" + "0" * 64}
    assert (await handler.handle(forged, REPLAYED_PUSH)).status == 401
    assert (await handler.handle(headers(REPLAYED_PUSH), REPLAYED_PUSH)).status == 200


async def test_the_memory_is_bounded_oldest_first(handler: WebhookHandler) -> None:
    def ping(i: int) -> bytes:
        return json.dumps({"zen": str(i)}).encode()

    for i in range(MAX_REMEMBERED_DELIVERIES + 1):
        reply = await handler.handle(headers(ping(i), f"d-{i}", "ping"), ping(i))
        assert reply.status == 200
    newest = MAX_REMEMBERED_DELIVERIES
    assert (
        await handler.handle(headers(ping(newest), f"d-{newest}", "ping"), ping(newest)) == REPEAT
    )
    # The first delivery fell out of the memory: it is processed again.
    assert (await handler.handle(headers(ping(0), "d-0", "ping"), ping(0))).body == {"ok": True}
