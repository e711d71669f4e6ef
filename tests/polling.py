"""Waiting for something to happen in another thread or process: poll with a deadline.

The one rule for tests that must wait (no sleeps for readiness): call ``check`` until it returns
a truthy value, which is returned, and fail the test naming ``what`` once ``timeout`` seconds have
passed (``what`` may be a function, to say what was seen instead). ``check`` runs at least once
after the deadline, so a slow machine only makes a test slower, never wrong. An exception raised
by ``check`` (e.g. "the process exited") fails the test at once.
"""

from __future__ import annotations

import asyncio
import inspect
import select
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

TIMEOUT = 10.0
INTERVAL = 0.02

# What is awaited, for the failure message: text, or a function giving it.
Describe = str | Callable[[], str]


def _fail_after(deadline: float, what: Describe, timeout: float) -> None:
    if time.monotonic() >= deadline:
        text = what if isinstance(what, str) else what()
        pytest.fail(f"timed out after {timeout:g} s waiting for {text}")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: Describe,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Await until ``check()`` is truthy (polled every ``interval`` s, the loop kept running).

    ``check`` may return an awaitable (an async probe, or ``asyncio.to_thread`` of a blocking one).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        _fail_after(deadline, what, timeout)
        await asyncio.sleep(interval)  # the poll interval, bounded by the deadline


def eventually_blocking(
    check: Callable[[], T], what: Describe, *, timeout: float = TIMEOUT, interval: float = INTERVAL
) -> T:
    """``eventually`` for code without an event loop (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _fail_after(deadline, what, timeout)
        time.sleep(interval)  # the poll interval, bounded by the deadline
    return value


def first_line(proc: subprocess.Popen[str], what: str, *, timeout: float = 20.0) -> str:
    """The first line ``proc`` prints on stdout (stripped); fails if it exits or stays silent."""
    stdout = proc.stdout
    assert stdout is not None, "start the process with stdout=subprocess.PIPE"

    def printed() -> bool:
        if select.select([stdout], [], [], 0)[0]:
            return True
        assert proc.poll() is None, f"exited ({proc.returncode}) before printing {what}"
        return False

    eventually_blocking(printed, what, timeout=timeout)
    line = stdout.readline()  # "" at end of file: the process closed stdout or exited
    assert line, f"exited ({proc.wait(5)}) before printing {what}"
    return line.strip()
