"""A minimal HTTP/1.1 listener for GitHub deliveries (``POST /webhook``), on its own port.

Deliberately small: one request per connection (``Connection: close``), a
``Content-Length`` body only (chunked -> 411), header block <= 16 KiB, body <=
``max_body`` (413 before reading it), whole-request deadline. Envoy fronts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from octosts.webhook.handler import WebhookHandler

_log = structlog.get_logger("octosts.webhook")
MAX_HEADER_BYTES = 16 * 1024
# The largest delivery taken by default (OCTOSTS_WEBHOOK_MAX_BODY_BYTES); Envoy's /webhook route
# enforces the same limit (octosts.dev.envoy) so an oversized body never reaches a replica.
DEFAULT_MAX_BODY = 1 << 20
PATH = "/webhook"


class WebhookServer:
    def __init__(
        self,
        addr: str,
        handler: WebhookHandler,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        read_timeout: float = 10.0,
        reuse_port: bool = False,
    ) -> None:
        host, _, port = addr.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._handler = handler
        self._max_body = max_body
        self._timeout = read_timeout
        self._reuse_port = reuse_port  # several workers share the port (SO_REUSEPORT)
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(
            self._serve,
            self._host,
            self._port,
            limit=MAX_HEADER_BYTES,
            reuse_port=self._reuse_port or None,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        await self._handler.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._exchange(reader)
        except TimeoutError:
            status, body = 408, {"error": "request timeout"}
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, body = 400, {"error": "malformed request"}
        except ConnectionError:
            writer.close()
            return
        except Exception as exc:  # noqa: BLE001 - a bug answers 500; the connection never just drops
            # The type only: a message could quote the delivery.
            _log.error("webhook_internal_error", error=type(exc).__name__)
            status, body = 500, {"error": "internal error"}
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + data)
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if target.split("?", 1)[0] != PATH:
            return 404, {"error": "not found"}
        if method != "POST":
            return 405, {"error": "POST only"}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return 411, {"error": "Content-Length required"}
        length_raw = headers.get("content-length", "")
        if not length_raw.isdigit():
            return 411, {"error": "Content-Length required"}
        length = int(length_raw)
        if length > self._max_body:
            return 413, {"error": f"body larger than {self._max_body} bytes"}
        body = await reader.readexactly(length)
        reply = await self._handler.handle(headers, body)
        return reply.status, dict(reply.body)
