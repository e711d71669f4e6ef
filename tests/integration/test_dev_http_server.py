"""The development servers queue a burst of connections while their accept loop is busy.

The stdlib ``ThreadingHTTPServer`` listens with a backlog of 5: when 50 exchanges mint tokens at
once and the emulator's accept loop is slow (a loaded CPU), the kernel drops the extra SYNs, each
client waits a 1 s retransmission and some give up (the flaky
``test_concurrent_cold_verifications_share_one_discovery``). Here the server does not accept at
all (constructed, never started), so only the listen backlog decides whether a handshake completes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler

import pytest

from octosts.dev.github.answers import Answer
from octosts.dev.github.server import EmulatorServer
from octosts.dev.httpserver import DevHTTPServer
from octosts.dev.issuer import DevIssuer

BURST = 64  # beyond the stdlib's 5, well within ours (httpserver.LISTEN_BACKLOG)
HANDSHAKE_DEADLINE = 3.0  # seconds; a dropped SYN is retried only after 1 s, then 3 s


def _never_called(*_: object) -> Answer:
    raise AssertionError("the server is not started: nothing is answered")


def _dev_http_server() -> tuple[int, Callable[[], None]]:
    server = DevHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    return server.port, server.stop


def _emulator_server() -> tuple[int, Callable[[], None]]:
    server = EmulatorServer(_never_called, "127.0.0.1", 0, None)
    return int(server.url.rsplit(":", 1)[1]), server.stop


def _dev_issuer() -> tuple[int, Callable[[], None]]:
    issuer = DevIssuer()  # listening, not serving until start()
    return issuer.port, issuer.stop


@pytest.fixture(
    params=[_dev_http_server, _emulator_server, _dev_issuer], ids=lambda f: f.__name__[1:]
)
def listening_port(request: pytest.FixtureRequest) -> Iterator[int]:
    port, stop = request.param()
    try:
        yield port
    finally:
        stop()


def test_a_burst_of_connections_completes_the_handshake_without_accept(listening_port) -> None:
    with ExitStack() as open_sockets:
        for n in range(BURST):
            sock = open_sockets.enter_context(socket.socket())
            sock.settimeout(HANDSHAKE_DEADLINE)
            try:
                sock.connect(("127.0.0.1", listening_port))
            except TimeoutError:
                pytest.fail(f"connection {n + 1} of {BURST} was not queued (listen backlog full)")
