"""The exchange use case: OIDC token + scope(s) + identity -> GitHub token.

One exchange, as data::

    (Scope..., identity) + the bearer's claimed iss -> installation -> org allowlist
           -> TrustPolicy per scope -> VerifiedToken (each policy's pinned keys, or the
           issuer's) -> Decision per scope -> org ceiling -> MintedToken -> ExchangeResult
           (+ audit event upstream)

The policies are read before the token is verified because a policy may pin its issuer's
keys (docs/policies.md, "Pinned keys"): the keys that verify the token are only known
once the policy is. Until then the token is only *read*, for its ``iss``, and that claim
only chooses how to verify it (docs/architecture.md, "Order of checks").

A request names one scope (``owner`` or ``owner/repo``), or several repositories of
one owner (``requested_scopes``): then the identity's policy in *each* repository must
match the caller, the policies are read concurrently, and the token carries only what
all of them grant (``permissions.common_permissions``), for those repositories only.

This module only orchestrates; every step is one call on a port or a pure
function, so each can be tested and observed on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

from octosts.domain.ceiling import excesses
from octosts.domain.errors import (
    AMBIGUOUS_SCOPE,
    INVALID_SCOPES,
    UNKNOWN_KEY_ID,
    InvalidRequest,
    IssuerNotTrusted,
    IssuerRejected,
    IssuerUnavailable,
    PermissionDenied,
    PolicyDenied,
    PolicyExceedsCeiling,
    PolicyInvalid,
    PolicyProblem,
    RateLimited,
    TokenSignatureInvalid,
)
from octosts.domain.issuers import judge_issuer
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO, is_org_policy_repo, policy_path
from octosts.domain.names import Scope, check_identity, parse_scope
from octosts.domain.permissions import common_permissions
from octosts.domain.policy import claim_text, decide_trust, pinned_keys_for
from octosts.domain.ports import PolicyLocation
from octosts.domain.tokens import audience_problem

if TYPE_CHECKING:
    from octosts.domain.jwks import PinnedJwks
    from octosts.domain.policy import TrustPolicy
    from octosts.domain.ports import (
        GitHubApp,
        MintedToken,
        PermissionCeilingSource,
        PinnedVerifier,
        PolicySource,
        StageObserver,
        TokenVerifier,
        TrustedIssuersSource,
        UnverifiedLookups,
    )
    from octosts.domain.tokens import VerifiedToken


# Repositories one token may be asked for. Each costs a policy read (a GitHub call unless
# cached) and a policy check; GitHub itself takes up to 500. docs/architecture.md.
MAX_SCOPES = 10
NO_COMMON_PERMISSIONS = "no_common_permissions"


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """``scopes``: several repositories (owner/repo, one owner) or a repeat of ``scope``
    (see ``requested_scopes``); empty for the usual single-scope request."""

    bearer: str
    scope: str
    identity: str
    audience: str | None = None
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the bearer token never reaches a log line
        return (
            f"ExchangeRequest(scope={self.scope!r}, scopes={self.scopes!r}, "
            f"identity={self.identity!r})"
        )


@dataclass(frozen=True, slots=True)
class ScopeDecision:
    """What one requested scope's trust policy said, for the audit event.

    ``reason`` is ``allowed``, a policy's denial reason (``subject_mismatch``...), or
    the reason of the error that ended reading it (``policy_not_found``...).
    """

    scope: str
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A caller verified as the requested scopes' trust policies require, and what reading
    each policy gave, in request order: the policy, or the error that ended reading it."""

    caller: VerifiedToken
    scopes: tuple[Scope, ...]
    identity: str
    installation_id: int
    locations: tuple[PolicyLocation, ...]
    read: tuple[TrustPolicy | BaseException, ...]


@dataclass(frozen=True, slots=True)
class Authorized:
    """An exchange every check allowed: what the minted token may do, and for whom.

    ``scope`` and ``policy`` are the first requested scope's; ``scopes`` and ``policies``
    hold one per requested scope. ``permissions`` is what the token gets: the policy's, or
    for several repositories what all their policies grant.
    """

    caller: VerifiedToken
    scope: Scope
    identity: str
    installation_id: int
    policy: TrustPolicy
    repositories: tuple[str, ...]  # the token's restriction (empty: the installation's)
    matched_claims: Mapping[str, str]
    permissions: Mapping[str, str]
    scopes: tuple[Scope, ...] = ()
    policies: tuple[TrustPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    """``scope`` and ``policy`` are the first requested scope's; ``scopes`` and ``policies``
    hold one per requested scope (a single-scope exchange has one of each)."""

    token: MintedToken
    caller: VerifiedToken
    scope: Scope
    identity: str
    installation_id: int
    policy: TrustPolicy
    matched_claims: Mapping[str, str]
    scopes: tuple[Scope, ...] = ()
    policies: tuple[TrustPolicy, ...] = ()


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
    # One per requested scope whose policy was read (in request order).
    decisions: list[ScopeDecision] = field(default_factory=list)
    result: ExchangeResult | None = None
    # Set when the org's trusted-token-issuers file is in audit mode and would
    # have refused the caller's issuer ("issuer_not_trusted"): the exchange
    # went on, the audit event and metrics record it.
    issuer_audit: str | None = None
    # The pinned key sets (PinnedJwks.digest) that verified the caller, when policies pin.
    pinned_keys: tuple[str, ...] = ()


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


def requested_scopes(
    scope: str, scopes: Sequence[str], org_policy_repo: str = DEFAULT_ORG_POLICY_REPO
) -> tuple[Scope, ...]:
    """The scopes one exchange is for (docs/compatibility.md, "scope and scopes").

    - no ``scopes``: ``scope`` alone (``owner`` or ``owner/repo``), as always;
    - ``scopes``: its distinct entries (GitHub names are case-insensitive). ``scope``,
      when given too, must be one of them (the octo-sts action sends ``scope=X&scopes=X``);
    - one distinct entry is a single-scope exchange, like ``scope`` alone;
    - several are repositories: each ``owner/repo``, all of one owner, none the org
      policy repository (whose policy covers its own ``repositories``), at most
      MAX_SCOPES.

    Raises InvalidRequest: ``ambiguous_scope`` when ``scope`` is not among ``scopes``,
    ``invalid_scopes`` for several scopes that break the rules above, the usual
    reason for a scope that is not a GitHub name.
    """
    if not scopes:
        return (parse_scope(scope),)
    if len(scopes) > MAX_SCOPES:
        raise InvalidRequest(
            f"at most {MAX_SCOPES} repositories per token, got {len(scopes)}",
            reason=INVALID_SCOPES,
        )
    distinct: dict[str, Scope] = {}
    for text in scopes:
        distinct.setdefault(text.lower(), parse_scope(text))
    if scope and scope.lower() not in distinct:
        raise InvalidRequest(
            "scope is not one of scopes; name every repository in scopes",
            reason=AMBIGUOUS_SCOPE,
        )
    targets = tuple(distinct.values())
    if len(targets) == 1:
        return targets
    owner = targets[0].owner.lower()
    for target in targets:
        if target.repo is None:
            raise InvalidRequest(
                f"{target} is an owner; a token for several scopes names repositories (owner/repo)",
                reason=INVALID_SCOPES,
            )
        if target.owner.lower() != owner:
            raise InvalidRequest(
                "the repositories of one token must all have the same owner",
                reason=INVALID_SCOPES,
            )
        if is_org_policy_repo(target.repo, org_policy_repo):
            raise InvalidRequest(
                f"{target} holds the org policies; ask for it alone (or for {target.owner})",
                reason=INVALID_SCOPES,
            )
    return targets


class Exchanger:
    """Runs exchanges against injected ports. Holds no per-request state."""

    def __init__(  # noqa: PLR0913 - one keyword per port, all injected by the wiring module
        self,
        *,
        verifier: TokenVerifier,
        github: GitHubApp,
        policies: PolicySource,
        observer: StageObserver,
        domain: str,
        org_policy_repo: str = DEFAULT_ORG_POLICY_REPO,
        trusted_issuers: TrustedIssuersSource | None = None,
        pinned: PinnedVerifier | None = None,
        ceilings: PermissionCeilingSource | None = None,
        unverified: UnverifiedLookups | None = None,
    ) -> None:
        """``pinned`` verifies tokens under policies that pin keys; without it such policies
        are refused (PolicyInvalid) and tokens are not read before the policies are.
        ``ceilings``: the orgs' permission ceilings (none applied without it).
        ``unverified``: the bound on lookups for tokens not verified yet (without it, none)."""
        self._pinned = pinned
        self._unverified = unverified
        self._ceilings = ceilings
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

        Raises InvalidRequest (bad scope/scopes/identity/audience), AuthenticationError
        (token not trusted), PermissionDenied family (NoInstallation,
        PolicyNotFound, PolicyInvalid, PolicyDenied, IssuerNotTrusted,
        PolicyExceedsCeiling, MintRejected; PolicyDenied ``no_common_permissions`` when the
        policies of several repositories share no permission), RateLimited,
        UpstreamUnavailable.
        """
        attempt = attempt if attempt is not None else ExchangeAttempt()
        authorized = await self.authorize(request, attempt)
        return self.granted(authorized, await self.mint(authorized), attempt)

    async def authorize(
        self, request: ExchangeRequest, attempt: ExchangeAttempt | None = None
    ) -> Authorized:
        """Every check of an exchange, without the mint: what the policies let the caller have.

        The egress gateway (``domain.egress``) runs exactly this for each request and mints
        only when it holds no token for the outcome. Raises as ``exchange`` does, except
        MintRejected.
        """
        attempt = attempt if attempt is not None else ExchangeAttempt()
        authenticated = await self.authenticate(request, attempt)
        caller, targets = authenticated.caller, authenticated.scopes
        locations, installation_id = authenticated.locations, authenticated.installation_id
        policies = self._judge_all(authenticated, attempt)
        await self._within_ceiling(authenticated, policies)
        if len(policies) == 1:
            permissions = dict(policies[0].permissions)
            repositories = token_repositories(locations[0], policies[0])
        else:
            permissions = common_permissions([p.permissions for p in policies])
            repositories = tuple(location.repo for location in locations)
            if not permissions:
                raise PolicyDenied(
                    "the policies of these repositories have no permission in common",
                    reason=NO_COMMON_PERMISSIONS,
                )
        return Authorized(
            caller=caller,
            scope=targets[0],
            identity=authenticated.identity,
            installation_id=installation_id,
            policy=policies[0],
            repositories=repositories,
            matched_claims=attempt.matched_claims,
            permissions=permissions,
            scopes=targets,
            policies=tuple(policies),
        )

    async def authenticate(
        self, request: ExchangeRequest, attempt: ExchangeAttempt | None = None
    ) -> Authenticated:
        """An exchange's checks up to a caller verified as its trust policies require.

        In order (docs/architecture.md, "Order of checks"): the request's fields; the
        token read unverified with every rule that needs no network (its shape, the issuer
        URL rules, the deployment's allowlist, its times and claim syntax: rules that only
        refuse); the signature with the issuer's published keys when this process holds
        them (``_verified_early``: a bad signature under a ``kid`` they know ends here);
        else the bound on lookups for unverified tokens (``UnverifiedLookups``); the
        installation; the org's trusted issuers (on the claimed issuer: what a verified
        token carries, and before any policy is read); each scope's policy; then the
        signature and claims, with a policy's pinned keys when it pins keys for exactly that
        issuer, else with the issuer's published keys (every policy read must accept the
        token). Of an unverified token only ``iss`` and the request's names are used, and
        only to choose what to read and which keys verify: never to grant.

        Errors reading a policy are returned in ``read``, not raised. Raises
        InvalidRequest, AuthenticationError, IssuerUnavailable, RateLimited (also
        ``unverified_lookups``),
        GitHubUnavailable, NoInstallation / IssuerNotTrusted / PolicyInvalid (the org's
        files) only after the token verified with its issuer's keys (a caller without a
        valid token learns nothing about the org), PolicyDenied (``audience_mismatch``).
        """
        attempt = attempt if attempt is not None else ExchangeAttempt()
        targets = requested_scopes(request.scope, request.scopes, self._org_policy_repo)
        identity = check_identity(request.identity)
        _check_requested_audience(request.audience)
        issuer = self._pinned.claimed_issuer(request.bearer) if self._pinned else None
        name = None
        if issuer is not None:
            attempt.caller = await self._verified_early(request.bearer, issuer)
            if attempt.caller is None:
                name = _unverified_name(issuer, identity, targets)
                attempt.caller = await self._admit_unverified(request.bearer, name)
        owner = targets[0].owner
        locations = tuple(policy_location(t, identity, self._org_policy_repo) for t in targets)
        attempt.location = locations[0]
        audit = None
        try:
            installation_id = await self._github.installation_id(owner)
            attempt.installation_id = installation_id
            if issuer is not None:
                audit = await self._org_allowlist(installation_id, owner, issuer)
        except PermissionDenied:
            if attempt.caller is None:
                attempt.caller = await self._verifier.verify(request.bearer)
            raise
        read = [
            self._with_keys(r, issuer) for r in await self._read_all(installation_id, locations)
        ]
        early = attempt.caller  # verified with the issuer's published keys before any lookup
        caller = attempt.caller = await self._verify_all(
            request.bearer, read, attempt, early, locations
        )
        if name is not None and self._unverified is not None:
            self._unverified.verified(name)
        if issuer is None:
            audit = await self._org_allowlist(installation_id, owner, caller.issuer)
        attempt.issuer_audit = audit
        if request.audience is not None and request.audience not in caller.audience:
            raise PolicyDenied(
                "the token's audience does not include the requested audience",
                reason="audience_mismatch",
            )
        policies = tuple(r if isinstance(r, BaseException) else r[0] for r in read)
        return Authenticated(caller, targets, identity, installation_id, locations, policies)

    async def verify_at_edge(
        self, bearer: str, scope: str, identity: str, scopes: tuple[str, ...] = ()
    ) -> VerifiedToken:
        """The edge's check of a token for an exchange naming ``scope``/``scopes``, ``identity``.

        The edge (ext_authz, before Exchange) answers only whether the token is authentic,
        never a policy question. A token whose issuer's published keys this replica holds
        is verified with them, as ever, without reading a policy (refused at once when they
        know its ``kid``). The published keys of an issuer neither held nor seen pinned
        lately are fetched, as the edge always did. Only a token those cannot judge (an
        issuer that cannot be fetched, one seen pinned lately, a ``kid`` they do not know)
        is authenticated as Exchange will do it (``authenticate``, within its bound on
        lookups for unverified tokens), so a policy's pinned keys verify it. A request
        naming no valid scope, or an org whose files refuse it, is left to Exchange to
        answer once its token verified.

        Raises AuthenticationError, IssuerUnavailable, RateLimited, GitHubUnavailable.
        """
        if self._pinned is None:
            return await self._verifier.verify(bearer)
        issuer = self._pinned.claimed_issuer(bearer)
        early = await self._verified_early(bearer, issuer)
        if early is not None:
            return early
        if not (self._pinned.holds_keys(issuer) or self._pinned.pinned_lately(issuer)):
            # An issuer this replica has not fetched yet, nor seen pinned: its published keys
            # first, as the edge always did, so that a cold replica's edge does no GitHub
            # lookup for the tokens of issuers in normal use, forged or not.
            try:
                return await self._verifier.verify(bearer)
            except TokenSignatureInvalid as exc:
                if exc.reason != UNKNOWN_KEY_ID:
                    raise
            except (IssuerUnavailable, IssuerRejected):
                pass  # cannot be fetched: what a policy's pinned keys are for
        attempt = ExchangeAttempt()
        try:
            request = ExchangeRequest(bearer, scope, identity, scopes=scopes)
            return (await self.authenticate(request, attempt)).caller
        except InvalidRequest:
            return await self._verifier.verify(bearer)
        except PermissionDenied:
            if attempt.caller is None:  # pragma: no cover - authenticate verifies first
                raise
            return attempt.caller

    async def _verified_early(self, bearer: str, issuer: str) -> VerifiedToken | None:
        """The token verified with its issuer's published keys when this process holds them
        (no I/O but an unknown ``kid``'s rate-limited refetch), before any GitHub call.

        None when they are not held, or do not know the token's ``kid`` (a policy may pin the
        key it names), or the issuer cannot be reached. Raises what verification raises
        otherwise: a token signed under a ``kid`` the issuer publishes that does not verify
        with that key is refused here, never costing a lookup (a policy pinning other
        material under a published ``kid`` of a reachable issuer is not supported).
        """
        assert self._pinned is not None  # only called with a claimed issuer
        if not self._pinned.holds_keys(issuer):
            return None
        try:
            return await self._verifier.verify(bearer)
        except TokenSignatureInvalid as exc:
            if exc.reason == UNKNOWN_KEY_ID:
                return None
            raise
        except IssuerUnavailable:
            return None

    async def _admit_unverified(self, bearer: str, name: str) -> VerifiedToken | None:
        """Whether lookups may run for a token not verified yet (``UnverifiedLookups``).

        None: admitted. Past the bound, the token is verified with its issuer's published
        keys as it would be without pinned keys (the caller, then); a token they cannot
        verify is told to come back. Raises AuthenticationError, RateLimited
        (``unverified_lookups``).
        """
        if self._unverified is None:
            return None
        wait = self._unverified.admit(name)
        if wait is None:
            return None
        try:
            return await self._verifier.verify(bearer)
        except (IssuerUnavailable, IssuerRejected, TokenSignatureInvalid) as exc:
            # A bad signature under a published key is final; an issuer that cannot be
            # fetched, or keys that do not know the kid, are what a policy's pins are for.
            if isinstance(exc, TokenSignatureInvalid) and exc.reason != UNKNOWN_KEY_ID:
                raise
            raise RateLimited(
                "too many exchanges with tokens this service cannot verify before reading"
                " their policy; retry later",
                retry_after=max(1.0, wait),
                reason=UNVERIFIED_LOOKUPS,
            ) from None

    async def _read_all(
        self, installation_id: int, locations: Sequence[PolicyLocation]
    ) -> Sequence[TrustPolicy | BaseException]:
        """Every scope's policy, or the error that ended reading it (concurrently)."""
        if len(locations) == 1:
            return [await _settled(self._policies.trust_policy(installation_id, locations[0]))]
        return await asyncio.gather(
            *(self._policies.trust_policy(installation_id, loc) for loc in locations),
            return_exceptions=True,
        )

    def _with_keys(
        self, read: TrustPolicy | BaseException, issuer: str | None
    ) -> tuple[TrustPolicy, PinnedJwks | None] | BaseException:
        """A read policy with the keys it pins for ``issuer`` (see ``pinned_keys_for``), or
        the PolicyInvalid that makes it unusable."""
        if isinstance(read, BaseException):
            return read
        if self._pinned is None:
            if read.pins_keys:
                problem = PolicyProblem("jwks", "this service does not verify pinned keys")
                return PolicyInvalid([problem])
            return read, None
        try:
            return read, pinned_keys_for(read, issuer or "")
        except PolicyInvalid as exc:
            return exc

    async def _verify_all(
        self,
        bearer: str,
        read: Sequence[tuple[TrustPolicy, PinnedJwks | None] | BaseException],
        attempt: ExchangeAttempt,
        early: VerifiedToken | None = None,
        locations: Sequence[PolicyLocation] = (),
    ) -> VerifiedToken:
        """Verify ``bearer`` with every key set the read policies require: each pinned set,
        and the issuer's published keys for policies that pin none for it (also when no
        policy could be read: nothing is answered to a caller whose token did not verify).
        ``early``: the token as the issuer's published keys already verified it.
        A caller only pinned keys verified is marked (``VerifiedToken.pinned_keys``,
        ``pinned_by``: the first ``locations`` entry pinning them): its ``iss`` and ``sub``
        are only claimed.
        """
        needed: dict[str, PinnedJwks | None] = {}
        pinned_by = ""
        for index, item in enumerate(read):
            if not isinstance(item, BaseException):
                keys = item[1]
                needed.setdefault(keys.digest if keys is not None else "", keys)
                if keys is not None and not pinned_by and index < len(locations):
                    pinned_by = f"{locations[index].owner}/{locations[index].repo}"
        caller = None
        for keys in needed.values() or [None]:
            if keys is None or self._pinned is None:
                caller = early or await self._verifier.verify(bearer)
            else:
                caller = await self._pinned.verify_pinned(bearer, keys)
        assert caller is not None  # at least one key set: the issuer's
        attempt.pinned_keys = tuple(digest for digest in needed if digest)
        if early is None and "" not in needed and attempt.pinned_keys:
            caller = replace(caller, pinned_keys=attempt.pinned_keys, pinned_by=pinned_by)
        return caller

    async def mint(self, authorized: Authorized) -> MintedToken:
        """A new installation token with what ``authorized`` grants.

        Raises MintRejected, RateLimited, GitHubUnavailable.
        """
        return await self._github.mint(
            authorized.installation_id, authorized.permissions, authorized.repositories
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
            scopes=authorized.scopes,
            policies=authorized.policies,
        )
        return attempt.result

    def _judge_all(
        self, authenticated: Authenticated, attempt: ExchangeAttempt
    ) -> list[TrustPolicy]:
        """Check every scope's policy against the verified caller.

        Every policy is judged and recorded in ``attempt.decisions``; then the first
        failure in request order is raised: the error that ended reading a policy
        (PolicyNotFound, PolicyInvalid, RateLimited, GitHubUnavailable...) or
        PolicyDenied for a policy the caller does not satisfy.
        """
        caller, targets = authenticated.caller, authenticated.scopes
        several = len(targets) > 1
        policies: list[TrustPolicy] = []
        failure: BaseException | None = None
        for target, outcome in zip(targets, authenticated.read, strict=True):
            if isinstance(outcome, BaseException):
                reason = getattr(outcome, "reason", type(outcome).__name__)
                attempt.decisions.append(ScopeDecision(str(target), allowed=False, reason=reason))
                failure = failure or outcome
                continue
            policy = outcome
            with self._observer.stage("policy_match") as stage:
                decision = decide_trust(policy, caller, domain=self._domain)
                stage.annotate("reason", decision.reason)
            policies.append(policy)
            attempt.decisions.append(ScopeDecision(str(target), decision.allowed, decision.reason))
            attempt.matched_claims.update(_matched_claims(policy, caller))
            if not decision.allowed and failure is None:
                detail = f"{target}: {decision.detail}" if several else decision.detail
                failure = PolicyDenied(detail, reason=decision.reason)
        if failure is not None:
            raise failure
        return policies

    async def _within_ceiling(
        self, authenticated: Authenticated, policies: Sequence[TrustPolicy]
    ) -> None:
        """The org's permission ceiling over everything each policy grants (per repository
        for a token of several), for a caller the policies trust: an untrusted caller never
        costs the ceiling's read.

        Raises PolicyExceedsCeiling, PolicyInvalid (``permission_ceiling_invalid``),
        RateLimited, GitHubUnavailable (from the lookup).
        """
        if self._ceilings is None:
            return
        owner = authenticated.scopes[0].owner
        ceiling = await self._ceilings.permission_ceiling(authenticated.installation_id, owner)
        with self._observer.stage("permission_ceiling") as stage:
            for location, policy in zip(authenticated.locations, policies, strict=True):
                found = excesses(policy.permissions, authenticated.identity, ceiling)
                if found:
                    stage.annotate("reason", PolicyExceedsCeiling.reason)
                    raise PolicyExceedsCeiling(
                        f"{location.owner}/{location.repo}/{location.path}: "
                        + "; ".join(f"permissions.{e.permission}: {e.message()}" for e in found)
                    )
            stage.annotate("reason", "within_ceiling")

    async def _org_allowlist(self, installation_id: int, owner: str, issuer: str) -> str | None:
        """The org's trusted-token-issuers check. Returns the audit verdict (an audit-mode
        file that would have refused ``issuer``: ``issuer_not_trusted``), else None.

        Raises IssuerNotTrusted (enforce mode), PolicyInvalid, RateLimited,
        GitHubUnavailable (from the lookup).
        """
        if self._trusted_issuers is None:
            return None
        trusted = await self._trusted_issuers.trusted_issuers(installation_id, owner)
        with self._observer.stage("org_allowlist") as stage:
            verdict = judge_issuer(trusted, issuer)
            stage.annotate("reason", verdict.reason)
            if trusted is not None:
                stage.annotate("mode", trusted.mode)
            if verdict.audited:
                stage.annotate("audit", verdict.reason)
            if not verdict.allowed:
                raise IssuerNotTrusted(
                    f"the issuer {issuer!r} is not in {owner}'s trusted-token-issuers file"
                )
            return verdict.reason if verdict.audited else None


_T = TypeVar("_T")
# RateLimited's reason when lookups for tokens not verified yet are over their bound.
UNVERIFIED_LOOKUPS = "unverified_lookups"


def _unverified_name(issuer: str, identity: str, targets: Sequence[Scope]) -> str:
    """What a token not verified yet names, as ``UnverifiedLookups`` keys it."""
    parts = [issuer, identity, *sorted(str(t).lower() for t in targets)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


async def _settled(awaitable: Awaitable[_T]) -> _T | BaseException:
    """The awaitable's result or its exception, like one item of ``gather(return_exceptions=
    True)`` without creating a task (a single-scope exchange is the hot path)."""
    try:
        return await awaitable
    except Exception as exc:  # noqa: BLE001 - handed back to be raised in request order
        return exc


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
