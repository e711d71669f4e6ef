"""The emulator's own endpoints for tests and tools (no auth: bind to loopback), and its call log.

Documented for users in docs/github-emulator.md (keep the two in step):

* ``GET /_emulator/health``: ``{"status": "ok"}``.
* ``GET /_emulator/calls[?since=EPOCH]``: REST calls answered (since a time), oldest first.
* ``POST /_emulator/reset``: forget calls, rate-limit budgets and fault rules (not the tokens).
* ``GET|POST|DELETE /_emulator/faults``, ``DELETE /_emulator/faults/{id}``: fault rules
  (``limits.fault_from_spec`` reads a rule; ``limits.Rule.describe`` lists one).
* ``GET /_emulator/tokens[?state=live|revoked|expired|evicted]``: the token ledger.
* ``GET /_emulator/apps``: every App, its installations and its JWT's rate-limit budget.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, get_args

from octosts.dev.github.answers import Answer, json_answer, no_content
from octosts.dev.github.ledger import TokenLedger, TokenState
from octosts.dev.github.limits import Faults, fault_from_spec

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

PREFIX = "/_emulator/"
CALL_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Call:
    """One request the emulator answered (control endpoints excluded); status 0: hung up."""

    method: str
    path: str
    status: int
    auth: str  # "app", "token", "none"
    at: float = 0.0  # when it was answered (epoch seconds, the emulator's clock)
    app_id: int | None = None  # the App calling, or whose installation token was used


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

    def list(self, since: float | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if since is None or c.at >= since]


@dataclass(frozen=True, slots=True)
class Control:
    """What the control endpoints read and change."""

    calls: CallLog
    faults: Faults
    ledger: TokenLedger
    clock: Clock
    reset: Callable[[], None]
    apps: Callable[[], list[dict[str, Any]]]


def _bad(message: str) -> Answer:
    return json_answer(400, {"message": message})


def _query(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}


def control_answer(method: str, path: str, query: str, body: bytes, control: Control) -> Answer:
    """Answer a request under ``/_emulator/``."""
    name = path[len(PREFIX) :]
    if name == "faults" or name.startswith("faults/"):
        return _faults(method, name, body, control.faults)
    handler = _ENDPOINTS.get((method, name))
    if handler is None:
        return json_answer(404, {"message": "Not Found"})
    return handler(_query(query), control)


def _health(_params: dict[str, str], _control: Control) -> Answer:
    return json_answer(200, {"status": "ok"})


def _calls(params: dict[str, str], control: Control) -> Answer:
    try:
        since = float(params["since"]) if "since" in params else None
    except ValueError:
        return _bad("since must be a number (epoch seconds)")
    return json_answer(200, [asdict(c) for c in control.calls.list(since)])


def _reset(_params: dict[str, str], control: Control) -> Answer:
    control.reset()
    return no_content()


def _tokens(params: dict[str, str], control: Control) -> Answer:
    state = params.get("state")
    states: tuple[TokenState, ...] = get_args(TokenState)
    if state is not None and state not in states:
        return _bad(f"state must be one of {list(states)}")
    now = control.clock.now()
    chosen = next((s for s in states if s == state), None)
    tokens = control.ledger.entries(now, chosen)
    return json_answer(200, {**control.ledger.summary(now), "tokens": tokens})


def _apps(_params: dict[str, str], control: Control) -> Answer:
    return json_answer(200, {"apps": control.apps()})


_ENDPOINTS: dict[tuple[str, str], Callable[[dict[str, str], Control], Answer]] = {
    ("GET", "health"): _health,
    ("GET", "calls"): _calls,
    ("POST", "reset"): _reset,
    ("GET", "tokens"): _tokens,
    ("GET", "apps"): _apps,
}


def _faults(method: str, name: str, body: bytes, faults: Faults) -> Answer:
    if name == "faults":
        if method == "GET":
            return json_answer(200, {"faults": faults.rules()})
        if method == "DELETE":
            faults.clear()
            return no_content()
        if method == "POST":
            return _add_fault(body, faults)
        return json_answer(405, {"message": "Method Not Allowed"})
    number = name.removeprefix("faults/")
    if method == "DELETE" and number.isdigit() and faults.remove(int(number)):
        return no_content()
    return json_answer(404, {"message": f"no fault rule {number[:20]!r}"})


def _add_fault(body: bytes, faults: Faults) -> Answer:
    try:
        spec: Any = json.loads(body or b"{}")
        if not isinstance(spec, dict):
            return _bad("expected a JSON object (see docs/github-emulator.md)")
        fault, times, seconds = fault_from_spec(spec)
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        return _bad(f"invalid fault rule: {exc}")
    rule_id = faults.add(fault, times, seconds)
    # A rule of a few milliseconds may be gone already: its id is still its answer.
    rule = next((r for r in faults.rules() if r["id"] == rule_id), {"id": rule_id})
    return json_answer(201, rule)
