# ruff: noqa: INP001  (a file copied into images, not a package)
"""Container health probe (Docker HEALTHCHECK / compose healthcheck); exit 0 when healthy.

    healthcheck.py grpc 127.0.0.1:8080      # grpc.health.v1 overall status is SERVING
    healthcheck.py http http://127.0.0.1:9901/ready   # HTTP 200
    healthcheck.py grpc     # the address the service listens on: $OCTOSTS_GRPC_ADDR
    healthcheck.py http     # $OCTOSTS_HEALTH_URL (the envoy image sets Envoy's admin /ready)

Without a target the probe follows the container's own settings, so a deployment that moves a
port (deploy/compose/podman-host.yml, a Helm value) needs no second copy of it here.
Standard library + grpcio only (both images have them); every probe has a 2 s timeout.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 2.0
# A server bound to every address is probed on loopback.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}  # noqa: S104


def default_target(kind: str) -> str:
    """The probe target from the container's environment; ValueError when it is not set."""
    if kind == "http":
        url = os.environ.get("OCTOSTS_HEALTH_URL", "")
        if not url:
            raise ValueError("no URL given and OCTOSTS_HEALTH_URL is not set")
        return url
    host, sep, port = os.environ.get("OCTOSTS_GRPC_ADDR", "127.0.0.1:8080").rpartition(":")
    if not sep:
        raise ValueError("OCTOSTS_GRPC_ADDR is not HOST:PORT")
    return f"{WILDCARDS.get(host, host)}:{port}"


def grpc_serving(address: str) -> bool:
    import grpc  # noqa: PLC0415 - only the service image needs it
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError("only loopback URLs are probed")
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:  # noqa: S310 - checked above
        return bool(reply.status == 200)


def main(argv: list[str]) -> int:
    if len(argv) not in {1, 2} or argv[0] not in {"grpc", "http"}:
        sys.stderr.write("usage: healthcheck.py grpc [HOST:PORT] | http [URL]\n")
        return 2
    kind = argv[0]
    try:
        target = argv[1] if len(argv) == 2 else default_target(kind)
    except ValueError as exc:
        sys.stderr.write(f"healthcheck.py: {exc}\n")
        return 2
    try:
        healthy = grpc_serving(target) if kind == "grpc" else http_ok(target)
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said briefly
        sys.stderr.write(f"unhealthy: {type(exc).__name__}\n")
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
