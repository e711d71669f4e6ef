"""Faults and rate limits: what makes the emulator misbehave the way GitHub does.

* ``Faults``: fault rules, set at run time (``/_emulator/faults``, ``GitHubEmulator.add_fault``),
  plus a base latency and a base random failure rate (``--latency-ms``, ``--fail-rate``). A rule
  matches requests by path prefix (and method), fires for a fraction ``rate`` of them (a seeded
  RNG), ``times`` times or for ``seconds`` at most, and answers like GitHub does when it fails:
  an error status, a secondary rate limit (``retry-after``), a primary rate limit
  (``x-ratelimit-remaining: 0`` until ``x-ratelimit-reset``), a dropped connection, or only a delay.
* ``RateLimits``: GitHub's primary limit, a budget of requests per hour (or per ``window``
  seconds) for each principal (``app:ID``, ``installation:ID``, ``anon``), reported in
  ``x-ratelimit-*`` headers on every answer. Each App may have a limit of its own, which its
  installations share the size of (``limit_of``); the others get ``limit``.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from octosts.dev.github.answers import Answer, HttpError

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

RATE_WINDOW = 3600
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
PRIMARY_LIMIT_MESSAGE = "API rate limit exceeded. Check the x-ratelimit-reset header."
PRIMARY_LIMIT_DEFAULT_RESET = 60  # seconds, when a primary-limit rule names no reset_in

FaultKind = Literal["error", "secondary_rate_limit", "primary_rate_limit", "latency", "disconnect"]
KINDS: tuple[FaultKind, ...] = (
    "error",
    "secondary_rate_limit",
    "primary_rate_limit",
    "latency",
    "disconnect",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """What a fault rule does to the requests it fires on.

    ``status`` None serves the request normally (after ``latency_ms``); ``exhaust`` adds
    ``x-ratelimit-remaining: 0`` (a primary limit) and ``reset_in`` its ``x-ratelimit-reset``
    (seconds after the rule was added); ``disconnect`` closes the connection unanswered.
    ``path_prefix``, ``method`` and ``rate`` choose the requests.
    """

    status: int | None
    message: str = "Server Error"
    retry_after: int | None = None
    exhaust: bool = False
    path_prefix: str = ""
    method: str | None = None
    rate: float = 1.0
    latency_ms: int = 0
    reset_in: int | None = None
    disconnect: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be between 400 and 599")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.latency_ms < 0 or (self.retry_after is not None and self.retry_after < 0):
            raise ValueError("latency_ms and retry_after must not be negative")
        if self.reset_in is not None and self.reset_in < 0:
            raise ValueError("reset_in must not be negative")
        if not self.path_prefix.startswith("/") and self.path_prefix:
            raise ValueError("path_prefix must start with /")

    @property
    def kind(self) -> FaultKind:
        if self.disconnect:
            return "disconnect"
        if self.status is None:
            return "latency"
        if self.exhaust:
            return "primary_rate_limit"
        if self.retry_after is not None or self.message == SECONDARY_LIMIT_MESSAGE:
            return "secondary_rate_limit"
        return "error"

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.method in (None, method)

    def error(self, added_at: float = 0.0) -> HttpError:
        """The answer, for a fault with a status (``added_at``: when its rule was added)."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        if self.exhaust:
            headers["x-ratelimit-remaining"] = "0"
            if self.reset_in is not None:
                headers["x-ratelimit-reset"] = str(math.ceil(added_at + self.reset_in))
        return HttpError(self.status or 500, self.message, headers)


SPEC_FIELDS = frozenset(
    {
        "kind",
        "status",
        "message",
        "retry_after",
        "reset_in",
        "path_prefix",
        "method",
        "rate",
        "latency_ms",
        "times",
        "seconds",
    }
)


def _opt_int(spec: Mapping[str, Any], name: str) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    return value


def _opt_float(spec: Mapping[str, Any], name: str) -> float | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    return float(value)


def _str(spec: Mapping[str, Any], name: str, default: str) -> str:
    value = spec.get(name, default)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def fault_from_spec(spec: Mapping[str, Any]) -> tuple[Fault, int | None, float | None]:
    """A fault rule from its JSON form: (fault, times, seconds).

    ``kind`` picks the defaults (status, message, headers); the other fields override them
    or choose the requests. A primary limit lasts until its reset unless ``seconds`` says
    otherwise. Raises ValueError or TypeError naming the field.
    """
    unknown = set(spec) - SPEC_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {sorted(SPEC_FIELDS)}")
    kind = spec.get("kind", "error")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}")
    times, seconds = _opt_int(spec, "times"), _opt_float(spec, "seconds")
    if times is not None and times < 1:
        raise ValueError("times must be at least 1")
    if seconds is not None and seconds <= 0:
        raise ValueError("seconds must be positive")
    if "reset_in" in spec and kind != "primary_rate_limit":
        raise ValueError("reset_in is for primary_rate_limit faults")
    rate = _opt_float(spec, "rate")
    fields: dict[str, Any] = {
        "path_prefix": _str(spec, "path_prefix", ""),
        "method": _str(spec, "method", "").upper() or None,
        "rate": 1.0 if rate is None else rate,
        "latency_ms": _opt_int(spec, "latency_ms") or 0,
        "retry_after": _opt_int(spec, "retry_after"),
    }
    status = _opt_int(spec, "status")
    if kind == "latency" and not fields["latency_ms"]:
        raise ValueError("a latency fault needs latency_ms")
    if kind in {"latency", "disconnect"}:
        return Fault(None, disconnect=kind == "disconnect", **fields), times, seconds
    if kind == "primary_rate_limit":
        reset_in = _opt_int(spec, "reset_in")
        reset_in = PRIMARY_LIMIT_DEFAULT_RESET if reset_in is None else reset_in
        message = _str(spec, "message", PRIMARY_LIMIT_MESSAGE)
        fault = Fault(status or 403, message, exhaust=True, reset_in=reset_in, **fields)
        if seconds is None and reset_in > 0:
            seconds = float(reset_in)  # the limit lifts at its reset, as on GitHub
        return fault, times, seconds
    defaults = {
        "secondary_rate_limit": (403, SECONDARY_LIMIT_MESSAGE),
        "error": (500, "Server Error"),
    }
    default_status, default_message = defaults[kind]
    message = _str(spec, "message", default_message)
    return Fault(status or default_status, message, **fields), times, seconds


@dataclass(slots=True)
class Rule:
    """A fault rule in force: its fault, how many more times and until when it fires."""

    id: int
    fault: Fault
    added_at: float
    times_left: int | None  # None: no count limit
    expires_at: float | None  # None: until removed
    fired: int = 0

    def describe(self, now: float) -> dict[str, Any]:
        """The rule as ``GET /_emulator/faults`` lists it."""
        f = self.fault
        return {
            "id": self.id,
            "kind": f.kind,
            "status": f.status,
            "message": f.message if f.status is not None else None,
            "retry_after": f.retry_after,
            "reset_at": None if f.reset_in is None else math.ceil(self.added_at + f.reset_in),
            "path_prefix": f.path_prefix,
            "method": f.method,
            "rate": f.rate,
            "latency_ms": f.latency_ms,
            "times_left": self.times_left,
            "expires_in": None if self.expires_at is None else round(self.expires_at - now, 3),
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fires on one request: its fault and when the rule was added."""

    fault: Fault
    added_at: float = 0.0


class Faults:
    """Fault rules in force (first matching rule that fires wins), base latency and failure rate.

    Thread-safe. ``seed`` makes every ``rate`` draw (and the base failure rate) repeatable.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.sleep: Callable[[float], None] = time.sleep  # tests record the latency instead
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: dict[int, Rule] = {}
        self._ids = itertools.count(1)

    def delay(self, extra_ms: int = 0) -> None:
        """Wait the base latency plus ``extra_ms`` (emulated latency, not a readiness wait)."""
        total = self.latency_ms + extra_ms
        if total > 0:
            self.sleep(total / 1000)

    def add(self, fault: Fault, times: int | None = None, seconds: float | None = None) -> int:
        """Put a rule in force: at most ``times`` firings, for ``seconds``. Returns its id."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        now = self._clock.now()
        with self._lock:
            rule_id = next(self._ids)
            expires = None if seconds is None else now + seconds
            self._rules[rule_id] = Rule(rule_id, fault, now, times, expires)
        return rule_id

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            return self._rules.pop(rule_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        """Every rule in force, oldest first, as the control API lists them."""
        now = self._clock.now()
        with self._lock:
            self._expire(now)
            return [rule.describe(now) for rule in self._rules.values()]

    def _expire(self, now: float) -> None:
        """Drop rules past their time (caller holds the lock)."""
        for rule_id in [r.id for r in self._rules.values() if r.expires_at is not None]:
            expires_at = self._rules[rule_id].expires_at
            if expires_at is not None and now >= expires_at:
                del self._rules[rule_id]

    def take(self, method: str, path: str) -> Firing | None:
        """The fault that answers this request, if any (counted against its rule)."""
        now = self._clock.now()
        with self._lock:
            self._expire(now)
            for rule in self._rules.values():
                if not rule.fault.matches(method, path):
                    continue
                if rule.fault.rate < 1.0 and self._rng.random() >= rule.fault.rate:
                    continue
                rule.fired += 1
                if rule.times_left is not None:
                    rule.times_left -= 1
                    if rule.times_left == 0:
                        del self._rules[rule.id]
                return Firing(rule.fault, rule.added_at)
            if self.fail_rate and self._rng.random() < self.fail_rate:
                return Firing(Fault(500))
        return None


@dataclass(slots=True)
class Budget:
    window_start: float
    used: int = 0


class RateLimits:
    """One budget of ``limit`` requests per ``window`` seconds per principal. Thread-safe.

    ``limit_of(budget)`` (set by the emulator) may give a budget a limit of its own: None
    means ``limit``.
    """

    def __init__(self, limit: int, clock: Clock, window: int = RATE_WINDOW) -> None:
        if limit < 1:
            raise ValueError("rate_limit must be at least 1")
        if window < 1:
            raise ValueError("rate_window must be at least 1 second")
        self.limit = limit
        self.window = window
        self.limit_of: Callable[[str], int | None] = lambda _budget: None
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}

    def _limit(self, budget: str) -> int:
        own = self.limit_of(budget)
        return self.limit if own is None else own

    def clear(self) -> None:
        with self._lock:
            self._budgets.clear()

    def _window(self, budget: str) -> Budget:
        """The budget's current window, a new one once the hour is over (caller holds the lock)."""
        now = self._clock.now()
        state = self._budgets.get(budget)
        if state is None or now >= state.window_start + self.window:
            state = Budget(window_start=now)
            self._budgets[budget] = state
        return state

    def check(self, budget: str) -> None:
        """Raise GitHub's primary-limit 403 once ``budget`` is spent."""
        limit = self._limit(budget)
        with self._lock:
            spent = self._window(budget).used >= limit
        if spent:
            who = budget.replace(":", " ID ") if budget != "anon" else "this client"
            raise HttpError(
                403, f"API rate limit exceeded for {who}.", {"x-ratelimit-remaining": "0"}
            )

    def core(self, budget: str) -> dict[str, int]:
        """The ``core`` resource of ``GET /rate_limit`` for ``budget``."""
        limit = self._limit(budget)
        with self._lock:
            state = self._window(budget)
            return {
                "limit": limit,
                "used": state.used,
                "remaining": max(limit - state.used, 0),
                "reset": int(state.window_start + self.window),
            }

    def stamp(self, answer: Answer, budget: str, *, count: bool) -> None:
        """Spend one request of ``budget`` (if ``count``) and add the ``x-ratelimit-*`` headers.

        An answer that already says ``x-ratelimit-remaining: 0`` (a primary-limit fault, the
        limit itself) spends nothing and keeps saying 0, and keeps its own ``x-ratelimit-reset``.
        """
        limit = self._limit(budget)
        with self._lock:
            state = self._window(budget)
            exhausted = answer.headers.get("x-ratelimit-remaining") == "0"
            if count and not exhausted and state.used < limit:
                state.used += 1
            remaining = 0 if exhausted else max(limit - state.used, 0)
            reset = answer.headers.get("x-ratelimit-reset") if exhausted else None
            answer.headers.update(
                {
                    "x-ratelimit-limit": str(limit),
                    "x-ratelimit-remaining": str(remaining),
                    "x-ratelimit-used": str(state.used),
                    "x-ratelimit-reset": reset or str(int(state.window_start + self.window)),
                    "x-ratelimit-resource": "core",
                }
            )
