"""Values the client hands back or takes as configuration."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

# A GitHub token or an OIDC JWT is far smaller; anything bigger is a mistake
# (or an attempt to make us send a huge header).
MAX_TOKEN_BYTES = 16 * 1024
# Characters that would let a token break out of an HTTP header / metadata value.
_UNSAFE_TOKEN = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    """A GitHub token minted by Octo STS; its repr never shows the token."""

    token: str = field(repr=False)
    expires_at: dt.datetime
    permissions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    repositories: tuple[str, ...] = ()
    token_type: str = "Bearer"  # noqa: S105  (a scheme name, not a secret)
    request_id: str | None = None

    def expires_in(self, now: dt.datetime | None = None) -> int:
        """Whole seconds left before the token expires (never negative)."""
        now = now or dt.datetime.now(dt.UTC)
        return max(0, int((self.expires_at - now).total_seconds()))

    def to_json(self, now: dt.datetime | None = None) -> dict[str, object]:
        """The gateway's JSON shape (``token``, ``access_token``, ``expires_in``...)."""
        return {
            "token": self.token,
            "access_token": self.token,
            "token_type": self.token_type,
            "expires_in": self.expires_in(now),
            "expires_at": self.expires_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "permissions": dict(self.permissions),
            "repositories": list(self.repositories),
        }


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the service listens: ``https://host[:port]`` (TLS) or ``http://...`` (plaintext)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse an endpoint URL.

        Raises ``ValueError`` for anything but ``http(s)://host[:port]`` with
        no path, query or credentials.
        """
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"}:
            raise ValueError(f"endpoint must start with https:// or http://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"endpoint has no host: {url!r}")
        if parts.username or parts.password:
            raise ValueError("endpoint must not contain credentials")
        if parts.path not in {"", "/"} or parts.query or parts.fragment:
            raise ValueError(f"endpoint must not have a path or query: {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"endpoint has an invalid port: {url!r}") from exc
        tls = parts.scheme == "https"
        return cls(host=parts.hostname, port=port or (443 if tls else 80), tls=tls)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on UNAVAILABLE (HTTP 502/503, connection refused) only.

    Delays grow exponentially from ``initial_backoff`` by ``multiplier`` up to
    ``max_backoff``, each with "equal jitter" (half fixed, half random) so
    many clients restarting together spread out. ``max_attempts`` bounds the
    number of calls; ``deadline`` bounds the whole exchange, retries included.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float = 30.0
    attempt_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.initial_backoff, self.max_backoff, self.deadline, self.attempt_timeout) <= 0:
            raise ValueError("backoffs, deadline and attempt_timeout must be positive")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def backoff(self, retry: int, random: float) -> float:
        """Delay before retry number ``retry`` (0-based) given ``random`` in [0, 1)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return cap / 2 + cap / 2 * random


NO_RETRY = RetryPolicy(max_attempts=1)


def check_token(token: str, what: str = "token") -> str:
    """Return ``token`` if it can be sent as a bearer token, else raise ``ValueError``.

    The message never includes the token itself.
    """
    if not token:
        raise ValueError(f"{what} is empty")
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise ValueError(f"{what} is larger than {MAX_TOKEN_BYTES} bytes")
    if _UNSAFE_TOKEN.search(token):
        raise ValueError(f"{what} contains whitespace or control characters")
    return token
