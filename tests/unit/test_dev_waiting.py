"""The dev servers' CLIs wait for a stop signal that another thread may have received."""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

from octosts.dev.waiting import wait_for
from tests.polling import eventually_blocking


@pytest.fixture
def usr1_sets() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _acquiring_from() -> int:
    """Where ``threading.Condition.wait`` starts acquiring its waiter lock (and sleeps)."""
    lines, first = inspect.getsourcelines(threading.Condition.wait)
    return first + next(i for i, line in enumerate(lines) if "if timeout is None:" in line)


def _asleep_in_wait(thread_id: int) -> bool:
    frame = sys._current_frames().get(thread_id)
    return (
        frame is not None
        and frame.f_code is threading.Condition.wait.__code__
        and frame.f_lineno > _acquiring_from()
    )


def test_a_signal_taken_by_another_thread_still_ends_the_wait(usr1_sets: threading.Event) -> None:
    # The kernel hands a process signal to any thread; here a worker takes it on purpose, once
    # the main thread sleeps in the wait. Python runs the handler in the main thread only when
    # that thread executes bytecode again, which an untimed Event.wait() never does.
    main = threading.get_ident()
    slept_through: list[bool] = []

    def take_the_signal() -> None:
        eventually_blocking(lambda: _asleep_in_wait(main), "the main thread to sleep")
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        if not usr1_sets.wait(10):
            slept_through.append(True)  # wake the main thread itself, to fail instead of hang
            signal.pthread_kill(main, signal.SIGUSR1)

    worker = threading.Thread(target=take_the_signal, daemon=True)
    worker.start()
    wait_for(usr1_sets)
    worker.join(15)
    assert not slept_through, "the main thread slept through a signal another thread received"
