"""The egress use case: a workload's request to GitHub, authorized as an exchange would be.

A workload sends its GitHub API request to the gateway with its own OIDC token; Envoy asks
ext_authz (mode ``egress``), which runs this. Per request::

    bearer -> Exchanger.authorize (token, scope, identity, installation, org allowlist,
              trust policy, decision: the very checks of an exchange)
           -> a GitHub token for that outcome: reused when one is held, else minted
           -> Envoy replaces the request's Authorization with it, upstream only

Every request is decided afresh: a held token is only ever handed out after the decision
allowed *this* request, so a policy that was deleted or edited stops the workload as soon as
the policy cache sees it (a webhook push at once, else within the policy's freshness window).

Tokens are held per (OIDC token hash, scope, identity, installation, permissions,
repositories): an edit that changes what the policy grants mints a new token on the next
request instead of reusing one with the old grant. A held token is reused until
``REUSE_MARGIN_SECONDS`` before GitHub expires it and never past the OIDC token's own expiry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from octosts.domain.exchange import (
        Authorized,
        CallInfo,
        ExchangeAttempt,
        Exchanger,
        ExchangeRequest,
        ExchangeResult,
    )
    from octosts.domain.ports import MintedToken
    from octosts.domain.tokens import VerifiedToken

# A reused token has at least this long left at GitHub: a request that starts with it finishes
# with it (GitHub tokens live an hour; a workload's slow upload must not fail half-way).
REUSE_MARGIN_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ReuseKey:
    """What a held token was minted for. Never holds the OIDC token, only its SHA-256."""

    bearer_sha256: bytes
    scope: str
    identity: str
    installation_id: int
    permissions: tuple[tuple[str, str], ...]
    repositories: tuple[str, ...]


def reuse_key(bearer: str, authorized: Authorized) -> ReuseKey:
    return ReuseKey(
        bearer_sha256=hashlib.sha256(bearer.encode()).digest(),
        scope=str(authorized.scope),
        identity=authorized.identity,
        installation_id=authorized.installation_id,
        permissions=tuple(sorted(authorized.permissions.items())),
        repositories=tuple(sorted(authorized.repositories)),
    )


def reuse_until(minted: MintedToken, caller: VerifiedToken, margin: float) -> float:
    """Until when (epoch seconds) ``minted`` may be handed out again for ``caller``."""
    return min(minted.expires_at.timestamp() - margin, caller.expires_at)


class HeldTokens(Protocol):
    """Minted tokens held for reuse: bounded, with an injected clock (``adapters``)."""

    async def get_or_mint(
        self,
        key: Hashable,
        mint: Callable[[], Awaitable[MintedToken]],
        until: Callable[[MintedToken], float],
    ) -> tuple[MintedToken, bool]:
        """The token held for ``key`` (and True), else ``mint()``'s (and False), then held
        until ``until(token)``. Concurrent calls for one key share one mint.

        Raises whatever ``mint`` raises (nothing is held then).
        """
        ...


@dataclass(frozen=True, slots=True)
class EgressGrant:
    """An allowed egress request: the token to send upstream, and whether it was reused."""

    result: ExchangeResult
    reused: bool


class EgressReporter(Protocol):
    """Receives every finished egress check, once (metrics, audit)."""

    def egress_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        reused: bool,  # noqa: FBT001 - a reporter's plain fact
        error: BaseException | None,
    ) -> None: ...


class Egress:
    """Authorizes egress requests with the Exchanger's checks and reuses minted tokens."""

    def __init__(
        self,
        exchanger: Exchanger,
        tokens: HeldTokens,
        *,
        margin_seconds: float = REUSE_MARGIN_SECONDS,
    ) -> None:
        self._exchanger = exchanger
        self._tokens = tokens
        self._margin = margin_seconds

    async def authorize(self, request: ExchangeRequest, attempt: ExchangeAttempt) -> EgressGrant:
        """Decide ``request`` as an exchange and give the token to forward it with.

        Raises as ``Exchanger.exchange`` does.
        """
        authorized = await self._exchanger.authorize(request, attempt)
        minted, reused = await self._tokens.get_or_mint(
            reuse_key(request.bearer, authorized),
            lambda: self._exchanger.mint(authorized),
            lambda token: reuse_until(token, authorized.caller, self._margin),
        )
        return EgressGrant(self._exchanger.granted(authorized, minted, attempt), reused)
