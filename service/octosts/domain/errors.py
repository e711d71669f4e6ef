"""The exception tree of Octo STS.

Every error raised by domain code or adapters is an ``StsError``; the
transport maps each branch to one gRPC status in ``transport/errors.py``
(the only such table)::

    StsError                          (INTERNAL)
    ├── InvalidRequest                (INVALID_ARGUMENT)  bad scope, identity, metadata
    ├── AuthenticationError           (UNAUTHENTICATED)   the bearer token cannot be trusted
    │   ├── TokenMalformed            too large, not a JWT, bad header/payload
    │   ├── IssuerRejected            issuer URL fails the rules, or not allowed
    │   ├── TokenSignatureInvalid     no matching key, bad signature, bad algorithm
    │   ├── TokenExpired              exp/nbf/iat out of bounds
    │   └── TokenClaimsInvalid        sub/aud/iss syntax, missing required claims
    ├── PermissionDenied              (PERMISSION_DENIED) callers cannot tell which
    │   ├── NoInstallation            the GitHub App is not installed for the owner
    │   ├── PolicyNotFound            no trust policy file under that name
    │   ├── PolicyInvalid             the policy file does not parse / validate
    │   ├── PolicyDenied              the token does not satisfy the policy
    │   ├── IssuerNotTrusted          the org's trusted-token-issuers file refuses the issuer
    │   └── MintRejected              GitHub refused the token request (422)
    ├── RateLimited                   (RESOURCE_EXHAUSTED) GitHub primary/secondary limit
    └── UpstreamUnavailable           (UNAVAILABLE)
        ├── IssuerUnavailable         discovery/JWKS unreachable, 5xx, timeout, oversized
        └── GitHubUnavailable         GitHub unreachable, 5xx, timeout

Each error has a stable, machine-readable ``reason`` (used in metrics, audit
events and caller-facing messages) and a ``detail`` meant for the policy owner
or operator. ``detail`` may name policy contents, so the transport shows it to
callers only when verbose errors are enabled. Neither ever contains a token.
"""

from __future__ import annotations

from dataclasses import dataclass


class StsError(Exception):
    """Root of all Octo STS errors."""

    reason: str = "internal"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class InvalidRequest(StsError):
    reason = "invalid_request"


class AuthenticationError(StsError):
    reason = "unauthenticated"


class TokenMalformed(AuthenticationError):
    reason = "token_malformed"


class IssuerRejected(AuthenticationError):
    reason = "invalid_token_issuer"


class TokenSignatureInvalid(AuthenticationError):
    reason = "token_signature_invalid"


class TokenExpired(AuthenticationError):
    reason = "token_expired"


class TokenClaimsInvalid(AuthenticationError):
    reason = "token_claims_invalid"


class PermissionDenied(StsError):
    reason = "permission_denied"


class NoInstallation(PermissionDenied):
    reason = "no_installation"


class PolicyNotFound(PermissionDenied):
    reason = "policy_not_found"


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


class MintRejected(PermissionDenied):
    reason = "mint_rejected"


class RateLimited(StsError):
    reason = "rate_limited"


class UpstreamUnavailable(StsError):
    reason = "upstream_unavailable"


class IssuerUnavailable(UpstreamUnavailable):
    reason = "issuer_unavailable"


class GitHubUnavailable(UpstreamUnavailable):
    reason = "github_unavailable"


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
