"""Admission: the bound on calls in flight, and the drain's cut of those left at the end."""

from __future__ import annotations

import asyncio
import time

import pytest

from octosts.transport.admission import MAX_LOOP_LAG, MIN_IN_FLIGHT, Admission


async def test_admits_up_to_the_limit_and_counts_releases() -> None:
    admission = Admission(limit=2)
    gate = asyncio.Event()
    admitted: list[bool] = []

    async def call() -> None:
        task = admission.admit()
        admitted.append(task is not None)
        if task is not None:
            await gate.wait()
            admission.release(task)

    calls = [asyncio.ensure_future(call()) for _ in range(3)]
    await asyncio.sleep(0)
    assert admitted == [True, True, False]
    assert admission.in_flight == 2
    gate.set()
    await asyncio.gather(*calls)
    assert admission.in_flight == 0
    # Room again once the first calls are done.
    later = asyncio.ensure_future(call())
    await asyncio.sleep(0)
    assert admitted[-1] is True
    later.cancel()


async def test_drain_waits_for_calls_that_finish_and_cuts_the_rest() -> None:
    admission = Admission(limit=10)
    quick_done = asyncio.Event()
    cut: list[bool] = []

    async def quick() -> None:
        task = admission.admit()
        assert task is not None
        await asyncio.sleep(0)
        admission.release(task)
        quick_done.set()

    async def stuck() -> None:
        task = admission.admit()
        assert task is not None
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cut.append(admission.was_cut(task))
            raise
        finally:
            admission.release(task)

    calls = [asyncio.ensure_future(quick()), asyncio.ensure_future(stuck())]
    await asyncio.sleep(0)
    assert await admission.drain(grace=0.05) == 1
    assert quick_done.is_set()
    assert cut == [True]
    assert admission.in_flight == 0
    await asyncio.gather(*calls, return_exceptions=True)


async def test_a_call_cancelled_by_its_caller_is_not_a_cut() -> None:
    admission = Admission(limit=1)
    seen: list[bool] = []

    async def call() -> None:
        task = admission.admit()
        assert task is not None
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(admission.was_cut(task))
            raise
        finally:
            admission.release(task)

    running = asyncio.ensure_future(call())
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen == [False]
    assert await admission.drain(grace=0.01) == 0


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(limit=0)


async def test_a_late_event_loop_sheds_past_a_floor_of_calls() -> None:
    # The loop's lag is the CPU's queue: past MAX_LOOP_LAG new calls are not taken, unless
    # so few are running that the lag cannot be theirs (the replica keeps making progress).
    admission = Admission(limit=100)
    gate = asyncio.Event()

    async def call() -> bool:
        task = admission.admit()
        if task is None:
            return False
        await gate.wait()
        admission.release(task)
        return True

    admission.lag = MAX_LOOP_LAG * 4
    running = [asyncio.ensure_future(call()) for _ in range(MIN_IN_FLIGHT)]
    await asyncio.sleep(0)
    assert admission.in_flight == MIN_IN_FLIGHT  # under the floor: taken despite the lag
    extra = asyncio.ensure_future(call())
    await asyncio.sleep(0)
    assert extra.done()
    assert extra.result() is False
    assert "behind" in (admission.full() or "")
    admission.lag = 0.0  # the loop caught up
    assert admission.full() is None
    gate.set()
    assert all(await asyncio.gather(*running))


async def test_watch_loop_measures_how_late_timers_fire() -> None:
    admission = Admission(limit=10)
    watcher = asyncio.ensure_future(admission.watch_loop())
    try:
        await asyncio.sleep(0.02)  # the watcher's timer is armed
        time.sleep(0.3)  # the loop blocked: the lag being measured, not a wait for readiness
        for _ in range(100):  # until the watcher has run once more
            await asyncio.sleep(0)
            if admission.lag >= MAX_LOOP_LAG:
                break
        assert admission.lag >= MAX_LOOP_LAG
    finally:
        watcher.cancel()
