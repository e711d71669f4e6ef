"""Bounded caches with an injected clock, and single-flight de-duplication.

Every cache in the service is a ``TtlCache`` owned by the object that uses it
(no module-level caches). Entries keep their value after their freshness
runs out until ``stale_for`` more seconds have passed, so callers can serve a
last-known-good copy when the upstream fails (``get_stale``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    value: V
    stored_at: float
    fresh_until: float
    keep_until: float

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until


class TtlCache(Generic[K, V]):
    """An LRU-bounded map whose entries expire.

    ``get`` returns only fresh values; ``get_entry`` returns any kept entry
    (fresh or stale) so the caller can decide, e.g. revalidate with an ETag or
    serve it while GitHub rate-limits us.
    """

    def __init__(self, *, name: str, maxsize: int, clock: Clock) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self._maxsize = maxsize
        self._clock = clock
        self._data: OrderedDict[K, Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        entry = self.get_entry(key)
        if entry is None or not entry.is_fresh(self._clock.now()):
            return None
        return entry.value

    def get_entry(self, key: K) -> Entry[V] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if self._clock.now() >= entry.keep_until:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def set(self, key: K, value: V, *, ttl: float, stale_for: float = 0.0) -> None:
        now = self._clock.now()
        self._data[key] = Entry(value, now, now + ttl, now + ttl + stale_for)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def delete(self, key: K) -> None:
        self._data.pop(key, None)

    def delete_where(self, predicate: Callable[[K], bool]) -> int:
        doomed = [k for k in self._data if predicate(k)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def keys_where(self, predicate: Callable[[V], bool]) -> list[K]:
        """Keys of the kept entries whose value matches."""
        return [k for k, entry in self._data.items() if predicate(entry.value)]

    def delete_values(self, predicate: Callable[[V], bool]) -> int:
        doomed = [k for k, entry in self._data.items() if predicate(entry.value)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key share one in-flight call.

    The first caller runs ``fn``; later callers for the same key await the
    same result (or exception). A cancelled waiter does not cancel the shared
    call for the others.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._run(key, fn))
            self._inflight[key] = future
        return await asyncio.shield(future)

    async def _run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        try:
            return await fn()
        finally:
            self._inflight.pop(key, None)
