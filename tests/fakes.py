"""Fakes for the domain ports (type-checked against the Protocols)."""

from __future__ import annotations

from octosts.domain.ports import Clock


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


_: Clock = FakeClock()
