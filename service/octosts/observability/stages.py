"""The Prometheus + OpenTelemetry ``StageObserver`` used by the service.

Each ``stage(name)`` opens a child span of the current span (the RPC span
opened by the transport interceptor) and times the block into
``octo_sts_stage_duration_seconds{stage, outcome}``. ``outcome`` is ``ok``,
the StsError family (``unauthenticated``, ``permission_denied``,
``invalid_request``, ``rate_limited``, ``upstream_unavailable``,
``internal``) or ``error`` for a foreign exception.

Annotations become span attributes. A few keys also feed metrics, so adapters
only need the ``StageObserver`` port (no metrics object):

==============================  =====================================================
``cache`` = hit|miss|stale|...  ``octo_sts_cache_requests_total{cache=<cache.name or
                                stage>, result}``; ``cache.name`` optional
``github.status`` = 200|...     ``octo_sts_github_requests_total{endpoint, status}``
                                and the request-duration histogram (the stage's time);
                                ``github.endpoint`` optional, defaults to the stage
``github.rate_limit_remaining`` ``octo_sts_github_rate_limit_remaining{installation}``
                                with ``installation_id``
==============================  =====================================================

Exceptions are recorded on the span by type and StsError reason only: never
the message (a foreign exception's text may quote a request or response).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, Status, StatusCode

from octosts.domain.errors import StsError
from octosts.observability.logging import scrub
from octosts.observability.metrics import error_family

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from octosts.domain.ports import Stage
    from octosts.observability.metrics import Metrics

_MAX_ATTR_LEN = 256


class _TelemetryStage:
    __slots__ = ("_notes", "_span")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._notes: dict[str, str | int | bool] = {}

    def annotate(self, key: str, value: str | int | bool) -> None:  # noqa: FBT001
        if isinstance(value, str):
            # Defence in depth: annotations are ours, but never let a token through.
            value = scrub(value)[:_MAX_ATTR_LEN]
        self._notes[key] = value
        self._span.set_attribute(key, value)


class TelemetryObserver:
    """``StageObserver`` recording stage metrics and spans (see the module docstring)."""

    def __init__(self, metrics: Metrics, tracer: Tracer) -> None:
        self._metrics = metrics
        self._tracer = tracer

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        with self._tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            stage = _TelemetryStage(span)
            start = time.perf_counter()
            outcome = "ok"
            try:
                yield stage
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except BaseException as exc:
                outcome = error_family(exc)
                _record_error(span, exc)
                raise
            finally:
                elapsed = time.perf_counter() - start
                self._metrics.stage(name, outcome, elapsed)
                self._derived_metrics(name, stage._notes, elapsed)  # noqa: SLF001

    def _derived_metrics(
        self, name: str, notes: dict[str, str | int | bool], elapsed: float
    ) -> None:
        if not notes:
            return
        cache = notes.get("cache")
        if cache is not None:
            self._metrics.cache_request(str(notes.get("cache.name", name)), str(cache))
        # ``github_status`` is the GitHub adapter's spelling; both feed the same metric.
        status = notes.get("github.status", notes.get("github_status"))
        if status is not None:
            endpoint = str(notes.get("github.endpoint", name))
            code = status if isinstance(status, int) else _int_or_text(str(status))
            self._metrics.github_request(endpoint, code, elapsed)
        remaining = notes.get("github.rate_limit_remaining")
        installation = notes.get("installation_id")
        if isinstance(remaining, int) and installation is not None:
            self._metrics.rate_limit_remaining(str(installation), remaining)


def _int_or_text(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


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
