"""The tests' one wait helper: returns what the check found, fails when the deadline passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.polling import eventually, eventually_blocking, first_line


async def test_returns_the_first_truthy_value_sync_or_async() -> None:
    answers = iter([None, [], ["found"]])
    assert await eventually(lambda: next(answers), "an answer") == ["found"]

    async def probe() -> int:
        return 7

    assert await eventually(probe, "the probe") == 7
    assert eventually_blocking(lambda: "now", "now") == "now"


async def test_fails_naming_what_it_waited_for_once_the_deadline_passed() -> None:
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    with pytest.raises(pytest.fail.Exception, match="waiting for the thing"):
        await eventually(never, "the thing", timeout=0)
    assert calls == [1]  # checked once, even with no time left
    with pytest.raises(pytest.fail.Exception, match="seen: 3"):
        eventually_blocking(lambda: 0, lambda: "seen: 3", timeout=0)


def test_first_line_fails_when_the_process_exits_silently() -> None:
    quiet = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, text=True)
    try:
        quiet.wait(timeout=30)
        with pytest.raises(AssertionError, match="exited"):
            first_line(quiet, "a greeting")
    finally:
        assert quiet.stdout is not None
        quiet.stdout.close()
    loud = subprocess.Popen(
        [sys.executable, "-c", "print('hello ')"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first_line(loud, "a greeting") == "hello"
    finally:
        loud.wait(timeout=30)
        assert loud.stdout is not None
        loud.stdout.close()
