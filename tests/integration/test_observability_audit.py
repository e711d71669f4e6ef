"""Audit events: JSON log line + CloudEvents to a real local HTTP sink."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from octosts.dev.httpserver import DevHTTPServer
from octosts.observability.audit import (
    CLOUDEVENT_TYPE,
    Actor,
    AuditEvent,
    AuditLog,
    CloudEventSink,
    token_sha256,
)
from octosts.observability.metrics import Metrics
from tests.polling import eventually

MINTED = "ghs_abcdefghijklmnopqrstuvwxyz0123456789"


class Sink:
    """A CloudEvents receiver; ``gate`` holds every request until set."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.status = 202
        self.arrived = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                sink.arrived.set()
                sink.gate.wait(30)  # stop() opens it
                sink.received.append((dict(self.headers), json.loads(body)))
                self.send_response(sink.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = DevHTTPServer(("127.0.0.1", 0), Handler).start("audit-sink")
        self.url = f"http://127.0.0.1:{self.server.port}/events"

    def stop(self) -> None:
        self.gate.set()
        self.server.stop()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def dropped(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("octo_sts_audit_events_dropped_total", {"reason": reason})
        or 0.0
    )


def event(n: int = 0, *, result: str = "ok") -> AuditEvent:
    return AuditEvent(
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        request_id=f"req-{n}",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        actor=Actor(
            iss="https://token.actions.githubusercontent.com",
            sub="repo:org/repo:ref:refs/heads/main",
            claims={"ref": "refs/heads/main"},
        ),
        scope="org/repo",
        identity="deploy",
        installation_id=42,
        permissions={"contents": "read"},
        repositories=("repo",),
        token_sha256=token_sha256(MINTED) if result == "ok" else "",
        reason="ok" if result == "ok" else "policy_denied",
        result=result,
        user_agent="test/1.0",
    )


async def test_events_are_logged_and_delivered_as_cloudevents(sink: Sink, metrics: Metrics) -> None:
    audit = AuditLog(sink=CloudEventSink(sink.url, metrics=metrics, source="//octo-sts/test"))
    audit.start()
    with structlog.testing.capture_logs() as logs:
        audit.record(event(1))
        audit.record(event(2, result="denied"))
    await audit.close(flush_within=5)

    assert [e["request_id"] for e in logs] == ["req-1", "req-2"]
    assert logs[0]["logger"] == "octosts.audit"
    assert logs[0]["actor"]["sub"] == "repo:org/repo:ref:refs/heads/main"
    assert logs[0]["token_sha256"] == token_sha256(MINTED)
    assert logs[1]["result"] == "denied"

    assert len(sink.received) == 2
    headers, body = next(r for r in sink.received if r[1]["data"]["request_id"] == "req-1")
    assert headers["content-type"].startswith("application/cloudevents+json")
    assert body["specversion"] == "1.0"
    assert body["type"] == CLOUDEVENT_TYPE
    assert body["source"] == "//octo-sts/test"
    assert body["subject"] == "org/repo"
    assert body["time"] == "2026-01-02T03:04:05Z"
    assert body["id"]
    assert body["data"]["installation_id"] == 42
    assert body["data"]["permissions"] == {"contents": "read"}
    assert dropped(metrics, "queue_full") == 0
    everything = json.dumps([r[1] for r in sink.received]) + repr(logs)
    assert MINTED not in everything


async def test_slow_sink_never_blocks_and_full_queue_drops_are_counted(
    sink: Sink, metrics: Metrics
) -> None:
    sink.gate.clear()
    audit_sink = CloudEventSink(sink.url, metrics=metrics, queue_size=2, senders=1, timeout=10)
    audit = AuditLog(sink=audit_sink)
    audit.start()
    with structlog.testing.capture_logs():
        audit.record(event(0))
        await eventually(sink.arrived.is_set, "the sender to be stuck inside the slow sink")
        for n in range(1, 6):
            audit.record(event(n))
    # record() did not wait for the blocked sink: every call returned while the sink still
    # holds the first delivery (it has answered nothing), one in flight, two queued, three dropped.
    assert not sink.gate.is_set()
    assert sink.received == []
    assert dropped(metrics, "queue_full") == 3.0
    sink.gate.set()
    await audit.close(flush_within=5)
    assert sorted(b["data"]["request_id"] for _, b in sink.received) == ["req-0", "req-1", "req-2"]
    assert dropped(metrics, "shutdown") == 0


async def test_close_gives_up_at_its_deadline(sink: Sink, metrics: Metrics) -> None:
    sink.gate.clear()
    audit_sink = CloudEventSink(sink.url, metrics=metrics, queue_size=10, senders=1, timeout=30)
    audit_sink.start()
    for n in range(3):
        assert audit_sink.offer(event(n))
    await eventually(sink.arrived.is_set, "the sender to be stuck inside the slow sink")
    # The sink answers nothing until the gate opens (never, here): close() returns only because
    # it gives up at flush_within. The outer bound turns a close() that waits into a failure.
    await asyncio.wait_for(audit_sink.close(flush_within=0.3), timeout=20)
    assert sink.received == []
    assert dropped(metrics, "shutdown") == 3.0
    assert not audit_sink.offer(event(9))
    assert dropped(metrics, "shutdown") == 4.0


async def test_sink_timeout_and_rejection_are_counted(sink: Sink, metrics: Metrics) -> None:
    sink.gate.clear()
    audit_sink = CloudEventSink(sink.url, metrics=metrics, senders=1, timeout=0.2)
    audit_sink.start()
    with structlog.testing.capture_logs() as logs:
        audit_sink.offer(event(0))
        await eventually(lambda: dropped(metrics, "sink_unavailable") == 1.0, "a timeout drop")
        sink.gate.set()
        sink.status = 500
        audit_sink.offer(event(1))
        await eventually(lambda: dropped(metrics, "sink_rejected") == 1.0, "a rejection drop")
    await audit_sink.close(flush_within=1)
    assert {entry["event"] for entry in logs} == {
        "audit sink unreachable",
        "audit sink rejected an event",
    }


def test_sink_rejects_bad_configuration(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="http"):
        CloudEventSink("file:///tmp/x", metrics=metrics)
    with pytest.raises(ValueError, match="queue_size"):
        CloudEventSink("http://127.0.0.1:1/", metrics=metrics, queue_size=0)
