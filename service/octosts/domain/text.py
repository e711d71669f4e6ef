"""Quoting untrusted text inside error messages (pure).

Scope, identity, policy fields and token claims come from callers and policy
authors; messages quote them bounded and escaped so a message can go to a
terminal, a log line or a check-run page as it is.
"""

from __future__ import annotations

SHOWN = 120  # characters of the input; callers may ask for fewer


def clip(text: str, limit: int = SHOWN) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[:limit] + "..."


def show(text: str, limit: int = SHOWN) -> str:
    """``text`` clipped and quoted, in printable ASCII: anything else is escaped (``\\x1b``)."""
    return ascii(clip(text, limit))


def show_pattern(pattern: str, limit: int = 80) -> str:
    """A regex as written, in double quotes: backslashes stay single (``show`` would double
    them, and a copied pattern would be wrong); anything outside printable ASCII is escaped."""
    return (
        '"' + "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in clip(pattern, limit)) + '"'
    )
