"""Each GitHub App's remaining count, shared by the fleet through Redis ([fleet]).

Quota routing (``adapters.github_apps``) sends each call to the App with the most requests
left, as GitHub's ``x-ratelimit-remaining`` last said. Without Redis a worker process knows
only the answers to its own calls: one that calls rarely routes on an old count. Holds (an App
at its limit) are already the fleet's through the invalidation channel
(``adapters.shared_cache.Fleet``: one message per limit, heard at once); counts change on every
call, so they are synced instead: every ``SYNC_SECONDS`` each process

1. reads each App's fleet count (one key per App: ``<prefix>:quota:app:<id>``, GitHub's
   remaining count and its window's reset) and takes it when it is fresher than its own
   (``RateLimits.adopt_count``: a later window, or lower in the same one);
2. writes its own back when it is the fresher. Two writers racing may lose one count for a
   round; the one that knows better writes it again at its next round.

Only the Apps' own budgets are synced (installation lookups and mints, the calls routing is
for), never a token. Values are sealed like every Redis value (``OCTOSTS_REDIS_HMAC_KEY``) and
checked when read (a count and a reset in range): a forged count only changes which App is
tried first. Redis down or slow: the round is skipped and each process routes on its own
counts, as without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

import structlog

from octosts.adapters.redis_state import RedisState, Unavailable, dumps, loads

if TYPE_CHECKING:
    from collections.abc import Sequence

    from octosts.adapters.github_rest import Budget, GitHubTelemetry, RateLimits
    from octosts.domain.ports import Clock

_log = structlog.get_logger("octosts.shared")

SYNC_SECONDS = 1.0
# GitHub's largest count is 15,000 an hour (12,500 for large organizations' installations);
# a window resets within the hour.
_MAX_REMAINING = 1_000_000
_MAX_WINDOW = 3600.0 + 60.0

Count = tuple[int, float]  # GitHub's remaining count and its window's reset


class SharedQuota:
    """Syncs ``rate_limits``'s counts of ``apps`` (App id, its budget) with the fleet's.

    ``start`` runs the sync in the background; ``sync`` is one round. ``telemetry`` gets each
    count taken in, as if this process had seen it.
    """

    def __init__(
        self,
        redis: RedisState,
        rate_limits: RateLimits,
        apps: Sequence[tuple[int, Budget]],
        *,
        clock: Clock,
        telemetry: GitHubTelemetry | None = None,
        interval: float = SYNC_SECONDS,
    ) -> None:
        self._redis = redis
        self._limits = rate_limits
        self._apps = tuple(apps)
        self._clock = clock
        self._telemetry = telemetry
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SharedQuota(apps={[app for app, _ in self._apps]})"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shared_quota")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sync(self) -> None:
        """One round for every App (see the module docstring); never raises for Redis."""
        await asyncio.gather(*(self._sync_one(app, budget) for app, budget in self._apps))

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 -- the loop outlives any one round's fault
                _log.exception("shared_quota_failed")
            await asyncio.sleep(self._interval)

    async def _sync_one(self, app_id: int, budget: Budget) -> None:
        name = self._redis.key("quota", f"app:{app_id}")
        try:
            stored = await self._redis.read(name)
        except Unavailable:
            return
        now = self._clock.now()
        theirs = decode(stored.value, now) if stored.value is not None else None
        if theirs is not None and self._limits.adopt_count(budget, *theirs):
            if self._telemetry is not None:
                self._telemetry.rate_limit_remaining(budget.label, theirs[0])
            return
        ours = self._limits.last_count(budget)
        if ours is None or ours[1] is None or ours[1] <= now or ours == theirs:
            return  # nothing the fleet can use, or nothing it does not know
        with contextlib.suppress(Unavailable):
            await self._redis.write(name, encode((ours[0], ours[1])), ours[1] - now)


def encode(count: Count) -> bytes:
    return dumps({"remaining": count[0], "reset": count[1]})


def decode(body: bytes, now: float) -> Count | None:
    """A count written by another process, checked like a GitHub answer; None if unusable."""
    data = loads(body)
    if data is None:
        return None
    remaining, reset = data.get("remaining"), data.get("reset")
    if isinstance(remaining, bool) or not isinstance(remaining, int):
        return None
    if isinstance(reset, bool) or not isinstance(reset, int | float) or not math.isfinite(reset):
        return None
    if not 0 <= remaining <= _MAX_REMAINING or not now < reset <= now + _MAX_WINDOW:
        return None  # out of range, or a window that is over
    return remaining, float(reset)
