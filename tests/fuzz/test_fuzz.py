"""The fuzz targets in `make test`: corpus replay in-process, then seeded atheris runs.

``test_corpus_replays`` feeds every committed corpus input to its target here, so a
regression fails with a plain traceback naming the file. ``test_atheris_run`` runs
the target under atheris (libFuzzer) in a child process: the corpus again, then
``Target.test_runs`` mutated inputs from a fixed seed, so every run tries the same
inputs. A crash fails the test with the input (hex) and libFuzzer's report; see
docs/fuzzing.md for adding it to the corpus. `make fuzz` runs the same targets for
minutes each.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import seeds
from tests.fuzz.registry import TARGETS, Target

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(TARGETS)
# A run takes a few seconds; this bounds a hang (libFuzzer's own per-input limit is lower).
RUN_TIMEOUT = 240


def corpus(target: Target) -> list[Path]:
    return sorted(path for path in target.corpus.iterdir() if path.is_file())


@pytest.mark.parametrize("name", NAMES)
def test_corpus_replays(name: str) -> None:
    target = TARGETS[name]
    inputs = corpus(target)
    assert len(inputs) >= 5, f"{target.corpus} holds too few seeds"
    one_input = importlib.import_module(target.module).one_input
    for path in inputs:
        try:
            one_input(path.read_bytes())
        except BaseException as exc:
            exc.add_note(f"fuzz target {name!r}, corpus input {path.relative_to(ROOT)}")
            raise


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("name", NAMES)
def test_atheris_run(name: str, tmp_path: Path) -> None:
    target = TARGETS[name]
    command = [sys.executable, "-m", "tests.fuzz.run", name, "--runs", str(target.test_runs)]
    command += ["--seed", "1", "--workdir", str(tmp_path)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    crashes = sorted((tmp_path / "crashes" / name).glob("*"))
    report = result.stderr[-6000:]
    for crash in crashes[:3]:
        report += f"\n{crash.name}: {crash.read_bytes()[:400].hex()}"
    failed = (
        f"fuzz target {name!r} failed (exit {result.returncode}); "
        f"reproduce: python -m tests.fuzz.run {name} --runs {target.test_runs} --seed 1\n{report}"
    )
    assert not crashes, failed
    assert result.returncode == 0, failed
    executed = [line for line in result.stderr.splitlines() if "number_of_executed_units" in line]
    assert executed, report
    runs = int(executed[-1].rsplit(":", 1)[1])
    assert runs == target.test_runs + len(corpus(target)), executed


def test_every_finding_is_in_the_corpus() -> None:
    absent = seeds.missing(seeds.hostile())
    assert not absent, f"run `python -m tests.fuzz.seeds` to add: {absent}"


def test_registry_and_generators_agree() -> None:
    assert set(seeds.GENERATORS) == set(TARGETS)
    for target in TARGETS.values():
        importlib.import_module(target.module)
