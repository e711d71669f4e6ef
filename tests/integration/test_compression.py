"""Outbound clients never accept compressed bodies: they read raw bytes under a size cap.

The server here gzips whenever the client allows it — as api.github.com and most
issuers do — so a client that let httpx advertise gzip would get compressed bytes
in its raw stream (a JSON parse error), and a small gzip bomb would inflate past the
cap before it is counted.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest

from octosts.adapters.github import GitHubAppClient, GitHubConfig
from octosts.adapters.github_rest import GitHubRest, RestConfig, http_client
from octosts.adapters.oidc import OidcConfig, make_http_client
from octosts.dev.httpserver import DevHTTPServer
from octosts.domain.ports import NullObserver
from tests.emulator import APP_ID, real_time_clock, signer


class _GzipHandler(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        accepted = self.headers.get("Accept-Encoding", "")
        type(self).seen.append(accepted)
        body = json.dumps({"id": 99, "issuer": "x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if "gzip" in accepted:
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _GzipHandler.seen = []
    httpd = DevHTTPServer(("127.0.0.1", 0), _GzipHandler).start("gzip")
    try:
        yield f"http://127.0.0.1:{httpd.port}"
    finally:
        httpd.stop()


async def test_issuer_client_asks_for_identity_encoding(server: str) -> None:
    url = server + "/.well-known/openid-configuration"
    async with make_http_client(OidcConfig()) as client, client.stream("GET", url) as reply:
        raw = b"".join([chunk async for chunk in reply.aiter_raw()])
    assert _GzipHandler.seen == ["identity"]
    assert json.loads(raw)["issuer"] == "x"


async def test_github_adapter_works_against_a_gzipping_server(server: str) -> None:
    async with http_client() as http:
        clock = real_time_clock()
        client = GitHubAppClient(
            GitHubConfig(app_id=APP_ID),
            rest=GitHubRest(RestConfig(base_url=server), http=http, clock=clock),
            signer=signer(),
            clock=clock,
            observer=NullObserver(),
        )
        assert await client.installation_id("octo-org") == 99
    assert _GzipHandler.seen == ["identity"]
