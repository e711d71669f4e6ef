"""Faults and rate limits: what makes the emulator misbehave the way GitHub does.

* ``Faults``: forced answers for the next requests under a path prefix (5xx, secondary limits
  with ``retry-after``, an exhausted primary limit), a random failure rate from a seeded RNG,
  and added latency.
* ``RateLimits``: GitHub's primary limit, a budget of requests per hour for each principal
  (``app``, ``installation:ID``, ``anon``), reported in ``x-ratelimit-*`` headers on every answer.
"""

from __future__ import annotations

import collections
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from octosts.dev.github.answers import Answer, HttpError

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

RATE_WINDOW = 3600
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)


@dataclass(frozen=True, slots=True)
class Fault:
    """A forced answer for the next matching requests."""

    status: int
    message: str
    retry_after: int | None = None
    exhaust: bool = False  # answer with x-ratelimit-remaining: 0 (primary limit)
    path_prefix: str = ""

    def error(self) -> HttpError:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        if self.exhaust:
            headers["x-ratelimit-remaining"] = "0"
        return HttpError(self.status, self.message, headers)


class Faults:
    """Pending forced faults (first match by path prefix wins), random failures and latency."""

    def __init__(
        self, *, latency_ms: int = 0, fail_rate: float = 0.0, seed: int | None = None
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pending: collections.deque[Fault] = collections.deque()

    def inject(self, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._pending.extend([fault] * times)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, path: str) -> Fault | None:
        """The fault that answers a request for ``path``, if any (consumed)."""
        with self._lock:
            fault = next((f for f in self._pending if path.startswith(f.path_prefix)), None)
            if fault is not None:
                self._pending.remove(fault)
            elif self.fail_rate and self._rng.random() < self.fail_rate:
                fault = Fault(500, "Server Error")
        return fault


@dataclass(slots=True)
class Budget:
    window_start: float
    used: int = 0


class RateLimits:
    """One hourly budget of ``limit`` requests per principal. Thread-safe."""

    def __init__(self, limit: int, clock: Clock) -> None:
        if limit < 1:
            raise ValueError("rate_limit must be at least 1")
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}

    def clear(self) -> None:
        with self._lock:
            self._budgets.clear()

    def _window(self, budget: str) -> Budget:
        """The budget's current window, a new one once the hour is over (caller holds the lock)."""
        now = self._clock.now()
        state = self._budgets.get(budget)
        if state is None or now >= state.window_start + RATE_WINDOW:
            state = Budget(window_start=now)
            self._budgets[budget] = state
        return state

    def check(self, budget: str) -> None:
        """Raise GitHub's primary-limit 403 once ``budget`` is spent."""
        with self._lock:
            spent = self._window(budget).used >= self.limit
        if spent:
            who = budget.replace(":", " ID ") if budget != "anon" else "this client"
            raise HttpError(
                403, f"API rate limit exceeded for {who}.", {"x-ratelimit-remaining": "0"}
            )

    def core(self, budget: str) -> dict[str, int]:
        """The ``core`` resource of ``GET /rate_limit`` for ``budget``."""
        with self._lock:
            state = self._window(budget)
            return {
                "limit": self.limit,
                "used": state.used,
                "remaining": max(self.limit - state.used, 0),
                "reset": int(state.window_start + RATE_WINDOW),
            }

    def stamp(self, answer: Answer, budget: str, *, count: bool) -> None:
        """Spend one request of ``budget`` (if ``count``) and add the ``x-ratelimit-*`` headers.

        An answer that already says ``x-ratelimit-remaining: 0`` (a forced primary limit, the
        limit itself) spends nothing and keeps saying 0.
        """
        with self._lock:
            state = self._window(budget)
            exhausted = answer.headers.get("x-ratelimit-remaining") == "0"
            if count and not exhausted and state.used < self.limit:
                state.used += 1
            remaining = 0 if exhausted else max(self.limit - state.used, 0)
            answer.headers.update(
                {
                    "x-ratelimit-limit": str(self.limit),
                    "x-ratelimit-remaining": str(remaining),
                    "x-ratelimit-used": str(state.used),
                    "x-ratelimit-reset": str(int(state.window_start + RATE_WINDOW)),
                    "x-ratelimit-resource": "core",
                }
            )
