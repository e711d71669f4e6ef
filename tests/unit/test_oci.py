"""octosts.dev.oci without podman: the cached base, the helper stages, the transient retry.

The image tests (tests/e2e/test_image.py) use the real tools; these pin the rules that decide
what a run rebuilds and what it tries again, which a real run only shows by its timings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from octosts.dev.oci import (
    BASE_MAX_AGE_SECONDS,
    BASE_REPOSITORY,
    REPO_ROOT,
    Engine,
    ImageError,
    helper_stages,
)

T0 = 1_800_000_000.0
DAY = 24 * 3600.0


@dataclass
class FakeEngine(Engine):
    """An Engine whose mmdebstrap and podman are a dict of images and a list of calls."""

    images: set[str] = field(default_factory=set)
    made: list[str] = field(default_factory=list)
    imported: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    clock: float = T0

    def make_base(self, tar: Path, *, timeout: float = 900) -> None:
        tar.write_bytes(b"a root file system")
        os.utime(tar, (self.clock, self.clock))
        self.made.append(tar.name)

    def import_base(self, tar: Path, tag: str, *, timeout: float = 300) -> None:
        assert tar.exists()
        self.images.add(tag)
        self.imported.append(tag)

    def image_exists(self, tag: str) -> bool:
        return tag in self.images

    def tags(self, repository: str) -> list[str]:
        return sorted(tag for tag in self.images if tag.startswith(f"{repository}:"))

    def _run(self, args: object, *, timeout: float, both: bool = False) -> str:
        assert isinstance(args, list)
        assert args[:3] == ["podman", "rmi", "--force"], args
        self.images.discard(args[-1])
        self.removed.append(args[-1])
        return ""

    def base(self, now: float) -> tuple[str, str]:
        self.clock = now
        return self.ensure_base(now=now)


def tarballs(engine: Engine) -> list[str]:
    return sorted(path.name for path in engine.workdir.glob("base-*"))


def test_the_base_is_made_once_then_kept(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    tag, what = engine.base(T0)
    assert what == "made"
    assert tag.startswith(f"{BASE_REPOSITORY}:bookworm-")
    assert engine.imported == [tag]
    [tar] = tarballs(engine)
    assert tag.endswith(tar.removeprefix("base-").removesuffix(".tar"))
    # A day later: the same image, neither made nor imported again (a new import would be a
    # new image ID, and every cached layer above it would be rebuilt).
    assert engine.base(T0 + DAY) == (tag, "kept")
    assert len(engine.made) == 1
    assert engine.imported == [tag]
    assert engine.removed == []


def test_a_lost_storage_imports_the_kept_tarball(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    tag, _ = engine.base(T0)
    engine.images.clear()  # the storage was wiped (Engine.wipe), the tarball stayed
    assert engine.base(T0 + 60) == (tag, "imported")
    assert len(engine.made) == 1


def test_a_week_old_base_is_made_again_and_the_old_one_removed(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    old_tag, _ = engine.base(T0)
    [old_tar] = tarballs(engine)
    engine.images.add("localhost/octo-sts:test")  # other repositories are not touched
    tag, what = engine.base(T0 + BASE_MAX_AGE_SECONDS + 1)
    assert what == "made"
    assert tag != old_tag
    assert old_tar not in tarballs(engine)
    assert len(tarballs(engine)) == 1
    assert engine.removed == [old_tag]
    assert engine.images == {tag, "localhost/octo-sts:test"}


def test_a_half_made_tarball_is_not_taken(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    engine.base(T0)
    [tar] = tarballs(engine)
    # A run killed during mmdebstrap leaves a .partial file: never a base, replaced next time.
    (tmp_path / tar).rename(tmp_path / tar.replace(".tar", ".partial"))
    engine.images.clear()
    _, what = engine.base(T0 + 60)
    assert what == "made"
    [made] = tarballs(engine)  # the half one is gone
    assert made.endswith(".tar")
    assert made != tar


def test_helper_stages_follow_copy_from() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert helper_stages(dockerfile, "sts") == ["gen", "build"]
    assert helper_stages(dockerfile, "envoy") == ["gen"]
    assert helper_stages(dockerfile, "gen") == []
    with pytest.raises(ImageError, match="no stage 'stss'"):
        helper_stages(dockerfile, "stss")


# -- _run: a kernel race is tried again, a failure is not ---------------------------------------

RACE = "Close_Fd sealing memfd copy: Device or resource busy"


def flaky(counter: Path, failures: int, message: str) -> list[str]:
    """A command that fails ``failures`` times with ``message``, then prints ok."""
    script = (
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); echo $((n + 1)) > "{counter}"; '
        f'if [ "$n" -lt {failures} ]; then echo "{message}" >&2; exit 1; fi; echo ok'
    )
    return ["sh", "-c", script]


def test_run_tries_a_transient_race_again(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "oci")
    counter = tmp_path / "count"
    assert engine._run(flaky(counter, 2, RACE), timeout=30) == "ok\n"
    assert counter.read_text() == "3\n"


def test_run_gives_up_after_three_races(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "oci")
    counter = tmp_path / "count"
    with pytest.raises(ImageError, match="sealing memfd copy"):
        engine._run(flaky(counter, 3, RACE), timeout=30)
    assert counter.read_text() == "3\n"


def test_run_does_not_repeat_a_real_failure(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "oci")
    counter = tmp_path / "count"
    with pytest.raises(ImageError, match="no space left"):
        engine._run(flaky(counter, 1, "no space left on device"), timeout=30)
    assert counter.read_text() == "1\n"
