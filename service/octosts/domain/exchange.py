"""The exchange use case: OIDC token + scope + identity -> GitHub token.

One exchange, as data::

    bearer -> VerifiedToken -> (Scope, identity) -> installation -> TrustPolicy
           -> Decision -> MintedToken -> ExchangeResult (+ audit event upstream)

This module only orchestrates; every step is one call on a port or a pure
function, so each can be tested and observed on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from octosts.domain.errors import InvalidRequest, IssuerNotTrusted, PolicyDenied
from octosts.domain.issuers import judge_issuer
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO, is_org_policy_repo, policy_path
from octosts.domain.names import Scope, check_identity, parse_scope
from octosts.domain.policy import claim_text, decide_trust
from octosts.domain.ports import PolicyLocation
from octosts.domain.tokens import audience_problem

if TYPE_CHECKING:
    from octosts.domain.policy import TrustPolicy
    from octosts.domain.ports import (
        GitHubApp,
        MintedToken,
        PolicySource,
        StageObserver,
        TokenVerifier,
        TrustedIssuersSource,
    )
    from octosts.domain.tokens import VerifiedToken


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    bearer: str
    scope: str
    identity: str
    audience: str | None = None

    def __repr__(self) -> str:  # the bearer token never reaches a log line
        return f"ExchangeRequest(scope={self.scope!r}, identity={self.identity!r})"


@dataclass(frozen=True, slots=True)
class Authorized:
    """An exchange every check allowed: what the minted token may do, and for whom."""

    caller: VerifiedToken
    scope: Scope
    identity: str
    installation_id: int
    policy: TrustPolicy
    repositories: tuple[str, ...]  # the token's restriction (empty: the installation's)
    matched_claims: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    token: MintedToken
    caller: VerifiedToken
    scope: Scope
    identity: str
    installation_id: int
    policy: TrustPolicy
    matched_claims: Mapping[str, str]


@dataclass(slots=True)
class ExchangeAttempt:
    """What an exchange learned so far; filled in as it goes, for the audit event.

    Mutable on purpose: when an exchange fails half-way, the audit event still
    names the verified caller and the installation.
    """

    caller: VerifiedToken | None = None
    installation_id: int | None = None
    location: PolicyLocation | None = None
    matched_claims: dict[str, str] = field(default_factory=dict)
    result: ExchangeResult | None = None
    # Set when the org's trusted-token-issuers file is in audit mode and would
    # have refused the caller's issuer ("issuer_not_trusted"): the exchange
    # went on, the audit event and metrics record it.
    issuer_audit: str | None = None


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The call an exchange arrived in, as the transport saw it (for the audit event)."""

    rpc: str
    request_id: str
    user_agent: str
    duration_seconds: float


class ExchangeReporter(Protocol):
    """Receives every finished exchange, once (audit event, metrics, log line).

    ``error`` is None for a minted token, else what ended the exchange
    (an StsError, a foreign exception, or CancelledError).
    """

    def exchange_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        error: BaseException | None,
    ) -> None: ...


def policy_location(scope: Scope, identity: str, org_policy_repo: str) -> PolicyLocation:
    """Where the trust policy for (scope, identity) lives.

    ``owner`` and ``owner/<org policy repo>`` read the org policy; any other
    ``owner/repo`` reads that repository's own policy.
    """
    path = policy_path(identity)
    if scope.repo is None or is_org_policy_repo(scope.repo, org_policy_repo):
        return PolicyLocation(scope.owner, org_policy_repo, path, "org")
    return PolicyLocation(scope.owner, scope.repo, path, "repo")


def token_repositories(location: PolicyLocation, policy: TrustPolicy) -> tuple[str, ...]:
    """Repositories the minted token is restricted to (empty: the installation's)."""
    if location.kind == "repo":
        return (location.repo,)
    return tuple(policy.repositories or ())


class Exchanger:
    """Runs exchanges against injected ports. Holds no per-request state."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        github: GitHubApp,
        policies: PolicySource,
        observer: StageObserver,
        domain: str,
        org_policy_repo: str = DEFAULT_ORG_POLICY_REPO,
        trusted_issuers: TrustedIssuersSource | None = None,
    ) -> None:
        self._trusted_issuers = trusted_issuers
        self._verifier = verifier
        self._github = github
        self._policies = policies
        self._observer = observer
        self._domain = domain
        self._org_policy_repo = org_policy_repo

    async def exchange(
        self, request: ExchangeRequest, attempt: ExchangeAttempt | None = None
    ) -> ExchangeResult:
        """Exchange an OIDC token for a GitHub installation token.

        Raises InvalidRequest (bad scope/identity/audience), AuthenticationError
        (token not trusted), PermissionDenied family (NoInstallation,
        PolicyNotFound, PolicyInvalid, PolicyDenied, IssuerNotTrusted,
        MintRejected), RateLimited, UpstreamUnavailable.
        """
        attempt = attempt if attempt is not None else ExchangeAttempt()
        authorized = await self.authorize(request, attempt)
        return self.granted(authorized, await self.mint(authorized), attempt)

    async def authorize(
        self, request: ExchangeRequest, attempt: ExchangeAttempt | None = None
    ) -> Authorized:
        """Every check of an exchange, without the mint: what the policy lets the caller have.

        The egress gateway (``domain.egress``) runs exactly this for each request and mints
        only when it holds no token for the outcome. Raises as ``exchange`` does, except
        MintRejected.
        """
        attempt = attempt if attempt is not None else ExchangeAttempt()
        scope = parse_scope(request.scope)
        identity = check_identity(request.identity)
        _check_requested_audience(request.audience)
        caller = attempt.caller = await self._verifier.verify(request.bearer)
        if request.audience is not None and request.audience not in caller.audience:
            raise PolicyDenied(
                "the token's audience does not include the requested audience",
                reason="audience_mismatch",
            )
        location = attempt.location = policy_location(scope, identity, self._org_policy_repo)
        installation_id = await self._github.installation_id(scope.owner)
        attempt.installation_id = installation_id
        await self._org_allowlist(installation_id, scope.owner, caller.issuer, attempt)
        policy = await self._policies.trust_policy(installation_id, location)
        with self._observer.stage("policy_match") as stage:
            decision = decide_trust(policy, caller, domain=self._domain)
            stage.annotate("reason", decision.reason)
        attempt.matched_claims = _matched_claims(policy, caller)
        if not decision.allowed:
            raise PolicyDenied(decision.detail, reason=decision.reason)
        return Authorized(
            caller=caller,
            scope=scope,
            identity=identity,
            installation_id=installation_id,
            policy=policy,
            repositories=token_repositories(location, policy),
            matched_claims=attempt.matched_claims,
        )

    async def mint(self, authorized: Authorized) -> MintedToken:
        """A new installation token with what ``authorized`` grants.

        Raises MintRejected, RateLimited, GitHubUnavailable.
        """
        return await self._github.mint(
            authorized.installation_id, authorized.policy.permissions, authorized.repositories
        )

    @staticmethod
    def granted(
        authorized: Authorized, minted: MintedToken, attempt: ExchangeAttempt
    ) -> ExchangeResult:
        """The result of an exchange that was authorized and holds ``minted``."""
        attempt.result = ExchangeResult(
            token=minted,
            caller=authorized.caller,
            scope=authorized.scope,
            identity=authorized.identity,
            installation_id=authorized.installation_id,
            policy=authorized.policy,
            matched_claims=authorized.matched_claims,
        )
        return attempt.result

    async def _org_allowlist(
        self, installation_id: int, owner: str, issuer: str, attempt: ExchangeAttempt
    ) -> None:
        """The org's trusted-token-issuers check, before any trust policy is read.

        Raises IssuerNotTrusted (enforce mode), PolicyInvalid, RateLimited,
        GitHubUnavailable (from the lookup).
        """
        if self._trusted_issuers is None:
            return
        trusted = await self._trusted_issuers.trusted_issuers(installation_id, owner)
        with self._observer.stage("org_allowlist") as stage:
            verdict = judge_issuer(trusted, issuer)
            stage.annotate("reason", verdict.reason)
            if trusted is not None:
                stage.annotate("mode", trusted.mode)
            if verdict.audited:
                stage.annotate("audit", verdict.reason)
                attempt.issuer_audit = verdict.reason
            if not verdict.allowed:
                raise IssuerNotTrusted(
                    f"the issuer {issuer!r} is not in {owner}'s trusted-token-issuers file"
                )


def _check_requested_audience(audience: str | None) -> None:
    """The same rule as the token's ``aud`` entries. Raises InvalidRequest."""
    if audience is None:
        return
    problem = audience_problem(audience)
    if problem is not None:
        raise InvalidRequest(f"requested audience {problem}")


def _matched_claims(policy: TrustPolicy, caller: VerifiedToken) -> dict[str, str]:
    """The claims the policy looked at, for the audit event (never the token)."""
    matched = {"iss": caller.issuer, "sub": caller.subject}
    for name in policy.claim_pattern:
        text = claim_text(caller.claims.get(name))
        if text is not None:
            matched[name] = text
    return matched
