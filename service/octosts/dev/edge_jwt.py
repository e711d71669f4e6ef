"""Edge JWT verification: Envoy's ``jwt_authn`` refuses bad tokens of known issuers itself.

On the exchange routes (the ones ext_authz runs ``mode: verify`` on), Envoy's own JWT filter
checks the signature and the time claims of a token whose ``iss`` is one of the deployment
allowlist's *exact* issuers (``OCTOSTS_ISSUER_ALLOWLIST``; patterns and organizations'
trusted issuers cannot be providers: a provider names one issuer and one JWKS). A token that
fails there is answered 401 by Envoy in microseconds, with the answer table's body, before
any Check reaches a replica: that is the deny path [perf-2] measures. An issuer whose keys
policies pin must not be a provider (docs/gateway.md: admit it with a pattern instead).

Everything else goes on to ext_authz exactly as before, and the replicas still verify every
token themselves (Check and Exchange; neither reads what jwt_authn found):

- no token, another scheme, a token of any other issuer (a pattern, an organization's);
- a ``kid`` the cached JWKS lacks (keys rotated since Envoy fetched them: the service
  refetches, Envoy cannot), a JWKS Envoy could not fetch, a token Envoy cannot parse.

How: the requirement is ``allow_missing_or_failed`` (so no failure stops a request by
itself) with each provider's ``failed_status_in_metadata``; an RBAC filter right after it
denies the requests whose failure is one of ``REFUSALS`` (each means: the token names an
edge issuer and fails that issuer's signature or time check, which the service would refuse
too), and a local-reply mapper per refusal turns RBAC's 403 into the 401 ext_authz gives for
that reason (``transport.errors.denial``: same JSON ``{code, message, request_id}``, same
``www-authenticate``). Plain ``allow_missing`` would not do: Envoy then refuses a token
from any issuer it has no provider for ("Jwt issuer is not configured").

Known differences from ext_authz's answer (tests/e2e/test_edge_jwt.py pins the rest):
a token both expired and badly signed is ``token_expired`` here (the service checks the
signature first); ``OCTOSTS_VERBOSE_ERRORS`` details are not shown; a ``kid`` reused
for a new key after a rotation fails here until Envoy refetches (``jwks_cache_s``).
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

from octosts.domain.errors import StsError, TokenExpired, TokenSignatureInvalid
from octosts.domain.tokens import check_issuer_url
from octosts.settings import Settings, SettingsError, parse_setting
from octosts.transport.errors import denial

FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
REQUIREMENT = "edge"
# Where each provider writes why a token failed: {code, message} in FILTER's metadata.
FAILURE_KEY = "jwt_failure"
# Envoy's (jwt_verify_lib's) status numbers, as it writes them at FAILURE_KEY; pinned by the
# end-to-end test against the Envoy binary in use.
JWT_NOT_YET_VALID = 2
JWT_EXPIRED = 3
JWT_VERIFICATION_FAILS = 26
# The failures the edge answers itself, and the error the service would raise for them.
REFUSALS: tuple[tuple[tuple[int, ...], StsError], ...] = (
    ((JWT_EXPIRED, JWT_NOT_YET_VALID), TokenExpired()),
    ((JWT_VERIFICATION_FAILS,), TokenSignatureInvalid()),
)
_LEEWAY = "oidc_leeway_seconds"  # the Settings field of OCTOSTS_OIDC_LEEWAY_SECONDS
# The replicas' default OCTOSTS_OIDC_LEEWAY_SECONDS, read from its one declaration.
DEFAULT_CLOCK_SKEW_S = cast("int", next(f.default for f in fields(Settings) if f.name == _LEEWAY))
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
_TYPE = "type.googleapis.com/"


@dataclass(frozen=True, slots=True)
class EdgeIssuer:
    """One exact issuer and where its JWKS is (its discovery document's ``jwks_uri``).

    Raises ValueError for an issuer the token rules refuse or a JWKS URL Envoy cannot fetch.
    """

    issuer: str
    jwks_uri: str

    def __post_init__(self) -> None:
        for what, url in (("issuer", self.issuer), ("JWKS URL", self.jwks_uri)):
            try:
                check_issuer_url(url, allow_insecure=True)
            except StsError as exc:
                raise ValueError(f"{what} {url!r}: {exc.detail}") from exc
        # Envoy's cluster takes the host as it is: a name or an IP literal.
        if not _HOST_RE.match(self.host):
            raise ValueError(f"JWKS URL {self.jwks_uri!r} has no usable host")

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.jwks_uri).scheme

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.jwks_uri).hostname or ""

    @property
    def port(self) -> int:
        parts = urllib.parse.urlsplit(self.jwks_uri)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class EdgeJwt:
    """What ``octosts.dev.envoy`` renders for edge JWT verification.

    ``clock_skew_s`` must not be below the replicas' OCTOSTS_OIDC_LEEWAY_SECONDS (else the
    edge refuses tokens the service accepts); ``jwks_cache_s``: how long Envoy keeps a JWKS
    (fetched at start, refreshed in the background).
    """

    issuers: Sequence[EdgeIssuer]
    jwks_cache_s: float = 300.0
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S
    fetch_timeout_s: float = 5.0
    # What an https JWKS host's certificate is checked against; None: the system's bundle.
    ca_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.issuers:
            raise ValueError("edge JWT verification needs at least one exact issuer")
        names = [i.issuer for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("edge issuers must differ")
        if self.jwks_cache_s <= 0 or self.fetch_timeout_s <= 0 or self.clock_skew_s < 0:
            raise ValueError("jwks_cache_s, fetch_timeout_s must be positive, clock_skew_s >= 0")
        object.__setattr__(self, "issuers", tuple(self.issuers))

    @property
    def clusters(self) -> list[tuple[str, EdgeIssuer]]:
        """(Envoy cluster name, issuer) for each issuer's JWKS host."""
        return [(f"edge_jwks_{index}", issuer) for index, issuer in enumerate(self.issuers)]


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def filters(edge: EdgeJwt) -> list[dict[str, Any]]:
    """jwt_authn (verifies, refuses nothing) and the RBAC filter that refuses ``REFUSALS``."""
    providers = {
        f"issuer_{index}": {
            "issuer": issuer.issuer,
            # The service reads the token again: the header stays.
            "forward": True,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "clock_skew_seconds": edge.clock_skew_s,
            "failed_status_in_metadata": FAILURE_KEY,
            "remote_jwks": {
                "http_uri": {
                    "uri": issuer.jwks_uri,
                    "cluster": cluster,
                    "timeout": _duration(edge.fetch_timeout_s),
                },
                "cache_duration": _duration(edge.jwks_cache_s),
                # Fetched at start-up, refreshed in the background. The listener opens once
                # the first fetch is done (or failed: then tokens go to ext_authz), so the
                # first requests are judged like every later one.
                "async_fetch": {"fast_listener": False},
            },
        }
        for index, (cluster, issuer) in enumerate(edge.clusters)
    }
    jwt_authn = {
        "name": FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "requirement_map": {REQUIREMENT: {"allow_missing_or_failed": {}}},
        },
    }
    refused = [{"metadata": _failure_matcher(code)} for codes, _ in REFUSALS for code in codes]
    rbac = {
        "name": RBAC_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "DENY",
                "policies": {
                    "edge_jwt_refused": {"permissions": [{"any": True}], "principals": refused}
                },
            },
        },
    }
    return [jwt_authn, rbac]


def route_config() -> dict[str, Any]:
    """The per-route config that turns edge verification on for a route."""
    return {
        "@type": _TYPE + "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        "requirement_name": REQUIREMENT,
    }


def mappers() -> list[dict[str, Any]]:
    """local_reply_config mappers: RBAC's refusal of each ``REFUSALS`` entry -> the 401
    ext_authz gives for the same error (``transport.errors.denial``)."""
    out = []
    for codes, error in REFUSALS:
        answer = denial(error)
        if answer is None or answer.www_authenticate is None:
            raise AssertionError(f"{error.reason} is no edge denial")  # the table changed
        which = _any_of([{"metadata_filter": {"matcher": _failure_matcher(c)}} for c in codes])
        out.append(
            {
                "filter": {"and_filter": {"filters": [_RBAC_REFUSED, which]}},
                "status_code": answer.http_status,
                "headers_to_add": [
                    {
                        "header": {"key": "www-authenticate", "value": answer.www_authenticate},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "body_format_override": {
                    "json_format": {
                        "code": answer.code.value[0],
                        "message": answer.message,
                        "request_id": "%REQ(X-REQUEST-ID)%",
                    }
                },
            }
        )
    return out


# RBAC's refusal is a local 403 (it sets no response flag); with one of REFUSALS in the
# metadata nothing else can answer 403 (RBAC stops the request before ext_authz).
_RBAC_REFUSED = {
    "status_code_filter": {
        "comparison": {
            "op": "EQ",
            "value": {"default_value": 403, "runtime_key": "octosts.lr403jwt"},
        }
    }
}


def _failure_matcher(code: int) -> dict[str, Any]:
    return {
        "filter": FILTER,
        "path": [{"key": FAILURE_KEY}, {"key": "code"}],
        "value": {"double_match": {"exact": code}},
    }


def _any_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    # Envoy's or_filter takes two filters at least.
    return items[0] if len(items) == 1 else {"or_filter": {"filters": items}}


def clock_skew(text: str) -> int:
    """The replicas' OCTOSTS_OIDC_LEEWAY_SECONDS as they parse it (the edge's clock skew).

    Raises SettingsError naming the problem.
    """
    return cast("int", parse_setting(_LEEWAY, text))


def clock_skew_option(text: str) -> int:
    """``--clock-skew SECONDS`` (the render scripts): ``clock_skew`` as an argparse type."""
    try:
        return clock_skew(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CLOCK_SKEW_HELP = (
    "edge JWT: the replicas' OCTOSTS_OIDC_LEEWAY_SECONDS, so that the edge accepts the tokens "
    f"they accept (default {DEFAULT_CLOCK_SKEW_S}, the service's default)"
)


def edge_jwt_option(
    values: Sequence[str], clock_skew_s: int = DEFAULT_CLOCK_SKEW_S
) -> EdgeJwt | None:
    """``--edge-issuer ISSUER=JWKS_URL`` values (the render scripts): None when there are none.
    ``clock_skew_s``: ``--clock-skew``.

    Raises SystemExit with the problem (a command-line error).
    """
    if not values:
        return None
    pairs = [value.partition("=") for value in values]
    bad = [issuer + sep + uri for issuer, sep, uri in pairs if not sep]
    if bad:
        raise SystemExit(f"--edge-issuer {bad[0]!r} is not ISSUER=JWKS_URL")
    try:
        return EdgeJwt(
            [EdgeIssuer(issuer, uri) for issuer, _, uri in pairs], clock_skew_s=clock_skew_s
        )
    except ValueError as exc:
        raise SystemExit(f"--edge-issuer: {exc}") from exc


def discover(issuers: Iterable[str], *, timeout: float = 10.0) -> list[EdgeIssuer]:
    """Each issuer's ``jwks_uri`` from its discovery document (the dev stack, at start-up).

    Raises ValueError when a document cannot be read or names no usable JWKS URL.
    """
    import httpx  # noqa: PLC0415  (dev tooling only; the service never imports this module)

    found = []
    for issuer in issuers:
        url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            reply = httpx.get(url, timeout=timeout)
            reply.raise_for_status()
            jwks_uri = reply.json()["jwks_uri"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"discovery of {issuer} failed: {type(exc).__name__}") from exc
        found.append(EdgeIssuer(issuer, str(jwks_uri)))
    return found
