"""Through the real Envoy over TLS: transcoding, ext_authz at the edge, native gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.envoy import EnvoyError, free_port, validate
from octosts.transport.errors import EDGE_NOT_FOUND
from tests.e2e.envoy_harness import (
    GITHUB_TOKEN,
    GOOD_TOKEN,
    ISSUER,
    SUBJECT,
    Edge,
    Upstreams,
    running_edge,
    start_upstream,
    write_config,
)

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {GOOD_TOKEN}"}


@pytest.fixture
async def upstream() -> AsyncIterator[Upstreams]:
    up = await start_upstream()
    try:
        yield up
    finally:
        await up.server.stop(None)


@pytest.fixture
async def edge(tmp_path: Path, upstream: Upstreams) -> AsyncIterator[Edge]:
    async with running_edge(tmp_path, [upstream.port]) as running:
        yield running


def assert_exchange_json(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "grpc-status" not in resp.headers
    assert "grpc-message" not in resp.headers
    body: dict[str, Any] = resp.json()
    assert body["token"] == GITHUB_TOKEN
    assert body["access_token"] == GITHUB_TOKEN
    assert body["expires_in"] == 3599  # a JSON number: int32 in the proto
    assert body["token_type"] == "bearer"
    return body


async def test_rendered_config_passes_envoy_validate(tmp_path: Path) -> None:
    _, config_path, _ = write_config(tmp_path, [free_port(), free_port()])
    validate(config_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(config_path.read_text().replace("ServiceUnavailable", "NoSuchStatus"))
    with pytest.raises(EnvoyError, match="NoSuchStatus"):
        validate(broken)


async def test_get_exchange_is_transcoded(edge: Edge, upstream: Upstreams) -> None:
    async with edge.http() as http:
        resp = await http.get(
            "/sts/exchange", params={"scope": "octo/app", "identity": "ci"}, headers=AUTH
        )
    body = assert_exchange_json(resp)
    assert body["repositories"] == ["app"]
    assert body["permissions"] == {"contents": "read"}
    assert len(upstream.sts.calls) == 1


async def test_post_exchange_is_transcoded_and_unknown_query_ignored(
    edge: Edge, upstream: Upstreams
) -> None:
    async with edge.http() as http:
        resp = await http.post(
            "/sts/exchange?utm=1&foo=bar",
            json={"scope": "octo/app", "identity": "ci"},
            headers=AUTH,
        )
        assert_exchange_json(resp)
        resp = await http.get(
            "/sts/exchange",
            params={"scope": "octo", "identity": "ci", "unknown_param": "x"},
            headers=AUTH,
        )
        assert_exchange_json(resp)
    assert len(upstream.sts.calls) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer not-the-right-token"},
        {"authorization": f"Basic {GOOD_TOKEN}"},
        {"authorization": "Bearer a,b"},
    ],
)
async def test_missing_or_bad_token_is_401_from_the_edge(
    edge: Edge, upstream: Upstreams, headers: dict[str, str]
) -> None:
    async with edge.http() as http:
        resp = await http.get(
            "/sts/exchange", params={"scope": "octo/app", "identity": "ci"}, headers=headers
        )
        post = await http.post(
            "/sts/exchange", json={"scope": "octo/app", "identity": "ci"}, headers=headers
        )
    for answer in (resp, post):
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert body["code"] == 16
        assert body["request_id"] == answer.headers["x-request-id"]
        assert GOOD_TOKEN not in answer.text
    assert upstream.sts.calls == []  # never reached Exchange


async def test_policy_denial_is_403_json(edge: Edge, upstream: Upstreams) -> None:
    async with edge.http() as http:
        resp = await http.get(
            "/sts/exchange", params={"scope": "deny/me", "identity": "ci"}, headers=AUTH
        )
    assert resp.status_code == 403, resp.text
    assert resp.json()["message"] == "policy_denied"
    assert "grpc-status" not in resp.headers
    assert len(upstream.sts.calls) == 1


@pytest.mark.parametrize("path", ["/nope", "/sts/exchange/extra", "/sts", "/"])
async def test_unknown_path_is_404(edge: Edge, upstream: Upstreams, path: str) -> None:
    async with edge.http() as http:
        resp = await http.get(path, headers=AUTH)
    assert resp.status_code == 404, resp.text
    assert resp.json()["code"] == 5
    assert upstream.sts.calls == []


async def test_unknown_method_on_exchange_path_is_404(edge: Edge, upstream: Upstreams) -> None:
    async with edge.http() as http:
        resp = await http.put("/sts/exchange", json={}, headers=AUTH)
    assert resp.status_code == 404, resp.text
    body = resp.json()
    assert body["code"] == 5
    assert body["request_id"] == resp.headers["x-request-id"]
    assert upstream.sts.calls == []


async def test_malformed_json_body_is_400(edge: Edge, upstream: Upstreams) -> None:
    async with edge.http() as http:
        resp = await http.post(
            "/sts/exchange",
            content=b'{"scope": "octo/app", "identity": ',
            headers={**AUTH, "content-type": "application/json"},
        )
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == 3
    assert upstream.sts.calls == []


async def test_spoofed_identity_headers_are_overwritten(edge: Edge, upstream: Upstreams) -> None:
    spoof = {
        **AUTH,
        "x-octo-sts-subject": "repo:evil/evil",
        "x-octo-sts-issuer": "https://evil.example",
        "x-octo-sts-extra": "1",
    }
    async with edge.http() as http:
        resp = await http.get(
            "/sts/exchange", params={"scope": "octo/app", "identity": "ci"}, headers=spoof
        )
    assert_exchange_json(resp)
    [metadata] = upstream.sts.calls
    assert metadata["x-octo-sts-subject"] == SUBJECT
    assert metadata["x-octo-sts-issuer"] == ISSUER
    assert "x-octo-sts-extra" not in metadata
    # The token itself is forwarded so Exchange can re-check it (from the verifier cache).
    assert metadata["authorization"] == f"Bearer {GOOD_TOKEN}"


async def test_health_bypasses_ext_authz_and_metrics_are_not_public(
    edge: Edge, upstream: Upstreams
) -> None:
    async with edge.http() as http:
        health = await http.get("/healthz")
        metrics = await http.get("/metrics")
    assert health.status_code == 200
    # Envoy's stats are on an internal listener only (EnvoyParams.metrics_port).
    assert metrics.status_code == 404
    assert metrics.json()["message"] == EDGE_NOT_FOUND.message
    assert "envoy_" not in metrics.text
    assert upstream.verifier.calls == 0


async def test_native_grpc_over_tls_both_services(edge: Edge, upstream: Upstreams) -> None:
    metadata = (("authorization", f"Bearer {GOOD_TOKEN}"),)
    async with edge.grpc_channel() as channel:
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        resp = await sts.Exchange(
            sts_pb2.ExchangeRequest(scope="octo/app", identity="ci"), metadata=metadata, timeout=10
        )
        assert resp.token == GITHUB_TOKEN
        chainguard = oidc_pb2_grpc.SecurityTokenServiceStub(channel)
        raw = await chainguard.Exchange(
            oidc_pb2.ExchangeRequest(scope="octo/app", identity="ci"), metadata=metadata, timeout=10
        )
        assert raw.token == f"{GITHUB_TOKEN}:octo/app"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await sts.Exchange(sts_pb2.ExchangeRequest(scope="octo/app", identity="ci"), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token_missing" in denied.value.details()
        # Service errors keep their gRPC status (the grpc-* stripping is for HTTP answers only).
        with pytest.raises(grpc.aio.AioRpcError) as policy:
            await sts.Exchange(
                sts_pb2.ExchangeRequest(scope="deny/me", identity="ci"),
                metadata=metadata,
                timeout=10,
            )
        assert policy.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert policy.value.details() == "policy_denied"
    assert upstream.chainguard.calls == 1
    assert len(upstream.sts.calls) == 2


async def test_service_down_is_503_not_403(edge: Edge, upstream: Upstreams) -> None:
    await upstream.server.stop(None)
    async with edge.http() as http:
        resp = await http.get(
            "/sts/exchange", params={"scope": "octo/app", "identity": "ci"}, headers=AUTH
        )
    assert resp.status_code == 503, resp.text
    assert upstream.sts.calls == []


async def test_authorization_header_never_logged(tmp_path: Path, upstream: Upstreams) -> None:
    async with running_edge(tmp_path, [upstream.port]) as running, running.http() as http:
        ok = await http.get(
            "/sts/exchange", params={"scope": "octo/app", "identity": "ci"}, headers=AUTH
        )
        assert ok.status_code == 200
        denied = await http.get(
            "/sts/exchange", headers={"authorization": "Bearer secret-bad-token"}
        )
        assert denied.status_code == 401
    # Envoy flushes its access log on shutdown (running_edge has stopped it).
    lines = [json.loads(line) for line in running.access_log.read_text().splitlines()]
    assert sorted(line["status"] for line in lines) == [200, 401]
    everything = running.access_log.read_text() + (tmp_path / "envoy.log").read_text()
    assert GOOD_TOKEN not in everything
    assert "secret-bad-token" not in everything
    assert GITHUB_TOKEN not in everything


async def test_requests_spread_over_replicas(tmp_path: Path) -> None:
    replicas = [await start_upstream(), await start_upstream()]
    try:
        async with running_edge(tmp_path, [r.port for r in replicas]) as running:
            async with running.http() as http:
                answers = await asyncio.gather(
                    *(
                        http.get(
                            "/sts/exchange",
                            params={"scope": "octo/app", "identity": "ci"},
                            headers=AUTH,
                        )
                        for _ in range(20)
                    )
                )
            assert [a.status_code for a in answers] == [200] * 20
            assert all(r.sts.calls for r in replicas)
    finally:
        for r in replicas:
            await r.server.stop(None)
