"""The Python client and CLI against real local servers (gRPC and HTTP, plaintext and TLS)."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from octosts.cli import exchange as cli_exchange
from octosts.client import (
    ActionsTokenSource,
    AsyncClient,
    Client,
    Forbidden,
    RetryPolicy,
    RevokeError,
    ServerError,
    TokenSourceError,
    Unauthenticated,
    Unavailable,
    aexchange,
    arevoke,
    exchange,
    revoke,
)
from tests.integration.test_client_standins import (
    ACTIONS_REQUEST_TOKEN,
    EXPIRES_AT,
    MINTED_TOKEN,
    OIDC_TOKEN,
    GrpcStandIn,
    HttpStandIn,
)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02, deadline=10)


STAND_INS = {"grpc": GrpcStandIn, "http": HttpStandIn}
StandIn = GrpcStandIn | HttpStandIn


@pytest.fixture(params=sorted(STAND_INS))
def plain(request: pytest.FixtureRequest) -> Iterator[StandIn]:
    """The service stand-in without TLS, once per client transport."""
    server = STAND_INS[request.param]()
    yield server
    server.stop()


@pytest.fixture(params=sorted(STAND_INS))
def tls(request: pytest.FixtureRequest, certs: Any) -> Iterator[StandIn]:
    """The service stand-in behind TLS (dev certificate for localhost), once per transport."""
    server = STAND_INS[request.param](certs)
    yield server
    server.stop()


@pytest.fixture
def http_plain() -> Iterator[HttpStandIn]:
    server = HttpStandIn()
    yield server
    server.stop()


@pytest.fixture
def http_tls(certs: Any) -> Iterator[HttpStandIn]:
    """The Actions token endpoint for the CLI tests (the HTTP stand-in serves it)."""
    server = HttpStandIn(certs)
    yield server
    server.stop()


def _assert_minted(result: Any) -> None:
    assert result.token == MINTED_TOKEN
    assert result.expires_at == EXPIRES_AT
    assert dict(result.permissions) == {"contents": "read"}
    assert result.repositories == ("app",)
    assert MINTED_TOKEN not in repr(result)


def _exchange(server: StandIn, **options: Any) -> Any:
    """``exchange()`` with the stand-in's endpoint and transport and the workload's token."""
    return exchange(
        "org/app",
        "deploy",
        token=OIDC_TOKEN,
        endpoint=server.endpoint,
        transport=server.transport,
        **options,
    )


# --- both transports --------------------------------------------------------------------------


def test_tls_exchange_with_ca_file(tls: StandIn, certs: Any) -> None:
    with Client(tls.endpoint, transport=tls.transport, ca_file=certs.ca_cert) as client:
        result = client.exchange("org/app", "deploy", audience="sts.example", token=OIDC_TOKEN)
    _assert_minted(result)
    assert result.request_id == "r-ok"
    assert tls.script.calls == [
        {
            "scope": "org/app",
            "identity": "deploy",
            "audience": "sts.example",
            "authorization": f"Bearer {OIDC_TOKEN}",
        }
    ]


def test_tls_rejects_unknown_ca(tls: StandIn) -> None:
    # System roots do not trust the dev CA: the handshake fails, which both transports report
    # as Unavailable; the client gives up after its bounded attempts, the service sees no call.
    with (
        Client(tls.endpoint, transport=tls.transport, retry=FAST_RETRY) as client,
        pytest.raises(Unavailable),
    ):
        client.exchange("org/app", "deploy", token=OIDC_TOKEN)
    assert tls.script.calls == []


def test_retries_unavailable_then_succeeds(plain: StandIn) -> None:
    plain.script.unavailable = 2
    result = _exchange(plain, retry=FAST_RETRY)
    _assert_minted(result)
    assert len(plain.script.calls) == 3
    assert plain.script.calls[0].get("audience") is None


def test_gives_up_after_max_attempts(plain: StandIn) -> None:
    plain.script.unavailable = 10
    with pytest.raises(Unavailable) as info:
        _exchange(plain, retry=FAST_RETRY)
    assert info.value.code == "UNAVAILABLE"
    assert len(plain.script.calls) == 3


def test_denial_is_not_retried_and_carries_reason(plain: StandIn) -> None:
    plain.script.deny = True
    with pytest.raises(Forbidden) as info:
        _exchange(plain, retry=FAST_RETRY)
    err = info.value
    assert (err.code, err.reason, err.request_id) == ("PERMISSION_DENIED", "policy_denied", "r-7")
    assert err.message == "no trust policy matched"
    assert len(plain.script.calls) == 1
    assert OIDC_TOKEN not in str(err)


def test_response_size_is_capped(plain: StandIn) -> None:
    plain.script.huge = True
    with pytest.raises(ServerError, match="larger than"):
        _exchange(plain)


def test_connection_refused_is_unavailable(plain: StandIn) -> None:
    plain.stop()
    with pytest.raises(Unavailable):
        _exchange(plain, retry=FAST_RETRY)


async def test_async_exchange_and_retry(tls: StandIn, certs: Any) -> None:
    tls.script.unavailable = 1
    async with AsyncClient(
        tls.endpoint, transport=tls.transport, ca_file=certs.ca_cert, retry=FAST_RETRY
    ) as client:
        result = await client.exchange("org", "deploy", token=OIDC_TOKEN)
    _assert_minted(result)
    assert len(tls.script.calls) == 2


async def test_async_denial(plain: StandIn) -> None:
    plain.script.deny = True
    with pytest.raises(Forbidden) as info:
        await aexchange(
            "org", "deploy", token=OIDC_TOKEN, endpoint=plain.endpoint, transport=plain.transport
        )
    assert info.value.reason == "policy_denied"


# --- transport specifics ----------------------------------------------------------------------


def test_grpc_unauthenticated() -> None:
    server = GrpcStandIn()
    try:
        with pytest.raises(Unauthenticated):
            exchange("org/app", "deploy", token="not.a-valid.jwt", endpoint=server.endpoint)
    finally:
        server.stop()


def test_http_denial_carries_the_http_status(http_plain: HttpStandIn) -> None:
    http_plain.script.deny = True
    with pytest.raises(Forbidden) as info:
        exchange("org", "deploy", token=OIDC_TOKEN, endpoint=http_plain.endpoint, transport="http")
    assert info.value.status == 403


def test_http_edge_401(http_plain: HttpStandIn) -> None:
    with pytest.raises(Unauthenticated) as info:
        exchange(
            "org", "deploy", token="expired.jwt.x", endpoint=http_plain.endpoint, transport="http"
        )
    assert (info.value.reason, info.value.request_id) == ("token_expired", "edge-1")


# --- token sources and revoke -----------------------------------------------------------------


def _actions_env(server: HttpStandIn) -> dict[str, str]:
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": server.actions_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ACTIONS_REQUEST_TOKEN,
    }


def test_actions_source_sends_audience_and_request_token(http_plain: HttpStandIn) -> None:
    source = ActionsTokenSource(environ=_actions_env(http_plain))
    assert source.token("sts.example") == OIDC_TOKEN
    call = http_plain.script.calls[0]
    assert call["query"] == {"api-version": "2.0", "audience": "sts.example"}
    assert call["authorization"] == f"bearer {ACTIONS_REQUEST_TOKEN}"


def test_actions_source_errors(http_plain: HttpStandIn) -> None:
    env = {**_actions_env(http_plain), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}
    with pytest.raises(TokenSourceError, match="HTTP 401") as info:
        ActionsTokenSource(environ=env).token("aud")
    assert "wrong" not in str(info.value)
    with pytest.raises(TokenSourceError, match="not set"):
        ActionsTokenSource(environ={}).token("aud")


def test_revoke(http_plain: HttpStandIn) -> None:
    revoke(MINTED_TOKEN, github_api=http_plain.github_api)
    assert http_plain.script.revoked == [MINTED_TOKEN]
    with pytest.raises(RevokeError) as info:
        revoke(MINTED_TOKEN, github_api=http_plain.github_api)
    assert info.value.status == 401
    assert MINTED_TOKEN not in str(info.value)


async def test_arevoke(http_plain: HttpStandIn) -> None:
    await arevoke(MINTED_TOKEN, github_api=http_plain.github_api)
    assert http_plain.script.revoked == [MINTED_TOKEN]


# --- CLI --------------------------------------------------------------------------------------


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="octo-sts")
    cli_exchange.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_exchange_json_with_actions_source(
    tls: StandIn,
    http_tls: HttpStandIn,
    certs: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in _actions_env(http_tls).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_cert))  # the Actions endpoint is TLS too
    code = _run_cli(
        [
            "exchange",
            "--scope",
            "org/app",
            "--identity",
            "deploy",
            "--endpoint",
            tls.endpoint,
            "--ca-file",
            str(certs.ca_cert),
            "--transport",
            tls.transport,
            "--output",
            "json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["token"] == data["access_token"] == MINTED_TOKEN
    assert data["token_type"] == "Bearer"
    assert data["expires_at"] == "2031-01-02T03:04:05Z"
    assert data["permissions"] == {"contents": "read"}
    # Without --audience, the Actions token is requested for the STS host.
    assert http_tls.script.calls[0]["query"]["audience"] == "localhost"
    assert MINTED_TOKEN not in err


def test_cli_exchange_env_output_from_file(
    plain: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(OIDC_TOKEN + "\n")
    code = _run_cli(
        [
            "exchange",
            "--scope",
            "org",
            "--identity",
            "ci",
            "--endpoint",
            plain.endpoint,
            "--transport",
            plain.transport,
            "--token-source",
            f"file:{token_file}",
            "--output",
            "env",
            "--env-name",
            "GH_TOKEN",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [
        f"GH_TOKEN={MINTED_TOKEN}",
        "OCTO_STS_EXPIRES_AT=2031-01-02T03:04:05Z",
    ]


def test_cli_exchange_token_output_from_stdin(
    http_plain: HttpStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(OIDC_TOKEN))
    code = _run_cli(
        [
            "exchange",
            "--scope",
            "org",
            "--identity",
            "ci",
            "--endpoint",
            http_plain.endpoint,
            "--token-source",
            "stdin",
            "--transport",
            "http",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == MINTED_TOKEN + "\n"


def test_cli_exchange_denied_exit_code_and_message(
    plain: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain.script.deny = True
    monkeypatch.setenv("MY_OIDC", OIDC_TOKEN)
    code = _run_cli(
        [
            "exchange",
            "--scope",
            "org",
            "--identity",
            "ci",
            "--endpoint",
            plain.endpoint,
            "--transport",
            plain.transport,
            "--token-source",
            "env:MY_OIDC",
        ]
    )
    out, err = capsys.readouterr()
    assert code == cli_exchange.EXIT_REFUSED
    assert out == ""
    assert "PERMISSION_DENIED" in err
    assert "policy_denied" in err
    assert "r-7" in err
    assert OIDC_TOKEN not in err


def test_cli_exchange_unavailable_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = GrpcStandIn()
    endpoint = server.endpoint
    server.stop()
    monkeypatch.setenv("MY_OIDC", OIDC_TOKEN)
    code = _run_cli(
        [
            "exchange",
            "--scope",
            "org",
            "--identity",
            "ci",
            "--endpoint",
            endpoint,
            "--token-source",
            "env:MY_OIDC",
            "--attempts",
            "2",
            "--timeout",
            "5",
        ]
    )
    assert code == cli_exchange.EXIT_UNAVAILABLE
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_cli_exchange_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["exchange", "--scope", "o", "--identity", "i", "--token-source", "bogus"]) == 2
    assert (
        _run_cli(
            [
                "exchange",
                "--scope",
                "o",
                "--identity",
                "i",
                "--endpoint",
                "ftp://x",
                "--token-source",
                "env:NOPE_NOT_SET",
            ]
        )
        == 2
    )
    assert (
        _run_cli(
            [
                "exchange",
                "--scope",
                "o",
                "--identity",
                "i",
                "--endpoint",
                "http://127.0.0.1:1",
                "--token-source",
                "env:NOPE_NOT_SET_EITHER",
            ]
        )
        == cli_exchange.EXIT_TOKEN_SOURCE
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "NOPE_NOT_SET_EITHER is not set" in err


def test_cli_revoke(
    http_plain: HttpStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STS_TOKEN", MINTED_TOKEN)
    argv = ["revoke", "--github-api", http_plain.github_api, "--token-env", "STS_TOKEN"]
    assert _run_cli(argv) == 0
    assert http_plain.script.revoked == [MINTED_TOKEN]
    assert _run_cli(argv) == cli_exchange.EXIT_REFUSED
    monkeypatch.delenv("STS_TOKEN")
    assert _run_cli(argv) == cli_exchange.EXIT_USAGE
    out, err = capsys.readouterr()
    assert MINTED_TOKEN not in out + err


def test_expiry_falls_back_to_expires_in() -> None:
    import httpx  # noqa: PLC0415

    from octosts.client.http_transport import to_result  # noqa: PLC0415

    before = dt.datetime.now(dt.UTC)
    result = to_result(
        200, httpx.Headers(), json.dumps({"token": "ghs_x", "expires_in": "60"}).encode()
    )
    assert (
        before + dt.timedelta(seconds=59) <= result.expires_at <= before + dt.timedelta(seconds=62)
    )
