"""The OAuth 2.0 token endpoint's request: RFC 8693 token exchange parameters (docs/oauth.md).

``POST /oauth2/token`` with a form body reaches ``octosts.gateway.v1.OAuthTokenService``
as the raw bytes (Envoy's transcoder parses JSON only). This module reads them into the
exchange's own request; the servicer (``transport/sts.py``) runs the exchange and
answers RFC 8693's JSON, or RFC 6749's error JSON from the one answer table
(``transport/errors.py`` ``oauth_failure``). The mapping:

===================== ==========================================================
``grant_type``        ``urn:ietf:params:oauth:grant-type:token-exchange`` only
                      (else ``unsupported_grant_type``)
``subject_token``     the workload's OIDC token (what Exchange reads from
                      ``authorization: Bearer``)
``subject_token_type`` ``urn:ietf:params:oauth:token-type:jwt`` or ``...:id_token``
``audience``          the GitHub scope: ``owner`` or ``owner/repo``; repeated, several
                      repositories of one owner in one token (``scopes``)
``scope``             the trust policy's name (``identity``): exactly one scope-token
                      (else ``invalid_scope``)
``resource``          not supported (``invalid_target``): name repositories in audience
``requested_token_type`` absent or ``...:token-type:access_token``
``actor_token(_type)`` not supported (no delegation)
``client_id`` ...     ignored: no client authentication, the subject token is the
                      credential (other parameters are ignored too, RFC 6749 3.2)
===================== ==========================================================

RFC 6749 section 3.2: a parameter read here given twice is refused, except
``audience`` and ``resource``, which RFC 8693 lets repeat.
"""

from __future__ import annotations

from octosts.domain.errors import InvalidRequest
from octosts.domain.exchange import ExchangeRequest
from octosts.domain.names import check_identity, parse_scope
from octosts.domain.text import show
from octosts.domain.tokens import MAX_TOKEN_BYTES
from octosts.transport.compat import read_form
from octosts.transport.errors import INVALID_SCOPE, INVALID_TARGET, UNSUPPORTED_GRANT_TYPE
from octosts.transport.metadata import raw_token

# The endpoint (proto/octosts/gateway/v1/oauth.proto's binding, envoy/envoy.yaml.tmpl's route).
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a secret
# URNs of RFC 8693 section 3, not secrets.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
SUBJECT_TOKEN_TYPES = (JWT_TOKEN_TYPE, ID_TOKEN_TYPE)
# The largest subject token and room for the other parameters; Envoy refuses larger bodies
# on the route before any replica reads them (octosts.dev.envoy renders this limit).
MAX_FORM_BYTES = MAX_TOKEN_BYTES + 4096

# The parameters read here that RFC 6749 section 3.2 forbids repeating; RFC 8693 lets
# ``audience`` and ``resource`` repeat, and other names are not read.
_SINGULAR = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "scope",
        "requested_token_type",
        "actor_token",
        "actor_token_type",
    }
)
_UNSUPPORTED = ("actor_token", "actor_token_type")


def token_exchange_request(body: bytes, content_type: str) -> ExchangeRequest:
    """The exchange a token request asks for (see the module doc).

    Raises InvalidRequest (reason ``invalid_request``, ``unsupported_grant_type``,
    ``invalid_scope`` or ``invalid_target``), TokenMalformed (a subject token no JWT
    can be). Messages name parameters, never a token.
    """
    params: dict[str, list[str]] = {}
    for name, value in read_form(
        body, content_type, max_bytes=MAX_FORM_BYTES, reason=InvalidRequest.reason
    ):
        params.setdefault(name, []).append(value)
    for name, values in params.items():
        if len(values) > 1 and name in _SINGULAR:
            raise InvalidRequest(f"parameter {show(name, 40)} given more than once")
    _check_grant(params)
    bearer = _subject_token(params)
    audiences = _audiences(params)
    identity = _identity(_one(params, "scope"))
    if len(audiences) == 1:
        return ExchangeRequest(bearer, audiences[0], identity)
    return ExchangeRequest(bearer, "", identity, scopes=tuple(audiences))


def _check_grant(params: dict[str, list[str]]) -> None:
    """A token exchange, for an access token, without delegation."""
    grant_type = _one(params, "grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is missing")
    if grant_type != TOKEN_EXCHANGE:
        raise InvalidRequest(f"grant_type must be {TOKEN_EXCHANGE}", reason=UNSUPPORTED_GRANT_TYPE)
    for name in _UNSUPPORTED:
        if name in params:
            raise InvalidRequest(f"{name} is not supported: no delegation, only the subject token")
    if _one(params, "requested_token_type") not in (None, ACCESS_TOKEN_TYPE):
        raise InvalidRequest(f"requested_token_type can only be {ACCESS_TOKEN_TYPE}")


def _subject_token(params: dict[str, list[str]]) -> str:
    subject = _one(params, "subject_token")
    if not subject:
        raise InvalidRequest("subject_token is missing")
    if _one(params, "subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(f"subject_token_type must be one of {', '.join(SUBJECT_TOKEN_TYPES)}")
    return raw_token(subject, "subject_token")


def _audiences(params: dict[str, list[str]]) -> list[str]:
    """The GitHub scopes, each held to the scope's own syntax rule (an unknown target)."""
    if "resource" in params:
        raise InvalidRequest(
            "resource is not supported: name the GitHub scope (owner or owner/repo) in audience",
            reason=INVALID_TARGET,
        )
    audiences = params.get("audience", [])
    if not audiences:
        raise InvalidRequest("audience is missing: the GitHub scope, owner or owner/repo")
    for audience in audiences:
        try:
            parse_scope(audience)
        except InvalidRequest as exc:
            raise InvalidRequest(f"audience: {exc.detail}", reason=INVALID_TARGET) from exc
    return audiences


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _identity(scope: str | None) -> str:
    """The one scope-token of ``scope`` (RFC 6749 3.3: space-delimited): the policy name."""
    if not scope:
        raise InvalidRequest("scope is missing: the trust policy's name", reason=INVALID_SCOPE)
    names = scope.split(" ")
    if len(names) != 1:
        raise InvalidRequest("scope names exactly one trust policy", reason=INVALID_SCOPE)
    try:
        return check_identity(names[0])
    except InvalidRequest as exc:
        raise InvalidRequest(f"scope: {exc.detail}", reason=INVALID_SCOPE) from exc
