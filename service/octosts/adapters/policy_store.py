"""Trust policies read from GitHub, cached and revalidated.

Freshness model (see docs/architecture.md, "Caches"):

* a policy read is fresh for ``fresh_seconds`` (default 10 s): exchanges in
  that window make no GitHub call for the policy;
* after that it is revalidated with ``If-None-Match`` (a 304 costs no rate
  limit) and becomes fresh again;
* missing files are remembered for ``missing_seconds``;
* when GitHub rate-limits us or is down, the last good copy is served for up
  to ``stale_seconds`` (default 1 h) — a deleted policy is never resurrected
  this way, because a 404 is an answer, not a failure;
* concurrent requests for one policy share one read (single-flight).

Invalid policies are cached like valid ones (the same bytes will not become
valid by reading them again) and surface as PolicyInvalid each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.policy_yaml import parse_trust_policy
from octosts.domain.errors import PolicyInvalid, PolicyNotFound, RateLimited, UpstreamUnavailable

if TYPE_CHECKING:
    from octosts.domain.policy import TrustPolicy
    from octosts.domain.ports import Clock, GitHubApp, PolicyLocation, Stage, StageObserver

# (owner, repo, path, kind): names lower-cased (GitHub's are case-insensitive); the kind is part
# of the key because the same file parses differently as a repo and as an org policy.
Key = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class _Cached:
    policy: TrustPolicy | None
    error: PolicyInvalid | PolicyNotFound | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class PolicyCacheConfig:
    fresh_seconds: float = 10.0
    stale_seconds: float = 3600.0
    missing_seconds: float = 30.0
    max_entries: int = 10_000


class PolicyStore:
    """``PolicySource`` backed by ``GitHubApp.read_file`` with the cache above."""

    def __init__(
        self,
        github: GitHubApp,
        *,
        clock: Clock,
        observer: StageObserver,
        config: PolicyCacheConfig | None = None,
    ) -> None:
        self._github = github
        self._observer = observer
        self._config = config or PolicyCacheConfig()
        self._cache: TtlCache[Key, _Cached] = TtlCache(
            name="policy", maxsize=self._config.max_entries, clock=clock
        )
        self._flight: SingleFlight[Key, _Cached] = SingleFlight()

    async def trust_policy(self, installation_id: int, location: PolicyLocation) -> TrustPolicy:
        """See ``PolicySource.trust_policy``."""
        key = _key(location)
        with self._observer.stage("policy_fetch") as stage:
            cached = self._cache.get(key)
            if cached is not None:
                stage.annotate("cache", "hit")
            else:
                stage.annotate("cache", "miss")
                cached = await self._flight.do(
                    key, lambda: self._refresh(installation_id, location, key, stage)
                )
        if cached.error is not None:
            # A cached exception is re-raised many times: drop the old traceback
            # so it does not grow with each raise.
            raise cached.error.with_traceback(None)
        if cached.policy is None:  # pragma: no cover - _Cached always holds one of the two
            raise PolicyNotFound("policy not found")
        return cached.policy

    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int:
        """Forget cached policies of a repository (all, or one path). Returns how many."""
        owner_l = owner.lower()
        return self._cache.delete_where(
            lambda k: k[0] == owner_l and k[1] == repo.lower() and (path is None or k[2] == path)
        )

    async def _refresh(
        self, installation_id: int, location: PolicyLocation, key: Key, stage: Stage
    ) -> _Cached:
        previous = self._cache.get_entry(key)
        etag = previous.value.etag if previous is not None else None
        try:
            read = await self._github.read_file(
                installation_id, location.owner, location.repo, location.path, etag
            )
        except PolicyNotFound:
            missing = _Cached(None, PolicyNotFound(f"no policy at {_describe(location)}"), None)
            self._cache.set(key, missing, ttl=self._config.missing_seconds)
            return missing
        except (RateLimited, UpstreamUnavailable):
            # Serve the last good copy while GitHub cannot answer.
            if previous is not None and previous.value.policy is not None:
                stage.annotate("stale", value=True)
                return previous.value
            raise
        if read.content is None and previous is not None:  # 304: unchanged
            stage.annotate("revalidated", value=True)
            fresh = previous.value
        else:
            fresh = self._parse(read.content or b"", read.etag, location)
        self._cache.set(
            key, fresh, ttl=self._config.fresh_seconds, stale_for=self._config.stale_seconds
        )
        return fresh

    @staticmethod
    def _parse(content: bytes, etag: str | None, location: PolicyLocation) -> _Cached:
        try:
            return _Cached(parse_trust_policy(content, kind=location.kind), None, etag)
        except PolicyInvalid as exc:
            return _Cached(None, exc, etag)


def _key(location: PolicyLocation) -> Key:
    return (location.owner.lower(), location.repo.lower(), location.path, location.kind)


def _describe(location: PolicyLocation) -> str:
    return f"{location.owner}/{location.repo}/{location.path}"
