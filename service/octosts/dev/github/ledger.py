"""The installation tokens the emulator minted: the ones it still honours, and a ledger of all.

A token is ``ghs_`` + 36 URL-safe characters, valid ``TOKEN_LIFETIME`` seconds, limited to the
permissions and repositories it was minted with. Revoked and expired tokens answer 401.

The ledger (``TokenLedger.entries``, ``GET /_emulator/tokens``) lists every mint with an id, the
token's SHA-256 (never the token), its installation and App, what it may do and whether it is
live, revoked, expired or evicted, so a test can prove that no token it did not hand out is left
live. It keeps the last ``2 * MAX_TOKENS`` mints; the counters (``summary``) count every mint
since start.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TOKEN_LIFETIME = 3600
# Issued installation tokens kept for authentication. A load test mints thousands a
# second; beyond this the oldest are forgotten (their holders get 401, as for a
# revoked token) so memory and per-mint work stay flat.
MAX_TOKENS = 50_000

TokenState = Literal["live", "revoked", "expired", "evicted"]


@dataclass(slots=True)
class Grant:
    """What one installation token may do, and its line in the ledger."""

    installation_id: int
    owner: str
    permissions: dict[str, str]
    repositories: frozenset[str] | None  # lower-cased names; None = all
    expires_at: float
    app_id: int = 0  # the App whose installation it is
    id: int = 0
    created_at: float = 0.0
    token_sha256: str = ""
    revoked_at: float | None = None
    evicted: bool = field(default=False)

    def describe(self) -> dict[str, Any]:
        return {
            "installation_id": self.installation_id,
            "permissions": dict(self.permissions),
            "repositories": None if self.repositories is None else set(self.repositories),
        }

    def state(self, now: float) -> TokenState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "evicted" if self.evicted else "live"

    def entry(self, now: float) -> dict[str, Any]:
        """The ledger line (JSON-ready; the token itself is never in it)."""
        return {
            "id": self.id,
            "token_sha256": self.token_sha256,
            "installation_id": self.installation_id,
            "app_id": self.app_id,
            "owner": self.owner,
            "permissions": dict(self.permissions),
            "repositories": None if self.repositories is None else sorted(self.repositories),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "state": self.state(now),
        }


def new_token() -> str:
    return "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]


def token_sha256(token: str) -> str:
    """How the ledger names a token (what Octo STS's audit events call ``token_sha256``)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenLedger:
    """Live tokens by value, bounded by ``max_tokens``, and the ledger of mints. Thread-safe."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._max = max_tokens
        self._lock = threading.Lock()
        # Insertion order is expiry order (one fixed lifetime): expired tokens are
        # dropped from the front, the oldest evicted first when the store is full.
        self._tokens: dict[str, Grant] = {}
        # The ledger outlives eviction from the live store, so evicted tokens can be seen.
        self._entries: collections.deque[Grant] = collections.deque(maxlen=2 * max_tokens)
        self._ids = itertools.count(1)
        self._minted = 0
        self._revoked = 0

    def mint(
        self,
        installation_id: int,
        owner: str,
        permissions: Mapping[str, str],
        repositories: frozenset[str] | None,
        now: float,
        app_id: int = 0,
    ) -> tuple[str, Grant]:
        token = new_token()
        grant = Grant(
            installation_id,
            owner,
            dict(permissions),
            repositories,
            now + TOKEN_LIFETIME,
            app_id=app_id,
            created_at=now,
            token_sha256=token_sha256(token),
        )
        with self._lock:
            grant.id = next(self._ids)
            self._minted += 1
            self._drop_old(now)
            self._tokens[token] = grant
            self._entries.append(grant)
        return token, grant

    def _drop_old(self, now: float) -> None:
        """Forget expired tokens and make room for one more (caller holds the lock).

        Amortised O(1) per mint: only the front (oldest) entries are looked at. A
        token that expired out of order (a clock set back) is still refused when used.
        """
        tokens = self._tokens
        while tokens:
            oldest = next(iter(tokens))
            grant = tokens[oldest]
            if grant.expires_at > now and len(tokens) < self._max:
                return
            grant.evicted = grant.expires_at > now
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

    def revoke(self, token: str, now: float) -> None:
        with self._lock:
            grant = self._tokens.pop(token, None)
            if grant is not None:
                grant.revoked_at = now
                self._revoked += 1

    def live(self) -> set[str]:
        """Every token still held (for assertions)."""
        with self._lock:
            return set(self._tokens)

    def entries(self, now: float, state: TokenState | None = None) -> list[dict[str, Any]]:
        """The ledger, oldest mint first (optionally only tokens in ``state``)."""
        with self._lock:
            lines = [grant.entry(now) for grant in self._entries]
        return [line for line in lines if state is None or line["state"] == state]

    def summary(self, now: float) -> dict[str, int]:
        """Mints and revocations since start, and tokens live now."""
        with self._lock:
            live = sum(1 for grant in self._tokens.values() if grant.expires_at > now)
            return {"minted": self._minted, "revoked": self._revoked, "live": live}
