"""Waiting in the main thread for a stop signal, so that the signal is always seen.

CPython runs Python signal handlers (and raises KeyboardInterrupt) in the main thread, but the
kernel may deliver SIGINT/SIGTERM to any thread. A main thread blocked in an untimed
``Event.wait()`` is woken only by a signal delivered to it: when the dev servers' worker threads
took the signal instead, ``octo-sts dev github`` slept through Ctrl-C (1 run in 25, under load).
A timed wait wakes regularly and lets the pending handler run.
"""

from __future__ import annotations

import threading

CHECK_INTERVAL = 0.1  # seconds between chances for a pending signal handler to run


def wait_for(event: threading.Event) -> None:
    """Block until ``event`` is set; signal handlers (KeyboardInterrupt too) still run."""
    while not event.wait(CHECK_INTERVAL):
        pass
