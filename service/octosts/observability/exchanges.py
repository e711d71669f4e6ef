"""What every finished exchange leaves behind: one metric sample and one audit event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from octosts.observability.audit import Actor, AuditEvent, ScopeVerdict, token_sha256
from octosts.observability.metrics import exchange_outcome
from octosts.observability.tracing import current_trace_id

if TYPE_CHECKING:
    from octosts.domain.exchange import CallInfo, ExchangeAttempt, ExchangeRequest
    from octosts.domain.ports import Clock, MintedToken
    from octosts.observability.audit import AuditLog
    from octosts.observability.metrics import Metrics

_log = structlog.get_logger("octosts")
# Requested scopes an audit event names when the exchange ended before reading any policy
# (more are refused by the exchange: domain.exchange.MAX_SCOPES), and their length.
_UNCHECKED_SCOPES = 11
_SCOPE_CHARS = 200


class ExchangeEvents:
    """``domain.exchange.ExchangeReporter``: ``octo_sts_exchanges_total`` and an audit event;
    and ``adapters.github.OrphanSink``: ``octo_sts_github_orphan_tokens_total`` and one."""

    def __init__(self, metrics: Metrics, audit: AuditLog, clock: Clock) -> None:
        self._metrics = metrics
        self._audit = audit
        self._clock = clock

    def exchange_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        error: BaseException | None,
    ) -> None:
        result, reason = exchange_outcome(error)
        self._metrics.exchange(result, reason)
        if attempt.issuer_audit is not None:
            # Audit-mode org allowlist: allowed, but counted and logged for the org's admins.
            self._metrics.issuer_audit()
            _log.warning(
                "issuer_audit",
                request_id=call.request_id,
                reason=attempt.issuer_audit,
                scope=request.scope[:200],
                iss=attempt.caller.issuer if attempt.caller else None,
            )
        self._audit.record(audit_event(call, request, attempt, result, reason, self._clock))

    def orphan_token(
        self, outcome: str, installation_id: int, token: MintedToken | None, /
    ) -> None:
        """A token minted after its exchange gave up: counted, and an audit event with the
        abandoned call's request id and trace (this runs in a copy of its context)."""
        self._metrics.orphan_token(outcome)
        bound = structlog.contextvars.get_contextvars()
        self._audit.record_orphan(
            AuditEvent(
                time=datetime.fromtimestamp(self._clock.now(), UTC),
                request_id=str(bound.get("request_id", "")),
                result="revoked" if outcome == "revoked" else "error",
                reason=f"orphan_token_{outcome}",
                trace_id=current_trace_id(),
                installation_id=installation_id,
                app_id=token.app_id if token is not None else None,
                permissions=dict(token.permissions) if token is not None else {},
                repositories=tuple(token.repositories) if token is not None else (),
                token_sha256=token_sha256(token.token) if token is not None else "",
                rpc=str(bound.get("rpc", "")).lstrip("/"),
            )
        )


def audit_event(
    call: CallInfo,
    request: ExchangeRequest,
    attempt: ExchangeAttempt,
    result: str,
    reason: str,
    clock: Clock,
) -> AuditEvent:
    """The audit record of one exchange: who asked, what they got (a hash, never the token)."""
    caller = attempt.caller
    minted = attempt.result.token if attempt.result is not None else None
    return AuditEvent(
        time=datetime.fromtimestamp(clock.now(), UTC),
        request_id=call.request_id,
        result=result,
        reason=reason,
        # Called inside the interceptor's RPC span: this is the caller's trace.
        trace_id=current_trace_id(),
        actor=None
        if caller is None
        else Actor(caller.issuer, caller.subject, dict(attempt.matched_claims), caller.pinned_by),
        scope=(request.scope or next(iter(request.scopes), ""))[:_SCOPE_CHARS],
        scopes=scope_verdicts(request, attempt),
        identity=request.identity[:100],
        # The installation that minted: with several Apps, maybe not the one the lookup chose.
        installation_id=attempt.installation_id
        if minted is None or minted.installation_id is None
        else minted.installation_id,
        app_id=minted.app_id if minted is not None else None,
        permissions=dict(minted.permissions) if minted is not None else {},
        repositories=tuple(minted.repositories) if minted is not None else (),
        token_sha256=token_sha256(minted.token) if minted is not None else "",
        user_agent=call.user_agent,
        rpc=call.rpc,
        duration_ms=round(call.duration_seconds * 1000, 3),
        issuer_audit=attempt.issuer_audit,
        pinned_keys=attempt.pinned_keys,
    )


def scope_verdicts(request: ExchangeRequest, attempt: ExchangeAttempt) -> tuple[ScopeVerdict, ...]:
    """Every requested scope and its policy's decision (``unchecked`` before any was read)."""
    if attempt.decisions:
        return tuple(
            ScopeVerdict(d.scope, "allowed" if d.allowed else "denied", d.reason)
            for d in attempt.decisions
        )
    distinct: dict[str, str] = {}
    for scope in ([request.scope] if request.scope else []) + list(request.scopes):
        if len(distinct) == _UNCHECKED_SCOPES:
            break
        distinct.setdefault(scope.lower(), scope[:_SCOPE_CHARS])
    return tuple(ScopeVerdict(scope, "unchecked") for scope in distinct.values())
