"""Admission control and the end of a drain: how many calls one worker takes at once.

``AdmissionInterceptor`` wraps the unary RPCs of the exchange path (Exchange,
ext_authz Check; never health) so that:

- at most ``Admission.limit`` of them run at once in this worker, and fewer while
  the worker's event loop runs late: with more than ``MIN_IN_FLIGHT`` calls in
  progress and the loop ``MAX_LOOP_LAG`` behind (the CPU cannot keep up), a new
  call is not taken either. A call not taken is answered at once, before any
  work, with RESOURCE_EXHAUSTED, reason ``overloaded`` and ``retry-after`` (the
  answer table's ``Overloaded`` row). Without a bound, calls beyond the knee
  queued inside the process for up to 25 s, all of them slow, most past their
  callers' deadlines; shed at once they cost microseconds and the admitted ones
  keep their latency. Why both: a count high enough for calls that wait on GitHub
  (I/O, no CPU) lets calls that need the CPU queue for seconds (measured: at 100
  calls, Envoy's 0.5 s Check timeout answered most of the excess); a count low
  enough for the CPU refuses ordinary bursts. The loop's lag measures the queue
  for the CPU directly.
- at shutdown, ``Admission.drain(grace)`` waits for the calls in flight and, when
  the grace period ends, cancels those left; each answers UNAVAILABLE, reason
  ``shutting_down`` (the ``ShuttingDown`` row) instead of gRPC's raw
  "Cancelling all calls", so Envoy retries it on another replica.

The bound is per worker (one event loop, one CPU): ``OCTOSTS_MAX_CONCURRENT_RPCS``.
Envoy's circuit breakers for the cluster are sized from it (``octosts.dev.envoy``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from octosts.domain.errors import Overloaded, ShuttingDown, StsError
from octosts.transport.errors import failure
from octosts.transport.request_id import current_request_id
from octosts.transport.sts import OAUTH_TOKEN_METHOD, answer_oauth
from octosts.transport.unary import Behavior, Continuation, rewrapped, run, unary_behavior

if TYPE_CHECKING:
    from octosts.observability.metrics import Metrics

# Never shed or cut: Envoy's health checks must see a busy replica as alive (NOT_SERVING
# comes from draining, not load), and reflection is a debugging aid.
UNLIMITED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CUT = "shutting_down"
# The event loop this late (a ready call waits this long for the CPU) means "full"...
MAX_LOOP_LAG = 0.05
# ...unless so few calls are in progress that the lag is someone else's (a noisy neighbour):
# a replica always makes progress.
MIN_IN_FLIGHT = 16
_TICK = 0.01
_MAX_METHODS = 64


class Admission:
    """The calls in flight in one worker: a bound, and their end when draining."""

    def __init__(self, limit: int, *, max_lag: float = MAX_LOOP_LAG) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.max_lag = max_lag
        self.lag = 0.0  # how late the loop ran its last timers, seconds (see ``watch_loop``)
        self._running: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def full(self) -> str | None:
        """Why a new call cannot be taken now, or None."""
        running = len(self._running)
        if running >= self.limit:
            return f"{running} calls in progress, the limit"
        if running >= MIN_IN_FLIGHT and self.lag > self.max_lag:
            return f"{running} calls in progress and the CPU {self.lag * 1000:.0f} ms behind"
        return None

    async def watch_loop(self) -> None:
        """Measure the event loop's lag until cancelled: a 10 ms timer, how late it fires.

        Smoothed (a third of each new reading), so one slow step (a collection, a large
        response) does not shed calls; sustained lag does within a few ticks.
        """
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(_TICK)
            late = loop.time() - start - _TICK
            self.lag += (late - self.lag) / 3

    def admit(self) -> asyncio.Task[Any] | None:
        """Count the running call in; None when the worker is full (shed it, see ``full``)."""
        if self.full() is not None:
            return None
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpc.aio runs every call in a task
            raise RuntimeError("admit() outside a task")
        self._running.add(task)
        return task

    def release(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        self._cut.discard(task)

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """True when ``drain`` cancelled this call (rather than its caller, or a deadline)."""
        return task in self._cut

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls in flight, then cut those left.

        Returns how many were cut; they end with UNAVAILABLE ``shutting_down`` (see
        ``AdmissionInterceptor``) once their handlers have unwound.
        """
        running = set(self._running)
        if not running:
            return 0
        _, left = await asyncio.wait(running, timeout=grace)
        for task in left:
            self._cut.add(task)
            task.cancel(_CUT)
        if left:
            await asyncio.wait(left)  # each sends its answer as it unwinds
        return len(left)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Sheds calls past ``Admission.limit``; answers cut calls as ``shutting_down``."""

    def __init__(self, admission: Admission, metrics: Metrics) -> None:
        self._admission = admission
        self._metrics = metrics
        # Registered handler -> its admitted twin, built once per method, not per call.
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = unary_behavior(handler)
        method = str(handler_call_details.method)
        if behavior is None or method.startswith(UNLIMITED_PREFIXES):
            return handler
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            # The OAuth token endpoint answers in RFC 6749's shape, shed calls included.
            answer = _answer_oauth if method == OAUTH_TOKEN_METHOD else _answer
            wrapped = rewrapped(handler, self._wrap(behavior, answer))
            if len(self._wrapped) < _MAX_METHODS:  # registered handlers are a fixed few
                self._wrapped[handler] = wrapped
        return wrapped

    def _wrap(
        self, behavior: Behavior, answer: Callable[[grpc.aio.ServicerContext, StsError], Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        admission, metrics = self._admission, self._metrics

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            task = admission.admit()
            if task is None:
                metrics.shed(Overloaded.reason)
                await answer(context, Overloaded(admission.full() or "full"))
            metrics.in_flight(admission.in_flight)
            try:
                result = await run(behavior, request, context)
            except asyncio.CancelledError:
                if task is None or not admission.was_cut(task):
                    raise  # the caller went away or its deadline passed: nobody to answer
                task.uncancel()
                metrics.shed(ShuttingDown.reason)
                await answer(context, ShuttingDown("still running when the grace period ended"))
            else:
                return result
            finally:
                if task is not None:
                    admission.release(task)
                    metrics.in_flight(admission.in_flight)

        return admitted


async def _answer(context: grpc.aio.ServicerContext, error: StsError) -> None:
    failed = failure(error, current_request_id())
    await context.abort(failed.code, failed.message, trailing_metadata=failed.trailers())


async def _answer_oauth(context: grpc.aio.ServicerContext, error: StsError) -> None:
    await answer_oauth(context, error, current_request_id())
