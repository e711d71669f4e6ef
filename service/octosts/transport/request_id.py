"""The request id: its one syntax rule and the id of the RPC being handled.

Both the interceptor (which chooses the id per RPC) and metadata readers
(error messages, audit events) use this module, so neither imports the other.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from typing import TypeGuard

REQUEST_ID_HEADER = "x-request-id"
# The one request-id rule (gRPC metadata, Envoy's x-request-id, log and audit fields).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("octosts_request_id", default="")


def is_request_id(value: object) -> TypeGuard[str]:
    """True for a safe request id: 1-128 of ``[A-Za-z0-9._:-]``."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def sanitise_request_id(value: object) -> str:
    """``value`` when it is a safe request id, else a new one."""
    return value if is_request_id(value) else uuid.uuid4().hex


def current_request_id() -> str:
    """The request id of the RPC being handled ("" outside one)."""
    return _current.get()


def set_current_request_id(value: str) -> contextvars.Token[str]:
    """Make ``value`` the current request id; give the token to ``reset_current_request_id``."""
    return _current.set(value)


def reset_current_request_id(token: contextvars.Token[str]) -> None:
    _current.reset(token)
