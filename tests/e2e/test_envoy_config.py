"""Rendering the Envoy template and controlling the Envoy process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from octosts.dev.envoy import EnvoyError, EnvoyProcess, Upstream, free_port, render_config
from tests.e2e.envoy_harness import unique_base_id, write_config

pytestmark = pytest.mark.e2e


def test_rendered_config_shape(tmp_path: Path) -> None:
    params, config_path, _ = write_config(tmp_path, [free_port(), free_port()])
    config = yaml.safe_load(config_path.read_text())
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    [listener] = config["static_resources"]["listeners"]
    assert listener["enable_reuse_port"] is False
    [cluster, _admin] = config["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in hcm["http_filters"]]
    # Authorization before transcoding; router last.
    assert filters.index("envoy.filters.http.ext_authz") < filters.index(
        "envoy.filters.http.grpc_json_transcoder"
    )
    assert filters[-1] == "envoy.filters.http.router"
    authz = hcm["http_filters"][filters.index("envoy.filters.http.ext_authz")]["typed_config"]
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert "authorization" not in str(hcm["access_log"]).lower()
    assert params.listen_port == listener["address"]["socket_address"]["port_value"]


def test_host_names_use_dns_and_paths_are_quoted(tmp_path: Path) -> None:
    params, _, _ = write_config(tmp_path, [free_port()])
    odd = tmp_path / 'dir with "quotes": and #'
    rendered = render_config(
        type(params)(
            listen_port=params.listen_port,
            admin_port=params.admin_port,
            cert_path=odd / "cert.pem",
            key_path=params.key_path,
            descriptor_path=params.descriptor_path,
            upstreams=[Upstream.parse("sts:50051"), Upstream.parse("[::1]:50052")],
        )
    )
    config = yaml.safe_load(rendered)
    [cluster, _] = config["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    tls = config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    chain = tls["typed_config"]["common_tls_context"]["tls_certificates"][0]["certificate_chain"]
    assert chain["filename"] == str(odd / "cert.pem")


@pytest.mark.parametrize(
    "bad",
    [
        {"upstreams": []},
        {"listen_port": 0},
        {"admin_port": 70000},
        {"authz_timeout_s": 0},
        {"num_retries": -1},
    ],
)
def test_impossible_params_are_rejected(tmp_path: Path, bad: dict[str, object]) -> None:
    params, _, _ = write_config(tmp_path, [free_port()])
    values = {
        "listen_port": params.listen_port,
        "admin_port": params.admin_port,
        "cert_path": params.cert_path,
        "key_path": params.key_path,
        "descriptor_path": params.descriptor_path,
        "upstreams": params.upstreams,
        **bad,
    }
    with pytest.raises(ValueError, match=r"."):
        type(params)(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["sts", "sts:", "sts:abc", "bad host:1"])
def test_bad_upstream_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="upstream"):
        Upstream.parse(address)


def test_start_failure_surfaces_envoy_log(tmp_path: Path) -> None:
    params, config_path, _ = write_config(tmp_path, [free_port()])
    config_path.write_text(config_path.read_text().replace("TLSv1_2", "TLSv9"))
    envoy = EnvoyProcess(
        config_path,
        admin_port=params.admin_port,
        log_path=tmp_path / "envoy.log",
        base_id=unique_base_id(),
    )
    try:
        with pytest.raises(EnvoyError, match="TLSv9"):
            envoy.start(timeout=15)
        assert envoy.pid is None
    finally:
        envoy.stop()


def test_start_and_stop_leave_nothing_behind(tmp_path: Path) -> None:
    params, config_path, _ = write_config(tmp_path, [free_port()])
    base_id = unique_base_id()
    with EnvoyProcess(
        config_path, admin_port=params.admin_port, log_path=tmp_path / "envoy.log", base_id=base_id
    ) as envoy:
        assert envoy.pid is not None
        assert Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").exists()
        pid = envoy.pid
    assert envoy.pid is None
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").exists()


def test_webhook_routes_are_rate_limited_strip_identity_headers_and_mirror_pushes(
    tmp_path: Path,
) -> None:
    from octosts.dev.envoy import EnvoyParams, validate  # noqa: PLC0415

    base, _, _ = write_config(tmp_path, [free_port()])
    hooks = [Upstream("127.0.0.1", free_port()), Upstream("127.0.0.1", free_port())]
    params = EnvoyParams(
        **{
            **{f: getattr(base, f) for f in base.__dataclass_fields__},
            "webhook_upstreams": hooks,
            "webhook_rate_per_second": 5,
        }
    )
    path = tmp_path / "webhook.yaml"
    path.write_text(render_config(params))
    validate(path)
    config = yaml.safe_load(path.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    hooks_routes = [r for r in routes if r["match"].get("path") == "/webhook"]
    assert len(hooks_routes) == 2  # push (mirrored) first, then every other event
    push, other = hooks_routes
    assert [m["cluster"] for m in push["route"]["request_mirror_policies"]] == [
        "sts_webhook_0",
        "sts_webhook_1",
    ]
    assert "request_mirror_policies" not in other["route"]
    for route in hooks_routes:
        assert route["request_headers_to_remove"] == ["x-octo-sts-issuer", "x-octo-sts-subject"]
        limit = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
        assert limit["token_bucket"]["tokens_per_fill"] == 5
        authz = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert authz["disabled"] is True
