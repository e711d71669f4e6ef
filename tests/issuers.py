"""Helpers for tests that talk to OIDC issuers (the dev issuer, hand-made tokens)."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from octosts.adapters.oidc import OidcConfig, make_http_client
from octosts.domain.ports import Stage, StageObserver

# A public address (TEST-NET would be refused by the guard; this one is global).
PUBLIC_IP = "93.184.216.34"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with arbitrary header/payload and signature bytes."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        ]
    )


def tls_client(ca_cert: Path, config: OidcConfig | None = None) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    return make_http_client(config or OidcConfig(), verify=ctx)


class FakeResolver:
    """Answers every name with fixed addresses and counts lookups."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise OSError(f"unknown host {host}")
        return self.answers[host]


class _RecordingStage:
    def __init__(self, name: str) -> None:
        self.name = name
        self.notes: dict[str, str | int | bool] = {}
        self.error: BaseException | None = None

    def annotate(self, key: str, value: str | int | bool) -> None:
        self.notes[key] = value


class RecordingObserver:
    """Records every stage, its annotations and the exception that escaped it."""

    def __init__(self) -> None:
        self.stages: list[_RecordingStage] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        record = _RecordingStage(name)
        self.stages.append(record)
        try:
            yield record
        except BaseException as exc:
            record.error = exc
            raise

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def find(self, name: str) -> list[_RecordingStage]:
        return [s for s in self.stages if s.name == name]


_: StageObserver = RecordingObserver()
