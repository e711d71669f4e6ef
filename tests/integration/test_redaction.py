"""No secret leaves the service through its telemetry or its error messages.

Real exchanges (successes and every kind of failure, with verbose errors ON)
run against the in-process service while everything it emits is captured:
JSON logs (structlog + stdlib, through ``configure_logging``), audit events
(log lines and CloudEvents), spans, the metrics exposition, and the status
details and metadata returned to callers. The OIDC tokens sent, every GitHub
token the emulator issued (including the service's own contents:read tokens)
and the app private key must appear nowhere.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import generate_latest

from octosts._gen.octosts.v1 import sts_pb2
from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.observability.logging import configure_logging
from tests.emulator import app_key, pem
from tests.integration.service_harness import DOMAIN, SUBJECT
from tests.integration.test_observability_audit import Sink
from tests.integration.test_observability_service import running_service

JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
GITHUB_TOKEN_LIKE = re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}")
OPAQUE_SECRET = "opaque-secret-bearer-4242-do-not-log"


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """Process-wide JSON logging into a buffer; the previous configuration is restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def forged(token: str) -> str:
    """The same header and claims with another signature."""
    head, body, sig = token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    return f"{head}.{body}.{flipped}"


def check_request(bearer: str) -> Any:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.path = "/sts/exchange"
    req.attributes.request.http.headers["authorization"] = f"Bearer {bearer}"
    req.attributes.context_extensions["mode"] = "verify"
    return req


def key_fragments() -> list[str]:
    """The PEM and pieces of it long enough to identify the key."""
    text = pem(app_key()).decode()
    body = "".join(line for line in text.splitlines() if "-----" not in line)
    raw = base64.b64decode(body)
    return [
        text,
        *(line for line in text.splitlines() if len(line) >= 40),
        raw.hex()[:64],
        base64.urlsafe_b64encode(raw[:48]).decode(),
    ]


async def test_no_token_or_key_in_logs_audit_spans_metrics_or_errors(
    backends: tuple[DevIssuer, GitHubEmulator], log_buffer: io.StringIO
) -> None:
    issuer, github = backends
    sink = Sink()
    captured: list[str] = []
    sent: list[str] = []
    minted: list[str] = []
    try:
        async with running_service(
            issuer, github, verbose_errors=True, audit_sink_url=sink.url
        ) as svc:
            now = int(svc.clock.now())

            def token(**claims: Any) -> str:
                body: dict[str, Any] = {"sub": SUBJECT, "aud": DOMAIN, "iat": now, **claims}
                value = issuer.mint(body, ttl=600)
                sent.append(value)
                return value

            good = token()
            cases: list[tuple[str, str, str]] = [
                (good, "octo-org/demo", "ci"),
                (good, "octo-org/demo", "ci"),  # verified-token cache hit
                (token(), "octo-org", "ci"),  # org policy
                (token(iat=now - 5000, exp=now - 4400), "octo-org/demo", "ci"),  # expired
                (token(aud="someone-else"), "octo-org/demo", "ci"),
                (token(sub="repo:evil/x:ref:refs/heads/main"), "octo-org/demo", "ci"),
                (token(), "octo-org/demo", "no-such-policy"),
                (token(), "octo-org/demo", "../../etc"),
                (forged(good), "octo-org/demo", "ci"),
                (OPAQUE_SECRET, "octo-org/demo", "ci"),
                (f"{good}.{OPAQUE_SECRET}", "octo-org/demo", "ci"),
            ]
            sent.extend([forged(good), OPAQUE_SECRET])
            outcomes: list[str] = []
            for bearer, scope, identity in cases:
                answer, initial = await svc.exchange(scope, identity, token=bearer)
                captured.append(json.dumps(initial))
                if isinstance(answer, sts_pb2.ExchangeResponse):
                    minted.append(answer.token)
                    outcomes.append("ok")
                else:
                    outcomes.append(answer.code().name)
                    captured += [
                        answer.details() or "",
                        answer.debug_error_string() or "",
                        repr(answer.trailing_metadata()),
                    ]
            # GitHub failing while minting (a fresh token: nothing cached for it).
            github.force_error(502, times=3, path_prefix="/app/installations")
            answer, _ = await svc.exchange(token=token())
            assert isinstance(answer, grpc.aio.AioRpcError)
            captured.append(answer.details() or "")

            authz = external_auth_pb2_grpc.AuthorizationStub(svc.channel)  # type: ignore[no-untyped-call]
            for bearer in (good, forged(good), OPAQUE_SECRET):
                reply = await authz.Check(check_request(bearer), timeout=10)
                captured.append(str(reply))

            captured.append(generate_latest(svc.app.metrics.registry).decode())
            captured += [span.to_json() for span in svc.spans()]
            span_count = len(svc.spans())
        # The app is stopped: audit events are flushed to the sink.
        captured += [json.dumps(body) for _, body in sink.received]
        sink_events = len(sink.received)
    finally:
        sink.stop()
    logs = log_buffer.getvalue()
    captured.append(logs)
    haystack = "\n".join(captured)

    # The capture really captured something (else this test could not fail).
    assert outcomes[:3] == ["ok", "ok", "ok"], outcomes
    assert set(outcomes[3:]) <= {"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"}, (
        outcomes
    )
    assert len(minted) == 3
    assert logs.count('"logger": "octosts.audit"') >= len(cases) + 1
    assert sink_events == len(cases) + 1
    assert span_count > 10
    assert "octo_sts_exchanges_total" in haystack

    issued = github.ledger.live()  # every token the emulator issued that is still live
    assert set(minted) <= set(issued)
    assert len(issued) > len(minted)  # the service's own contents:read tokens too
    secrets = {*sent, *minted, *issued, *key_fragments()}
    leaked = sorted({s[:12] + "..." for s in secrets if s in haystack})
    assert not leaked, f"secrets found in captured output: {leaked}"
    assert not JWT_LIKE.search(haystack), JWT_LIKE.search(haystack)
    assert not GITHUB_TOKEN_LIKE.search(haystack), GITHUB_TOKEN_LIKE.search(haystack)
    assert "PRIVATE KEY" not in haystack


def test_the_search_finds_a_leak_when_there_is_one() -> None:
    """The patterns and key fragments above match real secrets (guards the guard)."""
    text = pem(app_key()).decode()
    der = base64.b64decode("".join(ln for ln in text.splitlines() if "-----" not in ln))
    fragments = key_fragments()
    assert sum(f in text for f in fragments) >= 2
    assert der.hex()[:64] in fragments
    assert JWT_LIKE.search("x eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlLXh5eg y")
    assert GITHUB_TOKEN_LIKE.search("token ghs_abcdefghijklmnopqrstuvwxyz0123 here")
