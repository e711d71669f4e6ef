"""The GitHub REST core: deadline, Link URLs that stay on the API, identity encoding, errors.

Most calls go through the webhook's endpoints (``GitHubChecks``), which have the
pagination; the App's endpoints are tested against the emulator in
``tests/integration/test_github_adapter.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from octosts.adapters.github_rest import (
    APP_BUDGET,
    APP_ERRORS,
    Budget,
    ErrorMap,
    GitHubRest,
    GitHubTelemetry,
    HttpPool,
    NotConnected,
    RateLimits,
    Request,
    Response,
    RestConfig,
    _message,
    error_for,
    http_client,
    rate_limit_of,
)
from octosts.domain.errors import (
    GitHubUnavailable,
    PermissionDenied,
    PolicyNotFound,
    RateLimited,
    StsError,
)
from octosts.domain.ports import GitHubApp
from octosts.settings import SettingsError, load
from octosts.webhook.github_checks import GitHubChecks
from tests.fakes import FakeClock, FakeGitHub, HandlerPool

API = "https://api.github.com"
GHES = "https://ghe.example.com/api/v3"
FILES_PATH = "/repos/octo-org/demo/pulls/1/files"


class _Body(httpx.AsyncByteStream):
    """A body that is streamed like a network one (httpx pre-reads plain ``content=``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


def answer(data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=_Body(data))


def answer_nothing(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected: {request.url}")


def core(http: HttpPool, base_url: str = API, **config: float) -> GitHubRest:
    return GitHubRest(RestConfig(base_url=base_url, **config), http=http, clock=FakeClock())


def checks_over(
    handler: Callable[[httpx.Request], httpx.Response], base_url: str = API
) -> tuple[GitHubChecks, HandlerPool]:
    github: GitHubApp = FakeGitHub({})
    http = HandlerPool(handler)
    return GitHubChecks(github, rest=core(http, base_url)), http


ENV = {"STS_DOMAIN": "sts.example.com", "GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": "x"}


@pytest.mark.parametrize(
    "url",
    [
        "http://github.example.com",
        "https://user:pw@ghe.example.com/api/v3",
        "https://ghe.example.com/api/v3?x=1",
        "ftp://127.0.0.1",
        "api.github.com",
    ],
)
def test_settings_and_the_core_refuse_the_same_base_urls(url: str) -> None:
    with pytest.raises(ValueError, match="GitHub base URL"):
        RestConfig(base_url=url)
    with pytest.raises(SettingsError, match="GITHUB_BASE_URL: "):
        load({**ENV, "GITHUB_BASE_URL": url})


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (API, f"{API}{FILES_PATH}?per_page=100&page=2"),
        (API, f"https://API.GitHub.com{FILES_PATH}?page=2"),
        (API, f"https://api.github.com:443{FILES_PATH}"),
        (GHES, f"{GHES}{FILES_PATH}?page=2"),
        (GHES + "/", f"{GHES}{FILES_PATH}"),
        ("http://127.0.0.1:8080", f"http://127.0.0.1:8080{FILES_PATH}?page=3"),
    ],
)
def test_link_urls_on_the_api_are_followed(base: str, url: str) -> None:
    assert core(HandlerPool(answer_nothing), base).url_for(url) == url


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (API, f"https://api.github.com.evil.com{FILES_PATH}"),
        (API, f"https://api.github.comevil.com{FILES_PATH}"),
        (API, f"https://api.github.com@evil.com{FILES_PATH}"),
        (API, f"https://user:pw@api.github.com{FILES_PATH}"),
        (API, f"http://api.github.com{FILES_PATH}"),
        (API, f"https://api.github.com:8443{FILES_PATH}"),
        (API, f"https://evil.com{FILES_PATH}"),
        (API, f"//evil.com{FILES_PATH}"),
        (API, "javascript:alert(1)"),
        (API, f"https://api.github.com:99999{FILES_PATH}"),
        (API, "repos/octo-org/demo"),
        (GHES, f"https://ghe.example.com/api/v30{FILES_PATH}"),
        (GHES, f"https://ghe.example.com/api/v3x{FILES_PATH}"),
        (GHES, f"https://ghe.example.com{FILES_PATH}"),
        (GHES, "https://ghe.example.com/api/v3/../../admin"),
        (GHES, "https://ghe.example.com/api/v3/%2e%2e/%2E%2E/admin"),
        (GHES, f"https://ghe.example.com.evil.com/api/v3{FILES_PATH}"),
        (GHES, "/repos/../../admin"),
    ],
)
def test_link_urls_off_the_api_are_refused(base: str, url: str) -> None:
    with pytest.raises(GitHubUnavailable, match="outside the API base URL"):
        core(HandlerPool(answer_nothing), base).url_for(url)


async def test_a_next_link_to_another_host_never_gets_the_token() -> None:
    seen: list[httpx.Request] = []

    def github(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        evil = f"https://api.github.com.evil.com{FILES_PATH}?page=2"
        return answer(
            json.dumps([{"filename": "a.md", "status": "added"}]).encode(),
            {"link": f'<{evil}>; rel="next"'},
        )

    checks, http = checks_over(github)
    async with http:
        repo = await checks.for_repo(1, "octo-org", "demo")
        with pytest.raises(GitHubUnavailable, match="outside the API base URL"):
            await repo.pull_files(1)
    assert [r.url.host for r in seen] == ["api.github.com"]


async def test_requests_ask_for_identity_so_a_gzip_capable_server_answers_plain_json() -> None:
    files = [{"filename": ".github/chainguard/a.sts.yaml", "status": "added"}]
    encodings: list[str | None] = []

    def github(request: httpx.Request) -> httpx.Response:
        accepted = request.headers.get("accept-encoding")
        encodings.append(accepted)
        body = json.dumps(files).encode()
        if accepted and "gzip" in accepted:  # what GitHub does when offered gzip
            return answer(gzip.compress(body), {"content-encoding": "gzip"})
        return answer(body)

    checks, http = checks_over(github)
    async with http:
        repo = await checks.for_repo(1, "octo-org", "demo")
        changed = await repo.pull_files(1)
    assert [(f.path, f.status) for f in changed] == [(".github/chainguard/a.sts.yaml", "added")]
    assert encodings == ["identity"]


async def test_a_compressed_answer_despite_identity_is_refused() -> None:
    def github(_request: httpx.Request) -> httpx.Response:
        return answer(gzip.compress(b"[]"), {"content-encoding": "gzip"})

    checks, http = checks_over(github)
    async with http:
        repo = await checks.for_repo(1, "octo-org", "demo")
        with pytest.raises(GitHubUnavailable, match="compressed"):
            await repo.pull_files(1)


async def test_an_answer_that_is_not_json_is_github_unavailable() -> None:
    checks, http = checks_over(lambda _r: answer(b"<html>oops</html>"))
    async with http:
        repo = await checks.for_repo(1, "octo-org", "demo")
        with pytest.raises(GitHubUnavailable, match="not JSON"):
            await repo.pull_files(1)
        with pytest.raises(GitHubUnavailable, match="not JSON"):
            await repo.compare("main", "a" * 40)


class _Replica:
    def __init__(self) -> None:
        self.faults: list[str] = []

    def local_fault(self, cause: str) -> None:
        self.faults.append(cause)


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (OSError(errno.EMFILE, "Too many open files"), ["EMFILE"]),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), []),
    ],
)
async def test_a_call_failing_for_the_replicas_own_fault_takes_it_out_of_rotation(
    error: OSError, fault: list[str]
) -> None:
    # Out of descriptors, every call from this replica fails while the others are fine (as
    # for the issuer fetch, adapters/local_fault.py); GitHub refusing is everyone's problem.
    def broken(_request: httpx.Request) -> httpx.Response:
        raise NotConnected(type(error).__name__) from error

    replica = _Replica()
    async with HandlerPool(broken) as http:
        rest = GitHubRest(RestConfig(base_url=API), http=http, clock=FakeClock(), replica=replica)
        with pytest.raises(GitHubUnavailable, match="unreachable on w"):
            await rest.send(Request("GET", "/x", "token t", "e", "w"))
    assert replica.faults == fault * 2  # the call and its one retry (nothing was sent)


TRICKLE_BYTES = 100
TRICKLE_INTERVAL = 0.05  # 5 s in all; each read is far quicker than the per-read timeout


@dataclass
class Trickle:
    url: str
    sent: int = 0  # body bytes written so far


@pytest.fixture
async def trickling_server() -> AsyncIterator[Trickle]:
    """Answers at once, then sends the body one byte every 50 ms: no single read is slow."""
    handlers: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    trickle = Trickle("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % TRICKLE_BYTES
            )
            body = b"[" + b" " * (TRICKLE_BYTES - 2) + b"]"
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                trickle.sent += 1
                # the slowness under test; ends early when the fixture finishes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TRICKLE_INTERVAL)
                if stop.is_set():
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trickle.url = f"http://127.0.0.1:{port}"
    try:
        yield trickle
    finally:
        stop.set()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()


async def test_the_whole_request_has_a_deadline_even_when_every_read_is_quick(
    trickling_server: Trickle,
) -> None:
    github: GitHubApp = FakeGitHub({})
    async with http_client() as http:
        rest = core(http, trickling_server.url, request_timeout=0.5)
        repo = await GitHubChecks(github, rest=rest).for_repo(1, "octo-org", "demo")
        with pytest.raises(GitHubUnavailable, match=r"timed out .*\(deadline 0.5 s\)"):
            await repo.pull_files(1)
    # It gave up mid-body: the server was still trickling (every single read had been quick).
    assert trickling_server.sent < TRICKLE_BYTES


# -- status -> domain error, rate limits (pure) ---------------------------------------------

NOW = 1_700_000_000.0
SECONDARY = b'{"message": "You have exceeded a secondary rate limit."}'
FORBIDDEN = b'{"message": "Resource not accessible by integration"}'


def exhausted(reset: float) -> dict[str, str]:
    return {"x-ratelimit-remaining": "0", "x-ratelimit-reset": f"{reset:.0f}"}


def failed(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
    hdrs = httpx.Headers(headers or {})
    return Response(status, hdrs, body, rate_limit_of(status, hdrs, _message(body), NOW))


@pytest.mark.parametrize(
    ("resp", "kind", "wait"),
    [
        (failed(403, exhausted(NOW + 90)), "primary", 90),
        (failed(429, exhausted(NOW - 5)), "primary", 0),
        (failed(403, {"Retry-After": "42"}), "secondary", 42),
        (failed(429), "secondary", 60),
        (failed(403, body=SECONDARY), "secondary", 60),
        (failed(403, body=b'{"message": "API rate limit exceeded for 1.2.3.4"}'), "primary", 60),
    ],
)
def test_rate_limits_are_recognised_with_the_wait_github_asked_for(
    resp: Response, kind: str, wait: int
) -> None:
    for errors in (APP_ERRORS, ErrorMap({}, lambda d: StsError(d, reason="endpoint_specific"))):
        error = error_for(resp, "a call", errors)
        assert type(error) is RateLimited
        assert error.reason == f"rate_limited_{kind}"
        assert f"retry after {wait} s" in error.detail


@pytest.mark.parametrize(
    ("resp", "error", "reason"),
    [
        (failed(401), StsError, "github_app_auth_failed"),
        (
            failed(403, {"x-ratelimit-remaining": "10"}, FORBIDDEN),
            PermissionDenied,
            "github_forbidden",
        ),
        (failed(404), StsError, "github_unexpected_status"),
        (failed(422), StsError, "github_unexpected_status"),
        (failed(500), GitHubUnavailable, "github_unavailable"),
        (failed(503), GitHubUnavailable, "github_unavailable"),
        (failed(302), StsError, "github_unexpected_status"),
    ],
)
def test_other_failures_follow_the_endpoint_map_except_5xx(
    resp: Response, error: type[StsError], reason: str
) -> None:
    mapped = error_for(resp, "a call")
    assert (type(mapped), mapped.reason) == (error, reason)
    assert resp.rate_limit is None
    endpoint = ErrorMap({404: PolicyNotFound}, lambda d: StsError(d, reason="endpoint_specific"))
    mapped = error_for(resp, "a call", endpoint)
    if resp.status >= 500:
        assert type(mapped) is GitHubUnavailable
    elif resp.status == 404:
        assert type(mapped) is PolicyNotFound
    else:
        assert mapped.reason == "endpoint_specific"


def test_rate_limit_bookkeeping_is_bounded_per_budget() -> None:
    limits = RateLimits(maxsize=2)
    assert limits.record(APP_BUDGET, httpx.Headers({})) is None
    assert limits.record(APP_BUDGET, httpx.Headers({"X-RateLimit-Remaining": "4999"})) == 4999
    limits.record(Budget(7), httpx.Headers({"x-ratelimit-remaining": "12"}))
    limits.record(Budget(8), httpx.Headers({"x-ratelimit-remaining": "13"}))
    assert limits.remaining() == {"7": 12, "8": 13}


async def test_failed_transfers_are_counted_as_error_and_unwatched_budgets_not_at_all() -> None:
    seen: list[tuple[str, int | str]] = []
    gauge: list[tuple[int | str, float]] = []

    class Telemetry:
        def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
            seen.append((endpoint, status))

        def rate_limit_remaining(self, installation: int | str, remaining: float) -> None:
            gauge.append((installation, remaining))

        def rate_limited_until(self, installation: int | str, until: float) -> None:
            pass

    def github(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise NotConnected("ConnectionRefusedError")
        return answer(b"{}", {"x-ratelimit-remaining": "41"})

    async with HandlerPool(github) as http:
        telemetry: GitHubTelemetry = Telemetry()
        rest = GitHubRest(RestConfig(), http=http, clock=FakeClock(), telemetry=telemetry)
        call = Request("GET", "/up", authorization="token t", endpoint="e", what="w")
        await rest.send(call)  # no budget: a token revoking itself
        await rest.send(Request("GET", "/up", "token t", "e", "w", budget=Budget(5)))
        with pytest.raises(GitHubUnavailable, match="unreachable on w: ConnectionRefusedError"):
            await rest.send(Request("GET", "/down", "token t", "e", "w", budget=Budget(5)))
    assert seen == [("e", 200), ("e", 200), ("e", "error"), ("e", "error")]  # tried twice
    assert gauge == [("5", 41)]
    assert "token t" not in repr(call)
