"""The emulator's own endpoints for tests and tools (no auth: bind to loopback), and its call log.

* ``GET /_emulator/health``: ``{"status": "ok"}``.
* ``GET /_emulator/calls``: every REST call answered since the last reset, oldest first.
* ``POST /_emulator/reset``: forget calls, rate-limit budgets and pending faults.
* ``POST /_emulator/fault``: ``{status, message?, retry_after?, exhaust?, path_prefix?, times?}``
  answers the next ``times`` (1) requests under ``path_prefix`` with that fault.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

from octosts.dev.github.answers import Answer, json_answer, no_content
from octosts.dev.github.limits import Fault, Faults

PREFIX = "/_emulator/"
CALL_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Call:
    """One request the emulator answered (control endpoints excluded)."""

    method: str
    path: str
    status: int
    auth: str  # "app", "token", "none"


class CallLog:
    """The last ``CALL_LOG_SIZE`` calls. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: collections.deque[Call] = collections.deque(maxlen=CALL_LOG_SIZE)

    def append(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def list(self) -> list[Call]:
        with self._lock:
            return list(self._calls)


def parse_fault(body: bytes) -> tuple[Fault, int]:
    """A fault and how many times to answer with it. Raises ValueError, KeyError, TypeError."""
    spec = json.loads(body)
    fault = Fault(
        status=int(spec["status"]),
        message=str(spec.get("message", "Server Error")),
        retry_after=None if spec.get("retry_after") is None else int(spec["retry_after"]),
        exhaust=bool(spec.get("exhaust", False)),
        path_prefix=str(spec.get("path_prefix", "")),
    )
    return fault, int(spec.get("times", 1))


def control_answer(
    method: str,
    path: str,
    body: bytes,
    *,
    calls: CallLog,
    faults: Faults,
    reset: Callable[[], None],
) -> Answer:
    if method == "GET" and path == PREFIX + "health":
        return json_answer(200, {"status": "ok"})
    if method == "GET" and path == PREFIX + "calls":
        return json_answer(200, [asdict(c) for c in calls.list()])
    if method == "POST" and path == PREFIX + "reset":
        reset()
        return no_content()
    if method == "POST" and path == PREFIX + "fault":
        try:
            fault, times = parse_fault(body)
        except (ValueError, KeyError, TypeError):
            return json_answer(
                400, {"message": "expected {status, message?, retry_after?, times?}"}
            )
        faults.inject(fault, times)
        return no_content()
    return json_answer(404, {"message": "Not Found"})
