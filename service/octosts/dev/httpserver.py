"""The stdlib HTTP server the development servers (and tests' stand-in servers) run on.

``http.server.ThreadingHTTPServer`` as shipped listens with a backlog of 5. A service that opens
dozens of connections at once (50 concurrent exchanges each minting a token) overflows it while
the accept loop is busy: the kernel drops the SYNs and each client waits a 1 s retransmission,
or gives up. This server listens with a realistic backlog, does TLS handshakes on the connection's
own thread (a slow client cannot stall ``accept``), sends small answers without Nagle's delay and
does not print tracebacks for clients that hang up.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self

# What the kernel may queue before accept(); capped by net.core.somaxconn (4096 on Linux today).
LISTEN_BACKLOG = 1024
TLS_HANDSHAKE_TIMEOUT = 10


class DevHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a real listen backlog; TLS when ``ssl_context`` is set.

    It listens once constructed (connections queue until ``start``); ``stop`` closes it.
    """

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True
    block_on_close = False
    ssl_context: ssl.SSLContext | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self, name: str = "dev-http") -> Self:
        """Serve from a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (connections being answered finish on their own)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out in separate writes; without NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every answer.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(TLS_HANDSHAKE_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError:
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, slow answers) are normal here, not tracebacks.
        if isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            return
        super().handle_error(request, client_address)
