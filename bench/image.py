"""Container images ([operator-kit]): their sizes, and start-up time against a host process.

Builds what tests/e2e/test_image.py builds, in the same cached storage (``octosts.dev.oci.session``,
.cache/oci): the Debian bookworm base made with mmdebstrap, the Dockerfile's ``sts`` target on it
without and with ``EXTRAS=aws,gcp`` (the KMS clients), and ``envoy``. Then, ``--rounds`` times,
in alternating order:

- ``host``: ``octo-sts serve`` as a host process (the baseline), until gRPC health is SERVING;
- ``sts container``: ``podman run`` of the sts image (host network, read-only root, non-root
  user, no capabilities), until gRPC health is SERVING; likewise the ``EXTRAS=aws,gcp`` image
  (its KMS clients are imported only when a KMS signer is chosen, so this checks they cost
  nothing otherwise);
- ``envoy container``: ``podman run`` of the envoy image with a rendered config, until the
  admin ``/ready`` answers 200.

Each start is timed from the command to the first healthy answer (polled every 20 ms), one
worker, nothing else running. Prints a table (median, min, max; container / host ratio) and
the image sizes, writes the ``"image"`` key of bench/results.json. Needs root and podman,
buildah, mmdebstrap, runc (scripts/install-system-deps.sh); takes 1-2 minutes, 3-6 cold (the
build; build seconds are those of this run, so small when the cache had the layers).

    .venv/bin/python bench/image.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save, table

from octosts.dev.certs import ensure_dev_certs
from octosts.dev.envoy import EnvoyParams, Upstream, free_port, render_config
from octosts.dev.issuer import generate_key
from octosts.dev.oci import Container, Engine, missing_tools, session

STS, STS_EXTRAS, ENVOY = (
    "localhost/octo-sts:bench",
    "localhost/octo-sts:bench-aws-gcp",
    "localhost/octo-sts-envoy:bench",
)
KEY_IN_CONTAINER = "/run/secrets/github_app_key"
TIMEOUT = 60.0


def _wait(check: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > TIMEOUT:
            raise SystemExit(f"{what} not ready after {TIMEOUT:g} s")
        time.sleep(0.02)  # the poll interval
    return time.monotonic() - started


def _serving(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def _ready(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _service_env(key: Path, port: int) -> dict[str, str]:
    return {
        "STS_DOMAIN": "octo-sts.bench",
        "GITHUB_APP_ID": "1",
        "GITHUB_APP_PRIVATE_KEY_FILE": str(key),
        "GITHUB_BASE_URL": f"http://127.0.0.1:{free_port()}",  # not called during start-up
        "OCTOSTS_GRPC_ADDR": f"127.0.0.1:{port}",
        "OCTOSTS_WORKERS": "1",
        "OCTOSTS_LOG_LEVEL": "warning",
    }


def start_host(key: Path) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "octosts", "serve"],
        env={**os.environ, **_service_env(key, port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(_serving(port), "octo-sts serve")
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)


def start_sts(engine: Engine, image: str, key: Path, n: int) -> float:
    port = free_port()
    env = {**_service_env(key, port), "GITHUB_APP_PRIVATE_KEY_FILE": KEY_IN_CONTAINER}
    container = Container(f"octo-sts-bench-{os.getpid()}-{n}", image)
    started = time.monotonic()
    try:
        engine.start(container.name, image, env=env, mounts={key: KEY_IN_CONTAINER})
        _wait(_serving(port), "sts container")
        return time.monotonic() - started
    finally:
        engine.remove(container)


def start_envoy(engine: Engine, workdir: Path, n: int) -> float:
    certs = ensure_dev_certs(workdir / "certs")
    certs.key.chmod(0o644)  # a throw-away key, read by the image's user
    admin = free_port()
    params = EnvoyParams(
        listen_host="127.0.0.1",
        listen_port=free_port(),
        admin_port=admin,
        cert_path=Path("/etc/envoy/certs/server.pem"),
        key_path=Path("/etc/envoy/certs/server-key.pem"),
        descriptor_path=Path("/etc/envoy/octosts.pb"),
        upstreams=[Upstream("127.0.0.1", free_port())],
    )
    config = workdir / f"envoy-{n}.yaml"
    config.write_text(render_config(params))
    config.chmod(0o644)
    container = Container(f"octo-sts-envoy-bench-{os.getpid()}-{n}", ENVOY)
    started = time.monotonic()
    try:
        engine.start(
            container.name,
            ENVOY,
            mounts={
                config: "/etc/envoy/envoy.yaml",
                certs.cert: "/etc/envoy/certs/server.pem",
                certs.key: "/etc/envoy/certs/server-key.pem",
            },
        )
        _wait(_ready(admin), "envoy container")
        return time.monotonic() - started
    finally:
        engine.remove(container)


def build(engine: Engine) -> tuple[str, dict[str, float]]:
    """The base image's tag, and seconds per build."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    base, made = engine.ensure_base()
    seconds[f"base ({made})"] = time.monotonic() - started
    for target, tag, args in (
        ("sts", STS, {}),
        ("sts", STS_EXTRAS, {"EXTRAS": "aws,gcp"}),
        ("envoy", ENVOY, {}),
    ):
        started = time.monotonic()
        engine.build(target=target, tag=tag, base_image=base, build_args=args)
        seconds[tag.removeprefix("localhost/")] = time.monotonic() - started
    return base, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if missing := missing_tools():
        print(
            f"missing: {', '.join(missing)} (scripts/install-system-deps.sh, as root)",
            file=sys.stderr,
        )
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="octo-sts-image-bench-") as tmp,
        session(Path(tmp) / "oci") as engine,
    ):
        workdir = Path(tmp)
        base, build_seconds = build(engine)
        key = workdir / "app.pem"
        key.write_bytes(generate_key("rsa").private_pem())
        key.chmod(0o644)  # a throw-away key, read by the image's user
        samples: dict[str, list[float]] = {
            "host": [],
            "sts container": [],
            "sts EXTRAS=aws,gcp container": [],
            "envoy container": [],
        }
        for n in range(args.rounds):
            runs = [
                ("host", lambda: start_host(key)),
                ("sts container", lambda n=n: start_sts(engine, STS, key, n)),
                (
                    "sts EXTRAS=aws,gcp container",
                    lambda n=n: start_sts(engine, STS_EXTRAS, key, n),
                ),
                ("envoy container", lambda n=n: start_envoy(engine, workdir, n)),
            ]
            for name, run in runs if n % 2 == 0 else reversed(runs):
                samples[name].append(run())
        sizes = {
            label: engine.inspect(tag)["Size"]
            for label, tag in (
                ("base", base),
                ("sts", STS),
                ("sts EXTRAS=aws,gcp", STS_EXTRAS),
                ("envoy", ENVOY),
            )
        }
    host = statistics.median(samples["host"])
    rows = [("start-up", "median s", "min s", "max s", "x host process")]
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append(
            (
                name,
                f"{median:.2f}",
                f"{min(values):.2f}",
                f"{max(values):.2f}",
                f"{median / host:.2f}",
            )
        )
    print(table(rows))
    print()
    print(table([("image", "MB"), *((tag, f"{size / 1e6:.0f}") for tag, size in sizes.items())]))
    print("build seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in build_seconds.items()))
    save(
        "image",
        {
            "rounds": args.rounds,
            "startup_seconds": {
                name: {
                    "median": round(statistics.median(v), 3),
                    "min": round(min(v), 3),
                    "max": round(max(v), 3),
                }
                for name, v in samples.items()
            },
            "startup_ratio_vs_host": {
                name: round(statistics.median(v) / host, 2) for name, v in samples.items()
            },
            "size_mb": {tag: round(size / 1e6) for tag, size in sizes.items()},
            "build_seconds": {k: round(v) for k, v in build_seconds.items()},
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
