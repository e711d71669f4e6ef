"""``Client`` / ``AsyncClient``: exchange with retries, over gRPC or HTTP/JSON."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, Self

from octosts.client.errors import (
    ConfigError,
    DeadlineExceeded,
    ExchangeError,
    RateLimited,
    Unavailable,
)
from octosts.client.models import Endpoint, ExchangeResult, RetryPolicy, check_token
from octosts.client.sources import StaticTokenSource, TokenSource

TransportName = Literal["grpc", "http"]
ENDPOINT_ENV = "OCTO_STS_ENDPOINT"


class SyncTransport(Protocol):
    """``scopes``: one scope, or several repositories of one owner (one token for all)."""

    def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,
    ) -> ExchangeResult: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,  # noqa: ASYNC109  (a per-call deadline sent to the server)
    ) -> ExchangeResult: ...

    async def close(self) -> None: ...


def _endpoint(endpoint: str | None) -> Endpoint:
    url = endpoint or os.environ.get(ENDPOINT_ENV)
    if not url:
        raise ConfigError(f"no endpoint: pass one or set {ENDPOINT_ENV}")
    try:
        return Endpoint.parse(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _check_request(scope: str | Sequence[str], identity: str) -> tuple[str, ...]:
    """The scopes of a request: ``scope`` alone, or each of several. Raises ValueError."""
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    if not scopes or not all(isinstance(s, str) and s for s in scopes) or not identity:
        raise ValueError("scope (every one of them) and identity must be non-empty")
    return scopes


def _resolve_source(token: str | TokenSource | None, default: TokenSource | None) -> TokenSource:
    if isinstance(token, str):
        try:
            check_token(token)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return StaticTokenSource(token)
    source = token or default
    if source is None:
        raise ConfigError("no token: pass token= or configure a token source")
    return source


class _Attempts:
    """Book-keeping of one exchange's retry budget (attempts and overall deadline)."""

    def __init__(self, policy: RetryPolicy, monotonic: Callable[[], float]) -> None:
        self.policy = policy
        self._monotonic = monotonic
        self._deadline = monotonic() + policy.deadline
        self._waited_for_limit = False

    def timeout(self) -> float:
        remaining = self._deadline - self._monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the exchange deadline passed")
        return min(self.policy.attempt_timeout, remaining)

    def delay_or_raise(self, attempt: int, error: ExchangeError, rnd: float) -> float:
        """The pause before the next attempt, or re-raise ``error`` when the budget is spent.

        Retried: UNAVAILABLE, after the backoff or the server's ``retry_after`` if longer;
        RESOURCE_EXHAUSTED once, and only when the server said when (``retry_after``: a
        replica or GitHub busy for a second, not a rate limit lasting past the deadline).
        """
        if isinstance(error, RateLimited):
            if error.retry_after is None or self._waited_for_limit:
                raise error
            self._waited_for_limit = True
        if attempt + 1 >= self.policy.max_attempts:
            raise error
        delay = max(self.policy.backoff(attempt, rnd), error.retry_after or 0.0)
        if self._monotonic() + delay >= self._deadline:
            raise error
        return delay


class Client:
    """Blocking Octo STS client.

    ``endpoint`` is ``https://host[:port]`` (TLS; ``ca_file`` pins a private
    CA) or ``http://host:port`` (plaintext, in-mesh); default ``$OCTO_STS_ENDPOINT``.
    Close it (or use ``with``) to release the connection.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        transport: TransportName | SyncTransport = "grpc",
        ca_file: str | os.PathLike[str] | None = None,
        token_source: TokenSource | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(transport, str):
            self._transport = _sync_transport(transport, _endpoint(endpoint), ca_file)
        else:
            self._transport = transport
        self._source = token_source
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng

    def exchange(
        self,
        scope: str | Sequence[str],
        identity: str,
        *,
        audience: str | None = None,
        token: str | TokenSource | None = None,
    ) -> ExchangeResult:
        """Exchange the OIDC token for a GitHub token.

        ``scope`` is ``owner`` or ``owner/repo``, or a list of repositories of one
        owner: one token for all of them, granted only if each one's policy matches,
        with the permissions they all grant (docs/clients.md).

        Raises ``ExchangeError`` subclasses (``Forbidden``, ``Unauthenticated``,
        ``Unavailable`` after the retries, ``RateLimited`` with ``retry_after`` when the wait
        does not fit in the deadline or came twice...), ``TokenSourceError``, ``ConfigError``,
        ``ValueError`` (an empty scope or identity).
        """
        scopes = _check_request(scope, identity)
        bearer = _resolve_source(token, self._source).token(audience)
        attempts = _Attempts(self._retry, self._monotonic)
        attempt = 0
        while True:
            try:
                return self._transport.exchange(
                    scopes, identity, audience, bearer, attempts.timeout()
                )
            except (Unavailable, RateLimited) as exc:
                self._sleep(attempts.delay_or_raise(attempt, exc, self._rng()))
                attempt += 1

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """asyncio Octo STS client; same arguments and errors as ``Client``."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        transport: TransportName | AsyncTransport = "grpc",
        ca_file: str | os.PathLike[str] | None = None,
        token_source: TokenSource | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(transport, str):
            self._transport = _async_transport(transport, _endpoint(endpoint), ca_file)
        else:
            self._transport = transport
        self._source = token_source
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng

    async def exchange(
        self,
        scope: str | Sequence[str],
        identity: str,
        *,
        audience: str | None = None,
        token: str | TokenSource | None = None,
    ) -> ExchangeResult:
        """Exchange the OIDC token for a GitHub token (see ``Client.exchange``)."""
        scopes = _check_request(scope, identity)
        source = _resolve_source(token, self._source)
        # Sources may block (file read, Actions HTTP call): keep the loop free.
        bearer = (
            source.token(audience)
            if isinstance(source, StaticTokenSource)
            else await asyncio.to_thread(source.token, audience)
        )
        attempts = _Attempts(self._retry, self._monotonic)
        attempt = 0
        while True:
            try:
                return await self._transport.exchange(
                    scopes, identity, audience, bearer, attempts.timeout()
                )
            except (Unavailable, RateLimited) as exc:
                await self._sleep(attempts.delay_or_raise(attempt, exc, self._rng()))
                attempt += 1

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _sync_transport(
    name: TransportName, endpoint: Endpoint, ca_file: str | os.PathLike[str] | None
) -> SyncTransport:
    # Imported lazily so HTTP-only users do not load grpc, and vice versa.
    if name == "grpc":
        from octosts.client.grpc_transport import GrpcTransport  # noqa: PLC0415

        return GrpcTransport(endpoint, ca_file=ca_file)
    if name == "http":
        from octosts.client.http_transport import HttpTransport  # noqa: PLC0415

        return HttpTransport(endpoint, ca_file=ca_file)
    raise ConfigError(f"unknown transport {name!r}: use grpc or http")


def _async_transport(
    name: TransportName, endpoint: Endpoint, ca_file: str | os.PathLike[str] | None
) -> AsyncTransport:
    if name == "grpc":
        from octosts.client.grpc_transport import AsyncGrpcTransport  # noqa: PLC0415

        return AsyncGrpcTransport(endpoint, ca_file=ca_file)
    if name == "http":
        from octosts.client.http_transport import AsyncHttpTransport  # noqa: PLC0415

        return AsyncHttpTransport(endpoint, ca_file=ca_file)
    raise ConfigError(f"unknown transport {name!r}: use grpc or http")


def exchange(
    scope: str | Sequence[str],
    identity: str,
    *,
    audience: str | None = None,
    token: str | TokenSource,
    endpoint: str | None = None,
    transport: TransportName = "grpc",
    ca_file: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
) -> ExchangeResult:
    """One-shot blocking exchange; see ``Client.exchange`` for the errors raised."""
    with Client(endpoint, transport=transport, ca_file=ca_file, retry=retry) as client:
        return client.exchange(scope, identity, audience=audience, token=token)


async def aexchange(
    scope: str | Sequence[str],
    identity: str,
    *,
    audience: str | None = None,
    token: str | TokenSource,
    endpoint: str | None = None,
    transport: TransportName = "grpc",
    ca_file: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
) -> ExchangeResult:
    """One-shot asyncio exchange; see ``Client.exchange`` for the errors raised."""
    async with AsyncClient(endpoint, transport=transport, ca_file=ca_file, retry=retry) as client:
        return await client.exchange(scope, identity, audience=audience, token=token)
