"""The grpc.aio server: services, health, reflection, graceful shutdown.

Health is NOT_SERVING until ``start`` has registered everything and again as
soon as shutdown begins, so Envoy's active health checks drain a replica
before its in-flight RPCs are cut (``stop(grace)``). In between, a fault of
the replica's own (``Readiness.local_fault``: out of file descriptors...)
makes it NOT_SERVING for ``Readiness.hold_seconds``, then SERVING again; an
upstream's failure never does (see ``domain.ports.ReplicaHealth``).

Health detail: the state of an upstream, as a health service of its own name
(``health_details``: ``octosts.github``), computed when a Check asks. It never
touches the overall status or the services' (every replica shares the upstream:
draining them all would help nobody); operators and probes ask for it by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from octosts.transport.admission import Admission
from octosts.transport.decoding import UndecodableRequestGuard

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_MESSAGE_BYTES = 64 * 1024  # requests are tiny; refuse anything large before parsing
# Request metadata (gRPC counts name + value + 32 per entry); the edge's header caps stay under it.
MAX_METADATA_BYTES = 32 * 1024
# gRPC core keeps calls the application has not picked up yet in a backlog and, past
# grpc.server.max_pending_requests (1000 by default), CANCELs new ones at random, more of
# them the nearer the backlog is to the hard limit (3000), with no detail: 1,500 concurrent
# calls on one channel lost ~50. Admission control answers overload explicitly
# (RESOURCE_EXHAUSTED, Retry-After), so the backlog only has to outlast a burst while the
# event loop picks calls up and sheds them. Past these, the core's random CANCEL remains
# (docs/architecture.md); through Envoy the backlog stays under its circuit breakers' size.
MAX_PENDING_CALLS = 5_000
MAX_PENDING_CALLS_HARD = 10_000
# The last resort after our own cut (Admission.drain) at the end of the grace period.
_CUT_MARGIN_SECONDS = 1.0

Registrar = Callable[[grpc.aio.Server], None]
_log = structlog.get_logger("octosts.server")


class Readiness:
    """This replica's own faults, as readiness (a ``domain.ports.ReplicaHealth``).

    Adapters are built before the server, so they get this object and the
    server attaches to it. ``hold_seconds`` 0: faults are only logged.
    """

    def __init__(self, hold_seconds: float) -> None:
        self.hold_seconds = hold_seconds
        self._hold: Callable[[float], None] | None = None

    def attach(self, hold: Callable[[float], None]) -> None:
        self._hold = hold

    def local_fault(self, cause: str) -> None:
        _log.warning("replica.local_fault", cause=cause, unready_seconds=self.hold_seconds)
        if self.hold_seconds > 0 and self._hold is not None:
            self._hold(self.hold_seconds)


class _HealthWithDetail(health.aio.HealthServicer):  # type: ignore[misc]  # grpc is untyped
    """grpc.health.v1 plus detail services whose status is asked of a callable on each Check.

    Detail services answer Check only (a Watch on one reports SERVICE_UNKNOWN).
    """

    def __init__(self, details: Mapping[str, Callable[[], bool]]) -> None:
        super().__init__()
        self._details = dict(details)

    async def Check(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        healthy = self._details.get(request.service)
        if healthy is None:
            return await super().Check(request, context)
        ok = healthy() and not self._gracefully_shutting_down
        return health_pb2.HealthCheckResponse(status=_SERVING if ok else _NOT_SERVING)


class GrpcServer:
    def __init__(
        self,
        address: str,
        registrars: Sequence[Registrar],
        *,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        reuse_port: bool = False,
        readiness: Readiness | None = None,
        health_details: Mapping[str, Callable[[], bool]] | None = None,
        admission: Admission | None = None,
    ) -> None:
        options = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD),
        ]
        # The guard is innermost: the others (metrics, spans) see the answer it gives.
        guarded = (*interceptors, UndecodableRequestGuard())
        self._server = grpc.aio.server(interceptors=guarded, options=options)
        self._health = _HealthWithDetail(health_details or {})
        self._address = address
        self._service_names = tuple(service_names)
        for register in registrars:
            register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self._stopping = False
        self._held_until = 0.0
        self._holding: asyncio.Task[None] | None = None
        self._admission = admission
        self._watching: asyncio.Task[None] | None = None
        if readiness is not None:
            readiness.attach(self._hold_not_serving)

    def _hold_not_serving(self, seconds: float) -> None:
        """NOT_SERVING from now until ``seconds`` after the last call; then SERVING again."""
        loop = asyncio.get_running_loop()
        self._held_until = max(self._held_until, loop.time() + seconds)
        if self._holding is None or self._holding.done():
            self._holding = loop.create_task(self._held())

    async def _held(self) -> None:
        await self._set_all(_NOT_SERVING)
        loop = asyncio.get_running_loop()
        # A deadline that later faults push back, not an event anyone sets.
        while (left := self._held_until - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
        if not self._stopping:
            await self._set_all(_SERVING)

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    async def start(self) -> int:
        """Bind, start and report SERVING. Returns the bound port."""
        await self._set_all(_NOT_SERVING)
        self.port = self._server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self._address}")
        await self._server.start()
        if self._admission is not None:
            self._watching = asyncio.get_running_loop().create_task(self._admission.watch_loop())
        await self._set_all(_SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, then let in-flight RPCs finish for ``grace`` seconds.

        Calls still running then are cut by ``Admission.drain`` and answer UNAVAILABLE
        ``shutting_down`` (Envoy retries them elsewhere); gRPC's own "Cancelling all
        calls" comes only a margin later, for a handler that ignores cancellation.
        """
        self._stopping = True
        if self._holding is not None:
            self._holding.cancel()
        await self._health.enter_graceful_shutdown()
        if self._admission is None:
            await self._server.stop(grace)
            return
        stopping = asyncio.ensure_future(self._server.stop(grace + _CUT_MARGIN_SECONDS))
        await self._admission.drain(grace)
        await stopping
        if self._watching is not None:
            self._watching.cancel()

    async def wait(self) -> None:
        await self._server.wait_for_termination()
