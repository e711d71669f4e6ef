"""Run fuzz targets with atheris (libFuzzer): ``python -m tests.fuzz.run TARGET... [options]``.

``--runs N``: replay the corpus, then stop after N more inputs (what ``make test``
does, via tests/fuzz/test_fuzz.py). ``--seconds S``: fuzz each target for S seconds
(``make fuzz``). ``--replay FILE...``: run inputs through one target in-process
(no atheris), to see a crash's traceback.

The committed corpus is read, never written: inputs libFuzzer finds interesting
go to ``<workdir>/corpus/<target>/``, crashes (and hangs, ``timeout-*``) to
``<workdir>/crashes/<target>/``. Same seed, same runs, same inputs: libFuzzer is
seeded (``--seed``), corpus reloading is off, seeds are kept, ``--runs`` turns
libFuzzer's comparison tracing off, and the process re-executes itself with string
hashing fixed (PYTHONHASHSEED=0) and, on Linux, address randomisation off. With
ASLR, half the runs of the same target took other mutations after a few hundred
inputs (measured on slash_guard: 5 of 10; 0 of 24 without it): something on the
way hashes or orders by address (CPython 3.11 hashes ``None`` by address). Where
the system refuses ``personality`` (a seccomp profile), runs are still seeded, only
not always identical.

One target per process: ``atheris.Fuzz`` ends the process. ``all`` (or several
names) runs each in its own child process, one after the other; a target's
failure does not stop the others, the exit status says whether any failed.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import subprocess
import sys
from pathlib import Path

from tests.fuzz.registry import FUZZ_DIR, TARGETS, Target

ROOT = FUZZ_DIR.parent.parent
# Per input: far above any honest input's cost, so only a hang trips it.
INPUT_TIMEOUT_SECONDS = 20


def libfuzzer_args(
    target: Target, workdir: Path, *, runs: int | None, seconds: int | None, seed: int
) -> list[str]:
    found = workdir / "corpus" / target.name
    crashes = workdir / "crashes" / target.name
    found.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    args = [
        f"fuzz-{target.name}",
        str(found),  # first directory: where new inputs are written
        str(target.corpus),
        f"-seed={seed}",
        f"-max_len={target.max_len}",
        "-len_control=0",
        "-reload=0",
        f"-timeout={INPUT_TIMEOUT_SECONDS}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        "-keep_seed=1",  # every committed seed stays a parent, new coverage or not
    ]
    if runs is not None:
        # -runs counts the corpus replay too. Comparison tracing (values seen in == and <,
        # offered to the mutator) made short runs differ from one process to the next;
        # long runs keep it: it is how libFuzzer gets past magic values.
        args += [f"-runs={runs + corpus_size(target)}", "-use_cmp=0"]
    if seconds is not None:
        args.append(f"-max_total_time={seconds}")
    return args


def corpus_size(target: Target) -> int:
    return sum(1 for path in target.corpus.iterdir() if path.is_file())


def fuzz_one(target: Target, args: list[str]) -> None:
    """Instrument the target's modules, then hand the process to libFuzzer (never returns)."""
    import atheris  # noqa: PLC0415 - only here: the rest of the suite does not need it

    with atheris.instrument_imports(include=list(target.instrument)):
        module = importlib.import_module(target.module)
    silence_logs()
    atheris.Setup(args, module.one_input)
    atheris.Fuzz()


def silence_logs() -> None:
    """Drop log output: the handlers log per input, and millions of lines help nobody.

    Targets that check what is logged capture it themselves.
    """
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    logging.disable(logging.CRITICAL)


ADDR_NO_RANDOMIZE = 0x0040000  # <sys/personality.h>
_REEXECUTED = "OCTOSTS_FUZZ_REEXECUTED"


def reexec_deterministic(argv: list[str]) -> None:
    """Replace this process with one that hashes and lays out memory the same every run.

    Returns (without re-executing) when already done, or when it cannot be done.
    """
    if os.environ.get(_REEXECUTED) == "1":
        return
    env = {**os.environ, "PYTHONHASHSEED": "0", _REEXECUTED: "1"}
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(0xFFFFFFFF)  # query
        if current >= 0 and not current & ADDR_NO_RANDOMIZE:
            libc.personality(current | ADDR_NO_RANDOMIZE)  # refused: stays as it was
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tests.fuzz.run", *argv], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("targets", nargs="+", help=f"'all' or any of: {', '.join(TARGETS)}")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--runs", type=int, help="inputs after the corpus replay, per target")
    how.add_argument("--seconds", type=int, help="time per target")
    how.add_argument("--replay", type=Path, nargs="+", metavar="FILE", help="run these inputs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".fuzz")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.targets == ["all"] else args.targets
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    if args.replay:
        if len(names) != 1:
            parser.error("--replay takes one target")
        return replay(TARGETS[names[0]], args.replay)
    workdir = args.workdir.resolve()
    if len(names) == 1:
        reexec_deterministic(argv)
        target = TARGETS[names[0]]
        how = libfuzzer_args(target, workdir, runs=args.runs, seconds=args.seconds, seed=args.seed)
        fuzz_one(target, how)
    return run_each(names, args, workdir)


def replay(target: Target, paths: list[Path]) -> int:
    """Run ``paths`` through the target in this process; the first failure's traceback shows."""
    one_input = importlib.import_module(target.module).one_input
    for path in paths:
        print(f"{target.name}: {path}", flush=True)
        one_input(path.read_bytes())
    return 0


def run_each(names: list[str], args: argparse.Namespace, workdir: Path) -> int:
    """Each target in its own child, one after the other."""
    how = ["--runs", str(args.runs)] if args.runs is not None else ["--seconds", str(args.seconds)]
    failed = []
    for name in names:
        command = [sys.executable, "-m", "tests.fuzz.run", name, *how]
        command += ["--seed", str(args.seed), "--workdir", str(workdir)]
        print(f"== {name}", flush=True)
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)} (inputs under {workdir}/crashes/)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
