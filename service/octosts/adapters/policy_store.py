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
* concurrent requests for one policy share one read (single-flight);
* with a fleet's Redis (``shared``), a miss here reads the second level first and a cold
  read takes the fleet-wide lock (``adapters.shared_cache``): entries read back are parsed
  again, as if just fetched, and their freshness is what is left of the writer's.

Invalid policies are cached like valid ones (the same bytes will not become
valid by reading them again) and surface as PolicyInvalid each time.

A policy naming a key file (``jwks_file``) comes back with that file's keys as its
``jwks``: the file is read from the same repository and cached as an entry of its own
(same freshness, revalidation and stale rules), so an exchange under such a policy costs
one more read when cold and none when warm. A missing or invalid key file makes the
policy invalid (fail closed). In the fleet's second level a key file is an entry of its own
kind too: its bytes are shared and parsed again by that kind (``parse_jwks_file``), so keys
adopted from Redis pass exactly the checks of keys read from GitHub.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_yaml import parse_trust_policy
from octosts.adapters.shared_cache import Filled
from octosts.domain.errors import (
    PolicyInvalid,
    PolicyNotFound,
    PolicyProblem,
    RateLimited,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from octosts.adapters.shared_cache import SharedCache, SharedEntry
    from octosts.domain.jwks import PinnedJwks
    from octosts.domain.policy import PolicyKind, TrustPolicy
    from octosts.domain.ports import Clock, GitHubApp, PolicyLocation, Stage, StageObserver

# (owner, repo, path, kind): names lower-cased (GitHub's are case-insensitive); the kind is part
# of the key because the same file parses differently as a repo and as an org policy.
Key = tuple[str, str, str, str]


# The kind of a key file's cache entry (the others are a policy's kind, repo or org).
KEY_FILE = "jwks"


class _File(NamedTuple):
    """A file the store reads: a policy (kind repo/org) or a key file (kind KEY_FILE)."""

    owner: str
    repo: str
    path: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Cached:
    policy: TrustPolicy | None
    error: PolicyInvalid | PolicyNotFound | None
    etag: str | None
    content: bytes | None = None  # the file as read (None: missing), for the second level
    keys: PinnedJwks | None = None  # a key file's


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
        shared: SharedCache | None = None,
    ) -> None:
        self._github = github
        self._clock = clock
        self._shared = shared
        self._observer = observer
        self._config = config or PolicyCacheConfig()
        self._cache: TtlCache[Key, _Cached] = TtlCache(
            name="policy", maxsize=self._config.max_entries, clock=clock
        )
        self._flight: SingleFlight[Key, _Cached] = SingleFlight()

    async def trust_policy(self, installation_id: int, location: PolicyLocation) -> TrustPolicy:
        """See ``PolicySource.trust_policy``; a ``jwks_file`` policy comes with its keys."""
        file = _File(location.owner, location.repo, location.path, location.kind)
        policy = (await self._read(installation_id, file, "policy_fetch")).policy
        if policy is None:  # pragma: no cover - _Cached always holds one of the two
            raise PolicyNotFound("policy not found")
        if policy.jwks_file is None:
            return policy
        keys_file = _File(location.owner, location.repo, policy.jwks_file, KEY_FILE)
        try:
            keys = (await self._read(installation_id, keys_file, "policy_keys_fetch")).keys
        except PolicyNotFound:
            where = f"{location.owner}/{location.repo}"
            raise PolicyInvalid(
                [PolicyProblem("jwks_file", f"{policy.jwks_file} is not in {where}")]
            ) from None
        return dataclasses.replace(policy, jwks=keys)

    async def _read(self, installation_id: int, file: _File, stage_name: str) -> _Cached:
        """The cached answer for ``file``. Raises its PolicyNotFound / PolicyInvalid."""
        key = _key(file)
        with self._observer.stage(stage_name) as stage:
            cached = self._cache.get(key)
            if cached is not None:
                stage.annotate("cache", "hit")
            else:
                stage.annotate("cache", "miss")
                cached = await self._flight.do(
                    key, lambda: self._refresh(installation_id, file, key, stage)
                )
        if cached.error is not None:
            # A cached exception is re-raised many times: drop the old traceback
            # so it does not grow with each raise.
            raise cached.error.with_traceback(None)
        return cached

    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int:
        """Forget cached policies of a repository (all, or one path). Returns how many."""
        owner_l = owner.lower()
        return self._cache.delete_where(
            lambda k: k[0] == owner_l and k[1] == repo.lower() and (path is None or k[2] == path)
        )

    def invalidate_all(self) -> int:
        """Forget every cached policy (after missing the fleet's invalidations)."""
        count = len(self._cache)
        self._cache.clear()
        return count

    async def _refresh(
        self, installation_id: int, location: _File, key: Key, stage: Stage
    ) -> _Cached:
        if self._shared is None:
            return (await self._fetch(installation_id, location, key, stage, None)).value
        stage.annotate("shared", value=True)
        return await self._shared.read_through(
            key,
            scope=key[:2],  # a push to the repository invalidates its policies
            decode=lambda entry: self._adopt(key, location, entry),
            fetch=lambda entry: self._fetch(installation_id, location, key, stage, entry),
        )

    async def _fetch(
        self,
        installation_id: int,
        location: _File,
        key: Key,
        stage: Stage,
        shared: SharedEntry | None,
    ) -> Filled[_Cached]:
        previous_entry = self._cache.get_entry(key)
        previous = previous_entry.value if previous_entry is not None else None
        if previous is None and shared is not None and shared.current:
            previous = self._from_shared(location, shared.value)
        etag = previous.etag if previous is not None else None
        config = self._config
        try:
            read = await self._github.read_file(
                installation_id, location.owner, location.repo, location.path, etag
            )
        except PolicyNotFound:
            missing = _missing(location)
            self._cache.set(key, missing, ttl=config.missing_seconds)
            return Filled(missing, {"missing": True}, config.missing_seconds)
        except (RateLimited, UpstreamUnavailable):
            # Serve the last good copy while GitHub cannot answer.
            if previous is not None and (previous.policy is not None or previous.keys is not None):
                stage.annotate("stale", value=True)
                return Filled(previous)
            raise
        if read.content is None and previous is not None:  # 304: unchanged
            stage.annotate("revalidated", value=True)
            fresh = previous
        else:
            fresh = self._parse(read.content or b"", read.etag, location)
        self._cache.set(key, fresh, ttl=config.fresh_seconds, stale_for=config.stale_seconds)
        return Filled(fresh, _share(fresh), config.fresh_seconds, config.stale_seconds)

    def _adopt(self, key: Key, location: _File, entry: SharedEntry) -> _Cached | None:
        """A fresh second-level entry, re-checked, in this process's cache too."""
        cached = self._from_shared(location, entry.value)
        if cached is not None:
            stale_for = self._config.stale_seconds if cached.content is not None else 0.0
            ttl = entry.fresh_until - self._clock.now()
            self._cache.set(key, cached, ttl=ttl, stale_for=stale_for)
        return cached

    def _from_shared(self, location: _File, value: Mapping[str, Any]) -> _Cached | None:
        """What a second-level entry says, parsed again like a fetched file; None: unusable."""
        if value.get("missing") is True:
            return _missing(location)
        content, etag = value.get("content"), value.get("etag")
        if not isinstance(content, str) or not (etag is None or isinstance(etag, str)):
            return None
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            return None
        return self._parse(raw, etag, location)

    @staticmethod
    def _parse(content: bytes, etag: str | None, location: _File) -> _Cached:
        try:
            if location.kind == KEY_FILE:
                keys = parse_jwks_file(content, path=location.path)
                return _Cached(None, None, etag, content, keys)
            kind: PolicyKind = "org" if location.kind == "org" else "repo"
            return _Cached(parse_trust_policy(content, kind=kind), None, etag, content)
        except PolicyInvalid as exc:
            if location.kind == KEY_FILE:  # named as the policy's field, with the file's path
                exc = PolicyInvalid(
                    [
                        PolicyProblem("jwks_file", f"{location.path}: {p.render()}"[:300], p.line)
                        for p in exc.problems
                    ]
                )
            return _Cached(None, exc, etag, content)


def _missing(location: _File) -> _Cached:
    return _Cached(None, PolicyNotFound(f"no policy at {_describe(location)}"), None)


def _share(cached: _Cached) -> dict[str, Any] | None:
    """The second-level form of an answer: the file's bytes (parsed again when read, by the
    entry's kind: a policy, or a key file's keys)."""
    if cached.content is None:
        return None
    return {"content": base64.b64encode(cached.content).decode(), "etag": cached.etag}


def _key(location: _File) -> Key:
    return (location.owner.lower(), location.repo.lower(), location.path, location.kind)


def _describe(location: _File) -> str:
    return f"{location.owner}/{location.repo}/{location.path}"
