"""Raw HTTP requests to the webhook listener.

Input: the bytes of one HTTP/1.1 request, as Envoy (or anyone reaching the port)
sends them. A ``x-hub-signature-256: sha256=sign-me`` header is replaced with the
body's real signature first, so mutated requests can still reach the handler.
Path: ``webhook.server.WebhookServer._serve`` (request line, headers <= 16 KiB,
``Content-Length``, the body limit, here 64 KiB) -> ``WebhookHandler.handle``
with fakes (``_webhook``).

Property: every request gets one well-formed HTTP answer with a JSON body and a
status the listener documents; never 500 (the listener's answer to an exception it
did not expect); side effects as in ``webhook_payload``.
"""

from __future__ import annotations

import asyncio
import json
import re

from octosts.webhook.server import MAX_HEADER_BYTES, WebhookServer
from tests.fuzz.targets._support import run
from tests.fuzz.targets._webhook import Wired, check_effects, sign

MAX_BODY = 64 * 1024
PLACEHOLDER = b"sha256=sign-me"
STATUSES = frozenset({200, 202, 400, 401, 404, 405, 408, 411, 413, 503})
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]{1,9})[ \t]*\r?$")
_ANSWER = re.compile(
    rb"HTTP/1\.1 ([0-9]{3}) [A-Za-z -]+\r\nContent-Type: application/json\r\n"
    rb"Content-Length: ([0-9]+)\r\nConnection: close\r\n\r\n"
)


def _signed(data: bytes) -> bytes:
    if PLACEHOLDER not in data:
        return data
    head, _, body = data.partition(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    signed_part = body[: int(length.group(1))] if length else body
    return data.replace(PLACEHOLDER, sign(signed_part).encode(), 1)


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def _serve(data: bytes) -> tuple[Wired, bytes]:
    wired = Wired()
    server = WebhookServer("127.0.0.1:0", wired.handler, max_body=MAX_BODY)
    reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    await server._serve(reader, writer)  # type: ignore[arg-type]
    await wired.handler.drain()
    return wired, bytes(writer.data)


def one_input(data: bytes) -> None:
    wired, answer = run(_serve(_signed(data)))
    head = _ANSWER.match(answer)
    assert head is not None, answer[:200]
    status = int(head.group(1))
    assert status in STATUSES, status
    body = answer[head.end() :]
    assert len(body) == int(head.group(2))
    reply = json.loads(body)
    assert isinstance(reply, dict)
    check_effects(wired, [reply])
