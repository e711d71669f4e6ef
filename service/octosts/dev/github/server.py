"""The emulator's HTTP(S) server: reads a request, hands it to the emulator, writes the answer."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

from octosts.dev.certs import ensure_dev_certs
from octosts.dev.github.answers import Answer, json_answer
from octosts.dev.httpserver import DevHTTPServer

MAX_BODY = 10 * 1024 * 1024

HandleFn = Callable[[str, str, Mapping[str, str], bytes], Answer]


class _Handler(BaseHTTPRequestHandler):
    handle_request: ClassVar[HandleFn]
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com-emulator"
    timeout = 30  # idle keep-alive connections do not pin threads forever

    def _serve(self) -> None:
        length_raw = self.headers.get("content-length", "0")
        length = int(length_raw) if length_raw.isdigit() else -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(json_answer(413, {"message": "request body too large or malformed length"}))
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            answer = type(self).handle_request(self.command, self.path, headers, body)
        except Exception:  # noqa: BLE001 - an emulator bug must still answer, as GitHub's 500
            answer = json_answer(500, {"message": "Server Error"})
        if answer.disconnect:
            # The client sees the connection close with no answer (a dropped request).
            self.close_connection = True
            return
        self._send(answer)

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        if answer.content_type:
            self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if answer.body and self.command != "HEAD":
            self.wfile.write(answer.body)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - stdlib
        # The call log replaces the stderr access log (which would print nothing secret, but noise).
        return


class EmulatorServer:
    """Serves ``handle`` on ``host:port`` from a background thread, over TLS with ``tls_dir``.

    The socket listens once constructed (connections queue until ``start``); ``stop`` closes it.
    """

    def __init__(self, handle: HandleFn, host: str, port: int, tls_dir: Path | None) -> None:
        handler = type("_BoundHandler", (_Handler,), {"handle_request": staticmethod(handle)})
        self._server = DevHTTPServer((host, port), handler)
        self.ca_cert: Path | None = None
        if tls_dir is not None:
            paths = ensure_dev_certs(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(paths.cert, paths.key)
            self._server.ssl_context = context
            self.ca_cert = paths.ca_cert

    def start(self) -> None:
        self._server.start("github-emulator")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host_str = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_str:
            host_str = f"[{host_str}]"
        scheme = "https" if self._server.ssl_context is not None else "http"
        return f"{scheme}://{host_str}:{port}"

    def stop(self) -> None:
        self._server.stop()
