"""Per-tenant rate limits at the edge: Envoy's global rate limiting, or its local fallback.

A tenant is what ext_authz verified: the workload identity (issuer + subject) and, a level
up, the issuer vouching for it. Check puts both, as digests, in Envoy's dynamic metadata
(``transport.ext_authz.tenant_metadata``); an Envoy filter after ext_authz turns them into
two rate-limit descriptors, ``[("subject", <digest>)]`` and ``[("issuer", <digest>)]``, on
every route Check verified (exchanges over HTTP and native gRPC). Requests Check refused
never reach it, and nothing else (health, webhook, OAuth, egress) carries the metadata.

Digests, not the raw claims: a descriptor value ends up inside the rate-limit service's
Redis key, joined with ``_``, and a caller who owns an issuer chooses its URL and subjects;
hex digests cannot be arranged to collide with another tenant's key, and stay 32 bytes
however long a subject is. An override for one tenant names its digest (docs/deploy.md:
``printf '%s' "$ISSUER" | sha256sum | cut -c1-32``).

The limits are one YAML file in the rate-limit service's own format (``envoy/ratelimits.yaml``,
domain ``octo-sts``; keys ``subject`` and ``issuer``, with or without a ``value``). It is used
two ways:

- with the service (``TenantLimits.service``): Envoy's ``envoy.filters.http.ratelimit`` asks
  the real ``envoyproxy/ratelimit`` service, which counts in Redis for the whole fleet
  (fixed windows of the limit's unit). Service down, slow (``timeout_s``) or its Redis down:
  **fail open** (``failure_mode_deny`` false) — the limits protect GitHub budgets from a noisy
  neighbour, the replicas still have their own admission control and GitHub holds, and a
  rate-limit service outage must not stop every workload from getting tokens. Counted by
  Envoy (``cluster.sts.ratelimit.failure_mode_allowed``).
- without it: Envoy's local rate limit reads the same file, one token bucket per digest (up
  to ``MAX_DYNAMIC_DESCRIPTORS`` tracked at once, least recently used dropped), refilled
  smoothly (``requests_per_unit`` tokens per unit). Each Envoy counts on its own: a single
  box's fallback.

A limited request gets 429 with the answer table's JSON body (``EDGE_RATE_LIMITED``) and
``Retry-After`` (the seconds Envoy reports until the window or bucket refills); gRPC callers
get ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from octosts.dev.envoy import Upstream

DOMAIN = "octo-sts"
# Where Check's dynamic metadata lives: the ext_authz filter's name in envoy.yaml.tmpl.
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
KEYS = ("subject", "issuer")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATELIMIT_CLUSTER = "ratelimit"
MAX_DYNAMIC_DESCRIPTORS = 20_000
_MIN_FILL_SECONDS = 0.05  # Envoy's local rate limit refuses shorter fill intervals
_TYPE = "type.googleapis.com/"
_ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


@dataclass(frozen=True, slots=True)
class Limit:
    """``requests`` per ``unit`` for descriptor ``key`` (one ``value``, or every value)."""

    key: str
    value: str | None
    requests: int
    unit: str

    @property
    def seconds(self) -> int:
        return UNITS[self.unit]


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """The edge's per-tenant limits: the YAML file and who enforces it.

    ``service``: the rate-limit service's gRPC address (global limits in its Redis);
    None: Envoy's local rate limit. Raises ValueError for a file it cannot use.
    """

    path: Path
    service: Upstream | None = None
    timeout_s: float = 0.25
    failure_mode_deny: bool = False  # fail open: see the module docstring

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("tenant limits: timeout_s must be positive")
        load_limits(self.path)  # refused at render time, not by a running Envoy

    @property
    def limits(self) -> tuple[Limit, ...]:
        return load_limits(self.path)


def load_limits(path: Path) -> tuple[Limit, ...]:
    """The limits of a rate-limit service config file. Raises ValueError saying what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"tenant limits {path}: cannot read: {exc}") from exc
    if not isinstance(data, dict) or data.get("domain") != DOMAIN:
        raise ValueError(f"tenant limits {path}: a mapping with domain: {DOMAIN}")
    entries = data.get("descriptors")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"tenant limits {path}: descriptors: a non-empty list")
    limits = [_limit(path, entry) for entry in entries]
    seen = [(limit.key, limit.value) for limit in limits]
    if len(set(seen)) != len(seen):
        raise ValueError(f"tenant limits {path}: a key and value appear twice")
    return tuple(limits)


def _limit(path: Path, entry: object) -> Limit:
    where = f"tenant limits {path}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: each descriptor is a mapping")  # noqa: TRY004 - a bad file
    key, value, rate = entry.get("key"), entry.get("value"), entry.get("rate_limit")
    if key not in KEYS:
        raise ValueError(f"{where}: key must be one of {', '.join(KEYS)}, not {key!r}")
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"{where}: value of {key} must be a non-empty string")
    extra = set(entry) - {"key", "value", "rate_limit"}
    if extra:
        # Nested descriptors, shadow mode...: the local fallback could not honour them.
        raise ValueError(f"{where}: unsupported field(s) {sorted(extra)} on {key}")
    if not isinstance(rate, dict) or set(rate) != {"unit", "requests_per_unit"}:
        raise ValueError(f"{where}: rate_limit of {key}: unit and requests_per_unit")
    unit, requests = rate["unit"], rate["requests_per_unit"]
    if unit not in UNITS:
        raise ValueError(f"{where}: unit of {key} must be one of {', '.join(UNITS)}")
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ValueError(f"{where}: requests_per_unit of {key} must be a positive integer")
    return Limit(key, value, requests, unit)


def _actions() -> list[dict[str, Any]]:
    """One descriptor per key, from Check's metadata; absent (not verified): none sent."""
    return [
        {
            "actions": [
                {
                    "metadata": {
                        "descriptor_key": key,
                        "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": key}]},
                        "source": "DYNAMIC",
                        "skip_if_absent": True,
                    }
                }
            ]
        }
        for key in KEYS
    ]


def rate_limit_filter(limits: TenantLimits) -> dict[str, Any]:
    """The HTTP filter enforcing ``limits`` (after ext_authz, before the transcoder)."""
    if limits.service is not None:
        timeout = f"{limits.timeout_s:.3f}s"
        return {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": DOMAIN,
                "timeout": timeout,
                "failure_mode_deny": limits.failure_mode_deny,
                # Only with failure_mode_deny: "cannot check right now", as ext_authz says it.
                "status_on_error": {"code": "ServiceUnavailable"},
                "rate_limited_as_resource_exhausted": True,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limits": _actions(),
                "rate_limit_service": {
                    "transport_api_version": "V3",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER},
                        "timeout": timeout,
                    },
                },
            },
        }
    return {
        # Its own name: envoy.filters.http.local_ratelimit is the webhook routes' limiter.
        "name": "octosts.tenant_local_ratelimit",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "tenant_local_rate_limit",
            # Requests without a tenant descriptor are not limited here.
            "token_bucket": {
                "max_tokens": 1_000_000_000,
                "tokens_per_fill": 1_000_000_000,
                "fill_interval": "1s",
            },
            "filter_enabled": {**_ALWAYS, "runtime_key": "octosts.tenant_local_enabled"},
            "filter_enforced": {**_ALWAYS, "runtime_key": "octosts.tenant_local_enforced"},
            "rate_limited_as_resource_exhausted": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "max_dynamic_descriptors": MAX_DYNAMIC_DESCRIPTORS,
            # Envoy takes the first match: one tenant's own limit before its key's default.
            "descriptors": [
                _local_descriptor(limit)
                for limit in sorted(limits.limits, key=lambda lim: lim.value is None)
            ],
            "rate_limits": _actions(),
        },
    }


def _local_descriptor(limit: Limit) -> dict[str, Any]:
    """A token bucket holding a unit's requests, refilled one request's share at a time."""
    entry = {"key": limit.key} if limit.value is None else {"key": limit.key, "value": limit.value}
    per_token = limit.seconds / limit.requests
    tokens = max(1, math.ceil(_MIN_FILL_SECONDS / per_token))
    return {
        "entries": [entry],
        "token_bucket": {
            "max_tokens": limit.requests,
            "tokens_per_fill": tokens,
            "fill_interval": f"{tokens * per_token:.3f}s",
        },
    }


def rate_limit_cluster(limits: TenantLimits, connect_timeout: str) -> dict[str, Any] | None:
    """The rate-limit service's cluster (gRPC over HTTP/2), or None for the local fallback."""
    service = limits.service
    if service is None:
        return None
    return {
        "name": RATELIMIT_CLUSTER,
        "type": "STATIC" if service.is_ip else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": RATELIMIT_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": service.host,
                                        "port_value": service.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


# Copies X-RateLimit-Reset (Envoy's seconds until the window or bucket refills) into
# Retry-After on a 429 that has none, at least 1: the global filter's and the local one's
# alike (a 429 from a replica carries its own Retry-After).
RETRY_AFTER_LUA = """\
function envoy_on_response(response)
  local headers = response:headers()
  if headers:get(":status") == "429" and headers:get("retry-after") == nil then
    local reset = tonumber(headers:get("x-ratelimit-reset") or "") or 1
    headers:add("retry-after", tostring(math.max(1, math.ceil(reset))))
  end
end
"""
