"""The exception tree of Octo STS.

Every error raised by domain code or adapters is an ``StsError``. What an
error *means* is stated here, once, as class attributes; everything else reads
them: the transport's table (``transport/errors.py``, the only one mapping
errors to gRPC codes, HTTP statuses and the edge's answers), metrics and the
audit event (``observability.metrics.exchange_outcome``)::

    StsError                     family                caller's fault
    ├── InvalidRequest           invalid_request       yes   bad scope, identity, metadata
    ├── AuthenticationError      unauthenticated       yes   the bearer token cannot be trusted
    │   ├── TokenMalformed       missing, too large, not a JWT, bad header/payload
    │   ├── IssuerRejected       issuer URL fails the rules, or not allowed
    │   ├── TokenSignatureInvalid  no matching key, bad signature, bad algorithm
    │   ├── TokenExpired         exp/nbf/iat out of bounds
    │   └── TokenClaimsInvalid   sub/aud/iss syntax, missing required claims
    ├── PermissionDenied         permission_denied     yes   callers cannot tell which
    │   ├── NoInstallation       the GitHub App is not installed for the owner
    │   ├── PolicyNotFound       no trust policy file under that name
    │   ├── PolicyInvalid        the policy file does not parse / validate
    │   ├── PolicyDenied         the token does not satisfy the policy
    │   ├── IssuerNotTrusted     the org's trusted-token-issuers file refuses the issuer
    │   ├── PolicyExceedsCeiling the policy grants more than the org's permission ceiling
    │   └── MintRejected         GitHub refused the token request (422)
    ├── RateLimited              rate_limited          no    GitHub primary/secondary limit
    ├── UpstreamUnavailable      upstream_unavailable  no
    │   ├── IssuerUnavailable    discovery/JWKS unreachable, 5xx, timeout, oversized
    │   ├── GitHubUnavailable    GitHub unreachable, 5xx, timeout; github_busy: no free
    │   │                        connection to it (the excess when GitHub is slow)
    │   └── KmsUnavailable       the KMS holding the App key did not sign the App JWT
    └── ServiceUnavailable       service_unavailable   no    this replica cannot take the call now
        ├── Overloaded           at its limit of calls in progress: shed at once
        └── ShuttingDown         draining: the call outlived the shutdown grace period
    (a bare StsError)            internal              no

``family`` is the stable name of the top-level branch (metric labels, stage
outcomes); ``caller_fault`` says whether the caller can fix it (an exchange
``denied``) or the fault is ours or upstream's (``error``, what alerts watch).
``retry_after`` (seconds), when set, is when the same call may succeed; a
RateLimited always has one, from GitHub's headers.

Each error has a stable, machine-readable ``reason`` (used in metrics, audit
events and caller-facing messages) and a ``detail`` meant for the policy owner
or operator. ``detail`` may name policy contents, so the transport shows it to
callers only when verbose errors are enabled. Neither ever contains a token.
A reason other code reads (a table row, a cache rule) is a constant below,
next to its class; the others are written once, where they are raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class StsError(Exception):
    """Root of all Octo STS errors."""

    family: ClassVar[str] = "internal"
    caller_fault: ClassVar[bool] = False
    reason: str = "internal"
    # Seconds after which the same call may succeed, when that is known (callers are told).
    retry_after: float | None = None

    def __init__(
        self, detail: str = "", *, reason: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail
        if reason is not None:
            self.reason = reason
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequest(StsError):
    family = reason = "invalid_request"
    caller_fault = True


# Requested scopes that say two things (``scope`` not among ``scopes``; several scopes on
# the single-scope chainguard API), and several repositories one token cannot cover.
AMBIGUOUS_SCOPE = "ambiguous_scope"
INVALID_SCOPES = "invalid_scopes"


class AuthenticationError(StsError):
    family = reason = "unauthenticated"
    caller_fault = True


class TokenMalformed(AuthenticationError):
    reason = "token_malformed"


# No Bearer token at all (no header, another scheme, empty): RFC 6750 answers without an error code.
TOKEN_MISSING = "token_missing"  # noqa: S105 - a reason code, not a secret


class IssuerRejected(AuthenticationError):
    reason = "invalid_token_issuer"


class TokenSignatureInvalid(AuthenticationError):
    reason = "token_signature_invalid"


# The issuer does not (yet) publish the token's kid: may become valid when keys rotate,
# so a verdict with this reason is never remembered.
UNKNOWN_KEY_ID = "unknown_key_id"


class TokenExpired(AuthenticationError):
    reason = "token_expired"


class TokenClaimsInvalid(AuthenticationError):
    reason = "token_claims_invalid"


class PermissionDenied(StsError):
    family = reason = "permission_denied"
    caller_fault = True


class NoInstallation(PermissionDenied):
    reason = "no_installation"


class PolicyNotFound(PermissionDenied):
    reason = "policy_not_found"


# The app cannot read files there at all (no contents:read, GitHub 403), unlike an absent file.
POLICY_UNREADABLE = "policy_unreadable"


class PolicyInvalid(PermissionDenied):
    """A trust policy (or org issuers file) that does not parse or validate.

    ``problems`` lists every problem found, each naming the field and, when
    known, the line, so ``octo-sts policy lint`` can print them all.
    """

    reason = "policy_invalid"

    def __init__(self, problems: list[PolicyProblem] | str, *, reason: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [PolicyProblem(field="", message=problems)]
        self.problems = problems
        super().__init__("; ".join(p.render() for p in problems), reason=reason)


class PolicyDenied(PermissionDenied):
    reason = "policy_denied"


class IssuerNotTrusted(PermissionDenied):
    reason = "issuer_not_trusted"


class PolicyExceedsCeiling(PermissionDenied):
    reason = "policy_exceeds_ceiling"


class MintRejected(PermissionDenied):
    reason = "mint_rejected"


class RateLimited(StsError):
    """GitHub refuses calls for a while: ``retry_after`` seconds, what callers are told."""

    family = reason = "rate_limited"
    caller_fault = False

    def __init__(self, detail: str = "", *, retry_after: float, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason, retry_after=retry_after)


class UpstreamUnavailable(StsError):
    family = reason = "upstream_unavailable"
    caller_fault = False


class IssuerUnavailable(UpstreamUnavailable):
    reason = "issuer_unavailable"


class GitHubUnavailable(UpstreamUnavailable):
    reason = "github_unavailable"


# Every pooled connection to GitHub is busy (GitHub slow): shed at once, with Retry-After.
GITHUB_BUSY = "github_busy"


class KmsUnavailable(UpstreamUnavailable):
    """The KMS holding the GitHub App's key (``GITHUB_APP_SIGNER``) did not sign the App JWT.

    Always one of the reasons below; ``detail`` names the KMS, the key and its error code,
    never a credential.
    """

    reason = "kms_unavailable"


# No answer in time: network, DNS, TLS, the KMS's own 5xx or timeout.
KMS_UNREACHABLE = "kms_unreachable"
# The KMS refuses calls for now (request quota).
KMS_THROTTLED = "kms_throttled"
# No credentials, expired or invalid ones, or no permission to sign with the key.
KMS_ACCESS_DENIED = "kms_access_denied"
# The key cannot sign an RS256 JWT: not found, disabled, pending deletion, wrong type or usage.
KMS_KEY_UNUSABLE = "kms_key_unusable"
# An answer that cannot be trusted: a failed integrity check, another key or algorithm.
KMS_RESPONSE_INVALID = "kms_response_invalid"


class ServiceUnavailable(StsError):
    """This replica cannot take the call now; another replica, or this one soon, can."""

    family = reason = "service_unavailable"
    caller_fault = False


# Raised by the transport, not the domain; here so the one tree and the one table hold them.
class Overloaded(ServiceUnavailable):
    reason = "overloaded"
    retry_after = 1.0


class ShuttingDown(ServiceUnavailable):
    reason = "shutting_down"
    retry_after = 1.0


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem in a policy file: field path, message, optional 1-based line."""

    field: str
    message: str
    line: int | None = None

    def render(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"
