"""Build and run the Octo STS images without a Docker engine: mmdebstrap, buildah, podman (runc).

The image tests (``tests/e2e/test_image.py``), ``bench/image.py`` and docs/containers.md use the
same steps, so what the tests prove is the documented recipe:

1. ``make_base``: a Debian bookworm root file system with Python 3.11 (``mmdebstrap``), so no
   image is pulled from a registry (none is reachable here, and air-gapped sites have none);
2. ``import_base``: ``podman import`` turns the tarball into a local image;
3. ``build``: ``buildah bud`` of a Dockerfile target with ``--build-arg BASE_IMAGE=<that image>``;
4. ``start``: ``podman run`` on the host network, non-root, read-only root file system.

``session`` gives the tests and the bench their engine. Its storage persists in ``.cache/oci``
(gitignored) with the base tarball (``ensure_base``: made again after a week, or when the recipe
changes), so a second run reuses buildah's layer cache: the cold cost (mmdebstrap, every pip
install) is paid once per checkout, then only for what changed. One session at a time holds the
cache (a file lock); a concurrent one builds cold in a private storage of its own, removed at the
end, as does every session with ``cache=None``.

Two facts about sandboxes like CI's (docs/containers.md): setrlimit is refused, so containers.conf
says ``default_ulimits = []`` (``CONTAINERS_CONF`` points every podman/buildah/podman-compose call
at this module's file), and crun fails on the cgroup layout where runc works. Builds see the
host's CA bundle (and a pip.conf naming it) so pip reaches the package index through a
TLS-inspecting proxy; neither file ends up in an image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[3]
# Command -> the Debian package that provides it (scripts/install-system-deps.sh installs them).
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
# Where ``session`` keeps the base tarball and the image storage between runs (gitignored).
CACHE_DIR = REPO_ROOT / ".cache" / "oci"
BASE_REPOSITORY = "localhost/octo-sts-base"
# Tags that keep the build's helper stages (gen, build) in a persistent storage's cache.
STAGE_REPOSITORY = "localhost/octo-sts-stage"
# The cached base is made again after this long: Debian's security updates reach the images.
BASE_MAX_AGE_SECONDS = 7 * 24 * 3600
_STORAGE_DIRS = ("storage", "storage-run", "libpod-tmp")
# A race in the kernel, not a failure of the command: buildah's chroot isolation re-executes
# itself from a sealed memfd copy of its binary (containers/storage pkg/unshare), and sealing
# answers EBUSY while a page of the copy is still held elsewhere (seen under load on 2 cores:
# a whole build failed at a RUN step). runc's cloned binary is sealed the same way.
_TRANSIENT = (
    "sealing memfd copy: Device or resource busy",
    "could not ensure we are a cloned binary",
)
_ATTEMPTS = 3


class ImageError(RuntimeError):
    """A build or container command failed; the message carries the tail of its output."""


def missing_tools() -> list[str]:
    """The commands of ``TOOLS`` not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def helper_stages(dockerfile: str, target: str) -> list[str]:
    """The stages ``target`` copies from (``COPY --from=``), theirs first, each once."""
    copies: dict[str, list[str]] = {}
    stage = ""
    for line in dockerfile.splitlines():
        if found := re.match(r"\s*FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            stage = found.group(1)
            copies[stage] = []
        elif stage:
            copies[stage] += re.findall(r"--from=(\S+)", line)
    if target not in copies:
        raise ImageError(f"the Dockerfile has no stage {target!r}: {', '.join(copies)}")
    result: list[str] = []

    def visit(name: str) -> None:
        for source in copies.get(name, []):
            if source not in result:
                visit(source)
                result.append(source)

    visit(target)
    return result


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
    keep_stages: bool = False
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
        self.wipe()

    def wipe(self) -> None:
        """Delete the private storage's directories, whatever their state."""
        for path in _STORAGE_DIRS:
            shutil.rmtree(self.workdir / path, ignore_errors=True)

    def clear_containers(self) -> None:
        """Remove every pod, container and unfinished build (a killed session's leftovers)."""
        self._run(["podman", "pod", "rm", "--all", "--force"], timeout=300)
        self._run(["podman", "rm", "--all", "--force", "--time", "0"], timeout=300)
        self._run(["buildah", "rm", "--all"], timeout=300)

    def prune(self) -> None:
        """Remove the images no tag reaches: what a rebuild replaced (the cache stays)."""
        self._run(["podman", "image", "prune", "--force"], timeout=300)

    def image_exists(self, tag: str) -> bool:
        try:
            self._run(["podman", "image", "exists", tag], timeout=60)
        except ImageError:
            return False
        return True

    def tags(self, repository: str) -> list[str]:
        """Every ``repository:tag`` of the storage's images in ``repository``."""
        out = self._run(
            ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repository], timeout=60
        )
        return [line for line in out.split() if line.startswith(f"{repository}:")]

    def _run(self, args: Sequence[str], *, timeout: float, both: bool = False) -> str:
        """stdout (with ``both``: stdout + stderr); ImageError when the command fails.

        A failure that names a ``_TRANSIENT`` race is tried again, up to ``_ATTEMPTS`` times:
        every command run here may be repeated (``start`` replaces a half-made container,
        ``build`` resumes from its cached steps).
        """
        for _ in range(_ATTEMPTS - 1):
            try:
                return self._run_once(args, timeout=timeout, both=both)
            except ImageError as exc:
                if not any(marker in str(exc) for marker in _TRANSIENT):
                    raise
        return self._run_once(args, timeout=timeout, both=both)

    def _run_once(self, args: Sequence[str], *, timeout: float, both: bool) -> str:
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
                "--format=tar",  # whatever the file's name
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

    def ensure_base(self, *, now: float | None = None) -> tuple[str, str]:
        """The base image's tag in this storage, and what it took: made, imported or kept.

        The tarball is kept in ``workdir`` and made again when older than
        ``BASE_MAX_AGE_SECONDS`` or when the recipe (packages, sources, excludes) changes: both
        are in its name, and the tag is its name, so an image built on the old base is not
        taken from the layer cache. The image is imported only when the storage lacks it:
        every import is a new image ID, which would void the cache.
        """
        now = time.time() if now is None else now
        recipe = hashlib.sha256(
            "\n".join((*BASE_PACKAGES, *DEBIAN_SOURCES, *DPKG_EXCLUDES)).encode()
        ).hexdigest()[:12]
        tars = sorted(self.workdir.glob(f"base-bookworm-{recipe}-*.tar"))
        fresh = [tar for tar in tars if now - tar.stat().st_mtime < BASE_MAX_AGE_SECONDS]
        what = "kept"
        if fresh:
            tar = fresh[-1]
        else:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
            tar = self.workdir / f"base-bookworm-{recipe}-{stamp}.tar"
            for killed in self.workdir.glob("base-*.partial"):  # a killed run's half tarball
                killed.unlink()
            partial = tar.with_suffix(".partial")
            self.make_base(partial)
            partial.rename(tar)
            what = "made"
        for old in self.workdir.glob("base-bookworm-*.tar"):
            if old != tar:
                old.unlink()
        tag = f"{BASE_REPOSITORY}:{tar.stem.removeprefix('base-')}"
        for old_tag in self.tags(BASE_REPOSITORY):
            if old_tag != tag:
                self._run(["podman", "rmi", "--force", old_tag], timeout=120)
        if not self.image_exists(tag):
            self.import_base(tar, tag)
            what = "imported" if what == "kept" else what
        return tag, what

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

        ``build_args``: more ``--build-arg``s than ``BASE_IMAGE`` (``EXTRAS``, say). In a
        storage that persists (``keep_stages``), the stages the target copies from are tagged
        too (``STAGE_REPOSITORY``): ``prune`` keeps what a tag reaches, so their layers stay in
        the cache; untagged, nothing would tell them from what a rebuild replaced.
        """
        args = {"BASE_IMAGE": base_image, **(build_args or {})}
        if self.keep_stages:
            key = hashlib.sha256(json.dumps(sorted(args.items())).encode()).hexdigest()[:12]
            for stage in helper_stages((context / "Dockerfile").read_text(), target):
                self._bud(stage, f"{STAGE_REPOSITORY}:{stage}-{key}", args, context, timeout)
        self._bud(target, tag, args, context, timeout)

    def _bud(
        self, target: str, tag: str, args: Mapping[str, str], context: Path, timeout: float
    ) -> None:
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
                *(f"--build-arg={key}={value}" for key, value in args.items()),
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
            "--replace",  # a retried start (``_run``) takes over its half-made container
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


@contextlib.contextmanager
def session(scratch: Path, cache: Path | None = CACHE_DIR) -> Iterator[Engine]:
    """An engine for one test session or bench run; every container is gone at the end.

    With ``cache`` free (an exclusive, non-blocking file lock): that directory's persistent
    storage, the layer cache of earlier runs included, and ``Engine.ensure_base`` keeps its
    tarball there. A storage that podman cannot open (a killed run, another podman version) is
    wiped and the run is cold. Otherwise (no ``cache``, or another session holds it): a private
    storage under ``scratch``, destroyed at the end.
    """
    lock = _lock(cache) if cache is not None else None
    if cache is None or lock is None:
        engine = Engine(scratch, private_storage=True)
        try:
            yield engine
        finally:
            engine.destroy()
        return
    try:
        engine = Engine(cache, private_storage=True, keep_stages=True)
        try:
            engine.clear_containers()
        except ImageError:
            engine.wipe()
        try:
            yield engine
        finally:
            with contextlib.suppress(ImageError):
                engine.clear_containers()
                engine.prune()
    finally:
        lock.close()


def _lock(cache: Path) -> TextIO | None:
    """The open lock file of ``cache``, held; None when another process holds it."""
    cache.mkdir(parents=True, exist_ok=True)
    lock = (cache / "lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
