"""Envoy tracing render: off without a collector, OTLP/gRPC provider + cluster with one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from octosts.dev.envoy import OTLP_CLUSTER, EnvoyParams, Upstream, render_config


def params(**overrides: object) -> EnvoyParams:
    base: dict[str, object] = {
        "listen_port": 8443,
        "admin_port": 9901,
        "cert_path": Path("/c.pem"),
        "key_path": Path("/k.pem"),
        "descriptor_path": Path("/d.pb"),
        "upstreams": [Upstream("127.0.0.1", 8080)],
    }
    base.update(overrides)
    return EnvoyParams(**base)  # type: ignore[arg-type]


def hcm(config: dict[str, object]) -> dict[str, object]:
    listener = config["static_resources"]["listeners"][0]  # type: ignore[index]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def test_tracing_is_off_without_a_collector() -> None:
    config = yaml.safe_load(render_config(params()))
    assert "tracing" not in hcm(config)
    assert "layered_runtime" not in config
    clusters = [c["name"] for c in config["static_resources"]["clusters"]]
    assert OTLP_CLUSTER not in clusters


def test_collector_turns_on_the_opentelemetry_tracer() -> None:
    config = yaml.safe_load(render_config(params(otlp_collector=Upstream("otel-collector", 4317))))
    tracing = hcm(config)["tracing"]
    provider = tracing["provider"]  # type: ignore[index]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == OTLP_CLUSTER
    assert provider["typed_config"]["service_name"] == "octo-sts-gateway"
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == OTLP_CLUSTER]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "otel-collector", "port_value": 4317}
    runtime = config["layered_runtime"]["layers"][0]["static_layer"]
    assert runtime["tracing.opentelemetry.min_flush_spans"] == 1


@pytest.mark.parametrize("bad", [{"trace_sampling_percent": 101.0}, {"trace_flush_interval_ms": 0}])
def test_bad_tracing_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="trace_"):
        params(**bad)
