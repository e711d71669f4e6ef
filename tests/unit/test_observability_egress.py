"""Egress events: mints and refusals as exchanges, reuses aggregated per token and interval."""

from __future__ import annotations

import dataclasses
import datetime as dt

from octosts.domain.errors import PolicyDenied
from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest, ExchangeResult
from octosts.domain.names import Scope
from octosts.domain.ports import MintedToken
from octosts.observability.audit import AuditEvent, token_sha256
from octosts.observability.egress import EgressEvents
from tests.fakes import FakeClock, policy, verified
from tests.polling import eventually

CALL = CallInfo("egress", "rid-1", "gh/2.0", 0.001)
REQUEST = ExchangeRequest("the-oidc-token", "octo-org/demo", "ci")


class RecordingAudit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class RecordingExchanges:
    def __init__(self) -> None:
        self.done: list[BaseException | None] = []

    def exchange_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        error: BaseException | None,
    ) -> None:
        self.done.append(error)


def attempt_with(token: str) -> ExchangeAttempt:
    minted = MintedToken(token, dt.datetime(2030, 1, 1, tzinfo=dt.UTC), {"issues": "write"}, ())
    result = ExchangeResult(minted, verified(), Scope("octo-org", "demo"), "ci", 7, policy(), {})
    return ExchangeAttempt(caller=verified(), installation_id=7, result=result)


def make(max_pending: int = 100) -> tuple[EgressEvents, RecordingExchanges, RecordingAudit]:
    exchanges, audit = RecordingExchanges(), RecordingAudit()
    events = EgressEvents(exchanges, audit, FakeClock(), max_pending=max_pending)  # type: ignore[arg-type]
    return events, exchanges, audit


def test_mints_and_refusals_are_reported_as_exchanges() -> None:
    events, exchanges, audit = make()
    refused = PolicyDenied("no")
    events.egress_done(CALL, REQUEST, attempt_with("ghs_a"), False, None)
    events.egress_done(CALL, REQUEST, ExchangeAttempt(), False, refused)
    events.egress_done(CALL, REQUEST, ExchangeAttempt(), True, refused)
    assert exchanges.done == [None, refused, refused]
    assert audit.events == []


def test_reuses_are_one_event_per_token_with_their_count_when_flushed() -> None:
    events, exchanges, audit = make()
    for _ in range(3):
        events.egress_done(CALL, REQUEST, attempt_with("ghs_a"), True, None)
    events.egress_done(CALL, REQUEST, attempt_with("ghs_b"), True, None)
    assert audit.events == []
    assert exchanges.done == []
    assert events.flush() == 2
    by_token = {e.token_sha256: e for e in audit.events}
    a, b = by_token[token_sha256("ghs_a")], by_token[token_sha256("ghs_b")]
    assert (a.requests, a.reused, a.rpc, a.result) == (3, True, "egress", "ok")
    assert (b.requests, b.scope, b.identity, b.installation_id) == (1, "octo-org/demo", "ci", 7)
    record = str([e.to_dict() for e in audit.events])
    assert "ghs_a" not in record
    assert "the-oidc-token" not in record
    assert events.flush() == 0  # counted once


def test_pending_reuses_are_bounded_by_flushing_not_dropping() -> None:
    events, _, audit = make(max_pending=2)
    for token in ("ghs_a", "ghs_b", "ghs_c"):
        events.egress_done(CALL, REQUEST, attempt_with(token), True, None)
    assert len(audit.events) == 2  # the third token flushed the first two
    events.flush()
    assert sum(e.requests for e in audit.events) == 3


async def test_the_periodic_flush_and_close_record_the_pending_reuses() -> None:
    exchanges, audit = RecordingExchanges(), RecordingAudit()
    events = EgressEvents(exchanges, audit, FakeClock(), interval=0.01)  # type: ignore[arg-type]
    events.start()
    events.egress_done(CALL, REQUEST, attempt_with("ghs_a"), True, None)
    await eventually(lambda: audit.events, "the periodic flush", interval=0.01)
    events.egress_done(CALL, REQUEST, attempt_with("ghs_a"), True, None)
    await events.close()
    assert [e.requests for e in audit.events] == [1, 1]
    assert dataclasses.asdict(audit.events[0])["reused"] is True
