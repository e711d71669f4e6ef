"""What egress checks leave behind: metrics always, audit events per decision or aggregated.

The egress gateway can see many requests a second from one workload; one audit event each
would make the audit log a copy of the access log. So (docs/egress.md):

- a check that minted a token, and every refused or failed check: exactly what an exchange
  leaves (``octo_sts_exchanges_total`` and one audit event, ``rpc: "egress"``), with the
  minted token's SHA-256;
- checks served with a token held from an earlier mint: aggregated per held token. Each
  ``interval`` seconds (and at shutdown) one audit event per token that served requests in
  between: ``reused: true``, ``requests`` = how many, the caller, scope, identity, grant and
  token hash of the first of them. Metrics count every one as it happens
  (``octo_sts_cache_requests_total{cache="egress_token_cache"}``,
  ``octo_sts_ext_authz_decisions_total``).

Pending aggregates are bounded (``max_pending`` tokens): a new token past the bound flushes
them all at once rather than dropping any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from octosts.observability.exchanges import audit_event

if TYPE_CHECKING:
    from octosts.domain.exchange import (
        CallInfo,
        ExchangeAttempt,
        ExchangeReporter,
        ExchangeRequest,
    )
    from octosts.domain.ports import Clock
    from octosts.observability.audit import AuditEvent, AuditLog

DEFAULT_INTERVAL_SECONDS = 60.0


class EgressEvents:
    """``domain.egress.EgressReporter``. Call ``start()`` in the running loop, ``close()`` last."""

    def __init__(
        self,
        exchanges: ExchangeReporter,
        audit: AuditLog,
        clock: Clock,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_pending: int = 10_000,
    ) -> None:
        if interval <= 0 or max_pending < 1:
            raise ValueError("interval must be positive and max_pending at least 1")
        self._exchanges = exchanges
        self._audit = audit
        self._clock = clock
        self._interval = interval
        self._max_pending = max_pending
        # token sha256 -> (the first reuse's event, how many reuses since the last flush)
        self._pending: dict[str, tuple[AuditEvent, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def egress_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        reused: bool,  # noqa: FBT001 - the EgressReporter protocol's signature
        error: BaseException | None,
    ) -> None:
        if error is not None or not reused:
            self._exchanges.exchange_done(call, request, attempt, error)
            return
        event = audit_event(call, request, attempt, "ok", "ok", self._clock)
        first, count = self._pending.get(event.token_sha256, (event, 0))
        if count == 0 and len(self._pending) >= self._max_pending:
            self.flush()
        self._pending[event.token_sha256] = (first, count + 1)

    def flush(self) -> int:
        """Record one event per token with pending reuses; returns how many were recorded."""
        pending, self._pending = self._pending, {}
        now = datetime.fromtimestamp(self._clock.now(), UTC)
        for first, count in pending.values():
            self._audit.record(dataclasses.replace(first, time=now, requests=count, reused=True))
        return len(pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="egress-audit")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # a period, not a readiness wait
            self.flush()

    async def close(self) -> None:
        """Stop the periodic flush and record what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
