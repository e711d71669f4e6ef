"""The installation tokens the emulator minted and still honours.

A token is ``ghs_`` + 36 URL-safe characters, valid ``TOKEN_LIFETIME`` seconds, limited to the
permissions and repositories it was minted with. Revoked and expired tokens answer 401.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_LIFETIME = 3600
# Issued installation tokens kept for authentication. A load test mints thousands a
# second; beyond this the oldest are forgotten (their holders get 401, as for a
# revoked token) so memory and per-mint work stay flat.
MAX_TOKENS = 50_000


@dataclass(slots=True)
class Grant:
    """What one installation token may do."""

    installation_id: int
    owner: str
    permissions: dict[str, str]
    repositories: frozenset[str] | None  # lower-cased names; None = all
    expires_at: float

    def describe(self) -> dict[str, Any]:
        return {
            "installation_id": self.installation_id,
            "permissions": dict(self.permissions),
            "repositories": None if self.repositories is None else set(self.repositories),
        }


def new_token() -> str:
    return "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]


class TokenLedger:
    """Live tokens by value, bounded by ``max_tokens``. Thread-safe."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._max = max_tokens
        self._lock = threading.Lock()
        # Insertion order is expiry order (one fixed lifetime): expired tokens are
        # dropped from the front, the oldest evicted first when the store is full.
        self._tokens: dict[str, Grant] = {}

    def mint(
        self,
        installation_id: int,
        owner: str,
        permissions: Mapping[str, str],
        repositories: frozenset[str] | None,
        now: float,
    ) -> tuple[str, Grant]:
        token = new_token()
        grant = Grant(installation_id, owner, dict(permissions), repositories, now + TOKEN_LIFETIME)
        with self._lock:
            self._drop_old(now)
            self._tokens[token] = grant
        return token, grant

    def _drop_old(self, now: float) -> None:
        """Forget expired tokens and make room for one more (caller holds the lock).

        Amortised O(1) per mint: only the front (oldest) entries are looked at. A
        token that expired out of order (a clock set back) is still refused when used.
        """
        tokens = self._tokens
        while tokens:
            oldest = next(iter(tokens))
            if tokens[oldest].expires_at > now and len(tokens) < self._max:
                return
            del tokens[oldest]

    def lookup(self, token: str, now: float) -> Grant | None:
        """The grant of a live token (an expired one is forgotten here), or None."""
        with self._lock:
            grant = self._tokens.get(token)
            if grant is not None and grant.expires_at <= now:
                del self._tokens[token]
                grant = None
            return grant

    def peek(self, token: str) -> Grant | None:
        """The grant of ``token`` if it is still held, without checking expiry."""
        with self._lock:
            return self._tokens.get(token)

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def live(self) -> set[str]:
        """Every token still held (for assertions)."""
        with self._lock:
            return set(self._tokens)
