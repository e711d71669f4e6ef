from __future__ import annotations

from prometheus_client import CollectorRegistry

from octosts.domain.errors import PolicyDenied
from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest, ScopeDecision
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


def audit_of(request: ExchangeRequest, attempt: ExchangeAttempt) -> dict:
    audit = RecordingAudit()
    events = ExchangeEvents(Metrics(CollectorRegistry()), audit, FakeClock())  # type: ignore[arg-type]
    call = CallInfo("octosts.v1.SecurityTokenService/Exchange", "rid-1", "ua", 0.01)
    events.exchange_done(call, request, attempt, PolicyDenied("no", reason="subject_mismatch"))
    (event,) = audit.events
    return event.to_dict()


def test_every_repository_and_its_decision_is_audited() -> None:
    attempt = ExchangeAttempt(caller=verified(), installation_id=7)
    attempt.decisions += [
        ScopeDecision("octo-org/app", allowed=True, reason="allowed"),
        ScopeDecision("octo-org/lib", allowed=False, reason="subject_mismatch"),
        ScopeDecision("octo-org/web", allowed=False, reason="policy_not_found"),
    ]
    request = ExchangeRequest(
        "t", "", "ci", scopes=("octo-org/app", "octo-org/lib", "octo-org/web")
    )
    record = audit_of(request, attempt)
    assert record["scope"] == "octo-org/app"
    assert record["scopes"] == [
        {"scope": "octo-org/app", "decision": "allowed", "reason": "allowed"},
        {"scope": "octo-org/lib", "decision": "denied", "reason": "subject_mismatch"},
        {"scope": "octo-org/web", "decision": "denied", "reason": "policy_not_found"},
    ]


def test_scopes_not_reached_are_audited_as_unchecked_and_bounded() -> None:
    request = ExchangeRequest("t", "o/a", "ci", scopes=("o/a", "O/A", "o/b"))
    assert audit_of(request, ExchangeAttempt())["scopes"] == [
        {"scope": "o/a", "decision": "unchecked", "reason": ""},
        {"scope": "o/b", "decision": "unchecked", "reason": ""},
    ]
    flood = ExchangeRequest("t", "", "ci", scopes=tuple(f"o/{i}{'x' * 300}" for i in range(500)))
    listed = audit_of(flood, ExchangeAttempt())["scopes"]
    assert len(listed) == 11
    assert all(len(item["scope"]) == 200 for item in listed)
