from __future__ import annotations

from prometheus_client import CollectorRegistry

from octosts.domain.errors import PolicyDenied
from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest
from octosts.observability.audit import AuditEvent
from octosts.observability.exchanges import ExchangeEvents
from octosts.observability.metrics import Metrics
from tests.fakes import FakeClock, verified


class RecordingAudit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_denial_is_counted_and_audited_with_the_real_reason_and_issuer_audit() -> None:
    registry = CollectorRegistry()
    audit = RecordingAudit()
    events = ExchangeEvents(Metrics(registry), audit, FakeClock())  # type: ignore[arg-type]
    attempt = ExchangeAttempt(
        caller=verified(), installation_id=7, issuer_audit="issuer_not_listed"
    )
    events.exchange_done(
        CallInfo("octosts.v1.SecurityTokenService/Exchange", "rid-1", "ua", 0.01),
        ExchangeRequest("secret-bearer", "octo-org/demo", "ci"),
        attempt,
        PolicyDenied("no", reason="subject_mismatch"),
    )
    sample = registry.get_sample_value(
        "octo_sts_exchanges_total", {"result": "denied", "reason": "subject_mismatch"}
    )
    assert sample == 1.0
    assert registry.get_sample_value("octo_sts_issuer_audit_total") == 1.0
    (event,) = audit.events
    record = event.to_dict()
    assert record["issuer_audit"] == "issuer_not_listed"
    assert record["reason"] == "subject_mismatch"
    assert record["installation_id"] == 7
    assert "secret-bearer" not in str(record)
