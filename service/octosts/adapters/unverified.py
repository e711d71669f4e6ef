"""The bound on GitHub lookups for tokens not verified yet (``domain.ports.UnverifiedLookups``).

An exchange whose token's issuer keys this process does not hold (an issuer the service cannot
reach, whose keys a policy pins; or one it has not fetched yet) reads the installation, the
org's files and the policy the token names *before* the signature can be checked. Those reads
are cached (misses too) and count toward GitHub's budgets, but a caller inventing a new
identity per request would make one GitHub read per request without holding a valid token.

So names (claimed issuer, identity, scopes) that have not led to a verified token before are
admitted from one token bucket per process (``per_minute`` lookups a minute, as a burst too);
a name whose token verified is remembered (``remember_seconds``, bounded) and admitted without
counting, so workloads in use are never held back by an attacker spending the bucket. When the
bucket is empty the exchange verifies the token with its issuer's published keys first, as it
would without pinned keys; only tokens that those cannot verify (unreachable issuers) are told
to come back (RateLimited, ``Retry-After``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from octosts.adapters.cache import TtlCache

if TYPE_CHECKING:
    from octosts.domain.ports import Clock


@dataclass(frozen=True, slots=True)
class UnverifiedConfig:
    per_minute: float = 30.0
    remember_seconds: float = 3600.0
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.remember_seconds <= 0 or self.max_entries < 1:
            raise ValueError("UnverifiedConfig: a positive rate and time, max_entries >= 1")


class UnverifiedBudget:
    """``UnverifiedLookups``: a token bucket for new names, and the names that verified."""

    def __init__(self, *, clock: Clock, config: UnverifiedConfig | None = None) -> None:
        self._clock = clock
        self._config = config or UnverifiedConfig()
        self._rate = self._config.per_minute / 60.0
        self._capacity = self._config.per_minute
        self._tokens = self._capacity
        self._at = clock.now()
        self._known: TtlCache[str, float] = TtlCache(
            name="unverified_known", maxsize=self._config.max_entries, clock=clock
        )

    def __repr__(self) -> str:
        return f"UnverifiedBudget(per_minute={self._config.per_minute})"

    def admit(self, key: str) -> float | None:
        """See ``UnverifiedLookups.admit``."""
        if self._known.get(key) is not None:
            return None
        now = self._clock.now()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self._rate

    def verified(self, key: str) -> None:
        """See ``UnverifiedLookups.verified``."""
        self._known.set(key, self._clock.now(), ttl=self._config.remember_seconds)
