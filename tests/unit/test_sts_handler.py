"""The servicer's bookkeeping: every exchange is reported once, with what ended it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest
from octosts.observability.metrics import exchange_outcome
from octosts.transport.sts import _Handler


class Reporter:
    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []

    def exchange_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        error: BaseException | None,
    ) -> None:
        self.errors.append(error)


class Context:
    def invocation_metadata(self) -> Any:
        return (("authorization", "Bearer a.b.c"),)

    def set_trailing_metadata(self, _metadata: Any) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None


class SlowExchanger:
    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def exchange(self, request: ExchangeRequest, attempt: ExchangeAttempt) -> Any:
        self.started.set()
        await asyncio.Event().wait()  # GitHub never answers


async def test_a_cancelled_exchange_is_reported_as_cancelled_not_ok() -> None:
    reporter = Reporter()
    exchanger = SlowExchanger()
    handler = _Handler(exchanger, reporter, verbose=False)  # type: ignore[arg-type]
    shown = ExchangeRequest("", "o/r", "ci")
    task = asyncio.create_task(handler.run("rpc", Context(), shown, lambda _: shown))  # type: ignore[arg-type]
    await exchanger.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (error,) = reporter.errors
    assert isinstance(error, asyncio.CancelledError)
    assert exchange_outcome(error) == ("error", "cancelled")
