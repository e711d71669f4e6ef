"""octosts.gateway.v1.OAuthTokenService on the wire, without Envoy (tests/e2e/test_oauth.py has it
through Envoy): an answer is the RFC 8693 JSON; a failure is an HttpBody with RFC 6749's JSON
*followed by* a non-OK status, which is what lets Envoy's transcoder answer that body with the
mapped HTTP status."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import grpc
import pytest
from google.api import httpbody_pb2

from octosts.dev.github import Fault, GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.transport.oauth import JWT_TOKEN_TYPE, TOKEN_EXCHANGE
from tests.integration.service_harness import Stack, running
from tests.polling import eventually

METHOD = "/octosts.gateway.v1.OAuthTokenService/Token"
FORM = "application/x-www-form-urlencoded"


def form(stack: Stack, **change: str) -> httpbody_pb2.HttpBody:
    fields = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": stack.token(),
        "subject_token_type": JWT_TOKEN_TYPE,
        "audience": "octo-org/demo",
        "scope": "ci",
        **change,
    }
    return httpbody_pb2.HttpBody(content_type=FORM, data=urllib.parse.urlencode(fields).encode())


async def test_a_token_exchange_answers_rfc8693_json(stack: Stack) -> None:
    token = stack.channel.unary_unary(
        METHOD,
        request_serializer=httpbody_pb2.HttpBody.SerializeToString,
        response_deserializer=httpbody_pb2.HttpBody.FromString,
    )
    answer = await token(form(stack))
    assert answer.content_type == "application/json"
    body = json.loads(answer.data)
    assert body["token_type"] == "Bearer"
    assert stack.github.token_grant(body["access_token"])["permissions"] == {"contents": "read"}


async def answered(stack: Stack, request: httpbody_pb2.HttpBody) -> tuple[list, grpc.aio.Call]:
    """Every message of the answer, read as a stream (a unary client drops a message that a
    non-OK status follows), and the call for its status and metadata."""
    call = stack.channel.unary_stream(
        METHOD,
        request_serializer=httpbody_pb2.HttpBody.SerializeToString,
        response_deserializer=httpbody_pb2.HttpBody.FromString,
    )(request)
    messages = []
    try:
        async for message in call:
            messages.append(message)  # noqa: PERF401 - kept when the status ends the loop
    except grpc.aio.AioRpcError:
        return messages, call
    raise AssertionError("the answer ended without an error status")


@pytest.mark.parametrize(
    ("change", "code", "error"),
    [
        ({"grant_type": "password"}, grpc.StatusCode.INVALID_ARGUMENT, "unsupported_grant_type"),
        ({"scope": "missing"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_target"),
        ({"subject_token": "a.b.c"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_grant"),
    ],
)
async def test_a_failure_is_its_json_body_then_the_status(
    stack: Stack, change: dict[str, str], code: grpc.StatusCode, error: str
) -> None:
    messages, call = await answered(stack, form(stack, **change))
    (body,) = messages
    assert body.content_type == "application/json"
    assert json.loads(body.data)["error"] == error
    assert await call.code() == code
    headers = dict(await call.initial_metadata())
    assert headers["x-request-id"] in json.loads(body.data)["error_description"]


async def test_a_rate_limit_says_when_to_come_back_in_the_headers(stack: Stack) -> None:
    stack.github.add_fault(Fault(status=429, path_prefix="/app/installations", retry_after=42))
    messages, call = await answered(stack, form(stack))
    assert json.loads(messages[0].data)["error"] == "temporarily_unavailable"
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # In the headers: trailers after a body do not reach HTTP/1 callers through Envoy.
    assert dict(await call.initial_metadata())["retry-after"] == "42"


async def test_a_call_shed_by_admission_control_is_answered_in_rfc6749s_shape(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    # One call at a time: while a slow mint holds the only slot, the next token request is
    # shed at once, and still reads as the token endpoint's answer (Envoy keeps the body).
    async with running(*backends, max_concurrent_rpcs=1) as stack:
        await answered_ok(stack)  # warm: installation and policy cached
        stack.github.add_fault(
            Fault(status=None, latency_ms=1500, path_prefix="/app/installations", method="POST")
        )
        slow = asyncio.ensure_future(answered_ok(stack))
        registry = stack.app.metrics.registry
        await eventually(
            lambda: registry.get_sample_value("octo_sts_rpcs_in_flight") == 1.0,
            "the slow call to hold the only slot",
        )
        messages, call = await answered(stack, form(stack))
        assert json.loads(messages[0].data)["error"] == "temporarily_unavailable"
        assert "overloaded" in json.loads(messages[0].data)["error_description"]
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(await call.initial_metadata())["retry-after"] == "1"
        await slow


async def answered_ok(stack: Stack) -> None:
    token = stack.channel.unary_unary(
        METHOD,
        request_serializer=httpbody_pb2.HttpBody.SerializeToString,
        response_deserializer=httpbody_pb2.HttpBody.FromString,
    )
    assert "access_token" in json.loads((await token(form(stack))).data)
