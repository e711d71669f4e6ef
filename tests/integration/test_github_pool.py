"""The GitHub connection pool (aiohttp) over real sockets: every guarantee of the old client.

Each failure of the socket maps to what GitHub may have seen (``Unanswered``'s
subclasses, which the retry rules read); answers are read raw under the cap; redirects
are answers, never followed; no cookies, no proxies from the environment; the
operator's CA is the trust; the wait for a free connection is bounded on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from octosts.adapters.github_rest import (
    AiohttpPool,
    Dropped,
    NotConnected,
    PoolBusy,
    TimedOut,
    http_client,
)
from octosts.adapters.http_body import BodyCompressed, BodyTooLarge
from octosts.dev.certs import ensure_dev_certs
from octosts.dev.envoy import free_port

Serve = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """An HTTP/1.1 server on loopback that hands each request's head to ``serve``."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.heads: list[bytes] = []
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                await self.serve(head, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    serve: Serve, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[RawServer, str]]:
    server = RawServer(serve)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await server._handle(reader, writer)

    listening = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    server.port = listening.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    try:
        yield (
            server,
            f"{scheme}://localhost:{server.port}" if tls else f"http://127.0.0.1:{server.port}",
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        listening.close()
        await listening.wait_closed()


async def answer_ok(_head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)
    await writer.drain()


async def fetch(
    pool: AiohttpPool,
    url: str,
    *,
    deadline: float = 5.0,
    cap: int = 1 << 20,
    pool_wait: float = 1.0,
) -> tuple[int, bytes]:
    answer = await pool.fetch(
        "GET",
        url,
        {"Accept-Encoding": "identity"},
        None,
        deadline=deadline,
        connect_timeout=1.0,
        pool_wait=pool_wait,
        cap=cap,
    )
    return answer.status, answer.body


async def test_a_refused_connection_is_not_connected() -> None:
    async with http_client() as pool:
        with pytest.raises(NotConnected):
            await fetch(pool, f"http://127.0.0.1:{free_port()}/x")


async def test_a_connection_closed_before_the_answer_is_dropped() -> None:
    async def hang_up(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_server(hang_up) as (server, url), http_client() as pool:
        with pytest.raises(Dropped):
            await fetch(pool, url + "/x")
    assert len(server.heads) >= 1


async def test_an_answer_cut_short_is_dropped() -> None:
    async def half(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with raw_server(half) as (_server, url), http_client() as pool:
        with pytest.raises(Dropped):
            await fetch(pool, url + "/x")


async def test_no_answer_within_the_deadline_is_timed_out() -> None:
    async def silent(_head: bytes, _writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # until the fixture cancels it

    async with raw_server(silent) as (_server, url), http_client() as pool:
        with pytest.raises(TimedOut):
            await fetch(pool, url + "/x", deadline=0.2)


async def test_the_wait_for_a_connection_is_bounded_on_its_own_and_sends_nothing() -> None:
    release = asyncio.Event()

    async def slow(_head: bytes, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await answer_ok(_head, writer)

    async with raw_server(slow) as (server, url), http_client(max_connections=1) as pool:
        first = asyncio.create_task(fetch(pool, url + "/first"))
        for _ in range(200):  # until the first request holds the one connection
            if server.heads:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(PoolBusy):
            await fetch(pool, url + "/second", pool_wait=0.05, deadline=5.0)
        release.set()
        assert await first == (200, b"{}")
        assert [h.split(b" ")[1] for h in server.heads] == [b"/first"]
        assert await fetch(pool, url + "/third") == (200, b"{}")  # the slot was given back


async def test_a_redirect_is_an_answer_never_followed() -> None:
    async def redirect(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()

    async with raw_server(redirect) as (server, url), http_client() as pool:
        assert await fetch(pool, url + "/x") == (302, b"")
    assert len(server.heads) == 1


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, BodyTooLarge),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n"
            + b"x" * 2000
            + b"\r\n0\r\n\r\n",
            BodyTooLarge,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
            BodyCompressed,
        ),
    ],
    ids=["declared", "chunked", "compressed"],
)
async def test_bodies_are_read_raw_under_the_cap(reply: bytes, refused: type[Exception]) -> None:
    async def serve(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()

    async with raw_server(serve) as (_server, url), http_client() as pool:
        with pytest.raises(refused):
            await fetch(pool, url + "/x", cap=1024)


async def test_no_cookies_are_kept_and_no_proxy_is_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def cookie(_head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 2\r\n\r\n{}"
        )
        await writer.drain()

    async with raw_server(cookie) as (server, url), http_client() as pool:
        await fetch(pool, url + "/one")
        await fetch(pool, url + "/two")
    assert len(server.heads) == 2  # straight to the server, not the (dead) proxy
    assert all(b"cookie:" not in head.lower() for head in server.heads)


async def test_the_operators_ca_is_the_trust(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path / "certs")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.cert, certs.key)
    trusting = ssl.create_default_context(cafile=str(certs.ca_cert))
    async with raw_server(answer_ok, tls) as (_server, url):
        async with http_client(verify=trusting) as pool:
            assert await fetch(pool, url + "/x") == (200, b"{}")
        async with http_client() as pool:  # system trust only: the dev CA is not in it
            with pytest.raises(NotConnected):
                await fetch(pool, url + "/x")
