"""The hostile inputs of the [hardening-2] findings, as data.

The regression tests import them from here, and the fuzz targets' seed corpus is
collected from here: each constant is one input (or a small family of inputs) that
once made the service answer wrongly. Keep this module to plain values and pure
builders; nothing here needs a running server.
"""

from __future__ import annotations

import json
from typing import Any


def case_ids(cases: tuple[tuple[str, Any], ...]) -> list[str]:
    """Short pytest ids for (name, value) cases: ``exp=1000000000...``."""
    return [f"{name}={str(value)[:12]}-{index}" for index, (name, value) in enumerate(cases)]


# -- finding 1: numeric claims no float can hold, or times before 1970 --------------------

HUGE_INT = 10**400  # "1" followed by 400 zeros: OverflowError on float()
# (claim, value) pairs: each made the numeric-claim check fail with INTERNAL / HTTP 503.
HOSTILE_TIMES: tuple[tuple[str, Any], ...] = (
    ("exp", HUGE_INT),
    ("exp", -HUGE_INT),
    ("nbf", HUGE_INT),
    ("iat", -HUGE_INT),
    ("exp", -1),
    ("exp", 2**64),
    ("exp", 1e308),
    ("nbf", float("nan")),  # Python's json reads and writes NaN / Infinity
    ("exp", float("inf")),
)


# -- finding 2: claims nested far deeper than any real token --------------------------------


def nested_lists(depth: int) -> Any:
    """``[[[...]]]``, ``depth`` lists deep (built without recursion)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_objects(depth: int) -> Any:
    """``{"a": {"a": ...}}``, ``depth`` objects deep."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# (claim name, value): ~1.4 KB each, RecursionError while copying claims -> INTERNAL / 503.
DEEP_CLAIMS: tuple[tuple[str, Any], ...] = (
    ("x", nested_lists(700)),
    ("x", nested_objects(600)),
)
# Raw JSON texts the depth scan must judge without being fooled by strings or made slow.
DEEP_JSON_TEXTS: tuple[bytes, ...] = (
    b"[" * 6000 + b"]" * 6000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"[" * 12000,  # unbalanced: not JSON at all
    b'"' + b'\\"' * 6000,  # escaped quotes, no closing quote
    b'"\\' * 6000,
    b'"' * 12000,
)
# Shallow JSON whose strings are full of brackets: not deep.
SHALLOW_JSON_TEXTS: tuple[bytes, ...] = (
    json.dumps({"sub": "[" * 2000, "x": ["{" * 100, "]" * 100]}).encode(),
    json.dumps({"a": '\\"[[[[[[[[[[[[[[[[[[[[[[[[["'}).encode(),
)
