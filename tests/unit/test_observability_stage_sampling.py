"""Stages under a parent that was not sampled start no span when the sampler follows parents."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.context import attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    Tracer,
    set_span_in_context,
)
from prometheus_client import CollectorRegistry

from octosts.observability.metrics import Metrics
from octosts.observability.stages import TelemetryObserver
from octosts.observability.tracing import follows_parent


class CountingTracer:
    """The SDK tracer, counting the spans asked of it."""

    def __init__(self, inner: Tracer) -> None:
        self.inner = inner
        self.started = 0

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.started += 1
        return self.inner.start_span(name, *args, **kwargs)


def _parent(*, sampled: bool) -> NonRecordingSpan:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags))


def _stages_under(parent: NonRecordingSpan, *, follows: bool) -> tuple[int, int, float]:
    """(spans asked for, spans recorded, stage samples counted) for two stages."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = CountingTracer(provider.get_tracer("t"))
    metrics = Metrics(CollectorRegistry())
    observer = TelemetryObserver(metrics, tracer, follows_parent=follows)  # type: ignore[arg-type]
    token = attach(set_span_in_context(parent))
    try:
        for name in ("verify", "mint"):
            with observer.stage(name) as stage:
                stage.annotate("cache", "miss")
    finally:
        detach(token)
    counted = sum(
        s.value
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "octo_sts_stage_duration_seconds_count"
    )
    return tracer.started, len(exporter.get_finished_spans()), counted


def test_no_stage_span_under_an_unsampled_parent_but_every_stage_is_counted() -> None:
    assert _stages_under(_parent(sampled=False), follows=True) == (0, 0, 2)


@pytest.mark.parametrize("follows", [True, False])
def test_a_sampled_parent_gets_its_stage_spans(follows: bool) -> None:
    assert _stages_under(_parent(sampled=True), follows=follows) == (2, 2, 2)


def test_without_following_parents_the_sampler_is_asked_every_time() -> None:
    assert _stages_under(_parent(sampled=False), follows=False) == (2, 0, 2)


def test_only_parent_based_samplers_follow_parents() -> None:
    assert follows_parent(TracerProvider(sampler=ParentBased(ALWAYS_ON)))
    assert not follows_parent(TracerProvider(sampler=ALWAYS_ON))
    assert not follows_parent(None)
