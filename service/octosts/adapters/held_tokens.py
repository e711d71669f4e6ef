"""GitHub tokens the egress gateway minted, held in memory for reuse (``domain.egress.HeldTokens``).

- Key: ``domain.egress.ReuseKey`` (the OIDC token's SHA-256, scope, identity, installation,
  permissions, repositories). The OIDC token itself is never stored.
- Lifetime: until ``until(token)`` (``domain.egress.reuse_until``: before GitHub's expiry, never
  past the OIDC token's), capped by ``max_ttl``.
- Bound: ``maxsize`` entries, least recently used evicted first (an evicted token stays valid at
  GitHub until it expires, held by nobody; the next request mints another).
- Concurrent misses for one key share one mint (SingleFlight): a workload's burst of first
  requests costs one token, not one each.
- Per process: each replica (and worker) holds its own tokens; nothing leaves the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.domain.ports import NullObserver

if TYPE_CHECKING:
    from octosts.domain.ports import Clock, MintedToken, StageObserver

# The stage (and cache label) whose ``cache`` annotation counts hits and misses.
STAGE = "egress_token_cache"


class HeldTokenCache:
    """``HeldTokens`` backed by a bounded TtlCache with an injected clock."""

    def __init__(
        self,
        *,
        clock: Clock,
        maxsize: int = 10_000,
        max_ttl: float = 3600.0,
        observer: StageObserver | None = None,
    ) -> None:
        if max_ttl <= 0:
            raise ValueError("max_ttl must be positive")
        self._clock = clock
        self._max_ttl = max_ttl
        self._cache: TtlCache[Hashable, MintedToken] = TtlCache(
            name="egress_tokens", maxsize=maxsize, clock=clock
        )
        self._flight: SingleFlight[Hashable, MintedToken] = SingleFlight()
        self._observer: StageObserver = observer or NullObserver()

    def __len__(self) -> int:
        return len(self._cache)

    async def get_or_mint(
        self,
        key: Hashable,
        mint: Callable[[], Awaitable[MintedToken]],
        until: Callable[[MintedToken], float],
    ) -> tuple[MintedToken, bool]:
        """See ``domain.egress.HeldTokens``. Raises whatever ``mint`` raises."""
        held = self._cache.get(key)
        with self._observer.stage(STAGE) as stage:
            stage.annotate("cache", "hit" if held is not None else "miss")
        if held is not None:
            return held, True
        minted_here = False

        async def mint_and_hold() -> MintedToken:
            nonlocal minted_here
            minted_here = True
            token = await mint()
            ttl = min(until(token) - self._clock.now(), self._max_ttl)
            if ttl > 0:
                self._cache.set(key, token, ttl=ttl)
            return token

        token = await self._flight.do(key, mint_and_hold)
        # A caller that joined another's mint got a token it did not mint: a reuse.
        return token, not minted_here
