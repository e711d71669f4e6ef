"""OpenTelemetry tracing set up from the standard ``OTEL_*`` variables.

Tracing is OFF unless configured: ``OTEL_TRACES_EXPORTER=otlp`` (or
``console``), or an OTLP endpoint variable is set. ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` turn it off whatever else is set.

Spans are exported over OTLP/gRPC by a ``BatchSpanProcessor``: a bounded queue
(spans are dropped when it is full) drained by a background thread with a
short export timeout, so a slow or dead collector never slows or fails a
request. Nothing here touches the global tracer provider: the wiring passes
the provider (and ``make_tracer(provider)``) to whoever needs it.

Variables read (all optional)::

    OTEL_SDK_DISABLED                       true -> off
    OTEL_TRACES_EXPORTER                    otlp | console | none
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT      falls back to OTEL_EXPORTER_OTLP_ENDPOINT,
                                            then http://localhost:4317
    OTEL_EXPORTER_OTLP[_TRACES]_INSECURE    true for plaintext (implied by http://)
    OTEL_EXPORTER_OTLP[_TRACES]_HEADERS     k=v,k2=v2 (e.g. collector auth; never logged)
    OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT     export timeout, milliseconds (default 3000)
    OTEL_SERVICE_NAME                       default "octo-sts"
    OTEL_RESOURCE_ATTRIBUTES                k=v,k2=v2
    OTEL_TRACES_SAMPLER[_ARG]               parentbased_always_on (default), always_on,
                                            always_off, traceidratio, parentbased_traceidratio,
                                            parentbased_always_off
    OTEL_BSP_MAX_QUEUE_SIZE                 default 2048
    OTEL_BSP_SCHEDULE_DELAY                 milliseconds, default 1000
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE          default 512
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "octosts"
_PROPAGATOR = TraceContextTextMapPropagator()


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable has a value we cannot use."""


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: str  # "otlp", "console" or "none"
    endpoint: str = "http://localhost:4317"
    insecure: bool = False
    headers: str = field(default="", repr=False)  # may carry collector credentials
    timeout_s: float = 3.0
    service_name: str = "octo-sts"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    max_queue_size: int = 2048
    schedule_delay_ms: float = 1000.0
    max_export_batch_size: int = 512

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


def _get(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _bool(name: str, value: str | None, default: bool) -> bool:  # noqa: FBT001
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise TracingConfigError(f"{name} must be true or false")


def _number(name: str, value: str | None, default: float, minimum: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise TracingConfigError(f"{name} must be a number") from None
    if number < minimum:
        raise TracingConfigError(f"{name} must be at least {minimum}")
    return number


def _pairs(name: str, value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise TracingConfigError(f"{name} must be a list of key=value pairs")
        out[unquote(key.strip())] = unquote(val.strip())
    return out


_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


def settings_from_env(env: Mapping[str, str]) -> TracingSettings:
    """Read the ``OTEL_*`` variables of ``env``. Raises TracingConfigError."""
    disabled = _bool("OTEL_SDK_DISABLED", _get(env, "OTEL_SDK_DISABLED"), default=False)
    endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter = (_get(env, "OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")).lower()
    if exporter not in ("otlp", "console", "none"):
        raise TracingConfigError("OTEL_TRACES_EXPORTER must be otlp, console or none")
    if disabled:
        exporter = "none"
    endpoint = endpoint or "http://localhost:4317"
    if not endpoint.startswith(("http://", "https://")):
        raise TracingConfigError("the OTLP endpoint must be an http:// or https:// URL")
    insecure = _bool(
        "OTEL_EXPORTER_OTLP_INSECURE",
        _get(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
        default=endpoint.startswith("http://"),
    )
    timeout_ms = _number(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        _get(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        3000.0,
        1.0,
    )
    sampler = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in _SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER must be one of {sorted(_SAMPLERS)}")
    sampler_arg = _number("OTEL_TRACES_SAMPLER_ARG", _get(env, "OTEL_TRACES_SAMPLER_ARG"), 1.0, 0)
    if sampler_arg > 1:
        raise TracingConfigError("OTEL_TRACES_SAMPLER_ARG must be between 0 and 1")
    return TracingSettings(
        exporter=exporter,
        endpoint=endpoint,
        insecure=insecure,
        headers=_get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or "",
        timeout_s=timeout_ms / 1000.0,
        service_name=_get(env, "OTEL_SERVICE_NAME") or "octo-sts",
        resource_attributes=_pairs(
            "OTEL_RESOURCE_ATTRIBUTES", _get(env, "OTEL_RESOURCE_ATTRIBUTES")
        ),
        sampler=sampler,
        sampler_arg=sampler_arg,
        max_queue_size=int(
            _number("OTEL_BSP_MAX_QUEUE_SIZE", _get(env, "OTEL_BSP_MAX_QUEUE_SIZE"), 2048, 1)
        ),
        schedule_delay_ms=_number(
            "OTEL_BSP_SCHEDULE_DELAY", _get(env, "OTEL_BSP_SCHEDULE_DELAY"), 1000.0, 1.0
        ),
        max_export_batch_size=int(
            _number(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                _get(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
                512,
                1,
            )
        ),
    )


def _sampler(settings: TracingSettings) -> Sampler:
    ratio = TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.sampler]


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    # Imported here: it pulls in grpc and the OTLP protos, unneeded when tracing is off.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter(
        endpoint=settings.endpoint,
        insecure=settings.insecure,
        headers=settings.headers or None,
        timeout=settings.timeout_s,
    )


def build_tracer_provider(
    settings: TracingSettings, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """A provider exporting through a bounded batch processor, or None when tracing is off.

    ``exporter`` overrides the one chosen by ``settings`` (tests). The caller
    owns the provider and must ``shutdown()`` it (flushes within the timeout).
    """
    if not settings.enabled and exporter is None:
        return None
    resource = Resource.create(
        {**settings.resource_attributes, "service.name": settings.service_name}
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(settings))
    if exporter is None:
        exporter = (
            ConsoleSpanExporter() if settings.exporter == "console" else _otlp_exporter(settings)
        )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_ms,
            max_export_batch_size=min(settings.max_export_batch_size, settings.max_queue_size),
            export_timeout_millis=settings.timeout_s * 1000.0,
        )
    )
    return provider


def follows_parent(provider: TracerProvider | None) -> bool:
    """Whether ``provider`` never records a span whose parent was not sampled: its sampler
    is parent-based (``_sampler`` makes those with ALWAYS_OFF for unsampled parents)."""
    return provider is not None and isinstance(provider.sampler, ParentBased)


def make_tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    """The service's tracer from ``provider``; a no-op tracer when tracing is off."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME)


def extract_trace_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The W3C trace context (``traceparent``/``tracestate``) carried in gRPC metadata.

    Malformed or missing headers give an empty context (a new trace starts).
    """
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str) and key.lower() in ("traceparent", "tracestate"):
            carrier[key.lower()] = value
    return _PROPAGATOR.extract(carrier)


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or "" outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""
