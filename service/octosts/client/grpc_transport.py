"""Exchange over native gRPC (TLS through Envoy, or plaintext inside a mesh)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.client._wire import (
    MAX_RESPONSE_BYTES,
    REASON_KEY,
    REQUEST_ID_KEYS,
    RETRY_AFTER_KEY,
    build_result,
    first_header,
    retry_after_seconds,
    short,
)
from octosts.client.errors import (
    ConfigError,
    DeadlineExceeded,
    ExchangeError,
    ServerError,
    error_for_code,
)
from octosts.client.models import Endpoint, ExchangeResult

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def channel_credentials(ca_file: str | os.PathLike[str] | None) -> Any:
    """TLS credentials trusting ``ca_file`` (PEM), or the system roots when None."""
    if ca_file is None:
        return grpc.ssl_channel_credentials()
    try:
        roots = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from exc
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]


def _request(
    scopes: tuple[str, ...], identity: str, audience: str | None
) -> sts_pb2.ExchangeRequest:
    # One scope goes in `scope`, which every server version reads; several in `scopes`.
    request = sts_pb2.ExchangeRequest(identity=identity)
    if len(scopes) == 1:
        request.scope = scopes[0]
    else:
        request.scopes.extend(scopes)
    if audience is not None:
        request.audience = audience
    return request


def _metadata_dict(*groups: Iterable[Any] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for group in groups:
        for key, value in group or ():
            merged.setdefault(str(key).lower(), value)
    return merged


def _text_metadata(md: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in md.items() if isinstance(v, str)}


def map_rpc_error(exc: grpc.RpcError, initial: Iterable[Any] | None = None) -> ExchangeError:
    """Turn a failed call into the client's error, with reason and request id when sent.

    The reason comes from a ``google.rpc.ErrorInfo`` in the rich status
    details (or an ``x-octo-sts-reason`` trailer); the request id from
    ``x-request-id`` metadata or the ErrorInfo's ``request_id`` entry.
    """
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    md = _metadata_dict(exc.trailing_metadata(), initial)
    text_md = _text_metadata(md)
    reason = text_md.get(REASON_KEY)
    request_id = first_header(text_md, REQUEST_ID_KEYS)
    details_bin = md.get(_STATUS_DETAILS_KEY)
    if isinstance(details_bin, bytes):
        try:
            status = status_pb2.Status.FromString(details_bin)
        except DecodeError:
            status = None
        for any_detail in status.details if status is not None else ():
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                reason = reason or info.reason or None
                request_id = request_id or info.metadata.get("request_id") or None
    message = short(exc.details() or name.lower().replace("_", " "))
    if name == "RESOURCE_EXHAUSTED" and "larger than max" in message:
        # Our own receive cap, not GitHub's rate limit: the answer is malformed.
        return ServerError(
            f"the response is larger than {MAX_RESPONSE_BYTES} bytes", request_id=request_id
        )
    return error_for_code(
        name,
        message,
        reason=reason and short(reason),
        request_id=request_id,
        retry_after=retry_after_seconds(text_md.get(RETRY_AFTER_KEY)),
    )


def _to_result(response: sts_pb2.ExchangeResponse, initial: Iterable[Any] | None) -> ExchangeResult:
    request_id = first_header(_text_metadata(_metadata_dict(initial)), REQUEST_ID_KEYS)
    expires_at = (
        response.expires_at.ToDatetime(tzinfo=dt.UTC) if response.HasField("expires_at") else None
    )
    return build_result(
        token=response.token or response.access_token or None,
        expires_at=expires_at,
        expires_in=response.expires_in or None,
        permissions=dict(response.permissions),
        repositories=list(response.repositories),
        token_type=response.token_type,
        request_id=request_id,
    )


class GrpcTransport:
    """Blocking gRPC transport; one channel, reused for every exchange."""

    def __init__(
        self, endpoint: Endpoint, *, ca_file: str | os.PathLike[str] | None = None
    ) -> None:
        if endpoint.tls:
            self._channel = grpc.secure_channel(
                endpoint.grpc_target, channel_credentials(ca_file), options=_channel_options()
            )
        else:
            self._channel = grpc.insecure_channel(endpoint.grpc_target, options=_channel_options())
        self._stub = sts_pb2_grpc.SecurityTokenServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,
    ) -> ExchangeResult:
        """One call. Raises ``ExchangeError`` subclasses."""
        try:
            response, call = self._stub.Exchange.with_call(
                _request(scopes, identity, audience),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, _safe_initial(exc)) from exc
        return _to_result(response, call.initial_metadata())

    def close(self) -> None:
        self._channel.close()


def _safe_initial(exc: grpc.RpcError) -> Any:
    getter = getattr(exc, "initial_metadata", None)
    return getter() if callable(getter) else None


class AsyncGrpcTransport:
    """grpc.aio transport for asyncio callers."""

    def __init__(
        self, endpoint: Endpoint, *, ca_file: str | os.PathLike[str] | None = None
    ) -> None:
        if endpoint.tls:
            self._channel = grpc.aio.secure_channel(
                endpoint.grpc_target, channel_credentials(ca_file), options=_channel_options()
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                endpoint.grpc_target, options=_channel_options()
            )
        self._stub = sts_pb2_grpc.SecurityTokenServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,  # noqa: ASYNC109  (a per-call deadline sent to the server)
    ) -> ExchangeResult:
        """One call. Raises ``ExchangeError`` subclasses."""
        call = self._stub.Exchange(
            _request(scopes, identity, audience),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=timeout,
        )
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, exc.initial_metadata()) from exc
        except TimeoutError as exc:
            raise DeadlineExceeded("the call timed out") from exc
        return _to_result(response, initial)

    async def close(self) -> None:
        await self._channel.close()
