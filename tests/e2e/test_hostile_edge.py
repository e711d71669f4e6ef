"""[hardening-2] findings through the whole stack: Envoy over TLS, ext_authz, two replicas.

The dev issuer signs whatever it is given, so it plays the attacker's own issuer. Inputs come
from tests/hostile.py; what is asserted is what a client of the edge sees.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest

from octosts.dev.stack import DevStack
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    bearer,
    grpc_channel,
    http,
    repo_token,
)
from tests.hostile import DEEP_CLAIMS, HOSTILE_TIMES, MALFORMED_PROTOBUF, case_ids

pytestmark = pytest.mark.e2e


def assert_json_error(reply: httpx.Response, status: int, code: int, text: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["code"] == code
    assert text in body["message"], body
    return body


@pytest.mark.parametrize(("name", "value"), HOSTILE_TIMES, ids=case_ids(HOSTILE_TIMES))
async def test_hostile_times_are_401_at_the_edge(stack: DevStack, name: str, value: Any) -> None:
    token = repo_token(stack, **{name: value})
    async with http(stack) as client:
        reply = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
    assert_json_error(reply, 401, 16, "token_claims_invalid")
    assert reply.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(("name", "value"), DEEP_CLAIMS, ids=case_ids(DEEP_CLAIMS))
async def test_deep_claims_are_401_at_the_edge(stack: DevStack, name: str, value: Any) -> None:
    token = repo_token(stack, **{name: value})
    async with http(stack) as client:
        reply = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
    assert_json_error(reply, 401, 16, "token_malformed")


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
