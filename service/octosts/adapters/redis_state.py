"""Redis as the fleet's shared state: bounded calls, a circuit breaker, signed values.

Every replica and worker of a fleet reaches one Redis (``OCTOSTS_REDIS_URL``) through one
``RedisState`` per process. It is plumbing, used by the second-level caches
(``adapters.shared_cache``), the fleet-wide invalidation channel and the webhook's replay
memory, and meant for whatever else the fleet shares later (GitHub App quota readings,
the rate-limit service's counters live in the same Redis).

The rule it exists for: **nothing fails because Redis failed.** Every call is bounded
(``RedisConfig.timeout``, connection included, no retries of its own) and answers "not
available" instead of raising: ``get`` gives None, ``put`` False, ``lock`` ``UNAVAILABLE``.
After ``breaker_failures`` failures in a row the circuit breaker opens: for
``breaker_open_seconds`` no call is made at all (a dead Redis costs nothing per request),
then one probe is let through; its success closes the breaker. Each call is counted
(``octo_sts_redis_requests_total{op, result}``), the breaker's state is a gauge
(``octo_sts_redis_breaker_open``) and the ``octosts.redis`` health detail.

Trust: Redis is a trust boundary. Whoever can write to it could otherwise hand every replica
a policy, an installation id or an issuer's keys of their choosing. So values read back are
checked like fetched ones by their users (policies re-parsed, JWKS keys through the same
caps, ids re-checked), and with ``RedisConfig.hmac_key`` (``OCTOSTS_REDIS_HMAC_KEY``) every
value and invalidation message carries an HMAC-SHA256 over its key name and body: a value
written by anyone without the key, or moved to another key, is ignored (counted as
``result="forged"``). What the HMAC cannot protect is existence: someone with write access
can delete entries (more GitHub calls), hold locks (waiters fetch themselves after
``lock_wait``) or mark webhook deliveries as seen. docs/deploy.md says how to run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import structlog

if TYPE_CHECKING:
    from redis import asyncio as aioredis

T = TypeVar("T")
_log = structlog.get_logger("octosts.redis")

SCHEMES = frozenset({"redis", "rediss", "unix"})
MIN_HMAC_KEY_BYTES = 32
# Value envelopes: a marker byte, then (signed) a 32-byte tag, then the JSON body.
_SIGNED, _PLAIN = b"s", b"p"
_TAG_BYTES = 32
# Releases a lock only if it still holds our token (another holder's lock is left alone).
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL this service can use, or None (settings check)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        return "must be a redis://, rediss:// or unix:// URL"
    if parts.scheme != "unix" and not parts.hostname:
        return "has no host"
    return None


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """How this process talks to the fleet's Redis. Raises ValueError for a bad value."""

    url: str = field(repr=False)  # may hold a password
    prefix: str = "octosts"
    timeout: float = 0.5  # one call, connection included
    hmac_key: bytes | None = field(default=None, repr=False)
    breaker_failures: int = 3
    breaker_open_seconds: float = 5.0
    lock_ttl: float = 10.0  # a cold fetch's lock expires by itself after this
    max_value_bytes: int = 2 << 20  # larger values are neither written nor read

    def __post_init__(self) -> None:
        problem = url_problem(self.url)
        if problem is not None:
            raise ValueError(f"RedisConfig.url: {problem}")
        if self.timeout <= 0 or self.breaker_open_seconds <= 0 or self.lock_ttl <= 0:
            raise ValueError("RedisConfig: timeouts must be positive")
        if self.breaker_failures < 1:
            raise ValueError("RedisConfig.breaker_failures: must be at least 1")
        if self.hmac_key is not None and len(self.hmac_key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"RedisConfig.hmac_key: at least {MIN_HMAC_KEY_BYTES} bytes")
        if not self.prefix or any(c in self.prefix for c in " \n\r\t"):
            raise ValueError("RedisConfig.prefix: a non-empty word")


class RedisTelemetry(Protocol):
    """Where Redis metrics go (``observability.metrics.Metrics`` is one)."""

    def redis_request(self, op: str, result: str, /) -> None: ...

    def redis_breaker(self, *, is_open: bool) -> None: ...


class NoRedisTelemetry:
    def redis_request(self, op: str, result: str, /) -> None:
        pass

    def redis_breaker(self, *, is_open: bool) -> None:
        pass


class CircuitBreaker:
    """Closed -> open after ``failures`` failures in a row -> after ``open_seconds``, one
    probe at a time (half-open) -> closed on the probe's success, open again on its failure.

    ``timer`` is a monotonic clock (elapsed time, like the calls' timeouts; not the
    service's ``Clock``, which tests freeze).
    """

    def __init__(
        self,
        *,
        failures: int,
        open_seconds: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._open_seconds = open_seconds
        self._timer = timer
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        """Open or half-open: calls are refused (but for one probe)."""
        return self._open_until is not None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._timer() < self._open_until:
            return False
        self._probing = True
        return True

    def succeeded(self) -> bool:
        """Record a success; returns whether it closed the breaker."""
        was_open = self._open_until is not None
        self._failures = 0
        self._open_until = None
        self._probing = False
        return was_open

    def failed(self) -> bool:
        """Record a failure; returns whether it opened the breaker."""
        was_open = self._open_until is not None
        self._failures += 1
        self._probing = False
        if was_open or self._failures >= self._threshold:
            self._open_until = self._timer() + self._open_seconds
        return not was_open and self._open_until is not None

    def abandoned(self) -> None:
        """A call allowed through ended without a verdict (cancelled)."""
        self._probing = False


class Unavailable(Exception):
    """Redis did not answer (down, slow, breaker open); never leaves this package's callers."""


class LockState(enum.Enum):
    ACQUIRED = "acquired"
    HELD_ELSEWHERE = "held_elsewhere"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Lock:
    state: LockState
    name: str = ""
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Read:
    """One key's value (verified; None when absent or refused) and a counter's value."""

    value: bytes | None
    counter: int


class RedisState:
    """The process's one Redis client: see the module docstring. ``close`` at shutdown."""

    def __init__(
        self,
        config: RedisConfig,
        *,
        telemetry: RedisTelemetry | None = None,
        client: aioredis.Redis | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._telemetry: RedisTelemetry = telemetry or NoRedisTelemetry()
        self._breaker = CircuitBreaker(
            failures=config.breaker_failures,
            open_seconds=config.breaker_open_seconds,
            timer=timer,
        )
        self._client = client or _client(config)
        self._unlock = self._client.register_script(_UNLOCK)

    def __repr__(self) -> str:
        return f"RedisState(prefix={self.config.prefix!r}, signed={self.signed})"

    @property
    def signed(self) -> bool:
        return self.config.hmac_key is not None

    def healthy(self) -> bool:
        """The ``octosts.redis`` health detail: False while the breaker is open."""
        return not self._breaker.is_open

    def key(self, *parts: str) -> str:
        """``prefix:part:part``; callers pass parts that cannot be confused (see ``ident``)."""
        return ":".join((self.config.prefix, *parts))

    async def close(self) -> None:
        await self._client.aclose()

    # -- the one way a call is made ------------------------------------------------------

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` under the breaker and the timeout. Raises Unavailable."""
        if not self._breaker.allow():
            self._telemetry.redis_request(op, "breaker_open")
            raise Unavailable(op)
        try:
            async with asyncio.timeout(self.config.timeout):
                result = await fn()
        except _errors() as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            self._telemetry.redis_request(op, kind)
            if self._breaker.failed():
                self._telemetry.redis_breaker(is_open=True)
                _log.warning(
                    "redis_unavailable",
                    op=op,
                    error=type(exc).__name__,
                    effect="serving from local caches and upstreams",
                    retry_in=self.config.breaker_open_seconds,
                )
            raise Unavailable(op) from exc
        except asyncio.CancelledError:
            self._breaker.abandoned()
            raise
        self._telemetry.redis_request(op, "ok")
        if self._breaker.succeeded():
            self._telemetry.redis_breaker(is_open=False)
            _log.info("redis_available", op=op)
        return result

    # -- values --------------------------------------------------------------------------

    def seal(self, name: str, body: bytes) -> bytes:
        if self.config.hmac_key is None:
            return _PLAIN + body
        return _SIGNED + _tag(self.config.hmac_key, name, body) + body

    def open(self, name: str, raw: bytes) -> bytes | None:
        """The body of a sealed value, or None when it is refused (forged, wrong kind)."""
        key = self.config.hmac_key
        if key is None:
            return raw[1:] if raw[:1] == _PLAIN else None
        if raw[:1] != _SIGNED or len(raw) < 1 + _TAG_BYTES:
            return None
        tag, body = raw[1 : 1 + _TAG_BYTES], raw[1 + _TAG_BYTES :]
        return body if hmac.compare_digest(tag, _tag(key, name, body)) else None

    async def read(self, name: str, counter: str | None = None) -> Read:
        """The value at ``name`` (and the integer at ``counter``) in one round trip.

        Raises Unavailable. A value over ``max_value_bytes`` or failing its seal is None.
        """
        cap = self.config.max_value_bytes

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.getrange(name, 0, cap)  # never more than the cap (+1) is read
                if counter is not None:
                    pipe.get(counter)
                return list(await pipe.execute())

        replies = await self._call("read", run)
        raw = replies[0] or None
        value = None
        if raw is not None:
            value = self.open(name, raw) if len(raw) <= cap else None
            if value is None:
                self._telemetry.redis_request("read", "refused")
        return Read(value, _as_counter(replies[1]) if counter is not None else 0)

    async def write(self, name: str, body: bytes, ttl: float) -> None:
        """Store ``body`` sealed at ``name`` for ``ttl`` seconds. Raises Unavailable."""
        sealed = self.seal(name, body)
        if len(sealed) > self.config.max_value_bytes:
            self._telemetry.redis_request("write", "too_large")
            return
        ttl_ms = max(int(ttl * 1000), 1)
        await self._call("write", lambda: self._client.set(name, sealed, px=ttl_ms))

    async def delete(self, *names: str) -> None:
        """Raises Unavailable."""
        await self._call("delete", lambda: self._client.delete(*names))

    async def add_once(self, names: Sequence[str], ttl: float) -> bool:
        """Set every name that is not set yet; returns whether none was set before.

        Raises Unavailable.
        """
        ttl_ms = max(int(ttl * 1000), 1)

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.set(name, b"1", px=ttl_ms, nx=True)
                return list(await pipe.execute())

        return all(bool(r) for r in await self._call("add_once", run))

    # -- locks ---------------------------------------------------------------------------

    async def lock(self, name: str) -> Lock:
        """Try once to take a short lock (``SET NX PX lock_ttl``): never waits for it."""
        token = secrets.token_hex(16)
        ttl_ms = int(self.config.lock_ttl * 1000)
        try:
            got = await self._call(
                "lock", lambda: self._client.set(name, token, px=ttl_ms, nx=True)
            )
        except Unavailable:
            return Lock(LockState.UNAVAILABLE)
        return Lock(LockState.ACQUIRED if got else LockState.HELD_ELSEWHERE, name, token)

    async def unlock(self, lock: Lock) -> None:
        """Release a lock we hold (token-checked: an expired one taken over stays)."""
        if lock.state is not LockState.ACQUIRED:
            return
        with contextlib.suppress(Unavailable):  # it expires by itself after lock_ttl
            await self._call("unlock", lambda: self._unlock(keys=[lock.name], args=[lock.token]))

    async def poll(self, name: str, counter: str | None, lock: str) -> tuple[Read, bool]:
        """Whether ``lock`` is still held, then ``read``, in one round trip.

        In that order: a lock seen released means its holder's value (written before the
        release) is in what is read next.
        """
        cap = self.config.max_value_bytes

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.exists(lock)
                pipe.getrange(name, 0, cap)
                if counter is not None:
                    pipe.get(counter)
                return list(await pipe.execute())

        replies = await self._call("poll", run)
        raw = replies[1] or None
        value = self.open(name, raw) if raw is not None and len(raw) <= cap else None
        counter_value = _as_counter(replies[2]) if counter is not None else 0
        return Read(value, counter_value), bool(replies[0])

    # -- counters and the channel --------------------------------------------------------

    async def bump_and_publish(self, counters: Sequence[str], channel: str, body: bytes) -> None:
        """Increment each counter and publish the sealed ``body``, as one transaction.

        Raises Unavailable.
        """

        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for counter in counters:
                    pipe.incr(counter)
                pipe.publish(channel, self.seal(channel, body))
                await pipe.execute()

        await self._call("publish", run)

    async def listen(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None],
        stop: asyncio.Event,
    ) -> None:
        """Deliver each verified message on ``channel`` until ``stop`` is set.

        Reconnects on its own (backing off up to 2 s) and calls ``on_subscribed`` after
        each (re)subscription: messages sent while it was not subscribed were missed.
        Forged messages are dropped (counted). Never raises but CancelledError.
        """
        backoff = 0.05
        while not stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                # Through the breaker: a subscriber that cannot get back in is what tells the
                # health detail about a Redis gone while no request needed it.
                await self._call("subscribe", functools.partial(pubsub.subscribe, channel))
                backoff = 0.05
                on_subscribed()
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    if message is None or message.get("type") != "message":
                        continue
                    data = message.get("data")
                    body = self.open(channel, data) if isinstance(data, bytes) else None
                    if body is None:
                        self._telemetry.redis_request("message", "refused")
                        continue
                    on_message(body)
            except Unavailable:
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, 2.0)
            except _errors() as exc:
                self._telemetry.redis_request("listen", "error")
                if self._breaker.failed():
                    self._telemetry.redis_breaker(is_open=True)
                _log.info("redis_subscription_lost", error=type(exc).__name__)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]  # redis-py


# redis-py (with what it pulls in, ~8 MB per process) is imported only by a process that
# has a Redis (OCTOSTS_REDIS_URL): a single box never loads it.
def _client(config: RedisConfig) -> aioredis.Redis:
    from redis import asyncio as aioredis  # noqa: PLC0415  (see above)
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return aioredis.Redis.from_url(
        config.url,
        socket_timeout=config.timeout,
        socket_connect_timeout=config.timeout,
        retry=Retry(NoBackoff(), 0),  # the breaker decides, not retries
        health_check_interval=10,
        max_connections=64,
        client_name="octo-sts",
    )


@functools.cache
def _errors() -> tuple[type[BaseException], ...]:
    """What a Redis call may raise (only asked once a call failed: redis-py is loaded)."""
    from redis.exceptions import RedisError  # noqa: PLC0415  (see _client)

    return (RedisError, OSError, TimeoutError)


def ident(*parts: str) -> str:
    """Key parts as one unambiguous string (names may hold ':'; JSON quotes them)."""
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=True)


def dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def loads(body: bytes) -> dict[str, Any] | None:
    """A JSON object, or None (never raises: Redis values are untrusted input)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _tag(key: bytes, name: str, body: bytes) -> bytes:
    return hmac.new(key, name.encode() + b"\n" + body, hashlib.sha256).digest()


def _as_counter(raw: object) -> int:
    try:
        return int(raw) if isinstance(raw, bytes | str | int) else 0
    except ValueError:
        return 0


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def _quietly(closing: Awaitable[None]) -> None:
    try:
        async with asyncio.timeout(1.0):
            await closing
    except _errors():
        pass
