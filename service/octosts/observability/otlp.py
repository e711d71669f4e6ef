"""A faster OTLP/gRPC span exporter: the request is encoded straight to protobuf wire bytes.

The stock exporter builds one protobuf object per span, attribute and value,
and groups spans by ``Resource``, whose hash serialises its attributes to JSON
on every span. On the exchange path (seven spans per warm exchange, all from
one resource and one tracer) that encoding cost the export thread about as
much CPU as creating the spans cost the request path.

``encode_request`` writes the same ``ExportTraceServiceRequest`` as
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` (the
tests parse both and compare), grouping by object identity and caching the
encoding of the resource, the scope and frequent attribute pairs. Anything it
does not handle (links, unusual attribute types) makes ``FastOTLPSpanExporter``
fall back to the stock encoder for that batch, so nothing is ever dropped for
being unusual.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Status
    from opentelemetry.util.types import AttributeValue

_PACK_Q = struct.Struct("<Q").pack
_PACK_D = struct.Struct("<d").pack
_PACK_I = struct.Struct("<I").pack
_U64 = 0xFFFFFFFFFFFFFFFF

# OTLP Span.kind (SPAN_KIND_INTERNAL = 1, ...) from the API's SpanKind.
_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
# Span.flags (fixed32, field 16): the parent's is_remote is known (and maybe set).
_FLAGS_LOCAL = b"\x85\x01" + _PACK_I(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _PACK_I(0x300)
_KV_CACHE_SIZE = 4096


class Unsupported(Exception):
    """The batch holds something this encoder does not write; use the stock one."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field; ``key`` is the encoded tag."""
    return key + _varint(len(payload)) + payload


def _any_value(value: AttributeValue) -> bytes:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & _U64)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    if isinstance(value, tuple | list):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise Unsupported(type(value).__name__)


def _key_value(key: str, value: AttributeValue) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


def _status(status: Status) -> bytes:
    # Always present, as the stock encoder sets it even when UNSET.
    body = _field(b"\x12", status.description.encode()) if status.description else b""
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    return _field(b"\x7a", body)


class _Encoder:
    """Encodes batches; holds the bounded caches (one per exporter, one export thread)."""

    def __init__(self) -> None:
        self._kv: dict[tuple[str, type, Any], bytes] = {}
        self._objects: dict[int, tuple[object, bytes]] = {}

    def attributes(self, key: bytes, attributes: Mapping[str, AttributeValue] | None) -> bytes:
        if not attributes:
            return b""
        cache = self._kv
        parts = []
        for name, value in attributes.items():
            if isinstance(value, tuple | list):
                parts.append(_field(key, _key_value(name, value)))
                continue
            # type() in the key: True and 1 are equal dict keys but encode differently.
            cache_key = (name, type(value), value)
            encoded = cache.get(cache_key)
            if encoded is None:
                encoded = _field(key, _key_value(name, value))
                if len(cache) >= _KV_CACHE_SIZE:
                    cache.clear()  # unique values (request ids) must not grow it
                cache[cache_key] = encoded
            parts.append(encoded)
        return b"".join(parts)

    def _once(self, obj: object, build: Any) -> bytes:
        """``build()`` cached by identity (the provider's resource and tracer scope)."""
        hit = self._objects.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        encoded: bytes = build()
        if len(self._objects) >= 64:
            self._objects.clear()
        self._objects[id(obj)] = (obj, encoded)
        return encoded

    def span(self, span: ReadableSpan) -> bytes:
        if span.links:
            raise Unsupported("links")
        ctx = span.get_span_context()
        if ctx is None or span.start_time is None or span.end_time is None:
            raise Unsupported("unfinished span")
        parts = [
            b"\x0a\x10",
            ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            ctx.span_id.to_bytes(8, "big"),
        ]
        if ctx.trace_state:
            state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
            parts.append(_field(b"\x1a", state.encode()))
        parent = span.parent
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (
            _field(b"\x2a", span.name.encode()),
            _KIND[span.kind],
            b"\x39",
            _PACK_Q(span.start_time),
            b"\x41",
            _PACK_Q(span.end_time),
            self.attributes(b"\x4a", span.attributes),
        )
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        parts += [self._event(event) for event in span.events]
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        parts.append(_status(span.status))
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _event(self, event: Event) -> bytes:
        body = b"\x09" + _PACK_Q(event.timestamp) + _field(b"\x12", event.name.encode())
        body += self.attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        return _field(b"\x5a", body)

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        # Group by identity, in first-seen order (as the stock encoder does by equality).
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            by_scope = groups.setdefault(id(resource), (resource, {}))[1]
            by_scope.setdefault(id(scope), (scope, []))[1].append(_field(b"\x12", self.span(span)))
        out = []
        for resource, by_scope in groups.values():
            body = self._once(
                resource,
                lambda r=resource: (
                    _field(b"\x0a", self.attributes(b"\x0a", r.attributes))
                    + (_field(b"\x1a", r.schema_url.encode()) if r.schema_url else b"")
                ),
            )
            for scope, encoded_spans in by_scope.values():
                head = self._once(scope, lambda s=scope: self._scope(s))
                body += _field(b"\x12", head + b"".join(encoded_spans))
            out.append(_field(b"\x0a", body))
        return b"".join(out)

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b"\x0a\x00"
        body = _field(b"\x0a", scope.name.encode()) if scope.name else b""
        if scope.version:
            body += _field(b"\x12", scope.version.encode())
        body += self.attributes(b"\x1a", scope.attributes)
        tail = _field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b""
        return _field(b"\x0a", body) + tail


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The wire bytes of the ``ExportTraceServiceRequest`` for ``spans``.

    Raises Unsupported for what it does not encode (span links, unusual values).
    """
    return _Encoder().request(spans)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` with the cheaper encoding (same request, same transport)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _Encoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        try:
            wire = self._encoder.request(data)
        except Unsupported:
            return encode_spans(data)
        # upb parses in C; the stub serialises it again (cheap) on the way out.
        return ExportTraceServiceRequest.FromString(wire)
