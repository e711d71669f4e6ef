"""Ports: what the domain needs from the outside world, as Protocols.

Adapters implement them (``octosts.adapters``); tests use fakes checked with a
typed assignment, e.g. ``_: TokenVerifier = FakeVerifier()``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from octosts.domain.ceiling import PermissionCeiling
    from octosts.domain.issuers import TrustedIssuers
    from octosts.domain.jwks import PinnedJwks
    from octosts.domain.policy import PolicyKind, TrustPolicy
    from octosts.domain.tokens import VerifiedToken


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


# Annotation keys a stage observer turns into metrics as well as span attributes:
# ``cache`` = hit|miss|... and ``refused.<reason>`` = how many inputs the stage refused for
# what they would cost (octo_sts_refusals_total{stage, reason}).
REFUSED_PREFIX = "refused."


class Stage(Protocol):
    """A running validation stage; adapters annotate it (cache hit, HTTP status...)."""

    def annotate(self, key: str, value: str | int | bool) -> None: ...  # noqa: FBT001


class StageObserver(Protocol):
    """Times and traces named stages (token_parse, discovery, policy_fetch, ...).

    ``stage(name)`` is a context manager; an exception escaping it marks the
    stage's outcome as an error (with the StsError reason when there is one).
    The observability package supplies the Prometheus + OpenTelemetry one.
    """

    def stage(self, name: str) -> AbstractContextManager[Stage]: ...


class _NullStage:
    def annotate(self, key: str, value: str | int | bool) -> None:  # noqa: FBT001
        pass


class NullObserver:
    """Observer that records nothing (unit tests, CLI)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:  # noqa: ARG002
        yield _NullStage()


class ReplicaHealth(Protocol):
    """Where adapters report a fault of this replica's own, not an upstream's.

    Out of file descriptors or local ports, say: every call from this replica
    fails while the other replicas are fine, so it should leave the load
    balancer's rotation for a while. An upstream that is down or slow is not
    reported: every replica sees it, and all of them leaving would take the
    whole service down for callers that do not need that upstream.
    """

    def local_fault(self, cause: str) -> None: ...


class NullReplicaHealth:
    """Ignores every report (unit tests, CLI)."""

    def local_fault(self, cause: str) -> None:
        pass


class TokenVerifier(Protocol):
    async def verify(self, bearer: str) -> VerifiedToken:
        """Verify a raw JWT (without the ``Bearer`` scheme).

        Callers pass tokens within ``tokens.MAX_TOKEN_BYTES`` (the transport
        checks, once); implementations need not check again.
        Raises AuthenticationError subclasses for tokens that cannot be trusted
        and IssuerUnavailable when the issuer cannot be reached.
        """
        ...


class PinnedVerifier(Protocol):
    """Verification for trust policies that pin their issuer's keys (docs/policies.md).

    The exchange reads a token's claimed issuer *before* it knows the policy, and only to
    choose how to verify the token; nothing else of an unverified token is used.
    """

    def claimed_issuer(self, bearer: str) -> str:
        """The token's ``iss``, UNVERIFIED, checked with what needs no network: the token's
        shape and algorithm, the issuer URL rules and the deployment's issuer allowlist, its
        times (``exp``/``nbf``/``iat`` with the verifier's leeway) and claim syntax (``sub``,
        ``aud``). Each rule only refuses: a token passing them is still unverified.

        Raises AuthenticationError subclasses (TokenMalformed, TokenSignatureInvalid for an
        algorithm not accepted, IssuerRejected, TokenExpired, TokenClaimsInvalid).
        """
        ...

    async def verify_pinned(self, bearer: str, keys: PinnedJwks) -> VerifiedToken:
        """Verify a raw JWT with exactly ``keys`` (one policy's): nothing is fetched or
        resolved, and the result is not remembered as the issuer's (no other policy and no
        edge check sees it). The token rules are those of ``TokenVerifier.verify``.

        Raises AuthenticationError subclasses.
        """
        ...

    def holds_keys(self, issuer: str) -> bool:
        """Whether the deployment's verifier holds ``issuer``'s published keys now (no I/O)."""
        ...

    def pinned_lately(self, issuer: str) -> bool:
        """Whether a policy's pinned keys verified a token of ``issuer`` lately (no I/O)."""
        ...


class UnverifiedLookups(Protocol):
    """The bound on GitHub lookups made for tokens not verified yet (docs/architecture.md,
    "Order of checks"): the policy a token names is read before its signature is checked
    when its issuer's published keys are not at hand, since that policy may pin the keys.

    ``key`` is a digest of what such a token names (claimed issuer, identity, scopes).
    """

    def admit(self, key: str) -> float | None:
        """None: look up what ``key`` names before verifying. Else the seconds until the
        next lookup for a name not verified before is allowed."""
        ...

    def verified(self, key: str) -> None:
        """A token naming ``key`` verified: its lookups are admitted without counting."""
        ...


@dataclass(frozen=True, slots=True)
class FileRead:
    """A file read from GitHub. ``content`` is None when GitHub answered 304."""

    content: bytes | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: datetime
    permissions: Mapping[str, str]
    repositories: tuple[str, ...]
    # Which GitHub App minted it, for which of its installations (the audit event says;
    # with several Apps the mint may go to another App than the one the lookup chose).
    app_id: int | None = None
    installation_id: int | None = None

    def __repr__(self) -> str:  # never print the token
        return (
            f"MintedToken(expires_at={self.expires_at!r}, permissions={dict(self.permissions)!r})"
        )


class GitHubApp(Protocol):
    """The GitHub App's view of the GitHub API."""

    async def installation_id(self, owner: str) -> int:
        """Installation of the app for an org or user.

        Raises NoInstallation, RateLimited, GitHubUnavailable.
        """
        ...

    async def read_file(
        self, installation_id: int, owner: str, repo: str, path: str, etag: str | None = None
    ) -> FileRead:
        """Read a file on the default branch with a contents:read installation token.

        Raises PolicyNotFound (404, or repository not accessible), RateLimited,
        GitHubUnavailable.
        """
        ...

    async def mint(
        self, installation_id: int, permissions: Mapping[str, str], repositories: Sequence[str]
    ) -> MintedToken:
        """Create an installation access token restricted as asked.

        Raises MintRejected (422: more than the installation may grant),
        RateLimited, GitHubUnavailable.
        """
        ...


@dataclass(frozen=True, slots=True)
class PolicyLocation:
    """Where a trust policy lives: ``{owner}/{repo}`` at ``path`` on the default branch."""

    owner: str
    repo: str
    path: str
    kind: PolicyKind


class PolicySource(Protocol):
    async def trust_policy(self, installation_id: int, location: PolicyLocation) -> TrustPolicy:
        """The parsed, validated trust policy at ``location``.

        Raises PolicyNotFound, PolicyInvalid, RateLimited (no last-known-good
        copy), GitHubUnavailable.
        """
        ...


class TrustedIssuersSource(Protocol):
    async def trusted_issuers(self, installation_id: int, owner: str) -> TrustedIssuers | None:
        """The org's trusted-token-issuers file; None when there is no restriction.

        None means the file is absent or no installation can read the org
        policy repository. Raises PolicyInvalid (reason
        ``trusted_issuers_invalid``: invalid file and no last known good copy),
        RateLimited, GitHubUnavailable (GitHub failing and no last known good).
        """
        ...


class PermissionCeilingSource(Protocol):
    async def permission_ceiling(
        self, installation_id: int, owner: str
    ) -> PermissionCeiling | None:
        """The org's permission ceiling file; None when there is none to apply.

        None means the file is absent or no installation can read the org policy
        repository. Raises PolicyInvalid (reason ``permission_ceiling_invalid``: invalid
        file and no last known good copy), RateLimited, GitHubUnavailable (GitHub failing
        and no last known good).
        """
        ...
