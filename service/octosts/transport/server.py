"""The grpc.aio server: services, health, reflection, graceful shutdown.

Health is NOT_SERVING until ``start`` has registered everything and again as
soon as shutdown begins, so Envoy's active health checks drain a replica
before its in-flight RPCs are cut (``stop(grace)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_MESSAGE_BYTES = 64 * 1024  # requests are tiny; refuse anything large before parsing

Registrar = Callable[[grpc.aio.Server], None]


class GrpcServer:
    def __init__(
        self,
        address: str,
        registrars: Sequence[Registrar],
        *,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        reuse_port: bool = False,
    ) -> None:
        options = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", 32 * 1024),
        ]
        self._server = grpc.aio.server(interceptors=tuple(interceptors), options=options)
        self._health = health.aio.HealthServicer()
        self._address = address
        self._service_names = tuple(service_names)
        for register in registrars:
            register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Bind, start and report SERVING. Returns the bound port."""
        for name in ("", *self._service_names):
            await self._health.set(name, _NOT_SERVING)
        self.port = self._server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self._address}")
        await self._server.start()
        for name in ("", *self._service_names):
            await self._health.set(name, _SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, then let in-flight RPCs finish for ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait(self) -> None:
        await self._server.wait_for_termination()
