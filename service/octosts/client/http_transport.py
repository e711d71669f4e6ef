"""Exchange over the HTTP/JSON gateway: ``GET /sts/exchange?scope=..&identity=..``."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from octosts.client._wire import (
    GRPC_CODE_NAMES,
    MAX_RESPONSE_BYTES,
    REASON_KEY,
    REQUEST_ID_KEYS,
    RETRY_AFTER_KEY,
    build_result,
    code_name,
    first_header,
    retry_after_seconds,
    short,
)
from octosts.client.errors import (
    ConfigError,
    DeadlineExceeded,
    ExchangeError,
    ServerError,
    Unavailable,
    error_for_http_status,
)
from octosts.client.models import Endpoint, ExchangeResult

EXCHANGE_PATH = "/sts/exchange"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def ssl_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A verifying TLS context trusting ``ca_file`` (PEM) or the system roots."""
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from exc


def _params(
    scopes: tuple[str, ...], identity: str, audience: str | None
) -> tuple[tuple[str, str], ...]:
    # One scope as `scope=` (what every server version reads), several as repeated `scopes=`.
    named = "scope" if len(scopes) == 1 else "scopes"
    params = (*((named, scope) for scope in scopes), ("identity", identity))
    return params if audience is None else (*params, ("audience", audience))


def _map_transport_error(exc: httpx.HTTPError) -> ExchangeError:
    # Connection failures are what gRPC calls UNAVAILABLE: safe to retry,
    # the request never reached the service. Timeouts are not retried.
    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceeded(f"the request timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError):
        return Unavailable(f"cannot reach the service: {short(str(exc)) or type(exc).__name__}")
    return ServerError(f"HTTP error: {short(str(exc)) or type(exc).__name__}")


def _parse_timestamp(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _parse_int(value: object) -> int | None:
    # The gateway may render integers as JSON strings (int64 rule).
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def to_result(status: int, headers: httpx.Headers, body: bytes) -> ExchangeResult:
    """Decode one gateway answer. Raises ``ExchangeError`` subclasses for non-200 answers."""
    request_id = first_header(headers, REQUEST_ID_KEYS)
    data = _decode(body)
    if status != 200:
        raise _error(status, headers, data, body, request_id)
    if not isinstance(data, dict):
        raise ServerError("the response is not a JSON object", request_id=request_id, status=status)
    permissions = data.get("permissions") or {}
    repositories = data.get("repositories") or []
    if not isinstance(permissions, dict) or not isinstance(repositories, list):
        raise ServerError("the response has malformed fields", request_id=request_id)
    return build_result(
        token=data.get("token") or data.get("access_token"),
        expires_at=_parse_timestamp(data.get("expires_at")),
        expires_in=_parse_int(data.get("expires_in")),
        permissions=permissions,
        repositories=repositories,
        token_type=data.get("token_type"),
        request_id=request_id,
    )


def _error(
    status: int, headers: httpx.Headers, data: Any, body: bytes, request_id: str | None
) -> ExchangeError:
    """Read the gateway's JSON error bodies, whichever produced them.

    - the transcoder (``convert_grpc_status``): ``{"code": 7, "message": ..., "details": [...]}``
      with an optional ``google.rpc.ErrorInfo`` detail carrying ``reason``;
    - the edge (ext_authz deny): ``{"code": "...", "message": ..., "request_id": ...}``;
    - anything else (Envoy's plain-text 503s): the first line of the body.
    """
    code: str | None = None
    reason = headers.get(REASON_KEY)
    message = ""
    if isinstance(data, dict):
        code = code_name(data.get("code"))
        message = _str_or_none(data.get("message")) or ""
        request_id = request_id or _str_or_none(data.get("request_id"))
        reason = reason or _str_or_none(data.get("reason"))
        for detail in data.get("details") or []:
            if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO_TYPE:
                reason = reason or _str_or_none(detail.get("reason"))
                metadata = detail.get("metadata")
                if isinstance(metadata, dict):
                    request_id = request_id or _str_or_none(metadata.get("request_id"))
    else:
        message = body[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").split("\n", 1)[0]
    if code is not None and code not in GRPC_CODE_NAMES.values():
        # The edge may send its reason as `code` ("token_expired"); the HTTP
        # status then decides the code.
        reason = reason or code.lower()
        code = None
    return error_for_http_status(
        status,
        short(message) or f"HTTP {status}",
        code=code,
        reason=short(reason) if reason else None,
        request_id=short(request_id) if request_id else None,
        retry_after=retry_after_seconds(headers.get(RETRY_AFTER_KEY)),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _collect(chunks: Iterator[bytes]) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > MAX_RESPONSE_BYTES:
            raise ServerError(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
    return bytes(out)


async def _acollect(chunks: AsyncIterator[bytes]) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if len(out) > MAX_RESPONSE_BYTES:
            raise ServerError(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
    return bytes(out)


class HttpTransport:
    """Blocking HTTP/JSON transport (httpx, HTTP/1.1, keep-alive)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = ssl_context(ca_file) if endpoint.tls else False
        self._client = httpx.Client(
            base_url=endpoint.base_url, verify=verify, transport=transport, follow_redirects=False
        )

    def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,
    ) -> ExchangeResult:
        """One request. Raises ``ExchangeError`` subclasses."""
        try:
            with self._client.stream(
                "GET",
                EXCHANGE_PATH,
                params=_params(scopes, identity, audience),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout,
            ) as response:
                body = _collect(response.iter_bytes())
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc) from exc
        return to_result(response.status_code, response.headers, body)

    def close(self) -> None:
        self._client.close()


class AsyncHttpTransport:
    """asyncio HTTP/JSON transport."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = ssl_context(ca_file) if endpoint.tls else False
        self._client = httpx.AsyncClient(
            base_url=endpoint.base_url, verify=verify, transport=transport, follow_redirects=False
        )

    async def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,  # noqa: ASYNC109  (a per-call deadline sent to the server)
    ) -> ExchangeResult:
        """One request. Raises ``ExchangeError`` subclasses."""
        try:
            async with self._client.stream(
                "GET",
                EXCHANGE_PATH,
                params=_params(scopes, identity, audience),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout,
            ) as response:
                body = await _acollect(response.aiter_bytes())
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc) from exc
        return to_result(response.status_code, response.headers, body)

    async def close(self) -> None:
        await self._client.aclose()
