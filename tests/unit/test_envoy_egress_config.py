"""The egress gateway's Envoy configuration, as rendered (``octosts.dev.envoy``).

What Envoy does with it is tested through the real stack (tests/e2e/test_egress_gateway.py);
here: the shape every deployment gets, for URLs the e2e tests cannot use (GitHub, GHES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from octosts.dev.envoy import (
    DEFAULT_EGRESS_ROUTES,
    HOP_BY_HOP,
    EgressRoute,
    EnvoyParams,
    GitHubUpstream,
    Upstream,
    render_config,
)


def render(**params: Any) -> dict[str, Any]:
    base = EnvoyParams(
        listen_port=8443,
        admin_port=9901,
        cert_path=Path("/certs/server.pem"),
        key_path=Path("/certs/server-key.pem"),
        descriptor_path=Path("/build/octosts.pb"),
        upstreams=[Upstream("sts", 8080)],
        **params,
    )
    config: dict[str, Any] = yaml.safe_load(render_config(base))
    return config


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return found


def egress_routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in routes(config) if r.get("route", {}).get("cluster") == "github_api"]


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


@pytest.mark.parametrize(
    ("url", "expected", "host_header", "graphql"),
    [
        (
            "https://api.github.com",
            ("https", "api.github.com", 443, ""),
            "api.github.com",
            "/graphql",
        ),
        (
            "https://ghes.example.com:8443/api/v3/",
            ("https", "ghes.example.com", 8443, "/api/v3"),
            "ghes.example.com:8443",
            "/api/graphql",
        ),
        ("http://127.0.0.1:8781", ("http", "127.0.0.1", 8781, ""), "127.0.0.1:8781", "/graphql"),
    ],
)
def test_github_upstream_from_its_base_url(
    url: str, expected: tuple[str, str, int, str], host_header: str, graphql: str
) -> None:
    upstream = GitHubUpstream.parse(url)
    assert (upstream.scheme, upstream.host, upstream.port, upstream.base_path) == expected
    assert upstream.host_header == host_header
    assert upstream.graphql_path == graphql


@pytest.mark.parametrize(
    "url",
    [
        "http://ghes.example.com/api/v3",
        "https://user:pw@ghes.example.com",
        "https://x.com?a=b",
        "ftp://x",
    ],
)
def test_github_upstream_follows_the_github_cores_rules(url: str) -> None:
    with pytest.raises(ValueError, match="GitHub API URL"):
        GitHubUpstream.parse(url)


@pytest.mark.parametrize("prefix", ["github/", "/github", "/GitHub/", "/", "/a b/", "/a/../"])
def test_egress_prefixes_are_plain_lowercase_segments(prefix: str) -> None:
    with pytest.raises(ValueError, match="egress prefix"):
        EgressRoute(prefix)


def test_no_github_url_no_egress() -> None:
    config = render()
    assert egress_routes(config) == []
    assert "github_api" not in [c["name"] for c in config["static_resources"]["clusters"]]


def test_paths_are_normalised_and_proxy_requests_refused_for_every_route() -> None:
    manager = hcm(render())
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["http_protocol_options"] == {"allow_absolute_url": False}


def test_each_egress_route_goes_to_the_one_github_host_under_its_base_path() -> None:
    fixed = EgressRoute("/fixed/octo-org/demo/ci/", scope="octo-org/demo", identity="ci")
    config = render(
        github_api_url="https://ghes.example.com/api/v3",
        egress_routes=(*DEFAULT_EGRESS_ROUTES, fixed),
    )
    found = egress_routes(config)
    matches = [r["match"] for r in found]
    assert matches == [
        {"path": "/github/graphql"},
        {"prefix": "/github/"},
        {"path": "/api/graphql"},
        {"prefix": "/api/v3/"},
        {"path": "/fixed/octo-org/demo/ci/graphql"},
        {"prefix": "/fixed/octo-org/demo/ci/"},
    ]
    for route in found:
        forward = route["route"]
        assert forward["host_rewrite_literal"] == "ghes.example.com"
        graphql = "path" in route["match"]
        assert forward["prefix_rewrite"] == ("/api/graphql" if graphql else "/api/v3/")
        assert "retry_policy" not in forward  # a POST to GitHub is not repeated
        removed = set(route["request_headers_to_remove"])
        assert set(HOP_BY_HOP) | {"x-octo-sts-scope", "x-octo-sts-identity"} <= removed
        assert "authorization" not in removed  # ext_authz sets it; the router would undo that
        assert set(route["response_headers_to_remove"]) == set(HOP_BY_HOP)
        per_filter = route["typed_per_filter_config"]
        mutations = per_filter["envoy.filters.http.header_mutation"]["mutations"]
        assert mutations["response_mutations"] == [
            {"remove_on_match": {"key_matcher": {"prefix": "x-octo-sts-"}}}
        ]
        assert per_filter["envoy.filters.http.grpc_json_transcoder"]["disabled"] is True
    contexts = [
        r["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"][
            "context_extensions"
        ]
        for r in found
    ]
    assert contexts[:4] == [{"mode": "egress"}] * 4
    assert contexts[4:] == [{"mode": "egress", "scope": "octo-org/demo", "identity": "ci"}] * 2
    # Before the catch-all 404, which would otherwise answer them.
    assert routes(config)[-1]["match"] == {"prefix": "/"}


def test_an_https_github_is_verified_by_name() -> None:
    config = render(github_api_url="https://api.github.com", github_ca_path=Path("/ca.pem"))
    github = cluster(config, "github_api")
    assert github["type"] == "STRICT_DNS"
    address = github["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "api.github.com", "port_value": 443}
    tls = github["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.github.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.github.com"}}
    ]


def test_a_loopback_emulator_is_plain_http() -> None:
    github = cluster(render(github_api_url="http://127.0.0.1:8781"), "github_api")
    assert github["type"] == "STATIC"
    assert "transport_socket" not in github


def test_ext_authz_sees_what_egress_needs_and_no_more() -> None:
    manager = hcm(render(github_api_url="https://api.github.com"))
    authz = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    patterns = authz["typed_config"]["allowed_headers"]["patterns"]
    assert patterns == [
        {"exact": "authorization"},
        {"exact": "x-request-id"},
        {"exact": "user-agent"},
        {"prefix": "x-octo-sts-"},
    ]
    assert "with_request_body" not in authz["typed_config"]  # bodies go to GitHub only
