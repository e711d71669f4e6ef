"""The one GitHub REST core: every call to the GitHub API goes through ``GitHubRest.send``.

Endpoint classes say which path, which credentials, whose rate-limit budget and
what a failed status means to them (``adapters.github.GitHubAppClient``:
installations, contents, mint, revoke; ``webhook.github_checks``: pull request
files, compare, read at a ref, check runs). Everything else about talking to
GitHub lives here, once:

- the request: API root + path, ``Accept``, ``Authorization``, ``User-Agent``,
  ``X-GitHub-Api-Version``, ``Accept-Encoding: identity`` (bodies are read raw);
- the answer's size cap, counted on raw bytes (``http_body.read_capped``);
- one deadline for the whole request, connect to last body byte, never past the
  caller's (``domain.deadline``); within it, a short bound of its own on the wait
  for a free pooled connection (``RestConfig.pool_wait``): when GitHub is slow and
  every connection is busy, the excess fails fast (GitHubUnavailable, reason
  ``github_busy``, Retry-After) instead of queueing until everything in flight
  times out; the pool's size is ``http_client(max_connections=...)``;
- one retry, after a short random pause, of a call GitHub may not have seen or
  may safely see twice: a 5xx answer or a dropped connection on a repeatable call
  (an idempotent method: GET, HEAD, PUT, DELETE; or one its endpoint says is
  harmless twice, ``Request.repeatable``), a connection never made on any call
  (nothing was sent); never a timeout, never a rate limit, and only when the
  caller's deadline leaves time for it (``_pause``);
- transport failures, timeouts, oversized or compressed answers: GitHubUnavailable;
- statuses to domain errors (``error_for``): a rate limit (403/429) and a 5xx mean
  the same for every endpoint; the rest is the endpoint's ``ErrorMap``;
- rate-limit detection (``rate_limit_of``) and bookkeeping per budget (``RateLimits``):
  a limit GitHub reports is remembered for its budget (an App, or an installation)
  until it lifts, and calls on that budget fail at once with RateLimited instead of
  reaching GitHub (``RateLimits.hold_of``; the rules are GitHub's, see ``Hold``);
- telemetry: ``octo_sts_github_requests_total``, its duration histogram and the
  rate-limit gauge are fed from ``send`` and nowhere else (``GitHubTelemetry``);
- URL checks: a path, or a ``Link`` URL from an answer, is followed only on the API's
  origin and under its base path, since the token goes with it (``url_for``).

The HTTP library (aiohttp: its C parser and pool cost a fraction of httpx's per call,
docs/observability.md "CPU per exchange") appears only in ``http_client``'s pool,
``AiohttpPool``, which maps the library's failures to ``Unanswered`` once; ``_transfer``
turns those into domain errors. Tests put a fake pool (``HttpPool``) in its place.

Where planned work plugs in, one place each:

- several GitHub Apps ([fleet]): ``Budget`` carries the App id; ``RateLimits.quota``
  says how much each App (or installation) has left and whether it is held, which is
  what ``adapters.github_apps`` routes by.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import math
import random
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import aiohttp
import structlog

from octosts.adapters.http_body import BodyRefused, read_capped_chunks
from octosts.adapters.local_fault import local_fault_cause
from octosts.domain.deadline import time_left
from octosts.domain.errors import (
    GITHUB_BUSY,
    GitHubUnavailable,
    PermissionDenied,
    RateLimited,
    StsError,
)

if TYPE_CHECKING:
    import ssl
    from types import TracebackType

    from octosts.domain.ports import Clock, ReplicaHealth, Stage

_log = structlog.get_logger("octosts.github")

API_VERSION = "2022-11-28"
JSON_MEDIA = "application/vnd.github+json"
RAW_MEDIA = "application/vnd.github.raw+json"
# GitHub's documented wait for a secondary limit that names none.
SECONDARY_LIMIT_WAIT = 60.0
# Every pooled connection busy: when to come back (seconds).
BUSY_RETRY_AFTER = 1.0
# Answers worth one more try: GitHub's transient failures (GitHub documents none of
# them as final; a 501 or 505 would be).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# RFC 9110 section 9.2.2: sending these twice has the effect of sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# A retry needs at least this much of the caller's deadline left after its pause.
MIN_RETRY_TIME = 0.5
# The shortest hold (a reset already past by our clock) and the longest (repeated
# secondary limits back off exponentially, up to this).
MIN_HOLD = 1.0
MAX_HOLD = 3600.0
_NEXT_RE = re.compile(r'<([^>]+)>;\s*rel="next"')


@dataclass(frozen=True, slots=True)
class RestConfig:
    """Where GitHub is and how long and how much to read from it.

    Raises ValueError (naming the field) for an invalid value.
    """

    base_url: str = "https://api.github.com"
    connect_timeout: float = 5.0
    request_timeout: float = 10.0  # whole request, including reading the body
    # At most this long waiting for a free pooled connection (inside request_timeout).
    pool_wait: float = 0.25
    max_response_bytes: int = 1 << 20
    user_agent: str = "octo-sts"
    budgets_tracked: int = 10_000  # rate-limit bookkeeping entries kept
    # The pause before the one retry: uniform between these (seconds), so that calls
    # failed together do not come back together.
    retry_jitter: tuple[float, float] = (0.05, 0.25)

    def __post_init__(self) -> None:
        check_base_url(self.base_url)
        for name in ("connect_timeout", "request_timeout", "pool_wait"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RestConfig.{name}: must be positive")
        if self.max_response_bytes < 1024:
            raise ValueError("RestConfig.max_response_bytes: must be at least 1024")
        if self.budgets_tracked < 1:
            raise ValueError("RestConfig.budgets_tracked: must be at least 1")
        low, high = self.retry_jitter
        if not 0 <= low <= high:
            raise ValueError("RestConfig.retry_jitter: must be (low, high) with 0 <= low <= high")


def check_base_url(url: str) -> None:
    """https, or http on a loopback host only. Raises ValueError."""
    problem = base_url_problem(url)
    if problem is not None:
        raise ValueError(f"GitHub base URL {url!r}: {problem}")


def base_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the GitHub API base URL, or None (settings use it too)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        return "must be an absolute https URL"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "no credentials, query or fragment allowed"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "https is required except for loopback addresses"
    return None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address: where plain http is allowed (the App manifest's
    URLs too)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# GitHub's documented secondary limit: no more than 100 concurrent requests (per App).
DEFAULT_MAX_CONNECTIONS = 100


class Unanswered(Exception):
    """A call that got no answer from GitHub; the subclass says what GitHub may have seen.

    Raised by an ``HttpPool`` (the message names the library's exception type only:
    its text may repeat the URL); ``GitHubRest`` turns it into GitHubUnavailable.
    """


class NotConnected(Unanswered):
    """No connection was made (refused, DNS, TLS): nothing was sent."""


class Dropped(Unanswered):
    """The connection broke before the whole answer: GitHub may have acted."""


class TimedOut(Unanswered):
    """No whole answer within the attempt's deadline: GitHub may yet act."""


class PoolBusy(Unanswered):
    """Every pooled connection stayed busy for the pool wait: nothing was sent."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A transfer's raw result: status, case-insensitive headers, the body (read under the cap)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpPool(Protocol):
    """What ``GitHubRest`` needs of its connection pool (``AiohttpPool``; fakes in tests)."""

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        deadline: float,
        connect_timeout: float,
        pool_wait: float,
        cap: int,
    ) -> Answer:
        """One request, its answer's body read raw under ``cap``, within ``deadline`` seconds
        (at most ``pool_wait`` of them waiting for a free connection, ``connect_timeout`` for
        a new one). Raises Unanswered (a subclass) or BodyRefused."""
        ...

    async def aclose(self) -> None: ...


# aiohttp's failures by what GitHub may have seen; ClientConnectorError (no connection)
# is a ClientOSError too, so it is looked at first.
_DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)


class AiohttpPool:
    """The GitHub API's connection pool (``http_client``): aiohttp, created lazily.

    The session is made on first use, inside the running event loop aiohttp binds it
    to. Every rule of the old client holds: no proxies from the environment, no
    cookies, no redirects followed, no decompression (bodies are read raw under the
    cap), the operator's CA (``verify``). The pool wait is bounded on its own: a
    semaphore of ``max_connections`` slots (the connector has as many connections,
    so it never queues behind it) taken within ``pool_wait``.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._ssl = verify
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, ssl=self._ssl
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            # Bounded per request (``fetch``); aiohttp's default would be 5 minutes.
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    def _timeout(self, connect: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect)
        if timeout is None:
            if len(self._timeouts) > 64:  # deadlines cut to callers' vary: keep a few
                self._timeouts.clear()
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect
            )
        return timeout

    async def _slot(self, wait: float) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken without suspending
            return
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise PoolBusy("pool wait") from exc

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        deadline: float,
        connect_timeout: float,
        pool_wait: float,
        cap: int,
    ) -> Answer:
        session = self._session or self._open()
        try:
            async with asyncio.timeout(deadline):
                await self._slot(min(pool_wait, deadline))
                try:
                    async with session.request(
                        method,
                        url,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        timeout=self._timeout(min(connect_timeout, deadline)),
                    ) as resp:
                        raw = await read_capped_chunks(resp.headers, resp.content.iter_any(), cap)
                        return Answer(resp.status, resp.headers, raw)
                finally:
                    self._slots.release()
        except TimeoutError as exc:  # ours or aiohttp's (ServerTimeoutError is one)
            raise TimedOut(type(exc).__name__) from exc
        except aiohttp.ClientConnectorError as exc:
            raise NotConnected(type(exc).__name__) from exc
        except _DROPPED as exc:
            raise Dropped(type(exc).__name__) from exc
        except aiohttp.ClientError as exc:  # a malformed answer, an invalid URL...
            raise Unanswered(type(exc).__name__) from exc
        except OSError as exc:  # before any socket: no descriptor for an import, say
            raise NotConnected(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def http_client(
    *, verify: ssl.SSLContext | bool = True, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> AiohttpPool:
    """The connection pool for the GitHub API: no proxies from the environment, no redirects.

    At most ``max_connections`` calls at once, every one of them kept alive for the
    next (a connection closed after use costs a TCP and TLS handshake per call
    exactly when GitHub is busiest). Timeouts and headers are set per request by
    ``GitHubRest``.
    """
    return AiohttpPool(verify=verify, max_connections=max_connections)


@dataclass(frozen=True, slots=True)
class Budget:
    """Whose GitHub rate limit a call spends: an App's own (app JWT) or an installation's.

    An App's budget is keyed by its id when there are several ([fleet]); the one App
    of a one-App deployment is ``APP_BUDGET``. Installation ids are unique across Apps
    on GitHub, so an installation's budget is keyed by that id alone.
    """

    installation: int | None = None
    app_id: int | None = None

    def __post_init__(self) -> None:
        if self.installation is not None:
            object.__setattr__(self, "app_id", None)  # one key per installation

    @property
    def label(self) -> str:
        """The rate-limit gauges' label: the installation id, ``"app"`` (the one App of a
        one-App deployment) or ``"app:ID"`` (one of several Apps)."""
        if self.installation is not None:
            return str(self.installation)
        return "app" if self.app_id is None else f"app:{self.app_id}"


APP_BUDGET = Budget()  # the App of a one-App deployment


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A rate-limited answer: which limit, and how many seconds GitHub asked us to wait."""

    kind: Literal["primary", "secondary"]
    retry_after: float


def rate_limit_of(
    status: int, headers: Mapping[str, str], message: str, now: float
) -> RateLimit | None:
    """The limit a 403/429 answer reports, or None for any other answer.

    GitHub's documented signals: ``x-ratelimit-remaining: 0`` (primary, wait until
    ``x-ratelimit-reset``); ``retry-after`` or a "secondary rate limit" message
    (secondary: wait ``retry-after``, else at least a minute). A 429 is always a limit.
    """
    if status not in {403, 429}:
        return None
    lowered = message.lower()
    kind: Literal["primary", "secondary"]
    if headers.get("x-ratelimit-remaining") == "0":
        kind = "primary"
    elif "retry-after" in headers or "secondary rate limit" in lowered or status == 429:
        kind = "secondary"
    elif "rate limit" in lowered:
        kind = "primary"
    else:
        return None
    return RateLimit(kind, _wait(headers, now))


def _wait(headers: Mapping[str, str], now: float) -> float:
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        return float(retry_after)
    reset = headers.get("x-ratelimit-reset", "")
    if headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        return max(float(reset) - now, 0.0)
    return SECONDARY_LIMIT_WAIT


@dataclass(frozen=True, slots=True)
class Response:
    """A GitHub answer, body read in full. ``headers`` look-ups are case-insensitive."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    rate_limit: RateLimit | None = None

    def json(self, what: str) -> Any:
        """The body as JSON. Raises GitHubUnavailable when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise GitHubUnavailable(f"GitHub answer {self.status} to {what} is not JSON") from exc

    def message(self) -> str:
        """GitHub's ``message`` field, shortened, for operator-facing details."""
        return _message(self.body)


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    msg = data.get("message") if isinstance(data, dict) else None
    return msg[:200] if isinstance(msg, str) else ""


ErrorFactory = Callable[[str], StsError]


def app_auth_failed(detail: str) -> StsError:
    # Our own credentials were refused: a deployment problem, not the caller's.
    return StsError(
        f"{detail} (check GITHUB_APP_ID, the app private key and the server clock)",
        reason="github_app_auth_failed",
    )


def forbidden(detail: str) -> StsError:
    return PermissionDenied(detail, reason="github_forbidden")


def unexpected(detail: str) -> StsError:
    return StsError(f"unexpected {detail}", reason="github_unexpected_status")


@dataclass(frozen=True, slots=True)
class ErrorMap:
    """What a failed status means to one endpoint.

    Not in it, because they mean the same for every endpoint: a rate-limited
    403/429 (RateLimited) and a 5xx (GitHubUnavailable).
    """

    by_status: Mapping[int, ErrorFactory] = field(
        default_factory=lambda: {401: app_auth_failed, 403: forbidden}
    )
    otherwise: ErrorFactory = unexpected

    def but(self, by_status: Mapping[int, ErrorFactory]) -> ErrorMap:
        """This map with some statuses meaning something else."""
        return ErrorMap({**self.by_status, **by_status}, self.otherwise)


APP_ERRORS = ErrorMap()


def error_for(resp: Response, what: str, errors: ErrorMap = APP_ERRORS) -> StsError:
    """The one mapping from a failed GitHub answer to a domain error."""
    msg = resp.message()
    detail = f"GitHub {resp.status} on {what}" + (f": {msg}" if msg else "")
    limit = resp.rate_limit
    if limit is not None:
        wait = math.ceil(limit.retry_after)
        return RateLimited(
            f"{detail} ({limit.kind} rate limit; retry after {wait} s)",
            reason=f"rate_limited_{limit.kind}",
            retry_after=limit.retry_after,
        )
    if resp.status >= 500:
        return GitHubUnavailable(detail)
    return errors.by_status.get(resp.status, errors.otherwise)(detail)


@dataclass(frozen=True, slots=True)
class Request:
    """One call to GitHub, as the endpoint class describes it.

    ``target`` is a path under the API root (``/repos/...``, built with
    ``repo_path``/``quote_path``) or an absolute URL taken from an answer (a
    ``Link``); ``endpoint`` names the call in metrics (a fixed word, never a
    URL); ``what`` names it in error details.
    """

    method: str
    target: str
    authorization: str = field(repr=False)
    endpoint: str
    what: str
    budget: Budget | None = None  # None: a budget nobody watches (a token revoking itself)
    accept: str = JSON_MEDIA
    json_body: object = None
    etag: str | None = None
    max_bytes: int | None = None  # None: RestConfig.max_response_bytes
    # Seconds for each attempt. None: RestConfig.request_timeout, cut to the caller's
    # deadline. Set: exactly this, whatever the caller's deadline (a mint whose answer is
    # awaited after its caller gave up, to revoke the token it holds).
    timeout: float | None = None
    # Whether GitHub acting on it twice is harmless. None: by method (idempotent ones).
    repeatable: bool | None = None

    @property
    def may_repeat(self) -> bool:
        if self.repeatable is not None:
            return self.repeatable
        return self.method in IDEMPOTENT_METHODS


class GitHubTelemetry(Protocol):
    """Where GitHub call metrics go (``observability.metrics.Metrics`` is one)."""

    def github_request(self, endpoint: str, status: int | str, seconds: float, /) -> None: ...

    def rate_limit_remaining(self, installation: int | str, remaining: float, /) -> None: ...

    def rate_limited_until(self, installation: int | str, until: float, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Hold:
    """A rate limit GitHub reported for one budget: no call on it before ``until``.

    GitHub's rules (REST docs, "Rate limits for the REST API"): a primary limit lasts
    until ``x-ratelimit-reset``; a secondary limit for ``retry-after`` seconds, else at
    least a minute, and for exponentially longer when it comes back right after
    (``strikes``: secondary limits in a row, reset by the budget's next good answer).
    """

    kind: Literal["primary", "secondary"]
    until: float
    strikes: int = 1

    def seconds_left(self, now: float) -> float:
        return max(self.until - now, 0.0)


@dataclass(frozen=True, slots=True)
class Quota:
    """What is known of one budget at a moment (``RateLimits.quota``).

    ``remaining``: requests left by GitHub's last answer, None when unknown (no answer
    yet, or its window has been reset since); ``held_until``: the limit in force, if any.
    """

    remaining: int | None = None
    held_until: float | None = None


class RateLimits:
    """Per budget: the last ``x-ratelimit-remaining`` (with its reset) and the limit in force.

    Bounded (``maxsize`` budgets each, least recently updated dropped). A limit is
    remembered per process; with the fleet's Redis every process hears of it at once
    (``GitHubRest.share_holds``, ``adopt``), else each learns it from its own refused call.
    Remaining counts too are the fleet's with Redis (``adopt_count``; ``adapters.shared_quota``).
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        # budget -> (remaining, x-ratelimit-reset or None)
        self._remaining: OrderedDict[Budget, tuple[int, float | None]] = OrderedDict()
        self._holds: OrderedDict[Budget, Hold] = OrderedDict()

    def record(self, budget: Budget, headers: Mapping[str, str]) -> int | None:
        """Note an answer's remaining quota; returns it (None when the header is absent)."""
        raw = headers.get("x-ratelimit-remaining")
        if raw is None or not raw.isdigit():
            return None
        remaining = int(raw)
        reset = headers.get("x-ratelimit-reset", "")
        self._count(budget, remaining, float(reset) if reset.isdigit() else None)
        return remaining

    def remaining(self) -> dict[str, int]:
        """Last remaining quota per budget label (``Budget.label``); a copy."""
        return {budget.label: left for budget, (left, _reset) in self._remaining.items()}

    def quota(self, budget: Budget, now: float) -> Quota:
        """What is known of ``budget`` at ``now``: requests left and the hold in force."""
        hold = self.hold_of(budget, now)
        known = self._remaining.get(budget)
        left = None
        if known is not None and (known[1] is None or known[1] > now):
            left = known[0]  # a reading from before the window's reset says nothing now
        return Quota(left, None if hold is None else hold.until)

    def hold_of(self, budget: Budget, now: float) -> Hold | None:
        """The limit ``budget`` is under at ``now``, or None."""
        hold = self._holds.get(budget)
        return hold if hold is not None and hold.until > now else None

    def holds(self, now: float) -> dict[Budget, Hold]:
        """Every budget under a limit at ``now`` (health detail, tests); a copy."""
        return {b: h for b, h in self._holds.items() if h.until > now}

    def limited(self, budget: Budget, limit: RateLimit, now: float) -> Hold:
        """Remember a limit GitHub just reported for ``budget``; returns the hold in force."""
        previous = self._holds.get(budget)
        if previous is not None and previous.until > now:
            # A call sent before the hold began: the same episode, not a repeat.
            until = now + _clamp(limit.retry_after)
            if until <= previous.until:
                return previous
            hold = Hold(limit.kind, until, previous.strikes)
        else:
            repeat = previous is not None and previous.kind == limit.kind == "secondary"
            strikes = previous.strikes + 1 if previous is not None and repeat else 1
            hold = Hold(limit.kind, now + _clamp(limit.retry_after * 2 ** (strikes - 1)), strikes)
        self._hold(budget, hold)
        return hold

    def exhausted(self, budget: Budget, headers: Mapping[str, str], now: float) -> Hold | None:
        """A good answer that spent the last request of the budget holds it until the reset."""
        reset = headers.get("x-ratelimit-reset", "")
        if headers.get("x-ratelimit-remaining") != "0" or not reset.isdigit():
            return None
        if float(reset) <= now:
            return None
        hold = Hold("primary", float(reset))
        self._hold(budget, hold)
        return hold

    def adopt(self, budget: Budget, hold: Hold, now: float) -> Hold | None:
        """A limit another process of the fleet met (``adapters.shared_cache``): held here
        too, unless a hold of ours lasts longer. Capped at ``MAX_HOLD`` from ``now``.
        Returns the hold adopted, None when it changes nothing."""
        until = min(hold.until, now + MAX_HOLD)
        current = self.hold_of(budget, now)
        if until <= now or (current is not None and current.until >= until):
            return None
        strikes = max(hold.strikes, current.strikes if current is not None else 1)
        adopted = Hold(hold.kind, until, strikes)
        self._hold(budget, adopted)
        return adopted

    def last_count(self, budget: Budget) -> tuple[int, float | None] | None:
        """GitHub's last remaining count for ``budget`` and its window's reset, or None."""
        return self._remaining.get(budget)

    def adopt_count(self, budget: Budget, remaining: int, reset: float) -> bool:
        """Another process's remaining count for ``budget`` (``adapters.shared_quota``): taken
        when ours is unknown, from an earlier window, or higher in the same one (the fresher
        answer: a window's count only goes down). Returns whether it was taken."""
        known = self._remaining.get(budget)
        if known is not None and not _fresher(remaining, reset, *known):
            return False
        self._count(budget, remaining, reset)
        return True

    def answered(self, budget: Budget, now: float) -> None:
        """A good answer: a limit that has run out is forgotten (no more strikes)."""
        hold = self._holds.get(budget)
        if hold is not None and hold.until <= now:
            del self._holds[budget]

    def _count(self, budget: Budget, remaining: int, reset: float | None) -> None:
        self._remaining[budget] = (remaining, reset)
        self._remaining.move_to_end(budget)
        while len(self._remaining) > self._maxsize:
            self._remaining.popitem(last=False)

    def _hold(self, budget: Budget, hold: Hold) -> None:
        self._holds[budget] = hold
        self._holds.move_to_end(budget)
        while len(self._holds) > self._maxsize:
            self._holds.popitem(last=False)


def _fresher(left: int, reset: float, our_left: int, our_reset: float | None) -> bool:
    """Whether a remaining count (with its window's reset) is fresher than ours."""
    if our_reset is None:
        return False  # not comparable: keep our own
    return reset > our_reset or (reset == our_reset and left < our_left)


def timed_out(exc: BaseException) -> bool:
    """Whether a GitHubUnavailable from ``send`` was a timeout (GitHub may yet have acted)."""
    return isinstance(exc.__cause__, TimedOut)


def _retryable_failure(request: Request, exc: GitHubUnavailable) -> bool:
    """Whether a failed transfer may be tried again (see the module doc)."""
    cause = exc.__cause__
    if isinstance(cause, NotConnected):
        return True  # no connection, nothing sent: safe for any method
    # Reset or closed before an answer: GitHub may have acted, so repeatable calls only.
    return request.may_repeat and isinstance(cause, Dropped)


def _clamp(wait: float) -> float:
    return min(max(wait, MIN_HOLD), MAX_HOLD)


def repo_path(owner: str, repo: str) -> str:
    """``/repos/{owner}/{repo}``, each name percent-quoted."""
    return f"/repos/{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(repo, safe='')}"


def quote_path(path: str) -> str:
    """A repository file path, each segment percent-quoted (``/`` kept between them)."""
    return "/".join(urllib.parse.quote(s, safe="") for s in path.split("/"))


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-cased host, port with the scheme's default). Raises ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def _climbs(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, plain or percent-encoded."""
    if "." not in path and "%" not in path:
        return False  # the usual case, checked without splitting
    return any(s in {".", ".."} for s in urllib.parse.unquote(path).split("/"))


class GitHubRest:
    """The GitHub REST core (see the module docstring).

    ``http`` is owned by the caller (``http_client``); ``telemetry`` receives one
    record per call and one rate-limit reading per answer that has one; ``replica``
    hears of a call that failed for this replica's own fault (out of file descriptors...).
    """

    def __init__(
        self,
        config: RestConfig,
        *,
        http: HttpPool,
        clock: Clock,
        telemetry: GitHubTelemetry | None = None,
        replica: ReplicaHealth | None = None,
    ) -> None:
        self.config = config
        self._replica = replica
        self._http = http
        self._clock = clock
        self._telemetry = telemetry
        self._root = config.base_url.rstrip("/")
        self._origin = _origin(self._root)
        self._base_path = urllib.parse.urlsplit(self._root).path.rstrip("/")
        self.rate_limits = RateLimits(config.budgets_tracked)
        self._share_hold: Callable[[Budget, Hold], None] | None = None

    def __repr__(self) -> str:
        return f"GitHubRest(base_url={self._root!r})"

    def url_for(self, target: str) -> str:
        """``target`` as an absolute URL under the API root.

        A path (``/repos/...``) is appended to the root. An absolute URL (a
        pagination ``Link``) must have the root's scheme, host and port and a path
        under the root's path. Neither may have ``.``/``..`` segments. Raises
        GitHubUnavailable otherwise: the token must not go anywhere else.
        """
        if target.startswith("/") and not target.startswith("//"):
            if not _climbs(target.split("?", 1)[0]):
                return self._root + target
            raise GitHubUnavailable("GitHub answer links outside the API base URL")
        try:
            parts = urllib.parse.urlsplit(target)
            origin = _origin(target)
        except ValueError:
            origin = None
        if (
            origin is None
            or origin != self._origin
            or parts.username is not None
            or parts.password is not None
            or not (parts.path == self._base_path or parts.path.startswith(self._base_path + "/"))
            or _climbs(parts.path)
        ):
            raise GitHubUnavailable("GitHub answer links outside the API base URL")
        return target

    def next_link(self, resp: Response) -> str | None:
        """The answer's ``Link: <...>; rel="next"`` URL, checked by ``url_for``; else None."""
        match = _NEXT_RE.search(resp.headers.get("link", ""))
        return self.url_for(match.group(1)) if match else None

    async def send(self, request: Request, stage: Stage | None = None) -> Response:
        """One call: checked URL, the size cap, the whole-request deadline, one retry.

        HTTP statuses are returned for the endpoint to judge (``error_for``); a
        rate-limited answer carries ``rate_limit``, with the wait the budget is now
        held for. While GitHub's limit on the request's budget lasts, nothing is
        sent: RateLimited at once. A transient failure is tried once more (see the
        module doc). ``stage`` (when given) is annotated with ``github.status`` (or
        ``github.rate_limited``) and ``github.retried``. Raises RateLimited (a limit
        in force), GitHubUnavailable for transport failures, timeouts, oversized or
        compressed answers, no time left before the caller's deadline and URLs off
        the API.
        """
        url = self.url_for(request.target)
        retried = False
        while True:
            if request.budget is not None:
                self._refuse_if_held(request, stage)
            started = time.perf_counter()
            try:
                resp = await self._transfer(request, url, self._deadline_of(request))
            except GitHubUnavailable as exc:
                self._record_call(request.endpoint, "error", started)
                if retried or not _retryable_failure(request, exc) or not await self._pause():
                    raise
            else:
                self._record_call(request.endpoint, resp.status, started)
                if request.budget is not None:
                    resp = self._note_limits(request.budget, resp)
                if (
                    retried
                    or resp.status not in RETRY_STATUSES
                    or not request.may_repeat
                    or not await self._pause()
                ):
                    break
            retried = True
        if stage is not None:
            stage.annotate("github.status", resp.status)
            if retried:
                stage.annotate("github.retried", True)  # noqa: FBT003 - an annotation value
        return resp

    def _deadline_of(self, request: Request) -> float:
        """Seconds for one attempt. Raises GitHubUnavailable when the caller's time is up."""
        if request.timeout is not None:
            return request.timeout
        return self.caller_wait(request.what)

    def caller_wait(self, what: str) -> float:
        """How long a caller waits for a call: ``request_timeout``, cut to its deadline.

        Raises GitHubUnavailable when the caller's time is already up (nothing is sent).
        """
        left = time_left()
        if left is None or left >= self.config.request_timeout:
            return self.config.request_timeout
        if left <= 0:
            raise GitHubUnavailable(f"no time left for {what} before the caller's deadline")
        return left

    async def _pause(self) -> bool:
        """Wait a random moment before the retry; False (no retry) when the caller's
        deadline would not leave it ``MIN_RETRY_TIME`` after the pause."""
        low, high = self.config.retry_jitter
        pause = random.uniform(low, high)  # noqa: S311 - spreading retries, not a secret
        left = time_left()
        if left is not None and left - pause < MIN_RETRY_TIME:
            return False
        await asyncio.sleep(pause)
        return True

    def _refuse_if_held(self, request: Request, stage: Stage | None) -> None:
        assert request.budget is not None
        now = self._clock.now()
        hold = self.rate_limits.hold_of(request.budget, now)
        if hold is None:
            return
        if stage is not None:
            stage.annotate("github.rate_limited", hold.kind)
        wait = hold.seconds_left(now)
        raise RateLimited(
            f"GitHub {hold.kind} rate limit on {request.what} still in force"
            f" (not sent; retry after {math.ceil(wait)} s)",
            reason=f"rate_limited_{hold.kind}",
            retry_after=wait,
        )

    def share_holds(self, publish: Callable[[Budget, Hold], None]) -> None:
        """Tell ``publish`` of each limit this process meets (the fleet's Redis)."""
        self._share_hold = publish

    def adopt_hold(self, budget: Budget, hold: Hold) -> None:
        """A limit another process of the fleet met: calls on ``budget`` are refused here
        too, without asking GitHub, until it ends."""
        now = self._clock.now()
        adopted = self.rate_limits.adopt(budget, hold, now)
        if adopted is None:
            return
        _log.info(
            "github_rate_limited_shared",
            budget=budget.label,
            kind=adopted.kind,
            retry_after=math.ceil(adopted.seconds_left(now)),
        )
        if self._telemetry is not None:
            self._telemetry.rate_limited_until(budget.label, adopted.until)

    def _note_limits(self, budget: Budget, resp: Response) -> Response:
        """Remaining quota, and the limit the answer reports (or lifts) for ``budget``."""
        now = self._clock.now()
        before = self.rate_limits.hold_of(budget, now)
        remaining = self.rate_limits.record(budget, resp.headers)
        if remaining is not None and self._telemetry is not None:
            self._telemetry.rate_limit_remaining(budget.label, remaining)
        hold: Hold | None
        if resp.rate_limit is not None:
            hold = self.rate_limits.limited(budget, resp.rate_limit, now)
            _log.warning(
                "github_rate_limited",
                budget=budget.label,
                kind=hold.kind,
                retry_after=math.ceil(hold.seconds_left(now)),
                strikes=hold.strikes,
            )
        else:
            hold = self.rate_limits.exhausted(budget, resp.headers, now)
            if hold is None:
                self.rate_limits.answered(budget, now)
        if hold is not None and self._telemetry is not None:
            self._telemetry.rate_limited_until(budget.label, hold.until)
        if hold is not None and hold != before and self._share_hold is not None:
            self._share_hold(budget, hold)
        if resp.rate_limit is None or hold is None:
            return resp
        return dataclasses.replace(resp, rate_limit=RateLimit(hold.kind, hold.seconds_left(now)))

    def _record_call(self, endpoint: str, status: int | str, started: float) -> None:
        if self._telemetry is not None:
            self._telemetry.github_request(endpoint, status, time.perf_counter() - started)

    async def _transfer(self, request: Request, url: str, deadline: float) -> Response:
        headers = {
            "Accept": request.accept,
            # Bodies are read raw under a byte cap: a gzip answer would reach the
            # parser compressed (the raw stream does not decode) and the cap would
            # count the wrong size.
            "Accept-Encoding": "identity",
            "Authorization": request.authorization,
            "User-Agent": self.config.user_agent,
            "X-GitHub-Api-Version": API_VERSION,
        }
        if request.etag:
            headers["If-None-Match"] = request.etag
        body = None
        if request.json_body is not None:
            body = json.dumps(request.json_body).encode()
            headers["Content-Type"] = "application/json"
        what = request.what
        try:
            answer = await self._http.fetch(
                request.method,
                url,
                headers,
                body,
                deadline=deadline,
                connect_timeout=self.config.connect_timeout,
                pool_wait=self.config.pool_wait,
                cap=request.max_bytes or self.config.max_response_bytes,
            )
        except BodyRefused as exc:
            raise GitHubUnavailable(f"GitHub answer to {what} {exc}") from exc
        except PoolBusy as exc:
            # Every connection busy (GitHub slow): nothing was sent; come back in a moment.
            raise GitHubUnavailable(
                f"no free connection to GitHub for {what} within {self.config.pool_wait:g} s"
                " (every pooled connection busy)",
                reason=GITHUB_BUSY,
                retry_after=BUSY_RETRY_AFTER,
            ) from exc
        except TimedOut as exc:
            raise GitHubUnavailable(
                f"GitHub timed out on {what} (deadline {deadline:.3g} s)"
            ) from exc
        except Unanswered as exc:
            cause = local_fault_cause(exc)
            if cause is not None and self._replica is not None:  # this replica's, not GitHub's
                self._replica.local_fault(cause)
            # The library's exception class says enough; its text may repeat the URL only.
            raise GitHubUnavailable(f"GitHub unreachable on {what}: {exc}") from exc
        status, answer_headers = answer.status, answer.headers
        limit = None
        if status in {403, 429}:
            limit = rate_limit_of(status, answer_headers, _message(answer.body), self._clock.now())
        return Response(status, answer_headers, answer.body, limit)
