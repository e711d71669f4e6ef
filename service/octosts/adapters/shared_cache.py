"""The fleet's second-level cache, its invalidation channel and the webhook replay memory.

With ``OCTOSTS_REDIS_URL`` every replica and worker shares what it learned from GitHub and the
issuers through Redis (``adapters.redis_state``); without it nothing here is built and each
process works alone, exactly as before.

Reads (``SharedCache.read_through``), after a miss in the process's own cache:

1. one round trip reads the entry and its scope's generation; a fresh entry of the current
   generation is decoded by its owner, who re-checks it like a fetched answer, and used;
2. otherwise the process tries a short lock (``SET NX PX``). The holder fetches from GitHub or
   the issuer, writes the entry and releases the lock (token-checked). The others poll the
   entry (``poll_interval``) until it appears, or the lock is gone without one, or
   ``lock_wait`` (and the caller's deadline) runs out; then they fetch themselves. So R
   replicas make one upstream call for a cold key, not R;
3. with Redis unavailable (down, slow, breaker open) the process fetches itself, as without
   Redis.

Invalidation (``Fleet``): a webhook push bumps the repository's (or organization's) generation
counter and publishes a message on one channel, in one transaction. Entries written under an
older generation are no longer fresh anywhere (a fetch that started before the push cannot
write a stale answer back as fresh), and every process subscribed drops its own entries when
the message arrives. A process whose subscription was lost drops all of them once it is back
(it may have missed messages); a push that could not be published is published again then.

GitHub rate limits (``Fleet``, ``holds``): a limit one process meets (a refused call, or an
answer spending a budget's last request) is published on the same channel; every other
process holds that budget too until it ends, refusing calls with ``Retry-After`` without
asking GitHub, instead of each worker spending a refused call of its own to learn it.

Short-lived GitHub tokens (installation tokens, contents tokens, the App JWT) never reach
this module: only policies, key files, installation ids, issuer keys, the org files (trusted
issuers, permission ceiling) and rate-limit holds do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import structlog

from octosts.adapters.github_rest import Budget, Hold
from octosts.adapters.redis_state import LockState, RedisState, Unavailable, dumps, ident, loads
from octosts.domain.deadline import time_left
from octosts.domain.errors import StsError
from octosts.domain.names import is_owner_name, is_repo_name

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

T = TypeVar("T")
_log = structlog.get_logger("octosts.shared")

CHANNEL = "invalidate"
POLICY = "policy"
HOLD = "github_hold"
_HOLD_KINDS = ("primary", "secondary")
_MAX_STRIKES = 32
MAX_PENDING_INVALIDATIONS = 256


class SharedTelemetry(Protocol):
    """``octo_sts_shared_cache_total{cache, result}`` (``observability.metrics.Metrics``)."""

    def shared_cache_request(self, cache: str, result: str, /) -> None: ...


class NoSharedTelemetry:
    def shared_cache_request(self, cache: str, result: str, /) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """One verified entry: its owner's payload and when it was written."""

    value: Mapping[str, Any]
    stored_at: float
    fresh_until: float
    current: bool  # written under its scope's current generation

    def fresh(self, now: float, newer_than: float | None = None) -> bool:
        newer = newer_than is None or self.stored_at > newer_than
        return self.current and now < self.fresh_until and newer


@dataclass(frozen=True, slots=True)
class Filled(Generic[T]):
    """What a fetch produced: the value, and what to share of it (None: nothing)."""

    value: T
    share: Mapping[str, Any] | None = None
    fresh_for: float = 0.0
    keep_for: float = 0.0  # kept after its freshness: ETag revalidation, stale fallbacks


# An entry's owner turns it into its value, re-checking it; None (or one of these errors)
# means unusable, and the entry is treated as absent.
Decode = Callable[[SharedEntry], T | None]
_DECODE_ERRORS = (StsError, ValueError, TypeError, LookupError)


class SharedCache:
    """One cache's second level (``name``: ``policy``, ``installations``, ``issuer_keys``...)."""

    def __init__(
        self,
        redis: RedisState,
        name: str,
        *,
        clock: Clock,
        telemetry: SharedTelemetry | None = None,
        lock_wait: float = 5.0,
        poll_interval: float = 0.02,
    ) -> None:
        self._redis = redis
        self.name = name
        self._clock = clock
        self._telemetry: SharedTelemetry = telemetry or NoSharedTelemetry()
        self._lock_wait = lock_wait
        self._poll = poll_interval

    def __repr__(self) -> str:
        return f"SharedCache({self.name!r})"

    def _entry_name(self, key: Sequence[str]) -> str:
        return self._redis.key("v1", self.name, ident(*key))

    def _lock_name(self, key: Sequence[str]) -> str:
        return self._redis.key("lock", self.name, ident(*key))

    async def read_through(
        self,
        key: Sequence[str],
        *,
        decode: Decode[T],
        fetch: Callable[[SharedEntry | None], Awaitable[Filled[T]]],
        scope: Sequence[str] | None = None,
        newer_than: float | None = None,
    ) -> T:
        """The shared value for ``key``, or ``fetch``'s (shared for the others).

        ``fetch`` gets the entry found, if any (stale or of an old generation: for ETags
        and fallbacks) and raises what it raises. ``newer_than``: only entries written
        after this time are fresh enough (a refetch after another process's). Redis
        failing never fails this call.
        """
        name = self._entry_name(key)
        counter = counter_name(self._redis, self.name, scope) if scope is not None else None
        try:
            read = await self._redis.read(name, counter)
        except Unavailable:
            self._telemetry.shared_cache_request(self.name, "unavailable")
            return (await fetch(None)).value
        entry = self._entry(read.value, read.counter, scoped=counter is not None)
        if entry is not None and entry.fresh(self._clock.now(), newer_than):
            value = self._decode(decode, entry)
            if value is not None:
                self._telemetry.shared_cache_request(self.name, "hit")
                return value
        lock = await self._redis.lock(self._lock_name(key))
        try:
            if lock.state is LockState.ACQUIRED:
                # Its last holder may have written it between our read and our lock.
                value = await self._reread(name, counter, decode, newer_than)
                if value is not None:
                    self._telemetry.shared_cache_request(self.name, "waited")
                    return value
            if lock.state is LockState.HELD_ELSEWHERE:
                value = await self._wait(name, counter, lock.name, decode, newer_than)
                if value is not None:
                    self._telemetry.shared_cache_request(self.name, "waited")
                    return value
            self._telemetry.shared_cache_request(self.name, "miss")
            filled = await fetch(entry)
            if filled.share is not None:
                await self._write(name, filled, read.counter)
            return filled.value
        finally:
            await self._redis.unlock(lock)

    async def _reread(
        self, name: str, counter: str | None, decode: Decode[T], newer_than: float | None
    ) -> T | None:
        try:
            read = await self._redis.read(name, counter)
        except Unavailable:
            return None
        entry = self._entry(read.value, read.counter, scoped=counter is not None)
        if entry is not None and entry.fresh(self._clock.now(), newer_than):
            return self._decode(decode, entry)
        return None

    async def forget(self, key: Sequence[str]) -> None:
        """Delete the entry (e.g. an installation GitHub no longer knows)."""
        with contextlib.suppress(Unavailable):  # it expires; what is read is checked anyway
            await self._redis.delete(self._entry_name(key))

    async def _wait(
        self,
        name: str,
        counter: str | None,
        lock: str,
        decode: Decode[T],
        newer_than: float | None,
    ) -> T | None:
        """Another process is fetching: its result, or None to fetch ourselves."""
        loop = asyncio.get_running_loop()
        left = time_left()
        wait = self._lock_wait if left is None else min(self._lock_wait, left)
        deadline = loop.time() + wait
        while loop.time() < deadline:
            await asyncio.sleep(self._poll)  # the poll interval, bounded by the deadline
            try:
                read, held = await self._redis.poll(name, counter, lock)
            except Unavailable:
                return None
            entry = self._entry(read.value, read.counter, scoped=counter is not None)
            if entry is not None and entry.fresh(self._clock.now(), newer_than):
                value = self._decode(decode, entry)
                if value is not None:
                    return value
            if not held:
                return None  # the holder is done and left nothing usable
        self._telemetry.shared_cache_request(self.name, "lock_timeout")
        return None

    async def _write(self, name: str, filled: Filled[Any], generation: int) -> None:
        now = self._clock.now()
        body = dumps(
            {
                "gen": generation,
                "at": now,
                "fresh": now + filled.fresh_for,
                "v": dict(filled.share or {}),
            }
        )
        ttl = filled.fresh_for + filled.keep_for
        if ttl <= 0:
            return
        try:
            await self._redis.write(name, body, ttl)
        except Unavailable:
            self._telemetry.shared_cache_request(self.name, "unavailable")

    def _entry(self, body: bytes | None, generation: int, *, scoped: bool) -> SharedEntry | None:
        if body is None:
            return None
        data = loads(body)
        if data is None:
            self._telemetry.shared_cache_request(self.name, "unusable")
            return None
        value, at, fresh, gen = data.get("v"), data.get("at"), data.get("fresh"), data.get("gen")
        if not (
            isinstance(value, dict)
            and isinstance(at, int | float)
            and isinstance(fresh, int | float)
            and _integer(gen)
        ):
            self._telemetry.shared_cache_request(self.name, "unusable")
            return None
        return SharedEntry(value, float(at), float(fresh), not scoped or gen == generation)

    def _decode(self, decode: Decode[T], entry: SharedEntry) -> T | None:
        try:
            value = decode(entry)
        except _DECODE_ERRORS:
            value = None
        if value is None:
            self._telemetry.shared_cache_request(self.name, "unusable")
        return value


def counter_name(redis: RedisState, cache: str, scope: Sequence[str]) -> str:
    """The generation counter of a scope (a repository, an organization) of one cache."""
    return redis.key("gen", cache, ident(*scope))


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- invalidation ------------------------------------------------------------------------


class LocalPolicies(Protocol):
    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int: ...

    def invalidate_all(self) -> int: ...


class LocalOrgFile(Protocol):
    """One org file's cache in this process (``adapters.org_files.OrgFileStore``): ``name``
    is also its ``SharedCache``'s, so a push bumps the generation its entries are read under."""

    @property
    def name(self) -> str: ...

    def invalidate(self, owner: str) -> bool: ...

    def invalidate_all(self) -> int: ...


class SharedHolds(Protocol):
    """Where a process's GitHub rate-limit holds live (``github_rest.GitHubRest``)."""

    def share_holds(self, publish: Callable[[Budget, Hold], None]) -> None: ...

    def adopt_hold(self, budget: Budget, hold: Hold) -> None: ...


class Fleet:
    """Invalidation for every process of the fleet (see the module docstring).

    ``policies`` and ``org_file(name)`` are what the webhook handler invalidates through:
    each call drops this process's entries at once, then publishes (in the background; the
    webhook's answer does not wait for Redis). ``start`` subscribes, ``close`` stops.
    """

    def __init__(
        self,
        redis: RedisState,
        *,
        policies: LocalPolicies,
        org_files: Sequence[LocalOrgFile] = (),
        holds: SharedHolds | None = None,
    ) -> None:
        self._redis = redis
        self._local_policies = policies
        self._local_org_files = {store.name: store for store in org_files}
        self._holds = holds
        if holds is not None:
            holds.share_holds(self._publish_hold)
        self.policies = _FleetPolicies(self)
        self._channel = redis.key(CHANNEL)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: collections.deque[tuple[tuple[str, ...], bytes]] = collections.deque(
            maxlen=MAX_PENDING_INVALIDATIONS
        )
        # This process's own messages come back on the channel: it acted on them already.
        self._origin = secrets.token_hex(8)
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed_once = False
        self.subscribed = asyncio.Event()

    def org_file(self, name: str) -> _FleetOrgFile:
        """The webhook's invalidator of the org file ``name`` (one given as ``org_files``)."""
        return _FleetOrgFile(self, self._local_org_files[name])

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(
            self._redis.listen(self._channel, self._received, self._on_subscribed, self._stop)
        )

    async def close(self) -> None:
        self._stop.set()
        pending = {t for t in (self._listener, *self._tasks) if t is not None}
        if pending:
            _done, late = await asyncio.wait(pending, timeout=2.0)
            for task in late:
                task.cancel()

    async def settled(self) -> None:
        """Wait for the publications scheduled so far (tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _publish(self, counters: tuple[str, ...], message: Mapping[str, Any]) -> None:
        body = dumps({**message, "from": self._origin})
        task = asyncio.get_running_loop().create_task(self._send(counters, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, counters: tuple[str, ...], body: bytes) -> None:
        try:
            await self._redis.bump_and_publish(counters, self._channel, body)
        except Unavailable:
            # Sent again once the subscription is back (the other processes drop all then).
            self._pending.append((counters, body))

    def _on_subscribed(self) -> None:
        self.subscribed.set()
        if not self._subscribed_once:
            self._subscribed_once = True
            return
        # Back after a loss: messages may have been missed, so forget what could be stale.
        dropped = self._local_policies.invalidate_all() + sum(
            store.invalidate_all() for store in self._local_org_files.values()
        )
        _log.info("shared_resync", dropped=dropped, republished=len(self._pending))
        while self._pending:
            counters, body = self._pending.popleft()
            task = asyncio.get_running_loop().create_task(self._send(counters, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _publish_hold(self, budget: Budget, hold: Hold) -> None:
        message = {
            "cache": HOLD,
            "installation": budget.installation,
            "app": budget.app_id,
            "kind": hold.kind,
            "until": hold.until,
            "strikes": hold.strikes,
        }
        self._publish((), message)

    def _received(self, body: bytes) -> None:
        message = loads(body)
        if message is None or message.get("from") == self._origin:
            return
        if message.get("cache") == HOLD:
            self._adopt_hold(message)
            return
        owner = message.get("owner")
        if not isinstance(owner, str) or not is_owner_name(owner):
            return
        org_file = self._local_org_files.get(str(message.get("cache")))
        if org_file is not None:
            had = org_file.invalidate(owner)
            _logged(org_file.name, "channel", int(had), owner=owner)
            return
        repo, path = message.get("repo"), message.get("path")
        if message.get("cache") != POLICY or not isinstance(repo, str) or not is_repo_name(repo):
            return
        if path is not None and not isinstance(path, str):
            return
        dropped = self._local_policies.invalidate(owner, repo, path)
        _logged(POLICY, "channel", dropped, owner=owner, repo=repo)

    def _adopt_hold(self, message: Mapping[str, Any]) -> None:
        """Another process's GitHub rate limit, checked (``RateLimits.adopt`` caps its length)."""
        installation, app = message.get("installation"), message.get("app")
        kind, until, strikes = message.get("kind"), message.get("until"), message.get("strikes")
        if (
            self._holds is None
            or not all(_id_or_none(v) for v in (installation, app))
            or kind not in _HOLD_KINDS
            or not isinstance(until, int | float)
            or isinstance(until, bool)
            or not isinstance(strikes, int)
            or isinstance(strikes, bool)
            or not 1 <= strikes <= _MAX_STRIKES
        ):
            return
        hold = Hold(kind, float(until), strikes)
        self._holds.adopt_hold(Budget(installation, app), hold)


def _id_or_none(value: object) -> bool:
    return value is None or (
        isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 63
    )


def _logged(cache: str, via: str, dropped: int, **names: str) -> None:
    # With the pid: the workers of a replica share one log.
    _log.info(
        "shared_invalidation", cache=cache, via=via, dropped=dropped, pid=os.getpid(), **names
    )


class _FleetPolicies:
    """The webhook's ``PolicyInvalidator`` with Redis."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int:
        fleet = self._fleet
        dropped = fleet._local_policies.invalidate(owner, repo, path)  # noqa: SLF001
        _logged(POLICY, "webhook", dropped, owner=owner, repo=repo)
        counter = counter_name(fleet._redis, POLICY, (owner.lower(), repo.lower()))  # noqa: SLF001
        message = {"cache": POLICY, "owner": owner, "repo": repo, "path": path}
        fleet._publish((counter,), message)  # noqa: SLF001
        return dropped


class _FleetOrgFile:
    """The webhook's invalidator of one org file (``IssuersInvalidator``...) with Redis.

    The generation bumped is the one its ``SharedCache`` (named as the file) reads entries
    under: with another name the entry stayed fresh in Redis and every process adopted it
    again right after dropping its own copy.
    """

    def __init__(self, fleet: Fleet, local: LocalOrgFile) -> None:
        self._fleet = fleet
        self._local = local

    def invalidate(self, owner: str) -> bool:
        fleet, name = self._fleet, self._local.name
        had = self._local.invalidate(owner)
        _logged(name, "webhook", int(had), owner=owner)
        counter = counter_name(fleet._redis, name, (owner.lower(),))  # noqa: SLF001
        fleet._publish((counter,), {"cache": name, "owner": owner})  # noqa: SLF001
        return had


# -- webhook deliveries --------------------------------------------------------------------


class DeliveryMemory(Protocol):
    """``webhook.handler.DeliveryMemory`` (this process's: ``LocalDeliveries``)."""

    async def remember(self, keys: Sequence[tuple[str, str]], ttl: float) -> bool: ...

    async def forget(self, keys: Sequence[tuple[str, str]]) -> None: ...


class SharedDeliveries:
    """The webhook's replay memory for the whole fleet (a ``DeliveryMemory``).

    This process's memory first (a repeat here costs no round trip, and two copies
    arriving at once are told apart before any await), then Redis: a delivery any
    process accepted is a replay everywhere. Redis unavailable: this process's memory.
    """

    def __init__(self, redis: RedisState, local: DeliveryMemory) -> None:
        self._redis = redis
        self._local = local

    def _names(self, keys: Sequence[tuple[str, str]]) -> list[str]:
        # Digests: a delivery id is whatever the sender put in a header.
        return [
            self._redis.key("webhook", hashlib.sha256(f"{kind}\n{value}".encode()).hexdigest())
            for kind, value in keys
        ]

    async def remember(self, keys: Sequence[tuple[str, str]], ttl: float) -> bool:
        if not await self._local.remember(keys, ttl):
            return False
        try:
            return await self._redis.add_once(self._names(keys), ttl)
        except Unavailable:
            return True

    async def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        await self._local.forget(keys)
        with contextlib.suppress(Unavailable):
            await self._redis.delete(*self._names(keys))
