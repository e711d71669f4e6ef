"""Audit events: who got which token (never the token itself), one per exchange.

``AuditLog.record(event)`` writes one structured log line on the
``octosts.audit`` logger and, when a sink is configured, queues the event as a
CloudEvent (1.0, structured JSON mode, type ``dev.octo-sts.exchange``) for an
HTTP endpoint. ``record`` never waits: the queue is bounded and a full queue
drops the event and counts it in ``octo_sts_audit_events_dropped_total``.
Background senders POST the queued events with a timeout; ``close()`` gives
them a deadline to flush what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import structlog

if TYPE_CHECKING:
    from octosts.observability.metrics import Metrics

CLOUDEVENT_TYPE = "dev.octo-sts.exchange"
# A token GitHub minted after its exchange gave up, and what became of it (revoked...).
ORPHAN_EVENT = "orphan_token"
ORPHAN_CLOUDEVENT_TYPE = "dev.octo-sts.orphan-token"
CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
AUDIT_LOGGER = "octosts.audit"


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a minted token: lets operators match a token seen elsewhere."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Actor:
    """The verified caller: issuer, subject and the claims the policy matched on.

    ``pinned_by``: the ``owner/repo`` whose policy's pinned keys alone verified the token;
    ``iss`` and ``sub`` are then only what those keys' holder claims (``verified_by``).
    """

    iss: str
    sub: str
    claims: Mapping[str, str] = field(default_factory=dict)
    pinned_by: str = ""

    @property
    def verified_by(self) -> str:
        if self.pinned_by:
            return f"as claimed by pinned keys of {self.pinned_by}"
        return "issuer"


@dataclass(frozen=True, slots=True)
class ScopeVerdict:
    """One requested scope (a repository of a several-repository token, or the one scope)
    and what its trust policy decided: ``allowed``, ``denied`` (``reason``: the policy's
    denial, or why it could not be read) or ``unchecked`` (the exchange ended before)."""

    scope: str
    decision: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One exchange (or Check), successful or not.

    ``result`` is ``ok``, ``denied`` or ``error`` (``metrics.exchange_outcome``);
    ``reason`` the StsError reason (``ok`` on success). Unknown parts of a
    failed exchange are empty (``actor`` None when the token was not trusted).
    ``scope`` is the first requested scope; ``scopes`` lists every one with its decision.
    """

    time: datetime
    request_id: str
    result: str
    reason: str
    trace_id: str = ""
    actor: Actor | None = None
    scope: str = ""
    identity: str = ""
    installation_id: int | None = None
    # The GitHub App that minted the token (several Apps: docs/github-apps.md).
    app_id: int | None = None
    permissions: Mapping[str, str] = field(default_factory=dict)
    repositories: tuple[str, ...] = ()
    token_sha256: str = ""
    user_agent: str = ""
    rpc: str = ""
    duration_ms: float | None = None
    # Set when the org's trusted-issuers file is in audit mode and would have refused the issuer.
    issuer_audit: str | None = None
    # Egress gateway (rpc "egress"): requests this event stands for, and whether they were
    # served with a token minted earlier (``observability.egress`` aggregates those).
    requests: int = 1
    reused: bool = False
    scopes: tuple[ScopeVerdict, ...] = ()
    # The pinned key sets (their SHA-256 digests) that verified the caller, when the trust
    # policies pin keys: which keys a token was accepted with, for rotations and forensics.
    pinned_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "actor": None
            if self.actor is None
            else {
                "iss": self.actor.iss,
                "sub": self.actor.sub,
                "claims": dict(self.actor.claims),
                "verified_by": self.actor.verified_by,
            },
            "scope": self.scope,
            "scopes": [
                {"scope": v.scope, "decision": v.decision, "reason": v.reason} for v in self.scopes
            ],
            "identity": self.identity,
            "installation_id": self.installation_id,
            "app_id": self.app_id,
            "permissions": dict(self.permissions),
            "repositories": list(self.repositories),
            "token_sha256": self.token_sha256,
            "reason": self.reason,
            "result": self.result,
            "user_agent": self.user_agent,
            "rpc": self.rpc,
            "duration_ms": self.duration_ms,
            "issuer_audit": self.issuer_audit,
            "requests": self.requests,
            "reused": self.reused,
            "pinned_keys": list(self.pinned_keys),
        }


def to_cloudevent(
    event: AuditEvent, *, source: str, event_type: str = CLOUDEVENT_TYPE
) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode envelope of ``event``."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "type": event_type,
        "source": source,
        "id": uuid.uuid4().hex,
        "time": event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": event.to_dict(),
    }
    if event.scope:
        envelope["subject"] = event.scope
    return envelope


class CloudEventSink:
    """Delivers audit events to an HTTP endpoint from a bounded queue.

    ``offer`` never blocks; call ``start()`` inside the running event loop and
    ``close()`` at shutdown. Delivery failures (timeouts, refused connections,
    non-2xx) drop the event and count it; there is no retry, so a broken sink
    costs at most ``timeout`` per event per sender.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics,
        source: str = "octo-sts",
        queue_size: int = 1000,
        timeout: float = 5.0,
        senders: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the audit sink URL must be http:// or https://")
        if queue_size < 1 or senders < 1 or timeout <= 0:
            raise ValueError("queue_size and senders must be >= 1 and timeout > 0")
        self._url = url
        self._metrics = metrics
        self._source = source
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self._senders = senders
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._closed = False
        # Not bound here: binding would freeze the structlog configuration of this moment.
        self._log = structlog.get_logger(AUDIT_LOGGER)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.get_running_loop().create_task(self._run(), name=f"audit-sender-{i}")
                for i in range(self._senders)
            ]

    def offer(self, event: AuditEvent, event_type: str = CLOUDEVENT_TYPE) -> bool:
        """Queue ``event``; False (and counted) when the queue is full or closed."""
        if self._closed:
            self._metrics.audit_dropped("shutdown")
            return False
        envelope = to_cloudevent(event, source=self._source, event_type=event_type)
        body = json.dumps(envelope).encode()
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            self._metrics.audit_dropped("queue_full")
            return False
        return True

    async def _run(self) -> None:
        while True:
            body = await self._queue.get()
            self._in_flight += 1
            try:
                await self._send(body)
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _send(self, body: bytes) -> None:
        try:
            # Streamed and never read: the sink's answer body is not needed (no size risk).
            async with self._client.stream(
                "POST", self._url, content=body, headers={"content-type": CLOUDEVENT_CONTENT_TYPE}
            ) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            self._metrics.audit_dropped("sink_unavailable")
            self._log.warning(
                "audit sink unreachable", logger=AUDIT_LOGGER, error=type(exc).__name__
            )
            return
        if not 200 <= status < 300:
            self._metrics.audit_dropped("sink_rejected")
            self._log.warning("audit sink rejected an event", logger=AUDIT_LOGGER, status=status)

    async def close(self, flush_within: float = 5.0) -> None:
        """Stop accepting, flush for at most ``flush_within`` seconds, count the rest as dropped."""
        self._closed = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_within)
            lost = self._queue.qsize() + self._in_flight
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        else:
            lost = self._queue.qsize()
        for _ in range(lost):
            self._metrics.audit_dropped("shutdown")
        await self._client.aclose()


class AuditLog:
    """One JSON log line per exchange, and optionally a CloudEvent (see module doc)."""

    def __init__(self, *, sink: CloudEventSink | None = None) -> None:
        self._sink = sink
        # Not bound here: binding would freeze the structlog configuration of this moment.
        self._log = structlog.get_logger(AUDIT_LOGGER)

    def start(self) -> None:
        """Start the sink's senders (call from inside the running event loop)."""
        if self._sink is not None:
            self._sink.start()

    def record(self, event: AuditEvent) -> None:
        """Log ``event`` and queue it for the sink; never waits for delivery."""
        self._log.info("exchange", logger=AUDIT_LOGGER, **event.to_dict())
        if self._sink is not None:
            self._sink.offer(event)

    def record_orphan(self, event: AuditEvent) -> None:
        """An orphan token's event (``result`` revoked or error): logged and queued the same
        way, under its own name (``orphan_token``, CloudEvent ``dev.octo-sts.orphan-token``)."""
        self._log.warning(ORPHAN_EVENT, logger=AUDIT_LOGGER, **event.to_dict())
        if self._sink is not None:
            self._sink.offer(event, ORPHAN_CLOUDEVENT_TYPE)

    async def close(self, flush_within: float = 5.0) -> None:
        if self._sink is not None:
            await self._sink.close(flush_within)
