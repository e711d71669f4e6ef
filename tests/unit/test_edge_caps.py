"""The edge's caps as rendered into Envoy's config ([hardening-2] findings 5, 6, 7).

What Envoy does with them is tested through the real stack (tests/e2e/test_hostile_edge.py);
these hold the rendered config to the constants and the constants to each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from octosts.dev.envoy import (
    DEFAULT_TEMPLATE,
    MAX_REQUEST_HEADER_BYTES,
    MAX_REQUEST_HEADERS,
    EnvoyParams,
    Upstream,
    render_config,
)
from octosts.dev.tenant_limits import TenantLimits
from octosts.domain.tokens import MAX_ISSUER_LENGTH, MAX_SUBJECT_LENGTH
from octosts.transport.compat import FORM_CONTENT_TYPE
from octosts.transport.compat import MAX_FORM_BYTES as COMPAT_MAX_FORM_BYTES
from octosts.transport.errors import (
    EDGE_ANSWERS,
    EDGE_BODY_TOO_LARGE,
    EDGE_HEADERS_TOO_LARGE,
    EDGE_RATE_LIMITED,
)
from octosts.transport.oauth import MAX_FORM_BYTES as OAUTH_MAX_FORM_BYTES
from octosts.transport.oauth import TOKEN_PATH
from octosts.transport.server import MAX_MESSAGE_BYTES, MAX_METADATA_BYTES
from octosts.webhook.server import DEFAULT_MAX_BODY

# The headers Envoy may add after the guard has counted (ext_authz's identity headers, the
# router's x-envoy-*, a traceparent): generously more than there are.
ADDED_LATER = 8
HPACK_ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1: how gRPC counts metadata size


def params(**more: Any) -> EnvoyParams:
    base: dict[str, Any] = {
        "listen_port": 8443,
        "admin_port": 9901,
        "cert_path": Path("/c.pem"),
        "key_path": Path("/k.pem"),
        "descriptor_path": Path("/d.pb"),
        "upstreams": [Upstream("127.0.0.1", 8080), Upstream("127.0.0.1", 8082)],
        "webhook_upstreams": [Upstream("127.0.0.1", 8090), Upstream("127.0.0.1", 8091)],
    }
    return EnvoyParams(**(base | more))


def rendered(**more: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(render_config(params(**more)))
    return config


def public_hcm(config: dict[str, Any]) -> dict[str, Any]:
    [listener] = [x for x in config["static_resources"]["listeners"] if x["name"] == "sts_tls"]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def test_the_header_caps_leave_room_for_what_is_added_later() -> None:
    # Envoy's own limits are 100 headers and 60 KiB: the guard must answer first.
    assert MAX_REQUEST_HEADERS + ADDED_LATER < 100
    identity = MAX_ISSUER_LENGTH + MAX_SUBJECT_LENGTH + 2 * len("x-octo-sts-subject")
    as_metadata = MAX_REQUEST_HEADER_BYTES + identity + 1024  # + the router's, traceparent
    as_metadata += HPACK_ENTRY_OVERHEAD * (MAX_REQUEST_HEADERS + ADDED_LATER)
    assert as_metadata < MAX_METADATA_BYTES


def test_the_header_guard_runs_first_with_the_caps() -> None:
    filters = public_hcm(rendered())["http_filters"]
    guard = filters[0]
    assert guard["name"] == "envoy.filters.http.lua"
    code = guard["typed_config"]["default_source_code"]["inline_string"]
    assert f"count > {MAX_REQUEST_HEADERS} or size > {MAX_REQUEST_HEADER_BYTES}" in code
    assert f'"{EDGE_HEADERS_TOO_LARGE.http_status}"' in code
    assert f'"{EDGE_HEADERS_TOO_LARGE.code.value[0]}"' in code  # grpc-status for gRPC callers


@pytest.mark.parametrize("answer", [EDGE_HEADERS_TOO_LARGE, EDGE_BODY_TOO_LARGE])
def test_envoys_own_refusals_carry_the_tables_json(answer: Any) -> None:
    mappers = public_hcm(rendered())["local_reply_config"]["mappers"]
    [mapper] = [
        m
        for m in mappers
        if m["filter"]
        .get("status_code_filter", {})
        .get("comparison", {})
        .get("value", {})
        .get("default_value")
        == answer.http_status
    ]
    body = mapper["body_format_override"]["json_format"]
    assert body == {
        "code": answer.code.value[0],
        "message": answer.message,
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


def test_webhook_routes_buffer_up_to_the_services_limit_and_hash_by_signature() -> None:
    hcm = public_hcm(rendered(webhook_max_body_bytes=4096))
    [buffer] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.buffer"]
    assert buffer["disabled"] is True  # only where a route turns it on
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    webhook = [r for r in routes if r["match"].get("path") == "/webhook"]
    assert len(webhook) == 2  # pushes (mirrored) and the rest
    for route in webhook:
        per_route = route["typed_per_filter_config"]["envoy.filters.http.buffer"]
        assert per_route["buffer"] == {"max_request_bytes": 4096}
        assert route["route"]["hash_policy"] == [{"header": {"header_name": "x-hub-signature-256"}}]
    clusters = {c["name"]: c for c in rendered()["static_resources"]["clusters"]}
    assert clusters["sts_webhook"]["lb_policy"] == "RING_HASH"
    assert params().webhook_max_body_bytes == DEFAULT_MAX_BODY


def test_no_public_route_reaches_the_admin_api() -> None:
    routes = public_hcm(rendered())["route_config"]["virtual_hosts"][0]["routes"]
    assert all(r.get("route", {}).get("cluster") != "envoy_admin" for r in routes)
    assert "/metrics" not in {r["match"].get("path") for r in routes}


def test_metrics_listener_only_when_asked_and_only_metrics() -> None:
    names = [x["name"] for x in rendered()["static_resources"]["listeners"]]
    assert names == ["sts_tls"]
    config = rendered(metrics_port=9902, metrics_host="0.0.0.0")
    [metrics] = [x for x in config["static_resources"]["listeners"] if x["name"] != "sts_tls"]
    assert metrics["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}
    assert "transport_socket" not in metrics["filter_chains"][0]  # plain HTTP, internal
    hcm = metrics["filter_chains"][0]["filters"][0]["typed_config"]
    [metrics_route, rest] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert metrics_route["match"] == {"path": "/metrics"}
    assert metrics_route["route"] == {
        "cluster": "envoy_admin",
        "prefix_rewrite": "/stats/prometheus",
    }
    assert rest["direct_response"]["status"] == 404
    with pytest.raises(ValueError, match="metrics_host"):
        params(metrics_port=9902, metrics_host="metrics.local")


def test_exchange_routes_buffer_up_to_what_a_replica_reads() -> None:
    routes = public_hcm(rendered())["route_config"]["virtual_hosts"][0]["routes"]
    limits = {}
    for route in routes:
        if route["match"].get("path") in {"/sts/exchange", TOKEN_PATH} and "route" in route:
            per_route = route["typed_per_filter_config"]["envoy.filters.http.buffer"]
            is_form = FORM_CONTENT_TYPE in json.dumps(route["match"]) and not any(
                h.get("invert_match") for h in route["match"].get("headers", [])
            )
            limits[route["match"]["path"], is_form] = per_route["buffer"]["max_request_bytes"]
    assert limits == {
        ("/sts/exchange", False): MAX_MESSAGE_BYTES,
        ("/sts/exchange", True): COMPAT_MAX_FORM_BYTES,
        (TOKEN_PATH, False): OAUTH_MAX_FORM_BYTES,
    }


def test_every_transcoder_prints_json_the_same_way_from_one_spelling() -> None:
    hcm = public_hcm(rendered())
    kind = "envoy.filters.http.grpc_json_transcoder"
    configs = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == kind]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        per_route = route.get("typed_per_filter_config", {}).get(kind, {})
        if "services" in per_route and "print_options" in per_route:
            configs.append(per_route)
    assert len(configs) == 2  # the filter's own and the form route's
    assert all(
        c["print_options"]
        == {"preserve_proto_field_names": True, "always_print_primitive_fields": True}
        for c in configs
    )
    assert DEFAULT_TEMPLATE.read_text().count("always_print_primitive_fields") == 1


def json_answers(node: Any) -> Iterator[dict[str, Any]]:
    """Every {code, message} body in a rendered config: local reply formats, direct responses."""
    if isinstance(node, dict):
        body = node.get("json_format")
        if isinstance(body, dict) and "code" in body:
            yield body
        inline = node.get("body", {}).get("inline_string") if "status" in node else None
        if isinstance(inline, str) and inline.startswith("{"):
            yield json.loads(inline)
        for value in node.values():
            yield from json_answers(value)
    elif isinstance(node, list):
        for value in node:
            yield from json_answers(value)


def test_every_json_answer_envoy_gives_itself_is_in_the_edge_table() -> None:
    limits = TenantLimits(Path(DEFAULT_TEMPLATE).parent / "ratelimits.yaml")
    config = rendered(metrics_port=9902, tenant_limits=limits)
    table = {(a.code.value[0], a.message) for a in EDGE_ANSWERS}
    given = {(body["code"], body["message"]) for body in json_answers(config)}
    assert given == table  # no answer outside the table, and each of the table's is given
    mappers = public_hcm(config)["local_reply_config"]["mappers"]
    statuses = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]
        for m in mappers
        if "status_code_filter" in m["filter"]
    }
    # The 503s are told apart by response flag (UAEX, UO), the others by status.
    assert {a.http_status for a in EDGE_ANSWERS} - statuses == {503}
    without = {(b["code"], b["message"]) for b in json_answers(rendered())}
    assert given - without == {(EDGE_RATE_LIMITED.code.value[0], EDGE_RATE_LIMITED.message)}
