"""A webhook handler wired to fakes that record what a delivery made it do.

Shared by ``webhook_payload`` and ``webhook_http``; ``check_effects`` is the part
of the property about side effects: GitHub is only ever asked about, and caches
only ever dropped for, well-formed names, and every policy check scheduled ends in
exactly one completed check run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from octosts.domain.layout import ISSUERS_FILE
from octosts.domain.names import is_owner_name, is_repo_name
from octosts.webhook.github_checks import ChangedFile, ChecksFactory, RepoChecks
from octosts.webhook.handler import (
    WebhookConfig,
    WebhookHandler,
    WebhookReply,
)
from tests.fakes import FakeInvalidator
from tests.fuzz.targets._support import WEBHOOK_SECRET

POLICY = ".github/chainguard/ci.sts.yaml"
FILES = {
    POLICY: b"issuer: https://token.actions.githubusercontent.com\nsubject: x\n"
    b"permissions:\n  issues: read\n",
    ".github/chainguard/bad.sts.yaml": b"issuer: [\n",
    ISSUERS_FILE: b"issuer_patterns: ['https://.*']\n",
}
STATUSES = frozenset({200, 202, 400, 401, 503})


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()


class FakeRepo:
    def __init__(self) -> None:
        self.check_runs: list[tuple[str, dict[str, Any]]] = []

    async def pull_files(self, number: int) -> list[ChangedFile]:
        return [ChangedFile(path, "modified") for path in (*FILES, "README.md")]

    async def compare(self, base: str, head: str) -> list[ChangedFile]:
        return [ChangedFile(path, "added") for path in FILES]

    async def read_at(self, path: str, ref: str) -> bytes | None:
        return FILES.get(path)

    async def create_check_run(self, head_sha: str, body: dict[str, Any]) -> None:
        self.check_runs.append((head_sha, body))


class FakeChecks:
    def __init__(self) -> None:
        self.repo = FakeRepo()
        self.calls: list[tuple[int, str, str]] = []

    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks:
        self.calls.append((installation_id, owner, repo))
        return self.repo


_checks: ChecksFactory = FakeChecks()


class Wired:
    """A fresh handler (no deliveries remembered) and its fakes."""

    def __init__(self) -> None:
        self.checks = FakeChecks()
        self.policies = FakeInvalidator()
        self.issuers = FakeInvalidator()
        self.handler = WebhookHandler(
            WebhookConfig(secrets=(WEBHOOK_SECRET,)),
            checks=self.checks,
            policies=self.policies,
            issuers=self.issuers,
        )

    def effects(self) -> tuple[int, int, int]:
        return (
            len(self.checks.repo.check_runs),
            len(self.policies.calls),
            len(self.issuers.calls),
        )


def check_reply(reply: WebhookReply) -> None:
    assert reply.status in STATUSES, reply
    json.dumps(dict(reply.body))


def check_effects(wired: Wired, replies: list[Mapping[str, Any]]) -> None:
    for installation, owner, repo in wired.checks.calls:
        assert 0 < installation < 1 << 63
        assert is_owner_name(owner), owner
        assert is_repo_name(repo), repo
    for owner, dropped_repo, _path in (*wired.policies.calls, *wired.issuers.calls):
        assert is_owner_name(owner), owner
        assert dropped_repo is None or is_repo_name(dropped_repo), dropped_repo
    scheduled = [body["checking"] for body in replies if "checking" in body]
    runs = wired.checks.repo.check_runs
    assert [sha for sha, _ in runs] == scheduled, (runs, scheduled)
    for _, run in runs:
        assert run["status"] == "completed"
        assert run["conclusion"] in {"success", "failure"}
