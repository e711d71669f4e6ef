"""Reading user-supplied files for the CLI: bounded, strict, never a traceback.

Every failure is an ``InputError`` whose message names the file and is safe
to print (control characters escaped).
"""

from __future__ import annotations

import json
import sys
from typing import Any


class InputError(Exception):
    """Bad input from the user: unreadable, oversized, not UTF-8, bad JSON."""


def read_limited(path: str, limit: int, *, what: str, overflow_error: bool = True) -> bytes:
    """Read at most ``limit`` bytes from ``path`` (``-`` is stdin).

    With ``overflow_error=False`` a larger file yields ``limit + 1`` bytes, for
    callers whose parser reports the size itself.
    Raises InputError when the file cannot be read or is larger than ``limit``.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as handle:  # noqa: PTH123 - plain open reads clearest here
                data = handle.read(limit + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{what} {printable(path)}: cannot read: {reason}") from exc
    except ValueError as exc:  # e.g. stdin closed
        raise InputError(f"{what} {printable(path)}: cannot read") from exc
    if overflow_error and len(data) > limit:
        raise InputError(f"{what} {printable(path)}: larger than {limit} bytes")
    return data


def decode_utf8(data: bytes, *, where: str) -> str:
    """Raises InputError when ``data`` is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 text (byte {exc.start})") from exc


def loads_object(text: str, *, where: str) -> dict[str, Any]:
    """Parse a JSON object strictly: no duplicate keys, no NaN/Infinity.

    Raises InputError naming ``where`` and the line.
    """

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise InputError(f"{where}: duplicate key {printable(key)!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise InputError(f"{where}: {name} is not valid JSON")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise InputError(f"{where}: JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise InputError(f"{where}: value cannot be read: {str(exc)[:120]}") from exc
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object")
    return value


def printable(text: str, limit: int = 300) -> str:
    """``text`` with control and other non-printable characters escaped, clipped."""
    clipped = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in clipped)
