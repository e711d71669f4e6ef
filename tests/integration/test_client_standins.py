"""In-process stand-ins for the live stack, used by the client tests.

- ``GrpcStandIn``: a real gRPC server (plaintext or TLS) implementing
  ``octosts.v1.SecurityTokenService/Exchange`` with scripted failures.
- ``HttpStandIn``: a real HTTP server (plaintext or TLS) playing the JSON
  gateway (``GET /sts/exchange``), the GitHub Actions OIDC token endpoint and
  GitHub's ``DELETE /installation/token``.

Both bind port 0 and are stopped by the fixtures that start them.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.httpserver import DevHTTPServer

OIDC_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2ln"
MINTED_TOKEN = "ghs_standInMintedToken0123456789"
ACTIONS_REQUEST_TOKEN = "actions-request-token-secret"
EXPIRES_AT = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass
class Script:
    """What the stand-ins do next; tests mutate it."""

    unavailable: int = 0  # fail this many calls with UNAVAILABLE / 503 first
    deny: bool = False
    huge: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


class _Servicer(sts_pb2_grpc.SecurityTokenServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Exchange(self, request: sts_pb2.ExchangeRequest, context: grpc.ServicerContext) -> Any:
        md = dict(context.invocation_metadata())
        self.script.calls.append(
            {
                "scope": request.scope,
                "identity": request.identity,
                "audience": request.audience if request.HasField("audience") else None,
                "authorization": md.get("authorization"),
            }
        )
        if self.script.unavailable > 0:
            self.script.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
        if md.get("authorization") != f"Bearer {OIDC_TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token expired")
        if self.script.deny:
            info = any_pb2.Any()
            info.Pack(
                error_details_pb2.ErrorInfo(
                    reason="policy_denied", domain="octo-sts.dev", metadata={"request_id": "r-7"}
                )
            )
            status = status_pb2.Status(
                code=code_pb2.PERMISSION_DENIED, message="no trust policy matched", details=[info]
            )
            context.set_trailing_metadata(
                (("grpc-status-details-bin", status.SerializeToString()),)
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no trust policy matched")
        context.send_initial_metadata((("x-request-id", "r-ok"),))
        response = sts_pb2.ExchangeResponse(
            token=MINTED_TOKEN,
            access_token=MINTED_TOKEN,
            token_type="Bearer",
            expires_in=3600,
            permissions={"contents": "read"},
            repositories=["app"] * (100_000 if self.script.huge else 1),
        )
        response.expires_at.FromDatetime(EXPIRES_AT)
        return response


class GrpcStandIn:
    transport = "grpc"

    def __init__(self, certs: Any | None = None) -> None:
        self.script = Script()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        sts_pb2_grpc.add_SecurityTokenServiceServicer_to_server(_Servicer(self.script), self.server)
        if certs is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            self.endpoint = f"http://127.0.0.1:{self.port}"
        else:
            creds = grpc.ssl_server_credentials(
                [(Path(certs.key).read_bytes(), Path(certs.cert).read_bytes())]
            )
            self.port = self.server.add_secure_port("localhost:0", creds)
            self.endpoint = f"https://localhost:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"content-type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            status,
            json.dumps(data).encode(),
            {"content-type": "application/json", **(headers or {})},
        )

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        script = self.server.script
        auth = self.headers.get("authorization")
        if url.path == "/actions-token":
            script.calls.append({"actions": True, "query": query, "authorization": auth})
            if auth != f"bearer {ACTIONS_REQUEST_TOKEN}":
                self._json(401, {"message": "bad request token"})
            else:
                self._json(200, {"count": 1, "value": OIDC_TOKEN})
            return
        if url.path != "/sts/exchange":
            self._json(404, {"code": 5, "message": "not found"})
            return
        script.calls.append({**query, "authorization": auth})
        if script.unavailable > 0:
            script.unavailable -= 1
            self._send(
                503,
                b"upstream connect error or disconnect/reset before headers",
                {"content-type": "text/plain"},
            )
        elif auth != f"Bearer {OIDC_TOKEN}":
            self._json(
                401, {"code": "token_expired", "message": "token expired", "request_id": "edge-1"}
            )
        elif script.deny:
            self._json(
                403,
                {
                    "code": 7,
                    "message": "no trust policy matched",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "policy_denied",
                            "domain": "octo-sts.dev",
                        }
                    ],
                },
                {"x-request-id": "r-7"},
            )
        elif script.huge:
            self._json(200, {"token": MINTED_TOKEN, "padding": "x" * 300_000})
        else:
            self._json(
                200,
                {
                    "token": MINTED_TOKEN,
                    "access_token": MINTED_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "expires_at": "2031-01-02T03:04:05Z",
                    "permissions": {"contents": "read"},
                    "repositories": ["app"],
                },
                {"x-request-id": "r-ok"},
            )

    def do_DELETE(self) -> None:
        if self.path != "/api/installation/token":
            self._json(404, {"message": "Not Found"})
            return
        auth = self.headers.get("authorization", "")
        if auth == f"Bearer {MINTED_TOKEN}" and MINTED_TOKEN not in self.server.script.revoked:
            self.server.script.revoked.append(MINTED_TOKEN)
            self._send(204, b"", {})
        else:
            self._json(401, {"message": "Bad credentials"})


class _Server(DevHTTPServer):
    script: Script


class HttpStandIn:
    transport = "http"

    def __init__(self, certs: Any | None = None) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.script = Script()
        self.httpd.script = self.script
        self.port = self.httpd.server_address[1]
        host = "127.0.0.1"
        scheme = "http"
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs.cert, certs.key)
            self.httpd.ssl_context = ctx
            host, scheme = "localhost", "https"
        self.endpoint = f"{scheme}://{host}:{self.port}"
        self.actions_url = f"{self.endpoint}/actions-token?api-version=2.0"
        self.github_api = f"{self.endpoint}/api"
        self.httpd.start("stand-in")

    def stop(self) -> None:
        self.httpd.stop()
