"""Webhook deliveries: signed ``POST``s of GitHub events to one receiver, from a background thread.

Each App has its own webhook (one ``WebhookSender``). Each delivery carries ``X-GitHub-Event``,
a fresh ``X-GitHub-Delivery`` id, the App as ``X-GitHub-Hook-Installation-Target-Type:
integration`` and ``X-GitHub-Hook-Installation-Target-ID: <app id>`` (as GitHub sends for App
webhooks) and, with a secret, ``X-Hub-Signature-256`` (HMAC-SHA256 of the body with the first
configured secret). What the receiver answered is recorded as a ``Delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from octosts.dev.github.state import DEFAULT_BRANCH, Pull, Pushed

SEND_TIMEOUT = 10
ANSWER_CAP = 65536


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery the emulator sent, and the receiver's HTTP status (0: no answer)."""

    event: str
    action: str
    status: int
    body: bytes = field(repr=False, default=b"")


class WebhookSender:
    """Queues one App's events and delivers them in order, once a receiver is configured."""

    def __init__(self, app_id: int) -> None:
        self._app_id = app_id
        self._lock = threading.Lock()
        self._url: str | None = None
        self._secrets: tuple[str, ...] = ()
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._thread: threading.Thread | None = None

    def configure(self, url: str, secrets: tuple[str, ...] | str) -> None:
        """Send deliveries to ``url``, signed with the first of ``secrets``. Raises ValueError."""
        if not url.startswith(("http://", "https://")):
            raise ValueError("the webhook URL must be http(s)")
        with self._lock:
            self._url = url
            self._secrets = (secrets,) if isinstance(secrets, str) else tuple(secrets)
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, daemon=True)
                self._thread.start()

    def enqueue(self, event: str, payload: dict[str, Any]) -> None:
        """Queue a delivery; dropped while no receiver is configured (as GitHub without a hook)."""
        with self._lock:
            configured = self._url is not None
        if configured:
            self._outbox.put((event, payload))

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def stop(self) -> None:
        """Deliver what is queued, then stop the sender thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._outbox.put(None)
            thread.join(timeout=15)

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            event, payload = item
            status, answer = self._send(event, json.dumps(payload).encode())
            with self._lock:
                self._deliveries.append(
                    Delivery(event, str(payload.get("action", "")), status, answer)
                )

    def _send(self, event: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            url, keys = self._url, self._secrets
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/emulator",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(self._app_id),
        }
        if keys:
            digest = hmac.new(keys[0].encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
        try:
            request = urllib.request.Request(  # noqa: S310 - http(s) checked when configured
                str(url), data=body, headers=headers, method="POST"
            )
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT) as resp:  # noqa: S310
                return resp.status, resp.read(ANSWER_CAP)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(ANSWER_CAP)
        except OSError:
            return 0, b""


# -- event payloads -----------------------------------------------------------------------


def event_context(
    owner: str, repo: str, installation_id: int | None, sender: str, sender_type: str
) -> dict[str, Any]:
    """The ``repository``, ``installation`` and ``sender`` every repository event carries."""
    return {
        "repository": {
            "name": repo,
            "full_name": f"{owner}/{repo}",
            "owner": {"login": owner},
            "default_branch": DEFAULT_BRANCH,
        },
        "installation": {"id": installation_id},
        "sender": {"login": sender, "type": sender_type},
    }


def push_payload(branch: str, pushed: Pushed, context: Mapping[str, Any]) -> dict[str, Any]:
    changed = pushed.changed
    commit_json = {
        "id": pushed.sha,
        "message": "emulated commit",
        "added": sorted(p for p, k in changed.items() if k == "added"),
        "modified": sorted(p for p, k in changed.items() if k == "modified"),
        "removed": sorted(p for p, k in changed.items() if k == "removed"),
    }
    return {
        "ref": f"refs/heads/{branch}",
        "before": pushed.before,
        "after": pushed.sha,
        "commits": [commit_json],
        "head_commit": commit_json,
        **context,
    }


def pull_json(owner: str, repo: str, pull: Pull) -> dict[str, Any]:
    return {
        "number": pull.number,
        "state": "open",
        "head": {"ref": pull.head_ref, "sha": pull.head_sha},
        "base": {"ref": DEFAULT_BRANCH, "sha": pull.base_sha},
        "url": f"/repos/{owner}/{repo}/pulls/{pull.number}",
    }


def pull_request_payload(
    owner: str, repo: str, pull: Pull, context: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "action": "opened",
        "number": pull.number,
        "pull_request": pull_json(owner, repo, pull),
        **context,
    }
