"""The Prometheus + OpenTelemetry ``StageObserver`` used by the service.

Each ``stage(name)`` opens a child span of the current span (the RPC span
opened by the transport interceptor) and times the block into
``octo_sts_stage_duration_seconds{stage, outcome}``. ``outcome`` is ``ok``,
the StsError family (``unauthenticated``, ``permission_denied``,
``invalid_request``, ``rate_limited``, ``upstream_unavailable``,
``internal``) or ``error`` for a foreign exception.

Annotations become span attributes. The ``cache`` keys also feed a metric, so
caching adapters only need the ``StageObserver`` port (no metrics object):

==============================  =====================================================
``cache`` = hit|miss|stale|...  ``octo_sts_cache_requests_total{cache=<cache.name or
                                stage>, result}``; ``cache.name`` optional
``refused.<reason>`` = count    ``octo_sts_refusals_total{stage, reason}`` += count
==============================  =====================================================

GitHub call metrics are not derived here: the GitHub REST core
(``adapters.github_rest``) records every call itself, including those made
outside any stage, so each metric has one feed.

Stages named ``*_cache`` (pure cache look-ups such as ``verified_token_cache``)
record metrics only, no span: a span would cost more than the look-up.

Exceptions are recorded on the span by type and StsError reason only: never
the message (a foreign exception's text may quote a request or response).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry.context import attach, detach
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    Status,
    StatusCode,
    get_current_span,
    set_span_in_context,
)

from octosts.domain.errors import StsError
from octosts.domain.ports import REFUSED_PREFIX
from octosts.observability.logging import scrub
from octosts.observability.metrics import error_family

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from octosts.domain.ports import Stage
    from octosts.observability.metrics import Metrics

_MAX_ATTR_LEN = 256


class _TelemetryStage:
    __slots__ = ("notes",)

    def __init__(self) -> None:
        self.notes: dict[str, str | int | bool] = {}

    def annotate(self, key: str, value: str | int | bool) -> None:  # noqa: FBT001
        # Defence in depth: annotations are ours, but never let a token through. Plain
        # ASCII letters and digits ("hit", "miss", "allowed") cannot hold one: no regex.
        if isinstance(value, str):
            if not (value.isascii() and value.isalnum()):
                value = scrub(value)
            value = value[:_MAX_ATTR_LEN]
        # Kept here and set on the span once, when it ends: one lock round per stage
        # instead of one per annotation.
        self.notes[key] = value


CACHE_LOOKUP_SUFFIX = "_cache"


class TelemetryObserver:
    """``StageObserver`` recording stage metrics and spans (see the module docstring)."""

    def __init__(self, metrics: Metrics, tracer: Tracer, *, follows_parent: bool = False) -> None:
        """``follows_parent``: the tracer's sampler never records a span whose parent was
        not sampled (``tracing.follows_parent``); stages then start no span under such a
        parent, as none of theirs would be recorded (at 10 % sampling, 9 calls in 10)."""
        self._metrics = metrics
        self._tracer = tracer
        self._tracing = not isinstance(tracer, NoOpTracer)
        self._follows_parent = follows_parent

    def _may_record(self) -> bool:
        if not self._tracing:
            return False
        if not self._follows_parent:
            return True
        parent = get_current_span().get_span_context()
        return not parent.is_valid or parent.trace_flags.sampled

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        # A cache lookup is a dictionary read: count it, but a span would cost more than
        # the lookup and clutter every trace.
        traced = not name.endswith(CACHE_LOOKUP_SUFFIX) and self._may_record()
        # start_span + attach rather than start_as_current_span: the SDK's context
        # manager stack (decorator, use_span, generator frames) cost about as much as
        # the span itself on this path, which runs several times per exchange.
        span = self._tracer.start_span(name) if traced else None
        # A non-recording span (tracing off, or not sampled) need not become current:
        # nested stages then hang off the RPC span's context, which carries the same
        # trace id and sampling decision.
        token = attach(set_span_in_context(span)) if span and span.is_recording() else None
        stage = _TelemetryStage()
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield stage
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            outcome = error_family(exc)
            if span is not None and token is not None:
                _record_error(span, exc)
            raise
        finally:
            elapsed = time.perf_counter() - start
            if span is not None and token is not None:
                detach(token)
                if stage.notes:
                    span.set_attributes(stage.notes)
                span.end()
            self._metrics.stage(name, outcome, elapsed)
            self._derived_metrics(name, stage.notes)

    def _derived_metrics(self, name: str, notes: dict[str, str | int | bool]) -> None:
        if not notes:
            return
        cache = notes.get("cache")
        if cache is not None:
            self._metrics.cache_request(str(notes.get("cache.name", name)), str(cache))
        for key, count in notes.items():
            if key.startswith(REFUSED_PREFIX) and isinstance(count, int):
                self._metrics.refused(name, key.removeprefix(REFUSED_PREFIX), count)


def _record_error(span: Span, exc: BaseException) -> None:
    if isinstance(exc, StsError):
        span.set_attribute("error.type", type(exc).__name__)
        span.set_attribute("octosts.reason", exc.reason)
        span.set_status(Status(StatusCode.ERROR, exc.reason))
        span.add_event("exception", {"exception.type": type(exc).__name__})
        return
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.add_event("exception", {"exception.type": kind})
