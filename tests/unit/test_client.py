"""Unit tests of the client: retry budget, parsing, errors, token sources (no sockets)."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
from pathlib import Path

import grpc
import httpx
import pytest

from octosts.cli.exchange import EXIT_RATE_LIMITED, EXIT_REFUSED, EXIT_UNAVAILABLE, exit_code_for
from octosts.client import (
    BadRequest,
    Client,
    ConfigError,
    DeadlineExceeded,
    Endpoint,
    EnvTokenSource,
    ExchangeResult,
    FileTokenSource,
    Forbidden,
    RateLimited,
    RetryPolicy,
    ServerError,
    StdinTokenSource,
    TokenSource,
    TokenSourceError,
    Unauthenticated,
    Unavailable,
    parse_token_source,
)
from octosts.client import models as client_models
from octosts.client._wire import retry_after_seconds
from octosts.client.core import SyncTransport
from octosts.client.grpc_transport import map_rpc_error
from octosts.client.http_transport import to_result
from octosts.domain import tokens as domain_tokens

RESULT = ExchangeResult(token="ghs_secret", expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


class ScriptedTransport:
    """Raises the queued errors, then succeeds; records the timeouts it was given."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.timeouts: list[float] = []
        self.tokens: list[str] = []
        self.scopes: list[tuple[str, ...]] = []

    def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,
    ) -> ExchangeResult:
        self.scopes.append(scopes)
        self.timeouts.append(timeout)
        self.tokens.append(token)
        if self.errors:
            raise self.errors.pop(0)
        return RESULT

    def close(self) -> None:
        pass


_: SyncTransport = ScriptedTransport()


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def _client(
    transport: ScriptedTransport, clock: FakeTime, policy: RetryPolicy, rnd: float = 0.5
) -> Client:
    return Client(
        transport=transport,
        retry=policy,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        rng=lambda: rnd,
    )


def test_retries_unavailable_with_growing_jittered_backoff() -> None:
    transport = ScriptedTransport(Unavailable("a"), Unavailable("b"), Unavailable("c"))
    clock = FakeTime()
    policy = RetryPolicy(max_attempts=4, initial_backoff=1, max_backoff=3, deadline=100)
    assert _client(transport, clock, policy, rnd=0.5).exchange("o", "i", token="t") is RESULT
    # equal jitter: cap/2 + cap/2 * 0.5, caps 1, 2, 3 (bounded by max_backoff)
    assert clock.sleeps == [0.75, 1.5, 2.25]
    assert len(transport.timeouts) == 4


@pytest.mark.parametrize("rnd", [0.0, 0.999])
def test_backoff_stays_within_jitter_bounds(rnd: float) -> None:
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=5, multiplier=2)
    for retry in range(8):
        cap = min(5, 0.2 * 2**retry)
        assert cap / 2 <= policy.backoff(retry, rnd) <= cap


def test_gives_up_after_max_attempts() -> None:
    transport = ScriptedTransport(*[Unavailable("down")] * 5)
    clock = FakeTime()
    with pytest.raises(Unavailable):
        _client(transport, clock, RetryPolicy(max_attempts=3, deadline=100)).exchange(
            "o", "i", token="t"
        )
    assert len(transport.timeouts) == 3
    assert len(clock.sleeps) == 2


def test_overall_deadline_bounds_retries_and_attempt_timeouts() -> None:
    transport = ScriptedTransport(*[Unavailable("down")] * 50)
    clock = FakeTime()
    policy = RetryPolicy(
        max_attempts=50, initial_backoff=1, max_backoff=1, deadline=3, attempt_timeout=10
    )
    with pytest.raises(Unavailable):
        _client(transport, clock, policy, rnd=0.0).exchange("o", "i", token="t")
    assert transport.timeouts[0] == 3  # capped by what is left of the deadline
    assert all(t <= 3 for t in transport.timeouts)
    assert clock.t < 3


@pytest.mark.parametrize(
    "error",
    [
        Forbidden("x"),
        Unauthenticated("x"),
        BadRequest("x"),
        RateLimited("x"),
        ServerError("x"),
        DeadlineExceeded("x"),
    ],
)
def test_other_errors_are_not_retried(error: Exception) -> None:
    transport = ScriptedTransport(error, error)
    with pytest.raises(type(error)):
        _client(transport, FakeTime(), RetryPolicy()).exchange("o", "i", token="t")
    assert len(transport.timeouts) == 1


def test_a_rate_limit_with_retry_after_is_retried_once_after_it() -> None:
    # The service's fast refusals (a replica or GitHub busy: 429 + Retry-After: 1) are worth
    # one more try after the wait it asked for, within the deadline.
    transport = ScriptedTransport(RateLimited("busy", retry_after=1))
    clock = FakeTime()
    policy = RetryPolicy(initial_backoff=0.2, deadline=30)
    assert _client(transport, clock, policy).exchange("o", "i", token="t") is RESULT
    assert clock.sleeps == [1.0]  # the server's wait, not the shorter backoff
    assert len(transport.timeouts) == 2


def test_a_rate_limit_is_waited_for_only_once() -> None:
    transport = ScriptedTransport(*[RateLimited("busy", retry_after=1)] * 3)
    clock = FakeTime()
    with pytest.raises(RateLimited) as info:
        _client(transport, clock, RetryPolicy(deadline=30)).exchange("o", "i", token="t")
    assert len(transport.timeouts) == 2
    assert clock.sleeps == [1.0]
    assert info.value.retry_after == 1


def test_a_rate_limit_past_the_deadline_is_raised_at_once_with_its_wait() -> None:
    # GitHub's primary limit for another 40 minutes: no sleeping, the caller is told when.
    transport = ScriptedTransport(RateLimited("limited", retry_after=2400))
    clock = FakeTime()
    with pytest.raises(RateLimited) as info:
        _client(transport, clock, RetryPolicy(deadline=30)).exchange("o", "i", token="t")
    assert clock.sleeps == []
    assert info.value.retry_after == 2400
    assert "retry_after=2400s" in str(info.value)


def test_unavailable_waits_at_least_the_servers_retry_after() -> None:
    transport = ScriptedTransport(Unavailable("draining", retry_after=2), Unavailable("x"))
    clock = FakeTime()
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=5, deadline=30)
    assert _client(transport, clock, policy, rnd=0.5).exchange("o", "i", token="t") is RESULT
    assert clock.sleeps == [2.0, pytest.approx(0.3)]  # then the backoff again (cap 0.4)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("99999", 3600.0),
        ("-1", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_whole_seconds_and_capped(
    value: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(value) == seconds


@pytest.mark.parametrize(("status", "cls"), [(429, RateLimited), (503, Unavailable)])
def test_http_errors_carry_retry_after(status: int, cls: type[Exception]) -> None:
    body = json.dumps({"code": 8, "message": "shed (overloaded)"}).encode()
    with pytest.raises(cls) as info:
        to_result(status, httpx.Headers({"retry-after": "1"}), body)
    assert info.value.retry_after == 1  # type: ignore[attr-defined]


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...]) -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "shed (overloaded)"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


def test_grpc_errors_carry_retry_after_from_the_trailers() -> None:
    shed = map_rpc_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "1"),)))
    assert isinstance(shed, RateLimited)
    assert shed.retry_after == 1
    plain = map_rpc_error(_RpcError(grpc.StatusCode.UNAVAILABLE, ()))
    assert isinstance(plain, Unavailable)
    assert plain.retry_after is None


def test_token_source_is_called_with_audience() -> None:
    seen: list[str | None] = []

    class Source:
        def token(self, audience: str | None) -> str:
            seen.append(audience)
            return "jwt"

    src: TokenSource = Source()
    transport = ScriptedTransport()
    _client(transport, FakeTime(), RetryPolicy()).exchange("o", "i", audience="aud", token=src)
    assert seen == ["aud"]
    assert transport.tokens == ["jwt"]


def test_missing_or_bad_token_and_request() -> None:
    client = _client(ScriptedTransport(), FakeTime(), RetryPolicy())
    with pytest.raises(ConfigError, match="no token"):
        client.exchange("o", "i")
    with pytest.raises(ConfigError, match="whitespace"):
        client.exchange("o", "i", token="a\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="non-empty"):
        client.exchange("", "i", token="t")
    for scopes in ([], ["o/a", ""]):
        with pytest.raises(ValueError, match="non-empty"):
            client.exchange(scopes, "i", token="t")


def test_one_scope_is_sent_as_scope_and_several_as_scopes() -> None:
    from octosts.client.grpc_transport import _request  # noqa: PLC0415
    from octosts.client.http_transport import _params  # noqa: PLC0415

    one = _request(("o",), "ci", None)
    assert (one.scope, list(one.scopes)) == ("o", [])
    several = _request(("o/a", "o/b"), "ci", "aud")
    assert (several.scope, list(several.scopes), several.audience) == ("", ["o/a", "o/b"], "aud")
    assert _params(("o/a",), "ci", None) == (("scope", "o/a"), ("identity", "ci"))
    assert _params(("o/a", "o/b"), "ci", "x") == (
        ("scopes", "o/a"),
        ("scopes", "o/b"),
        ("identity", "ci"),
        ("audience", "x"),
    )
    # What a transport is handed: the scopes, one or several.
    transport = ScriptedTransport()
    client = _client(transport, FakeTime(), RetryPolicy())
    client.exchange(["o/a", "o/b"], "ci", token="t")
    client.exchange("o/a", "ci", token="t")
    assert transport.scopes == [("o/a", "o/b"), ("o/a",)]


def test_client_library_imports_only_itself_and_the_wire_contract() -> None:
    package = Path(client_models.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "octosts":
                    assert name.startswith(("octosts.client", "octosts._gen")), (source, name)


def test_client_token_cap_is_the_service_cap() -> None:
    # The client library speaks the wire contract only (it never imports the server's domain),
    # so it keeps its own copy of the cap: a token it sends is one the service will read.
    assert client_models.MAX_TOKEN_BYTES == domain_tokens.MAX_TOKEN_BYTES
    client = _client(ScriptedTransport(), FakeTime(), RetryPolicy())
    client.exchange("o", "i", token="a" * domain_tokens.MAX_TOKEN_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        client.exchange("o", "i", token="a" * (domain_tokens.MAX_TOKEN_BYTES + 1))


def test_result_repr_hides_token_and_json_shape() -> None:
    assert "ghs_secret" not in repr(RESULT)
    data = RESULT.to_json(now=dt.datetime(2029, 12, 31, 23, 0, tzinfo=dt.UTC))
    assert data["token"] == data["access_token"] == "ghs_secret"
    assert data["expires_in"] == 3600
    assert data["expires_at"] == "2030-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://sts.example.com", Endpoint("sts.example.com", 443, tls=True)),
        ("http://octo-sts.ns.svc:8080", Endpoint("octo-sts.ns.svc", 8080, tls=False)),
        ("https://[::1]:8443/", Endpoint("::1", 8443, tls=True)),
    ],
)
def test_endpoint_parse(url: str, expected: Endpoint) -> None:
    assert Endpoint.parse(url) == expected


@pytest.mark.parametrize(
    "url", ["sts.example.com", "grpc://x", "https://u:p@x", "https://x/path", "https://x:99999"]
)
def test_endpoint_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Endpoint.parse(url)


def test_endpoint_target_forms() -> None:
    assert Endpoint.parse("https://[::1]:8443").grpc_target == "[::1]:8443"
    assert Endpoint.parse("http://h").base_url == "http://h:80"


@pytest.mark.parametrize(
    ("status", "body", "cls", "code", "reason"),
    [
        (
            401,
            {"code": "token_expired", "message": "expired", "request_id": "e1"},
            Unauthenticated,
            "UNAUTHENTICATED",
            "token_expired",
        ),
        (403, {"code": 7, "message": "no"}, Forbidden, "PERMISSION_DENIED", None),
        (404, {"code": 5, "message": "not found"}, Forbidden, "NOT_FOUND", None),
        (400, {"code": 3, "message": "bad scope"}, BadRequest, "INVALID_ARGUMENT", None),
        (429, {"code": 8, "message": "slow down"}, RateLimited, "RESOURCE_EXHAUSTED", None),
        (503, "upstream connect error\nmore", Unavailable, "UNAVAILABLE", None),
        (500, {"code": 13, "message": "boom"}, ServerError, "INTERNAL", None),
    ],
)
def test_http_error_mapping(
    status: int, body: object, cls: type[Exception], code: str, reason: str | None
) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(cls) as info:
        to_result(status, httpx.Headers({"x-request-id": "rid"}), raw)
    err = info.value
    assert err.code == code  # type: ignore[attr-defined]
    assert err.reason == reason  # type: ignore[attr-defined]
    assert err.status == status  # type: ignore[attr-defined]
    assert err.request_id == "rid"  # type: ignore[attr-defined]
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"expires_in": 5}',
        b'{"token": "a b", "expires_in": 5}',
        b'{"token": "t"}',
        b'{"token": "t", "expires_in": 5, "permissions": {"a": 1}}',
        b'{"token": "t", "expires_in": 5, "repositories": "x"}',
    ],
)
def test_http_malformed_success_is_server_error(body: bytes) -> None:
    with pytest.raises(ServerError):
        to_result(200, httpx.Headers(), body)


def test_http_result_accepts_string_expires_in_and_access_token_only() -> None:
    result = to_result(
        200,
        httpx.Headers(),
        b'{"access_token": "ghs_1", "expires_at": "2030-01-01T00:00:00Z", "expires_in": "10"}',
    )
    assert result.token == "ghs_1"
    assert result.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_file_source_rereads_each_time(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = FileTokenSource(path)
    assert source.token(None) == "first"
    path.write_text("second")
    assert source.token(None) == "second"
    path.write_bytes(b"x" * 20_000)
    with pytest.raises(TokenSourceError, match="larger"):
        source.token(None)
    path.unlink()
    with pytest.raises(TokenSourceError, match="cannot read"):
        source.token(None)


def test_env_and_stdin_sources() -> None:
    assert EnvTokenSource("T", {"T": " jwt \n"}).token(None) == "jwt"
    with pytest.raises(TokenSourceError, match="not set"):
        EnvTokenSource("T", {}).token(None)
    with pytest.raises(TokenSourceError, match="empty"):
        EnvTokenSource("T", {"T": ""}).token(None)
    stdin = StdinTokenSource(io.StringIO("piped\n"))
    assert stdin.token(None) == stdin.token(None) == "piped"


def test_parse_token_source() -> None:
    assert isinstance(parse_token_source("env:X"), EnvTokenSource)
    assert isinstance(parse_token_source("file:/t"), FileTokenSource)
    assert isinstance(parse_token_source("stdin"), StdinTokenSource)
    for bad in ("env:", "file:", "nope", "actions:x"):
        with pytest.raises(ValueError, match="unknown token source"):
            parse_token_source(bad)


def test_exit_codes() -> None:
    assert exit_code_for(Forbidden("x")) == EXIT_REFUSED
    assert exit_code_for(RateLimited("x")) == EXIT_RATE_LIMITED
    assert exit_code_for(Unavailable("x")) == EXIT_UNAVAILABLE
    assert exit_code_for(TokenSourceError("x")) == 3
    assert exit_code_for(ConfigError("x")) == 2
    assert exit_code_for(ServerError("x")) == 1
