"""A TokenVerifier that remembers verified tokens until they expire.

Behind Envoy every exchange is verified twice: by ext_authz Check at the edge,
then by Exchange itself. Both share one CachingVerifier so the second
verification is a dictionary lookup.

- Key: SHA-256 of the raw token. The raw token is never stored (a dump of the
  cache yields nothing replayable), only the VerifiedToken derived from it.
- Lifetime: until the token's ``exp`` and never beyond, capped by ``max_ttl``.
- Bound: ``maxsize`` entries, least recently used evicted first.
- Failures are not cached at all: a bad token costs its sender a verification
  each time (cheap next to the network call a valid one may need), and a
  transient IssuerUnavailable must not outlive the outage. Concurrent
  verifications of one token share one call (SingleFlight), failures included.
"""

from __future__ import annotations

import hashlib

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.domain.ports import Clock, NullObserver, StageObserver, TokenVerifier
from octosts.domain.tokens import VerifiedToken


class CachingVerifier:
    """Wraps a TokenVerifier; raises whatever the wrapped verifier raises."""

    def __init__(
        self,
        inner: TokenVerifier,
        *,
        clock: Clock,
        maxsize: int = 10_000,
        max_ttl: float = 3600.0,
        observer: StageObserver | None = None,
    ) -> None:
        if max_ttl <= 0:
            raise ValueError("max_ttl must be positive")
        self._inner = inner
        self._clock = clock
        self._max_ttl = max_ttl
        self._cache: TtlCache[bytes, VerifiedToken] = TtlCache(
            name="verified_tokens", maxsize=maxsize, clock=clock
        )
        self._flight: SingleFlight[bytes, VerifiedToken] = SingleFlight()
        self._observer: StageObserver = observer or NullObserver()

    def __len__(self) -> int:
        return len(self._cache)

    async def verify(self, bearer: str) -> VerifiedToken:
        """Verify ``bearer`` (a raw JWT) or return the cached result.

        Raises AuthenticationError subclasses and IssuerUnavailable, as the
        wrapped verifier does.
        """
        key = hashlib.sha256(bearer.encode()).digest()
        cached = self._cache.get(key)
        hit = cached is not None and cached.expires_at > self._clock.now()
        # A stage of its own (not around the inner verify) so hit ratios are countable.
        with self._observer.stage("verified_token_cache") as stage:
            stage.annotate("cache", "hit" if hit else "miss")
        if cached is not None and hit:
            return cached
        verified = await self._flight.do(key, lambda: self._inner.verify(bearer))
        ttl = min(verified.expires_at - self._clock.now(), self._max_ttl)
        if ttl > 0:
            self._cache.set(key, verified, ttl=ttl)
        return verified
