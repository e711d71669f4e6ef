"""A TokenVerifier that remembers verified tokens until they expire, and bad signatures briefly.

Behind Envoy every exchange is verified twice: by ext_authz Check at the edge,
then by Exchange itself. Both share one CachingVerifier so the second
verification is a dictionary lookup.

- Key: SHA-256 of the raw token. The raw token is never stored (a dump of the
  cache yields nothing replayable), only the VerifiedToken derived from it.
- Lifetime: until the token's ``exp`` and never beyond, capped by ``max_ttl``.
- Bound: ``maxsize`` entries, least recently used evicted first.
- Signature failures (TokenSignatureInvalid) are remembered for
  ``failure_ttl`` seconds (default 5) in a second bounded LRU of
  ``failure_maxsize`` keys, so a client replaying one forged or corrupted
  token costs a dictionary lookup instead of a JWT parse and an RSA verify
  each time (DoS hardening for the edge). Safe because the outcome is a
  function of the token bytes and the issuer's key set: an attacker cannot
  make someone else's valid token fail. A kid the issuer does not publish
  (yet) is *not* remembered: it depends on key rotation and on the per-issuer
  refetch slot, which anyone can use up. No other failure is cached:
  IssuerUnavailable must not outlive an outage, and expiry/not-yet-valid/
  issuer-rule outcomes depend on the clock, DNS or configuration. Distinct
  junk tokens still cost a verification each (the cache is bounded, it only
  absorbs repeats). Concurrent verifications of one token share one call
  (SingleFlight), failures included.
"""

from __future__ import annotations

import hashlib

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.domain.errors import UNKNOWN_KEY_ID, TokenSignatureInvalid
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
        failure_ttl: float = 5.0,
        failure_maxsize: int = 10_000,
        observer: StageObserver | None = None,
    ) -> None:
        if max_ttl <= 0:
            raise ValueError("max_ttl must be positive")
        if failure_ttl < 0:
            raise ValueError("failure_ttl must not be negative (0 disables it)")
        self._inner = inner
        self._clock = clock
        self._max_ttl = max_ttl
        self._failure_ttl = failure_ttl
        self._cache: TtlCache[bytes, VerifiedToken] = TtlCache(
            name="verified_tokens", maxsize=maxsize, clock=clock
        )
        # Only the reason and detail: re-raising one stored instance would chain
        # tracebacks (and hold frames) across requests.
        self._failures: TtlCache[bytes, tuple[str, str]] = TtlCache(
            name="failed_signatures", maxsize=failure_maxsize, clock=clock
        )
        self._flight: SingleFlight[bytes, VerifiedToken] = SingleFlight()
        self._observer: StageObserver = observer or NullObserver()

    def __len__(self) -> int:
        return len(self._cache)

    async def verify(self, bearer: str) -> VerifiedToken:
        """Verify ``bearer`` (a raw JWT) or return the cached result.

        Raises AuthenticationError subclasses and IssuerUnavailable, as the
        wrapped verifier does (a remembered signature failure is raised again
        as a new TokenSignatureInvalid).
        """
        key = hashlib.sha256(bearer.encode()).digest()
        cached = self._cache.get(key)
        hit = cached is not None and cached.expires_at > self._clock.now()
        failed = None if hit else self._failures.get(key)
        # A stage of its own (not around the inner verify) so hit ratios are countable.
        with self._observer.stage("verified_token_cache") as stage:
            stage.annotate("cache", "hit" if hit else "negative_hit" if failed else "miss")
        if cached is not None and hit:
            return cached
        if failed is not None:
            detail, reason = failed
            raise TokenSignatureInvalid(detail, reason=reason)
        try:
            verified = await self._flight.do(key, lambda: self._inner.verify(bearer))
        except TokenSignatureInvalid as exc:
            # A kid the issuer does not publish yet depends on the issuer's rotation and on a
            # refetch slot other callers can use up: never remember it.
            if self._failure_ttl > 0 and exc.reason != UNKNOWN_KEY_ID:
                self._failures.set(key, (exc.detail, exc.reason), ttl=self._failure_ttl)
            raise
        ttl = min(verified.expires_at - self._clock.now(), self._max_ttl)
        if ttl > 0:
            self._cache.set(key, verified, ttl=ttl)
        return verified
