"""Edge JWT verification's Envoy configuration, as rendered (``octosts.dev.edge_jwt``).

What Envoy does with it is tested through the real stack (tests/e2e/test_edge_jwt.py); here:
which routes get it, that its refusals are the answer table's, and the input rules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from octosts.dev import edge_jwt, stack
from octosts.dev.edge_jwt import EdgeIssuer, EdgeJwt, edge_jwt_option
from octosts.dev.envoy import EnvoyParams, Upstream, render_config
from octosts.domain.errors import TokenExpired, TokenSignatureInvalid
from octosts.transport.errors import denial

GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
GITHUB_JWKS = GITHUB_ACTIONS + "/.well-known/jwks"


def render(edge: EdgeJwt | None) -> dict[str, Any]:
    params = EnvoyParams(
        listen_port=8443,
        admin_port=9901,
        cert_path=Path("/certs/server.pem"),
        key_path=Path("/certs/server-key.pem"),
        descriptor_path=Path("/build/octosts.pb"),
        upstreams=[Upstream("sts", 8080)],
        github_api_url="https://api.github.com",
        edge_jwt=edge,
    )
    config: dict[str, Any] = yaml.safe_load(render_config(params))
    return config


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _verifies(route: dict[str, Any]) -> bool:
    authz = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
    return bool(
        authz.get("check_settings", {}).get("context_extensions", {}).get("mode") == "verify"
    )


def test_every_verify_route_and_no_other_gets_edge_verification() -> None:
    routes = _routes(render(EdgeJwt([EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)])))
    verify = [r for r in routes if _verifies(r)]
    assert len(verify) == 4  # /sts/exchange (JSON, form), both gRPC services
    for route in routes:
        per_route = route.get("typed_per_filter_config", {}).get(edge_jwt.FILTER)
        assert (per_route == edge_jwt.route_config()) is _verifies(route), route["match"]


def test_off_renders_no_jwt_filter_and_no_cluster() -> None:
    config = render(None)
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    assert edge_jwt.FILTER not in names
    assert edge_jwt.RBAC_FILTER not in names
    assert not any(
        c["name"].startswith("edge_jwks") for c in config["static_resources"]["clusters"]
    )


def test_filters_sit_before_ext_authz_and_the_jwks_host_is_verified_tls() -> None:
    config = render(EdgeJwt([EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)], clock_skew_s=45))
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    assert names.index(edge_jwt.FILTER) + 1 == names.index(edge_jwt.RBAC_FILTER)
    assert names.index(edge_jwt.RBAC_FILTER) + 1 == names.index("envoy.filters.http.ext_authz")
    (jwt,) = [f for f in _hcm(config)["http_filters"] if f["name"] == edge_jwt.FILTER]
    (provider,) = jwt["typed_config"]["providers"].values()
    assert provider["issuer"] == GITHUB_ACTIONS
    assert provider["clock_skew_seconds"] == 45
    assert provider["forward"] is True
    # Nothing is refused by jwt_authn itself: RBAC refuses only REFUSALS.
    assert jwt["typed_config"]["requirement_map"] == {"edge": {"allow_missing_or_failed": {}}}
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "edge_jwks_0"]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "token.actions.githubusercontent.com"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "token.actions.githubusercontent.com"}}
    ]


def test_edge_refusals_are_the_answer_tables_denials() -> None:
    mappers = _hcm(render(EdgeJwt([EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)])))[
        "local_reply_config"
    ]["mappers"]
    rendered = [m for m in mappers if m.get("status_code") == 401]
    expected = [denial(TokenExpired()), denial(TokenSignatureInvalid())]
    assert len(rendered) == len(expected)
    for mapper, answer in zip(rendered, expected, strict=True):
        assert answer is not None
        assert mapper["body_format_override"]["json_format"] == {
            "code": 16,
            "message": answer.message,
            "request_id": "%REQ(X-REQUEST-ID)%",
        }
        assert mapper["headers_to_add"][0]["header"] == {
            "key": "www-authenticate",
            "value": answer.www_authenticate,
        }


@pytest.mark.parametrize(
    ("issuer", "jwks_uri"),
    [
        ("https://issuer.example?x=1", GITHUB_JWKS),
        (GITHUB_ACTIONS, "ftp://host/jwks"),
        (GITHUB_ACTIONS, "https://user@host/jwks"),
        (GITHUB_ACTIONS, "https://bad host/jwks"),
    ],
)
def test_bad_issuers_and_jwks_urls_are_refused(issuer: str, jwks_uri: str) -> None:
    with pytest.raises(ValueError, match=r"issuer|JWKS"):
        EdgeIssuer(issuer, jwks_uri)


def test_no_or_repeated_issuers_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EdgeJwt([])
    one = EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)
    with pytest.raises(ValueError, match="differ"):
        EdgeJwt([one, one])


def test_command_line_option() -> None:
    assert edge_jwt_option([]) is None
    parsed = edge_jwt_option([f"{GITHUB_ACTIONS}={GITHUB_JWKS}"])
    assert parsed is not None
    assert parsed.issuers == (EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS),)
    with pytest.raises(SystemExit, match="ISSUER=JWKS_URL"):
        edge_jwt_option([GITHUB_ACTIONS])


# -- the edge's clock skew is the replicas' leeway ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _render_script(script: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    output = tmp_path / "envoy.yaml"
    args = ["--output", str(output), "--edge-issuer", f"{GITHUB_ACTIONS}={GITHUB_JWKS}", *extra]
    if script == "render_envoy_compose.py":
        args = ["--host-network", *args]
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def _clock_skew(path: Path) -> object:
    config = yaml.safe_load(path.read_text())
    filters = _hcm(config)["http_filters"]
    jwt = next(f for f in filters if f["name"] == "envoy.filters.http.jwt_authn")
    providers = jwt["typed_config"]["providers"]
    return next(iter(providers.values()))["clock_skew_seconds"]


@pytest.mark.parametrize("script", ["render_envoy_compose.py", "render_envoy_helm.py"])
def test_render_scripts_take_the_deployments_leeway_as_the_edges_clock_skew(
    script: str, tmp_path: Path
) -> None:
    # Edge JWT with a skew below the replicas' OCTOSTS_OIDC_LEEWAY_SECONDS refuses at the
    # edge tokens the service would accept: the scripts render the deployment's value.
    assert _render_script(script, tmp_path).returncode == 0
    assert _clock_skew(tmp_path / "envoy.yaml") == edge_jwt.DEFAULT_CLOCK_SKEW_S
    assert _render_script(script, tmp_path, "--clock-skew", "120").returncode == 0
    assert _clock_skew(tmp_path / "envoy.yaml") == 120
    for value in ("30.5", "301", "-1"):  # what the service refuses, the scripts refuse
        refused = _render_script(script, tmp_path, "--clock-skew", value)
        assert refused.returncode == 2
        assert "OCTOSTS_OIDC_LEEWAY_SECONDS" in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("leeway", "skew"), [(None, edge_jwt.DEFAULT_CLOCK_SKEW_S), ("45", 45), (" 60 ", 60)]
)
def test_the_dev_stack_renders_its_replicas_leeway(
    leeway: str | None, skew: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        stack, "discover", lambda issuers: [EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)]
    )
    monkeypatch.delenv("OCTOSTS_OIDC_LEEWAY_SECONDS", raising=False)
    env = {} if leeway is None else {"OCTOSTS_OIDC_LEEWAY_SECONDS": leeway}
    dev = stack.DevStack(tmp_path, stack.StackPorts.fixed(), extra_env=env, edge_jwt=True)
    rendered = dev._edge_jwt()
    assert rendered is not None
    assert rendered.clock_skew_s == skew


@pytest.mark.parametrize("leeway", ["30.5", "301", "soon"])
def test_the_dev_stack_refuses_a_leeway_its_replicas_would_refuse(
    leeway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        stack, "discover", lambda issuers: [EdgeIssuer(GITHUB_ACTIONS, GITHUB_JWKS)]
    )
    env = {"OCTOSTS_OIDC_LEEWAY_SECONDS": leeway}
    dev = stack.DevStack(tmp_path, stack.StackPorts.fixed(), extra_env=env, edge_jwt=True)
    with pytest.raises(stack.StackError, match="OCTOSTS_OIDC_LEEWAY_SECONDS"):
        dev._edge_jwt()
