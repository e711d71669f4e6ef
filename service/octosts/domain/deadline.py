"""The caller's deadline: how long the call being handled may still take.

The transport sets it from the RPC's deadline (``grpc-timeout``) when the caller sent one;
adapters read it so that no outbound call, and no retry, outlives the caller. A context
variable: it follows the call into the tasks it starts (a shared single-flight fetch runs
under the deadline of the caller that started it).
"""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "octosts_deadline", default=None
)


def set_deadline(seconds: float | None) -> contextvars.Token[float | None]:
    """The current call must be done within ``seconds`` from now (None: no deadline known)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def time_left() -> float | None:
    """Seconds left before the caller's deadline (may be negative), or None when there is none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
