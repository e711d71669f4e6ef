"""Per-organization files in the org policy repository, read and cached one way.

``OrgFileStore`` is that one way; each file is a subclass naming its path and parser:
``trusted_issuers.TrustedIssuersStore`` (``TrustedIssuersSource``) and ``CeilingStore``
(``PermissionCeilingSource``, the org's permission ceiling).

Lookup outcomes (the file in ``ORG_POLICY_REPO`` of the scope's owner):

==============================  ==========================================================
GitHub says                     decision
==============================  ==========================================================
valid file                      that file (fresh ``fresh_seconds``, default 5 min)
404 (absent)                    no restriction (cached the same way)
unreadable (403, no contents    no restriction, logged as a warning ``<name>_unreadable``
read for the installation)
invalid file                    last known good *file* (kept ``stale_seconds``, 1 h),
                                else PolicyInvalid (reason ``<name>_invalid``): every
                                exchange into the org refused
rate limited / GitHub down      the last answer of any kind (within ``stale_seconds``),
                                else the error (RateLimited / GitHubUnavailable); never
                                an answer a push dropped (below)
==============================  ==========================================================

The previous answer is revalidated with its ETag (a 304 costs no rate limit).
Concurrent lookups for one org share one GitHub read (single-flight). A push
to the org policy repository (``invalidate``) makes the next lookup read
GitHub again while keeping the last known good copy for its ETag and the invalid-file
fallback. Until that read succeeds the dropped answer is not served: a rate limit or outage
then fails the lookup (RateLimited / GitHubUnavailable, with GitHub's Retry-After), fail
closed, so that nobody who can spend the installation's GitHub budget keeps a stricter
file just pushed (a ceiling, the trusted issuers) from applying.

With a fleet's Redis (``shared``, a ``SharedCache`` named as the file, ``OrgFile.name``),
answers are shared (``adapters.shared_cache``) as the file's bytes and the last valid file's,
parsed again by each process that reads them; a push bumps the org's generation of that
cache (``shared_cache.Fleet``), so every process reads GitHub again.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.policy_yaml import parse_permission_ceiling
from octosts.adapters.shared_cache import Filled
from octosts.domain.ceiling import PermissionCeiling
from octosts.domain.errors import PolicyInvalid, PolicyNotFound, RateLimited, UpstreamUnavailable
from octosts.domain.layout import CEILING_FILE, DEFAULT_ORG_POLICY_REPO

if TYPE_CHECKING:
    from octosts.adapters.shared_cache import SharedCache, SharedEntry
    from octosts.domain.ports import Clock, GitHubApp, Stage, StageObserver

_log = structlog.get_logger("octosts.org_files")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OrgFileConfig:
    fresh_seconds: float = 300.0
    stale_seconds: float = 3600.0
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        if self.fresh_seconds <= 0 or self.stale_seconds < 0 or self.max_entries < 1:
            raise ValueError("OrgFileConfig: TTLs must be positive, max_entries >= 1")


@dataclass(frozen=True, slots=True)
class OrgFile(Generic[T]):
    """Which file a store reads and how: ``name`` names its cache, stage
    (``<name>_fetch``), log events and the invalid reason (``<name>_invalid``)."""

    name: str
    path: str
    parse: Callable[[bytes], T]  # raises PolicyInvalid
    unreadable_effect: str


@dataclass(frozen=True, slots=True)
class _Answer(Generic[T]):
    """What the last read decided for one org."""

    value: T | None  # None: no restriction (absent/unreadable) or error
    error: PolicyInvalid | None  # invalid file with no last known good
    etag: str | None
    # The last valid file and when it was read, for the invalid-file fallback.
    last_good: T | None
    last_good_at: float | None
    # The current file's problems when it is invalid (even while last_good is served).
    invalid: PolicyInvalid | None = None
    # The bytes behind ``invalid``/``value`` and ``last_good``, for the second level.
    content: bytes | None = None
    last_good_content: bytes | None = None
    # Dropped by a push (``invalidate``, or an older generation of the fleet's entry): only
    # a successful read of GitHub may answer now, never this (fail closed).
    pushed: bool = False


class OrgFileStore(Generic[T]):
    """One org file over ``GitHubApp.read_file``, cached per org (see the module doc)."""

    def __init__(
        self,
        file: OrgFile[T],
        github: GitHubApp,
        *,
        clock: Clock,
        observer: StageObserver,
        org_policy_repo: str = DEFAULT_ORG_POLICY_REPO,
        config: OrgFileConfig | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        if shared is not None and shared.name != file.name:
            # The fleet bumps the generation named as the file: another name never goes stale.
            raise ValueError(f"{file.name}: its shared cache must be named {file.name!r}")
        self._file = file
        self._shared = shared
        self._github = github
        self._clock = clock
        self._observer = observer
        self._repo = org_policy_repo
        self._config = config or OrgFileConfig()
        self._cache: TtlCache[str, _Answer[T]] = TtlCache(
            name=file.name, maxsize=self._config.max_entries, clock=clock
        )
        self._flight: SingleFlight[str, _Answer[T]] = SingleFlight()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(org_policy_repo={self._repo!r})"

    @property
    def name(self) -> str:
        """The file's name: its caches' (this process's and the fleet's) and its stage's."""
        return self._file.name

    @property
    def invalid_reason(self) -> str:
        return f"{self._file.name}_invalid"

    async def lookup(self, installation_id: int, owner: str) -> T | None:
        """The org's file; None when there is none to apply.

        Raises PolicyInvalid (reason ``invalid_reason``: invalid file and no last known
        good copy), RateLimited, GitHubUnavailable (GitHub failing, no last answer).
        """
        key = owner.lower()
        with self._observer.stage(f"{self._file.name}_fetch") as stage:
            stage.annotate("cache.name", self._file.name)
            answer = self._cache.get(key)
            if answer is not None:
                stage.annotate("cache", "hit")
            else:
                stage.annotate("cache", "miss")
                answer = await self._flight.do(
                    key, lambda: self._refresh(installation_id, owner, key, stage)
                )
        if answer.error is not None:
            raise answer.error.with_traceback(None)
        return answer.value

    def invalidate(self, owner: str) -> bool:
        """Make the next lookup for ``owner`` read GitHub (push to the policy repo).

        The entry stays for its ETag and as last known good for an invalid file, marked
        ``pushed``: it is never served while GitHub cannot be read. Returns whether there
        was an entry.
        """
        key = owner.lower()
        entry = self._cache.get_entry(key)
        if entry is None:
            return False
        remaining = max(entry.keep_until - self._clock.now(), 0.0)
        self._cache.set(key, replace(entry.value, pushed=True), ttl=0.0, stale_for=remaining)
        return True

    def invalidate_all(self) -> int:
        """``invalidate`` every organization (after missing the fleet's invalidations)."""
        owners = self._cache.keys_where(lambda _answer: True)
        return sum(self.invalidate(owner) for owner in owners)

    async def _refresh(
        self, installation_id: int, owner: str, key: str, stage: Stage
    ) -> _Answer[T]:
        if self._shared is None:
            return (await self._fetch(installation_id, owner, key, stage, None)).value
        stage.annotate("shared", value=True)
        return await self._shared.read_through(
            (key,),
            scope=(key,),  # a push to the org policy repository invalidates it
            decode=lambda entry: self._adopt(owner, key, entry, stage),
            fetch=lambda entry: self._fetch(installation_id, owner, key, stage, entry),
        )

    def _adopt(self, owner: str, key: str, entry: SharedEntry, stage: Stage) -> _Answer[T] | None:
        """A fresh second-level answer, parsed again, in this process's cache too."""
        answer = self._from_shared(owner, entry, stage)
        if answer is not None:
            ttl = entry.fresh_until - self._clock.now()
            self._cache.set(key, answer, ttl=ttl, stale_for=self._config.stale_seconds)
        return answer

    def _from_shared(self, owner: str, entry: SharedEntry, stage: Stage) -> _Answer[T] | None:
        value = entry.value
        etag, file = value.get("etag"), value.get("file")
        if "file" not in value or not (etag is None or isinstance(etag, str)):
            return None
        if file is None:
            return _Answer(None, None, None, None, None)
        content = _unb64(file)
        if content is None:
            return None
        previous = None
        last_good, last_good_at = _unb64(value.get("last_good")), value.get("last_good_at")
        if last_good is not None and isinstance(last_good_at, int | float):
            try:
                good = self._file.parse(last_good)
            except PolicyInvalid:
                return None  # never written by us: the last good file was valid
            at = float(last_good_at)
            previous = _Answer(good, None, None, good, at, None, last_good, last_good)
        return self._parse(owner, content, etag, previous, stage, read_at=entry.stored_at)

    async def _fetch(
        self, installation_id: int, owner: str, key: str, stage: Stage, shared: SharedEntry | None
    ) -> Filled[_Answer[T]]:
        previous = self._previous(owner, key, stage, shared)
        try:
            read = await self._github.read_file(
                installation_id,
                owner,
                self._repo,
                self._file.path,
                previous.etag if previous else None,
            )
        except PolicyNotFound as exc:
            if exc.reason == "policy_unreadable":
                _log.warning(
                    f"{self._file.name}_unreadable",
                    owner=owner,
                    repo=self._repo,
                    detail=exc.detail[:200],
                    effect=self._file.unreadable_effect,
                )
                stage.annotate("outcome", "unreadable")
            else:
                stage.annotate("outcome", "absent")
            # An answer, not a failure: a deleted file also ends the last known good.
            answer: _Answer[T] = _Answer(None, None, None, None, None)
        except (RateLimited, UpstreamUnavailable) as exc:
            return Filled(self._stale(owner, previous, exc, stage))  # not re-cached
        else:
            if read.content is None and previous is not None:  # 304: unchanged
                stage.annotate("revalidated", value=True)
                answer = replace(previous, pushed=False)
                if previous.invalid is not None:  # the fallback may have run out
                    answer = self._fallback(owner, previous.invalid, previous.etag, previous, stage)
            else:
                answer = self._parse(owner, read.content or b"", read.etag, previous, stage)
        config = self._config
        self._cache.set(key, answer, ttl=config.fresh_seconds, stale_for=config.stale_seconds)
        return Filled(answer, _share(answer), config.fresh_seconds, config.stale_seconds)

    def _previous(
        self, owner: str, key: str, stage: Stage, shared: SharedEntry | None
    ) -> _Answer[T] | None:
        """The last answer: for its ETag, the last known good, and GitHub failing."""
        entry = self._cache.get_entry(key)
        if entry is not None or shared is None:
            return entry.value if entry is not None else None
        # Of an old generation too: a push makes it stale, it stays the last known good
        # (and is never served: the push may have made the file stricter).
        previous = self._from_shared(owner, shared, stage)
        if previous is not None and not shared.current:
            previous = replace(previous, pushed=True)
        return previous

    def _stale(
        self, owner: str, previous: _Answer[T] | None, exc: Exception, stage: Stage
    ) -> _Answer[T]:
        """The answer while GitHub cannot be read (``exc``): the last one, unless there is
        none or a push dropped it; then ``exc`` is raised (the next lookup tries again)."""
        if previous is None:
            raise exc
        if previous.pushed:
            # Fail closed: what a push dropped may be laxer than the file now on GitHub.
            _log.warning(
                f"{self._file.name}_push_unconfirmed",
                owner=owner,
                repo=self._repo,
                error=type(exc).__name__,
                effect="refusing exchanges into this organization until GitHub is read",
            )
            stage.annotate("outcome", "push_unconfirmed")
            raise exc
        stage.annotate("stale", value=True)
        return previous

    def _last_good(self, previous: _Answer[T] | None) -> tuple[T | None, float | None]:
        if previous is None or previous.last_good is None or previous.last_good_at is None:
            return None, None
        if self._clock.now() - previous.last_good_at > self._config.stale_seconds:
            return None, None
        return previous.last_good, previous.last_good_at

    def _parse(
        self,
        owner: str,
        content: bytes,
        etag: str | None,
        previous: _Answer[T] | None,
        stage: Stage,
        *,
        read_at: float | None = None,
    ) -> _Answer[T]:
        try:
            value = self._file.parse(content)
        except PolicyInvalid as exc:
            return self._fallback(owner, exc, etag, previous, stage, content)
        stage.annotate("outcome", "valid")
        at = self._clock.now() if read_at is None else read_at
        return _Answer(value, None, etag, value, at, None, content, content)

    def _fallback(
        self,
        owner: str,
        invalid: PolicyInvalid,
        etag: str | None,
        previous: _Answer[T] | None,
        stage: Stage,
        content: bytes | None = None,
    ) -> _Answer[T]:
        """The answer for an invalid file: last known good while it lasts, else reject.

        Logged on every read that finds the file invalid, with each problem (the
        field and why) and what it does to the org's exchanges.
        """
        stage.annotate("outcome", "invalid")
        last_good, last_good_at = self._last_good(previous)
        _log.warning(
            self.invalid_reason,
            owner=owner,
            repo=self._repo,
            path=self._file.path,
            problems=[p.render()[:300] for p in invalid.problems[:10]],
            effect="serving the last valid file"
            if last_good is not None
            else "refusing every exchange into this organization",
        )
        if last_good is not None:
            stage.annotate("stale", value=True)
            good = previous.last_good_content if previous is not None else None
            return _Answer(last_good, None, etag, last_good, last_good_at, invalid, content, good)
        error = PolicyInvalid(invalid.problems, reason=self.invalid_reason)
        return _Answer(None, error, etag, None, None, invalid, content)


def _share(answer: _Answer[Any]) -> dict[str, Any] | None:
    """The second-level form of an answer: the file's bytes and the last valid file's."""
    if answer.content is None:
        if answer.value is None and answer.error is None:  # absent or unreadable
            return {"file": None}
        return None  # an answer whose bytes this process no longer has
    return {
        "file": base64.b64encode(answer.content).decode(),
        "etag": answer.etag,
        "last_good": base64.b64encode(answer.last_good_content).decode()
        if answer.last_good_content is not None and answer.last_good_at is not None
        else None,
        "last_good_at": answer.last_good_at if answer.last_good_content is not None else None,
    }


def _unb64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


CEILING = OrgFile(
    name="permission_ceiling",
    path=CEILING_FILE,
    parse=parse_permission_ceiling,
    unreadable_effect="no permission ceiling for this organization",
)


class CeilingStore(OrgFileStore[PermissionCeiling]):
    """``PermissionCeilingSource``: the org's ``permission-ceiling.yaml``, cached per org."""

    def __init__(
        self,
        github: GitHubApp,
        *,
        clock: Clock,
        observer: StageObserver,
        org_policy_repo: str = DEFAULT_ORG_POLICY_REPO,
        config: OrgFileConfig | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        super().__init__(
            CEILING,
            github,
            clock=clock,
            observer=observer,
            org_policy_repo=org_policy_repo,
            config=config,
            shared=shared,
        )

    async def permission_ceiling(
        self, installation_id: int, owner: str
    ) -> PermissionCeiling | None:
        """See ``PermissionCeilingSource.permission_ceiling``."""
        return await self.lookup(installation_id, owner)
