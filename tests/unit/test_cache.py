from __future__ import annotations

import asyncio

import pytest

from octosts.adapters.cache import SingleFlight, TtlCache
from tests.fakes import FakeClock


def test_fresh_then_stale_then_gone() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(name="t", maxsize=10, clock=clock)
    cache.set("a", 1, ttl=10, stale_for=100)
    assert cache.get("a") == 1
    clock.advance(10)
    assert cache.get("a") is None
    entry = cache.get_entry("a")
    assert entry is not None
    assert entry.value == 1
    assert not entry.is_fresh(clock.now())
    clock.advance(100)
    assert cache.get_entry("a") is None
    assert len(cache) == 0


def test_lru_bound_evicts_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(name="t", maxsize=2, clock=FakeClock())
    cache.set("a", 1, ttl=10)
    cache.set("b", 2, ttl=10)
    assert cache.get("a") == 1  # a is now most recent
    cache.set("c", 3, ttl=10)
    assert cache.get("b") is None
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert len(cache) == 2


def test_delete_where() -> None:
    cache: TtlCache[tuple[str, str], int] = TtlCache(name="t", maxsize=10, clock=FakeClock())
    cache.set(("o", "x"), 1, ttl=10)
    cache.set(("o", "y"), 2, ttl=10)
    cache.set(("p", "x"), 3, ttl=10)
    assert cache.delete_where(lambda k: k[0] == "o") == 2
    assert cache.get(("p", "x")) == 3


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        TtlCache(name="t", maxsize=0, clock=FakeClock())


async def test_single_flight_shares_one_call() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(flight.do("k", work)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 50
    assert calls == 1
    # After completion a new call runs again.
    gate.set()
    assert await flight.do("k", work) == 42
    assert calls == 2


async def test_single_flight_shares_exceptions_and_survives_cancelled_waiter() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def boom() -> int:
        await gate.wait()
        raise RuntimeError("upstream down")

    first = asyncio.create_task(flight.do("k", boom))
    second = asyncio.create_task(flight.do("k", boom))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    with pytest.raises(RuntimeError, match="upstream down"):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
