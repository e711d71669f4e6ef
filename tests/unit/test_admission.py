"""Admission: the bound on calls in flight, and the drain's cut of those left at the end."""

from __future__ import annotations

import asyncio

import pytest

from octosts.transport.admission import Admission


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
