"""A small OIDC issuer for development and tests.

Serves ``/.well-known/openid-configuration`` and a JWKS document for one or
more signing keys (RSA, EC P-256/P-384, Ed25519) and mints tokens signed
with them: a stand-in for GitHub Actions or Kubernetes service-account
tokens. Tests run it in-process on a background thread (optionally over TLS
with ``octosts.dev.certs.ensure_dev_certs``) and use its hooks to misbehave:
per-path request counts (also served at ``GET /_issuer/requests``, for an issuer running as
a process), an injectable delay, canned responses (oversized,
garbage, 500), a wrong ``issuer`` in discovery, redirects, key rotation.
``octo-sts dev issuer`` runs the same server from a state directory that
``octo-sts dev token`` reads to sign with the key being served.

Development tool: keys are generated on the fly and stored unencrypted.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal, Self

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from octosts.dev.certs import CertPaths
from octosts.dev.httpserver import DevHTTPServer
from octosts.dev.waiting import wait_for

KeyKind = Literal["rsa", "ec", "ec384", "ed25519"]
# Per-path request counts so far (not counting itself): tests of stacks of processes.
REQUEST_COUNTS_PATH = "/_issuer/requests"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks"
STATE_FILE = "issuer.json"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: PrivateKey
    alg: str  # the algorithm mint() uses by default

    def public_jwk(self, *, publish_alg: bool) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if publish_alg:
            jwk["alg"] = self.alg
        return jwk

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_key(kind: KeyKind = "rsa", kid: str | None = None) -> SigningKey:
    private: PrivateKey
    if kind == "rsa":
        private, alg = rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    elif kind == "ec":
        private, alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
    elif kind == "ec384":
        private, alg = ec.generate_private_key(ec.SECP384R1()), "ES384"
    elif kind == "ed25519":
        private, alg = ed25519.Ed25519PrivateKey.generate(), "EdDSA"
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    return SigningKey(kid=kid or _thumbprint(private), private_key=private, alg=alg)


def load_key(pem: bytes, kid: str) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, rsa.RSAPrivateKey):
        alg = "RS256"
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        alg = "ES384" if private.curve.name == "secp384r1" else "ES256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        raise TypeError("unsupported key type")
    return SigningKey(kid=kid, private_key=private, alg=alg)


def _thumbprint(private: PrivateKey) -> str:
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class CannedResponse:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    send_length: bool = True  # False: no Content-Length, the body ends when the connection does


class _Server(DevHTTPServer):
    issuer: DevIssuer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients hanging up mid-response (timeouts in tests) are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "octo-sts-dev-issuer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        issuer = self.server.issuer
        path = self.path
        response = issuer.handle(path)
        if response is None:
            return  # stopped while delaying
        with contextlib.suppress(OSError):
            self.send_response(response.status)
            headers = {"Content-Type": "application/json", **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            if response.send_length:
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)


class DevIssuer:
    """An OIDC issuer on a background thread.

    ``with DevIssuer(...) as issuer:`` starts it; ``issuer.url`` is the issuer
    URL (``https://127.0.0.1:PORT`` with TLS, ``http://...`` without, plus
    ``path_prefix``; ``url_host`` replaces the bound address). Mutating
    hooks are plain attributes, safe to set from the test thread: ``delay``,
    ``discovery_issuer``, ``jwks_uri``, ``publish_alg``, ``responses``
    (path -> CannedResponse).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: CertPaths | None = None,
        issuer_url: str | None = None,
        url_host: str | None = None,
        path_prefix: str = "",
        keys: list[SigningKey] | None = None,
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.issuer = self
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            self._server.ssl_context = ctx
        bound_host, bound_port = str(self._server.server_address[0]), self._server.server_address[1]
        scheme = "https" if tls is not None else "http"
        # url_host: the name put in URLs (e.g. "localhost", which the dev certificate covers)
        shown = url_host or (f"[{bound_host}]" if ":" in bound_host else bound_host)
        self.url = issuer_url or f"{scheme}://{shown}:{bound_port}{path_prefix}"
        self.base_url = f"{scheme}://{shown}:{bound_port}"
        self.path_prefix = path_prefix
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        for key in keys or []:
            self.add_key(key)
        self._stopping = threading.Event()
        self.requests: collections.Counter[str] = collections.Counter()
        self.delay: float = 0.0
        self.discovery_issuer: str | None = None  # None: the real issuer URL
        self.jwks_uri: str | None = None  # None: this server's JWKS URL
        self.publish_alg = True
        self.responses: dict[str, CannedResponse] = {}

    # -- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def discovery_path(self) -> str:
        return self.path_prefix + DISCOVERY_PATH

    @property
    def jwks_path(self) -> str:
        return self.path_prefix + JWKS_PATH

    def start(self) -> Self:
        # the socket is already bound and listening: connections queue until
        # serve_forever runs, so callers need no readiness wait
        self._server.start("dev-issuer")
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until(self, stop: threading.Event) -> None:
        """Serve on the calling thread's behalf until ``stop`` is set (the CLI)."""
        self.start()
        try:
            wait_for(stop)
        finally:
            self.stop()

    # -- keys ----------------------------------------------------------------

    def add_key(self, key: SigningKey | KeyKind = "rsa") -> SigningKey:
        if isinstance(key, str):
            key = generate_key(key)
        with self._lock:
            self._keys[key.kid] = key
        return key

    def remove_key(self, kid: str) -> None:
        with self._lock:
            self._keys.pop(kid, None)

    @property
    def keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._keys.values())

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk(publish_alg=self.publish_alg) for k in self.keys]}

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        kid: str | None = None,
        alg: str | None = None,
        ttl: float = 600,
        headers: Mapping[str, Any] | None = None,
        **more: Any,
    ) -> str:
        """A signed JWT: ``iss``/``iat``/``exp`` defaulted, then ``claims`` and ``more``.

        ``kid`` picks the key (default: the newest); ``alg`` overrides the
        key's default algorithm (e.g. PS256 with an RSA key).
        """
        keys = self.keys
        if not keys:
            raise LookupError("the issuer has no keys")
        key = next((k for k in keys if k.kid == kid), None) if kid else keys[-1]
        if key is None:
            raise LookupError(f"no key {kid!r}")
        return mint_token(
            key, self.url, {**(claims or {}), **more}, ttl=ttl, alg=alg, headers=headers
        )

    # -- serving -------------------------------------------------------------

    def handle(self, path: str) -> CannedResponse | None:
        if path == REQUEST_COUNTS_PATH:
            with self._lock:
                counts = dict(self.requests)
            return CannedResponse(body=json.dumps(counts).encode())
        with self._lock:
            self.requests[path] += 1
        if self.delay and self._stopping.wait(self.delay):
            return None
        canned = self.responses.get(path)
        if canned is not None:
            return canned
        if path == self.discovery_path:
            doc = {
                "issuer": self.discovery_issuer or self.url,
                "jwks_uri": self.jwks_uri or self.base_url + self.jwks_path,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
                "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
            }
            return CannedResponse(body=json.dumps(doc).encode())
        if path == self.jwks_path:
            return CannedResponse(body=json.dumps(self.jwks()).encode())
        return CannedResponse(status=404, body=b'{"error":"not found"}')

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.responses[path] = CannedResponse(status=status, headers={"Location": location})


def mint_token(
    key: SigningKey,
    issuer_url: str,
    claims: Mapping[str, Any],
    *,
    ttl: float = 600,
    alg: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` (after defaulted ``iss``, ``iat``, ``exp``) with ``key``."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": issuer_url, "iat": now, "exp": now + int(ttl)}
    payload.update(claims)
    header = {"kid": key.kid, **(headers or {})}
    return jwt.encode(payload, key.private_key, algorithm=alg or key.alg, headers=header)


# -- state directory shared by `dev issuer` and `dev token` -------------------


def save_state(state_dir: Path, issuer_url: str, key: SigningKey) -> None:
    """Persist the signing key (mode 0600) and the issuer URL for ``dev token``."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = state_dir / f"{key.kid}.pem"
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.write_bytes(key.private_pem())
    (state_dir / STATE_FILE).write_text(
        json.dumps({"issuer": issuer_url, "signing_kid": key.kid}) + "\n"
    )


@dataclass(frozen=True, slots=True)
class IssuerState:
    issuer_url: str
    key: SigningKey


def load_state(state_dir: Path) -> IssuerState | None:
    """The issuer URL and signing key saved by ``save_state``, or None if absent.

    Raises ValueError for a state directory that exists but cannot be used.
    """
    state_file = state_dir / STATE_FILE
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text())
        kid = str(state["signing_kid"])
        issuer_url = str(state["issuer"])
        # the kid names a file: keep it inside the state directory
        key_path = state_dir / f"{Path(kid).name}.pem"
        key = load_key(key_path.read_bytes(), kid)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unusable issuer state in {state_dir}: {exc}") from exc
    return IssuerState(issuer_url=issuer_url, key=key)
