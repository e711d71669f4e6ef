# ruff: noqa: INP001  (a file copied into images, not a package)
"""Container health probe (Docker HEALTHCHECK / compose healthcheck); exit 0 when healthy.

    healthcheck.py grpc 127.0.0.1:8080      # grpc.health.v1 overall status is SERVING
    healthcheck.py http http://127.0.0.1:9901/ready   # HTTP 200

Standard library + grpcio only (both images have them); every probe has a 2 s timeout.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_S = 2.0


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
    if len(argv) != 2 or argv[0] not in {"grpc", "http"}:
        sys.stderr.write("usage: healthcheck.py grpc HOST:PORT | http URL\n")
        return 2
    kind, target = argv
    try:
        healthy = grpc_serving(target) if kind == "grpc" else http_ok(target)
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said briefly
        sys.stderr.write(f"unhealthy: {type(exc).__name__}\n")
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
