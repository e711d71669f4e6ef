"""Generate Python protobuf/gRPC code and Envoy's descriptor set from proto/.

Output goes to service/octosts/_gen (a fenced package: never edited by hand,
excluded from lint) with imports rewritten so the generated modules live
inside `octosts._gen` instead of claiming top-level packages such as
`octosts.v1` (which would shadow our own package) or `chainguard`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "service" / "octosts" / "_gen"
DESCRIPTORS = ROOT / "build" / "octosts.pb"
OWN_PACKAGES = ("octosts", "chainguard")
ENVOY_EXTRA = ("google/rpc/error_details.proto", "google/rpc/status.proto")


def _include_dirs() -> list[str]:
    import google.api  # noqa: PLC0415  (googleapis-common-protos ships the .proto files)

    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO), str(googleapis), str(well_known)]


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    DESCRIPTORS.parent.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{d}" for d in _include_dirs()]
    python = [
        "grpc_tools.protoc",
        *includes,
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    # Envoy's transcoder renders grpc-status-details-bin as JSON only for types it
    # knows, so the descriptor set also carries google.rpc.ErrorInfo.
    descriptors = [
        "grpc_tools.protoc",
        *includes,
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={DESCRIPTORS}",
        *protos,
        *ENVOY_EXTRA,
    ]
    if protoc.main(python) != 0 or protoc.main(descriptors) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    pattern = re.compile(rf"^(from|import) ({'|'.join(OWN_PACKAGES)})(\.|\s)", re.MULTILINE)
    for path in OUT.rglob("*.py*"):
        text = pattern.sub(r"\1 octosts._gen.\2\3", path.read_text())
        path.write_text(text)
    for directory in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    print(f"generated {len(protos)} proto files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
