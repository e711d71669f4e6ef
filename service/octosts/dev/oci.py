"""Build and run the Octo STS images without a Docker engine: mmdebstrap, buildah, podman (runc).

The image tests (``tests/e2e/test_image.py``), ``bench/image.py`` and docs/containers.md use the
same steps, so what the tests prove is the documented recipe:

1. ``make_base``: a Debian bookworm root file system with Python 3.11 (``mmdebstrap``), so no
   image is pulled from a registry (none is reachable here, and air-gapped sites have none);
2. ``import_base``: ``podman import`` turns the tarball into a local image;
3. ``build``: ``buildah bud`` of a Dockerfile target with ``--build-arg BASE_IMAGE=<that image>``;
4. ``start``: ``podman run`` on the host network, non-root, read-only root file system.

Two facts about sandboxes like CI's (docs/containers.md): setrlimit is refused, so containers.conf
says ``default_ulimits = []`` (``CONTAINERS_CONF`` points every podman/buildah/podman-compose call
at this module's file), and crun fails on the cgroup layout where runc works. Builds see the
host's CA bundle (and a pip.conf naming it) so pip reaches the package index through a
TLS-inspecting proxy; neither file ends up in an image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
# Command -> the Debian package that provides it (install-system-deps.sh --images installs them).
TOOLS = {"podman": "podman", "buildah": "buildah", "mmdebstrap": "mmdebstrap", "runc": "runc"}
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Updates and security fixes go into the base, as in the official images.
DEBIAN_SOURCES = (
    f"deb {DEBIAN_MIRROR} bookworm main",
    f"deb {DEBIAN_MIRROR} bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What the official slim images leave out too; copyright files stay.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
_TAIL = 4000


class ImageError(RuntimeError):
    """A build or container command failed; the message carries the tail of its output."""


def missing_tools() -> list[str]:
    """The commands of ``TOOLS`` not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass(frozen=True, slots=True)
class Container:
    """A container started by ``Engine.start``; remove it with ``Engine.remove``."""

    name: str
    image: str


@dataclass
class Engine:
    """podman and buildah with this machine's settings, kept in ``workdir``.

    With ``private_storage`` every image, container and pod lives under ``workdir`` (its own
    containers-storage and libpod state) and ``destroy`` removes them all: the tests neither
    see nor touch the user's images, and leave nothing behind.
    """

    workdir: Path
    runtime: str = "runc"
    private_storage: bool = False
    _conf: Path = field(init=False)
    _storage_conf: Path | None = field(init=False, default=None)
    _pip_conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = CONTAINERS_CONF.replace('"runc"', json.dumps(self.runtime))
        if self.private_storage:
            # libpod's run-time state too: the default (/run/libpod) belongs to the host's podman.
            conf += f"tmp_dir = {json.dumps(str(self.workdir / 'libpod-tmp'))}\n"
            self._storage_conf = self.workdir / "storage.conf"
            self._storage_conf.write_text(
                "[storage]\n"
                'driver = "overlay"\n'
                f"graphroot = {json.dumps(str(self.workdir / 'storage'))}\n"
                f"runroot = {json.dumps(str(self.workdir / 'storage-run'))}\n"
            )
        self._conf = self.workdir / "containers.conf"
        self._conf.write_text(conf)
        self._pip_conf = self.workdir / "pip.conf"
        self._pip_conf.write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\ntimeout = 180\n")

    @property
    def env(self) -> dict[str, str]:
        """Variables for every podman / buildah / podman-compose call (add them to os.environ)."""
        env = {"CONTAINERS_CONF": str(self._conf)}
        if self._storage_conf is not None:
            env["CONTAINERS_STORAGE_CONF"] = str(self._storage_conf)
        return env

    def destroy(self) -> None:
        """Remove every container, pod and image of the private storage, then the storage."""
        if self._storage_conf is None:
            raise ImageError("destroy() is for an Engine with private_storage")
        for args in (
            ["podman", "pod", "rm", "--all", "--force"],
            ["podman", "rm", "--all", "--force", "--time", "0"],
            ["buildah", "rm", "--all"],
            ["podman", "rmi", "--all", "--force"],
        ):
            with contextlib.suppress(ImageError):
                self._run(args, timeout=300)
        for path in ("storage", "storage-run", "libpod-tmp"):
            shutil.rmtree(self.workdir / path, ignore_errors=True)

    def _run(self, args: Sequence[str], *, timeout: float, both: bool = False) -> str:
        """stdout (with ``both``: stdout + stderr); ImageError when the command fails."""
        try:
            done = subprocess.run(  # noqa: S603 - fixed tools, arguments built here
                list(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        except subprocess.TimeoutExpired as exc:
            raise ImageError(f"{args[0]} {args[1]} did not finish in {timeout:g} s") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-_TAIL:]
            raise ImageError(f"{' '.join(args[:2])} exited with {done.returncode}:\n{output}")
        return done.stdout + done.stderr if both else done.stdout

    # -- images --------------------------------------------------------------------------

    def make_base(self, tar: Path, *, timeout: float = 900) -> None:
        """A Debian bookworm minbase root file system with Python 3.11, as a tarball."""
        self._run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
                "bookworm",
                str(tar),
                *DEBIAN_SOURCES,
            ],
            timeout=timeout,
        )

    def import_base(self, tar: Path, tag: str, *, timeout: float = 300) -> None:
        self._run(["podman", "import", str(tar), tag], timeout=timeout)

    def build(
        self,
        *,
        target: str,
        tag: str,
        base_image: str,
        build_args: Mapping[str, str] | None = None,
        context: Path = REPO_ROOT,
        timeout: float = 1200,
    ) -> None:
        """``buildah bud`` of one Dockerfile target. ``--layers`` keeps the stages' cache.

        ``build_args``: more ``--build-arg``s than ``BASE_IMAGE`` (``EXTRAS``, say).
        """
        more = [f"--build-arg={key}={value}" for key, value in (build_args or {}).items()]
        self._run(
            [
                "buildah",
                "--runtime",
                self.runtime,
                "bud",
                "--layers",
                "--format=docker",  # keeps HEALTHCHECK (the OCI format drops it)
                "--network=host",
                "--isolation=chroot",
                "--volume",
                f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
                "--volume",
                f"{self._pip_conf}:/etc/pip.conf:ro",
                "--build-arg",
                f"BASE_IMAGE={base_image}",
                *more,
                "--target",
                target,
                "--tag",
                tag,
                str(context),
            ],
            timeout=timeout,
        )

    def inspect(self, tag: str) -> dict[str, Any]:
        """``podman image inspect`` of one image (its Config, Size, ...)."""
        [data] = json.loads(self._run(["podman", "image", "inspect", tag], timeout=60))
        result: dict[str, Any] = data
        return result

    def remove_image(self, tag: str) -> None:
        with contextlib.suppress(ImageError):
            self._run(["podman", "rmi", "--force", tag], timeout=120)

    # -- containers ----------------------------------------------------------------------

    def start(
        self,
        name: str,
        image: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        mounts: Mapping[Path, str] | None = None,
        user: str | None = None,
    ) -> Container:
        """``podman run -d`` on the host network with a read-only root and no capabilities.

        ``mounts`` maps host files to container paths (read-only). ``user`` defaults to the
        image's USER.
        """
        cmd = [
            "podman",
            "run",
            "--detach",
            "--name",
            name,
            "--network=host",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
        ]
        if user is not None:
            cmd += ["--user", user]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        for source, target in (mounts or {}).items():
            cmd += ["--volume", f"{source}:{target}:ro"]
        self._run([*cmd, image, *args], timeout=120)
        return Container(name, image)

    def exec(self, container: Container, *args: str) -> str:
        return self._run(["podman", "exec", container.name, *args], timeout=60)

    def running(self, container: Container) -> bool:
        state = self._run(
            ["podman", "container", "inspect", "--format", "{{.State.Running}}", container.name],
            timeout=60,
        )
        return state.strip() == "true"

    def stop(self, container: Container, *, grace: int = 30) -> int:
        """``podman stop`` (SIGTERM, SIGKILL after ``grace`` s); the container's exit code."""
        self._run(["podman", "stop", "--time", str(grace), container.name], timeout=grace + 60)
        code = self._run(
            ["podman", "container", "inspect", "--format", "{{.State.ExitCode}}", container.name],
            timeout=60,
        )
        return int(code.strip())

    def healthcheck(self, container: Container) -> None:
        """Run the container's HEALTHCHECK once; ImageError when it fails."""
        self._run(["podman", "healthcheck", "run", container.name], timeout=60, both=True)

    def logs(self, container: Container) -> str:
        try:
            return self._run(["podman", "logs", container.name], timeout=60, both=True)[-_TAIL:]
        except ImageError as exc:
            return str(exc)

    def remove(self, container: Container) -> None:
        """Stop (SIGTERM, then SIGKILL after 5 s) and delete. Idempotent."""
        with contextlib.suppress(ImageError):
            self._run(["podman", "rm", "--force", "--time", "5", container.name], timeout=60)
