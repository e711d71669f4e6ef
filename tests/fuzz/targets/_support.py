"""What the fuzz targets share: decoding, the '/' oracle, fixed tokens and secrets.

Plain helpers; nothing here raises for any input except through the code under test.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from octosts.domain.policy import Pattern

T = TypeVar("T")

# A fixed "now" (2025-06-15): targets never read the clock, so a replay is the same run.
NOW = 1_750_000_000.0
DOMAIN = "octo-sts.dev"
WEBHOOK_SECRET = b"fuzz-webhook-secret-0123456789"
MAX_SLASH_VARIANTS = 64


def text(data: bytes) -> str:
    """Input bytes as the text a header, query or file reader would hand on (UTF-8)."""
    return data.decode("utf-8", "replace")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (closed after, so nothing leaks between inputs)."""
    return asyncio.run(coro)


def check_fixed_slashes(pattern: Pattern, candidates: Iterable[str]) -> None:
    """The '/' oracle for one pattern the guard accepted, on the candidates it matches.

    Every match has the same number of '/' (a '/' only ever comes from a fixed
    literal), so two matches never differ in it and no ``slash_variants`` of a match
    is matched.
    """
    counts: dict[int, str] = {}
    for candidate in candidates:
        if not pattern.fullmatch(candidate):
            continue
        counts.setdefault(candidate.count("/"), candidate)
        assert len(counts) == 1, (pattern.source, *counts.values())
        for variant in slash_variants(candidate):
            assert not pattern.fullmatch(variant), (pattern.source, candidate, variant)


def slash_variants(matched: str) -> Iterator[str]:
    """Strings with one '/' more or one fewer than ``matched``: insert one, or overwrite
    one character with one, or remove one.

    The slash-guard oracle: a pattern the guard accepts matches '/' only as fixed
    literals, so every string it matches has the same number of '/', and none of
    these variants may match. Bounded: at most ``MAX_SLASH_VARIANTS`` positions.
    """
    positions = range(min(len(matched) + 1, MAX_SLASH_VARIANTS))
    for i in positions:
        yield matched[:i] + "/" + matched[i:]
        if i < len(matched):
            if matched[i] == "/":
                yield matched[:i] + matched[i + 1 :]
            else:
                yield matched[:i] + "/" + matched[i + 1 :]


def depth(value: object) -> int:
    """How deep ``value`` nests (a scalar 0, ``{}`` 1, ``{"a": []}`` 2), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def not_quoted(secret: str, *texts: object, minimum: int = 16) -> None:
    """Fail when ``secret`` (long enough to be one) appears in any of ``texts``."""
    if len(secret) < minimum:
        return
    for value in texts:
        if secret in str(value):
            raise AssertionError("a message or log line quotes the token")
