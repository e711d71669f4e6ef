"""The container images, built and run for real, without a Docker engine.

Once per session: a Debian bookworm base made here with mmdebstrap (no registry is reachable),
``podman import``-ed, and the Dockerfile's ``sts`` and ``envoy`` targets built on it with
buildah (``--build-arg BASE_IMAGE=...``). Then, on the host's network:

- the service image runs as its non-root user on a read-only root file system with no
  capabilities, and performs real exchanges against the dev issuer and the GitHub emulator,
  which this process serves on loopback;
- docker-compose.yml's ``envoy`` + ``sts`` run under podman-compose with the committed override
  deploy/compose/podman-host.yml, and real exchanges go through that Envoy over TLS.

The service image is built with ``EXTRAS=aws,gcp`` (docs/kms.md), and one exchange has its App
JWT signed by AWS KMS (moto's server on loopback): the container holds no key at all.

Image sizes and start-up times are printed (figures, not assertions; bench/image.py measures
them against a host-process baseline).

Part of ``make test`` (``make test-image`` runs only these). Needs root and podman, buildah,
mmdebstrap, runc (scripts/install-system-deps.sh installs them) and podman-compose (the dev
extras): without them the tests skip with the reason, and fail when CI is set. The images are
built in the storage ``octosts.dev.oci.session`` keeps in .cache/oci: a checkout's first run
pays the cold build (about 1.5-4 minutes on 2 cores), later runs only what changed. Deselect
them with ``-m "not image"``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.certs import CertPaths, ensure_dev_certs
from octosts.dev.envoy import free_port
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.dev.oci import (
    CACHE_DIR,
    REPO_ROOT,
    Container,
    Engine,
    ImageError,
    missing_tools,
    session,
)
from tests.emulator import APP_ID, app_key, pem
from tests.integration.service_harness import DOMAIN, SUBJECT, servers
from tests.moto_kms import MotoKms, start_moto
from tests.polling import eventually_blocking

# Building the base and both images is paid by the first test (cold: 1.5-4 minutes on 2 cores).
pytestmark = [pytest.mark.e2e, pytest.mark.image, pytest.mark.timeout(1800)]

COMPOSE = REPO_ROOT / "docker-compose.yml"
OVERRIDE = REPO_ROOT / "deploy" / "compose" / "podman-host.yml"
RENDER = REPO_ROOT / "scripts" / "render_envoy_compose.py"
APP_KEY_IN_CONTAINER = "/run/secrets/github_app_key"
# Both KMS signers' clients in the tested image (docs/kms.md).
EXTRAS = "aws,gcp"
STS_USER = "10001:10001"
ENVOY_USER = "10002:10002"
READY_TIMEOUT = 60.0

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def report(config: pytest.Config, line: str) -> None:
    """A figure in the test output, shown whether or not output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[image] {line}")


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def podman_compose() -> str:
    found = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    require(found is not None, "podman-compose not installed (pip install -e '.[dev]')")
    assert found is not None
    return found


@dataclass(frozen=True)
class Images:
    base: str
    sts: str
    envoy: str


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """podman/buildah with their own storage: the user's images are neither seen nor touched."""
    missing = missing_tools()
    require(
        not missing,
        f"{', '.join(missing)} not installed (scripts/install-system-deps.sh, as root)",
    )
    # Rootless podman needs subuid ranges and another storage; CI and these tests run as root.
    require(os.geteuid() == 0, "the image tests run as root (as CI does)")
    with session(tmp_path_factory.mktemp("oci")) as engine:
        yield engine


@pytest.fixture(scope="session")
def images(engine: Engine, pytestconfig: pytest.Config) -> Images:
    """The base and both images, built once per session.

    buildah's layer cache lets the envoy build reuse the ``gen`` stage of the sts build, and
    (with the storage in .cache/oci) a later session reuse every layer whose inputs are unchanged.
    """
    started = time.monotonic()
    base, made = engine.ensure_base()
    built = Images(base=base, sts="localhost/octo-sts:test", envoy="localhost/octo-sts-envoy:test")
    base_seconds = time.monotonic() - started
    started = time.monotonic()
    engine.build(target="sts", tag=built.sts, base_image=built.base, build_args={"EXTRAS": EXTRAS})
    sts_seconds = time.monotonic() - started
    started = time.monotonic()
    engine.build(target="envoy", tag=built.envoy, base_image=built.base)
    envoy_seconds = time.monotonic() - started
    storage = "cached" if engine.workdir == CACHE_DIR else "private"
    report(
        pytestconfig,
        f"built in the {storage} storage {engine.workdir}: base ({made}) {base_seconds:.0f} s, "
        f"sts (EXTRAS={EXTRAS}) {sts_seconds:.0f} s, envoy {envoy_seconds:.0f} s",
    )
    for name, tag in (("base", built.base), ("sts", built.sts), ("envoy", built.envoy)):
        report(pytestconfig, f"{name} image: {engine.inspect(tag)['Size'] / 1e6:.0f} MB")
    return built


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[DevIssuer, GitHubEmulator]]:
    """The dev issuer and the GitHub emulator on loopback, with octo-org/demo's policies."""
    with servers(tmp_path) as pair:
        yield pair


@pytest.fixture
def app_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.pem"
    path.write_bytes(pem(app_key()))
    path.chmod(0o644)  # read by the container's user; a test key
    return path


def token(issuer: DevIssuer, subject: str = SUBJECT) -> str:
    return issuer.mint({"sub": subject, "aud": DOMAIN}, iat=int(time.time()), ttl=600)


def serving(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def exchange(channel: grpc.Channel, bearer: str, identity: str = "ci") -> sts_pb2.ExchangeResponse:
    stub = sts_pb2_grpc.SecurityTokenServiceStub(channel)
    reply: sts_pb2.ExchangeResponse = stub.Exchange(
        sts_pb2.ExchangeRequest(scope="octo-org/demo", identity=identity),
        metadata=(("authorization", f"Bearer {bearer}"),),
        timeout=15,
    )
    return reply


def wait_until_ready(
    engine: Engine,
    containers: list[Container],
    probe: grpc.Channel | str,
    ca: ssl.SSLContext | None,
) -> float:
    """Seconds until ``probe`` (a gRPC channel or an HTTPS URL) answers; fails on an exit."""
    started = time.monotonic()

    def ready() -> bool:
        for container in containers:
            if not engine.running(container):
                pytest.fail(f"{container.name} exited:\n{engine.logs(container)}")
        if isinstance(probe, str):
            try:
                return httpx.get(probe, verify=ca or True, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        return serving(probe)

    eventually_blocking(ready, "the container to serve", timeout=READY_TIMEOUT, interval=0.05)
    return time.monotonic() - started


# -- what the Helm chart and docs/containers.md rely on ------------------------------------------


def test_image_contracts(engine: Engine, images: Images) -> None:
    sts = engine.inspect(images.sts)["Config"]
    assert sts["User"] == STS_USER
    assert sts["Entrypoint"] == ["octo-sts"]
    assert sts["Cmd"] == ["serve"]
    assert set(sts["ExposedPorts"]) == {"8080/tcp", "9464/tcp"}
    assert "OCTOSTS_GRPC_ADDR=0.0.0.0:8080" in sts["Env"]
    # HEALTHCHECK probes the address the service is configured with (OCTOSTS_GRPC_ADDR).
    assert engine.inspect(images.sts)["Healthcheck"]["Test"][-1] == "grpc"
    envoy = engine.inspect(images.envoy)["Config"]
    assert envoy["User"] == ENVOY_USER
    assert envoy["Entrypoint"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    # The gateway and the internal metrics listener; the admin API is on loopback only.
    assert set(envoy["ExposedPorts"]) == {"8443/tcp", "9902/tcp"}
    assert engine.inspect(images.envoy)["Healthcheck"]["Test"][-1] == "http"
    assert "OCTOSTS_HEALTH_URL=http://127.0.0.1:9901/ready" in envoy["Env"]


def assert_confined(engine: Engine, container: Container, user: str, directory: str) -> None:
    """The container's processes run as ``user``, and its root file system is read-only.

    The write is refused with EROFS before any permission check, so a root-owned
    ``directory`` tells a read-only mount from a writable one even for a non-root user.
    """
    uid, gid = user.split(":")
    assert engine.exec(container, "id", "-u").strip() == uid
    assert engine.exec(container, "id", "-g").strip() == gid
    assert engine.exec(container, "cat", "/proc/1/status").count(f"Uid:\t{uid}\t") == 1
    with pytest.raises(ImageError, match="Read-only file system"):
        engine.exec(container, "python", "-c", f"open('{directory}/probe', 'w')")
    # /tmp is the one writable path (a tmpfs): what the service and Envoy may need at run time.
    engine.exec(container, "python", "-c", "open('/tmp/probe', 'w').write('ok')")


# -- the service image ---------------------------------------------------------------------


@dataclass
class Service:
    container: Container
    port: int
    channel: grpc.Channel


@contextmanager
def sts_service(
    engine: Engine,
    image: str,
    github: GitHubEmulator,
    issuer: DevIssuer,
    env: dict[str, str],
    mounts: dict[Path, str] | None = None,
) -> Iterator[tuple[Service, float]]:
    """The service image running on the host network until ready, and seconds it took."""
    port = free_port()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    container = Container(unique("octo-sts-test"), image)
    try:
        container = engine.start(
            container.name,
            image,
            env={
                "STS_DOMAIN": DOMAIN,
                "GITHUB_APP_ID": str(APP_ID),
                "GITHUB_BASE_URL": github.url,
                "OCTOSTS_INSECURE_ISSUERS": issuer.url,
                "OCTOSTS_GRPC_ADDR": f"127.0.0.1:{port}",
                "OCTOSTS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
                **env,
            },
            mounts=mounts,
            user=STS_USER,
        )
        seconds = wait_until_ready(engine, [container], channel, None)
        yield Service(container, port, channel), seconds
    finally:
        channel.close()
        engine.remove(container)


@pytest.fixture
def sts_container(
    engine: Engine,
    images: Images,
    backends: tuple[DevIssuer, GitHubEmulator],
    app_key_file: Path,
    pytestconfig: pytest.Config,
) -> Iterator[Service]:
    issuer, github = backends
    env = {"GITHUB_APP_PRIVATE_KEY_FILE": APP_KEY_IN_CONTAINER, "OCTOSTS_WORKERS": "2"}
    mounts = {app_key_file: APP_KEY_IN_CONTAINER}
    with sts_service(engine, images.sts, github, issuer, env, mounts) as (service, seconds):
        report(pytestconfig, f"sts container serving {seconds:.2f} s after `podman run`")
        yield service


def test_service_image_exchanges_as_non_root_on_a_read_only_root(
    engine: Engine, sts_container: Service, backends: tuple[DevIssuer, GitHubEmulator]
) -> None:
    issuer, github = backends
    reply = exchange(sts_container.channel, token(issuer))
    assert reply.token.startswith("ghs_")
    grant = github.token_grant(reply.token)
    assert grant is not None  # minted by the emulator, with the policy's permissions
    assert grant["permissions"] == {"contents": "read"}
    assert grant["repositories"] == {"demo"}
    # A token from the same issuer for a subject the policy does not name is refused.
    with pytest.raises(grpc.RpcError) as refused:
        exchange(sts_container.channel, token(issuer, "repo:octo-org/demo:ref:refs/heads/evil"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    container = sts_container.container
    assert_confined(engine, container, STS_USER, "/opt/venv")
    # The image's HEALTHCHECK passes (it follows OCTOSTS_GRPC_ADDR; ImageError otherwise).
    engine.healthcheck(container)


def test_service_image_stops_cleanly_on_sigterm(engine: Engine, sts_container: Service) -> None:
    # `podman stop` (and Kubernetes) send SIGTERM to PID 1, octo-sts itself: it must exit 0
    # well before the SIGKILL that follows the grace period.
    code = engine.stop(sts_container.container, grace=30)
    assert code == 0, engine.logs(sts_container.container)


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoKms]:
    server = start_moto(tmp_path / "moto")
    try:
        yield server
    finally:
        server.stop()


def test_service_image_signs_the_app_jwt_in_aws_kms(
    engine: Engine, images: Images, moto: MotoKms, tmp_path: Path
) -> None:
    # EXTRAS=aws,gcp put the KMS clients in the image: the container gets no key at all, only a
    # KMS key's ARN, and the emulator trusts that key's public half, as GitHub would after
    # the App's key was imported into KMS (docs/kms.md).
    arn = moto.create_key("RSA_2048", "SIGN_VERIFY")
    kms_public = serialization.load_pem_public_key(moto.public_key_pem(arn))
    assert isinstance(kms_public, rsa.RSAPublicKey)
    env = {
        **moto.service_env(tmp_path),
        "GITHUB_APP_SIGNER": "aws-kms",
        "GITHUB_APP_KMS_KEY": arn,
        "OCTOSTS_WORKERS": "1",
    }
    with (
        servers(tmp_path, app_public_key=kms_public) as (issuer, github),
        sts_service(engine, images.sts, github, issuer, env) as (service, _),
    ):
        reply = exchange(service.channel, token(issuer))
        grant = github.token_grant(reply.token)
        assert grant is not None  # the emulator accepted an App JWT signed by the KMS
        assert grant["permissions"] == {"contents": "read"}
        # The other extra is in the image too: the settings' check finds both clients.
        script = (
            "from octosts.adapters.kms import missing_extra as m; print(m('gcp-kms'), m('aws-kms'))"
        )
        assert engine.exec(service.container, "python", "-c", script).split() == ["None", "None"]


# -- docker-compose.yml's envoy + sts under podman-compose -----------------------------------


@dataclass
class ComposeStack:
    project: str
    gateway: int
    certs: CertPaths
    command: list[str]
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO_ROOT,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca_cert))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.gateway}"

    def exchange(self, bearer: str) -> httpx.Response:
        """POST /sts/exchange for octo-org/demo, identity ci, through Envoy's TLS listener."""
        return httpx.post(
            f"{self.url}/sts/exchange",
            json={"scope": "octo-org/demo", "identity": "ci"},
            headers={"authorization": f"Bearer {bearer}"},
            verify=self.tls(),
            timeout=15,
        )


@pytest.fixture
def compose_stack(
    engine: Engine,
    images: Images,
    backends: tuple[DevIssuer, GitHubEmulator],
    app_key_file: Path,
    tmp_path: Path,
    pytestconfig: pytest.Config,
) -> Iterator[ComposeStack]:
    issuer, github = backends
    certs = ensure_dev_certs(tmp_path / "certs")
    certs.key.chmod(0o644)  # read by Envoy's user in its container; a test key
    sts_port, metrics_port, gateway, admin, envoy_metrics = (free_port() for _ in range(5))
    envoy_config = tmp_path / "envoy.host.yaml"
    subprocess.run(
        [
            sys.executable, str(RENDER), "--host-network", "--output", str(envoy_config),
            "--listen-host", "127.0.0.1", "--gateway-port", str(gateway),
            "--admin-port", str(admin), "--metrics-port", str(envoy_metrics),
            "--sts-port", str(sts_port),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    envoy_config.chmod(0o644)
    project = unique("octosts")
    stack = ComposeStack(
        project=project,
        gateway=gateway,
        certs=certs,
        command=[podman_compose(), "-p", project, "-f", str(COMPOSE), "-f", str(OVERRIDE)],
        env={
            **os.environ,
            **engine.env,
            "OCTOSTS_STS_IMAGE": images.sts,
            "OCTOSTS_ENVOY_IMAGE": images.envoy,
            "OCTOSTS_ENVOY_CONFIG": str(envoy_config),
            "OCTOSTS_STS_PORT": str(sts_port),
            "OCTOSTS_METRICS_PORT": str(metrics_port),
            "OCTOSTS_ENVOY_ADMIN_PORT": str(admin),
            "OCTOSTS_CERTS_DIR": str(certs.cert.parent),
            "STS_DOMAIN": DOMAIN,
            "GITHUB_APP_ID": str(APP_ID),
            "GITHUB_APP_PRIVATE_KEY_PATH": str(app_key_file),
            "GITHUB_BASE_URL": github.url,
            "OCTOSTS_INSECURE_ISSUERS": issuer.url,
        },
    )
    containers = [Container(f"{project}_{name}_1", "") for name in ("sts", "envoy")]
    try:
        started = time.monotonic()
        up = stack.run("up", "--detach", "--no-build", "envoy", "sts")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_until_ready(engine, containers, f"{stack.url}/healthz", stack.tls())
        seconds = time.monotonic() - started
        report(
            pytestconfig, f"compose envoy + sts serving {seconds:.2f} s after `podman-compose up`"
        )
        yield stack
    finally:
        down = stack.run("down", "--timeout", "10")
        for container in containers:  # whatever `down` could not remove
            engine.remove(container)
        assert down.returncode == 0, down.stdout + down.stderr


def test_compose_envoy_and_sts_exchange_over_tls(
    engine: Engine,
    compose_stack: ComposeStack,
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, github = backends
    # HTTP/JSON, transcoded by Envoy (the octo-sts GitHub Action's call).
    reply = compose_stack.exchange(token(issuer))
    assert reply.status_code == 200, reply.text
    grant = github.token_grant(reply.json()["token"])
    assert grant is not None
    assert grant["permissions"] == {"contents": "read"}
    # ext_authz in the container refuses a bad token before Exchange runs.
    refused = compose_stack.exchange(token(issuer) + "x")
    assert refused.status_code == 401, refused.text
    # Native gRPC over the same TLS listener.
    credentials = grpc.ssl_channel_credentials(compose_stack.certs.ca_cert.read_bytes())
    with grpc.secure_channel(f"localhost:{compose_stack.gateway}", credentials) as channel:
        assert exchange(channel, token(issuer)).token.startswith("ghs_")
    # Both run as their images' users on read-only root file systems (docker-compose.yml's
    # read_only, kept by the override), and both healthchecks (with the override's ports) pass.
    for name, user, directory in (
        ("sts", STS_USER, "/opt/venv"),
        ("envoy", ENVOY_USER, "/etc/envoy"),
    ):
        container = Container(f"{compose_stack.project}_{name}_1", "")
        assert_confined(engine, container, user, directory)
        engine.healthcheck(container)
