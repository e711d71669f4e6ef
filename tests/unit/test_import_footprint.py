"""What a replica loads to serve: libraries it does not use stay out of its memory.

[perf-2] (RSS per replica): redis-py and what it pulls in cost ~8 MB per process; only a
process configured with a Redis (OCTOSTS_REDIS_URL) imports it (adapters.redis_state).
Run in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["redis"])
def test_serving_without_it_does_not_import(module: str) -> None:
    code = f"import sys, octosts.app, octosts.cli\nprint({module!r} in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False", done.stderr
