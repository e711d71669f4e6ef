"""Webhook event handling: signature, event dispatch, policy checks, cache invalidation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from octosts.domain.errors import StsError
from octosts.domain.issuers import ISSUERS_FILE
from octosts.webhook.signature import signature_valid
from octosts.webhook.validate import (
    CHECK_NAME,
    FileProblem,
    check_outcome,
    is_policy_path,
    validate_file,
)

if TYPE_CHECKING:
    from octosts.webhook.github_checks import ChangedFile, ChecksFactory, RepoChecks

_log = structlog.get_logger("octosts.webhook")
PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
SUITE_ACTIONS = frozenset({"requested", "rerequested"})
MAX_PENDING = 64
MAX_FILES_CHECKED = 200


class PolicyInvalidator(Protocol):
    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int: ...


class IssuersInvalidator(Protocol):
    def invalidate(self, owner: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    secrets: tuple[bytes, ...] = field(repr=False)
    org_policy_repo: str = ".github"
    insecure_issuers: frozenset[str] = frozenset()


class WebhookHandler:
    """Verifies and dispatches deliveries. Policy checks run as background tasks
    (GitHub expects an answer within 10 s); ``drain`` waits for them."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        checks: ChecksFactory | None,
        policies: PolicyInvalidator | None,
        issuers: IssuersInvalidator | None,
    ) -> None:
        self._config = config
        self._checks = checks
        self._policies = policies
        self._issuers = issuers
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"WebhookHandler(secrets={len(self._config.secrets)})"

    async def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        """``headers`` lower-cased. Never raises for bad input: answers 4xx."""
        if not signature_valid(body, headers.get("x-hub-signature-256"), self._config.secrets):
            return WebhookReply(401, {"error": "invalid or missing X-Hub-Signature-256"})
        event = headers.get("x-github-event", "")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return WebhookReply(400, {"error": "body is not JSON"})
        if not isinstance(payload, dict):
            return WebhookReply(400, {"error": "body is not a JSON object"})
        sender = payload.get("sender")
        if isinstance(sender, dict) and sender.get("type") == "Bot":
            return WebhookReply(202, {"ignored": "bot sender"})
        try:
            return await self._dispatch(event, payload)
        except (KeyError, TypeError, ValueError):
            return WebhookReply(400, {"error": f"malformed {event[:40]} payload"})

    async def _dispatch(self, event: str, payload: dict[str, Any]) -> WebhookReply:
        if event == "ping":
            return WebhookReply(200, {"ok": True})
        if event == "push":
            return self._push(payload)
        if event == "pull_request" and payload.get("action") in PR_ACTIONS:
            pr = payload["pull_request"]
            return self._schedule(payload, str(pr["head"]["sha"]), pr_number=int(pr["number"]))
        if event == "check_suite" and payload.get("action") in SUITE_ACTIONS:
            suite = payload["check_suite"]
            prs = suite.get("pull_requests") or []
            number = int(prs[0]["number"]) if prs and isinstance(prs[0], dict) else None
            base = str(payload["repository"].get("default_branch") or "main")
            return self._schedule(payload, str(suite["head_sha"]), pr_number=number, base=base)
        return WebhookReply(202, {"ignored": f"event {event[:40]!r}"})

    def _push(self, payload: dict[str, Any]) -> WebhookReply:
        repository = payload["repository"]
        owner, repo = _owner_repo(repository)
        default = str(repository.get("default_branch") or "main")
        if payload.get("ref") != f"refs/heads/{default}":
            return WebhookReply(202, {"ignored": "push to a non-default branch"})
        commits = payload.get("commits") or []
        paths: set[str] = set()
        for commit in [*commits, payload.get("head_commit") or {}]:
            for kind in ("added", "modified", "removed"):
                paths.update(str(p) for p in commit.get(kind) or ())
        # GitHub lists at most 20 commits (and none for some forced pushes): then forget all.
        whole_repo = len(commits) >= 20 or not commits
        dropped = 0
        if self._policies is not None:
            if whole_repo:
                dropped += self._policies.invalidate(owner, repo)
            for path in paths:
                if path.startswith(".github/chainguard/"):
                    dropped += self._policies.invalidate(owner, repo, path)
        issuers_changed = repo.lower() == self._config.org_policy_repo.lower() and (
            whole_repo or ISSUERS_FILE in paths
        )
        if issuers_changed and self._issuers is not None:
            self._issuers.invalidate(owner)
        _log.info(
            "webhook_push", owner=owner, repo=repo, invalidated=dropped, issuers=issuers_changed
        )
        return WebhookReply(200, {"invalidated": dropped, "issuers_invalidated": issuers_changed})

    def _schedule(
        self, payload: dict[str, Any], head_sha: str, *, pr_number: int | None, base: str = ""
    ) -> WebhookReply:
        owner, repo = _owner_repo(payload["repository"])
        installation = int(payload["installation"]["id"])
        if self._checks is None:
            return WebhookReply(202, {"ignored": "policy checks are not configured"})
        if len(self._tasks) >= MAX_PENDING:
            return WebhookReply(503, {"error": "too many policy checks in progress"})
        task = asyncio.create_task(
            self._validate(installation, owner, repo, head_sha, pr_number, base)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return WebhookReply(202, {"checking": head_sha})

    async def _validate(
        self, installation: int, owner: str, repo: str, head_sha: str, pr: int | None, base: str
    ) -> None:
        assert self._checks is not None  # _schedule checked
        try:
            client = await self._checks.for_repo(installation, owner, repo)
            changed = await (
                client.pull_files(pr) if pr is not None else client.compare(base, head_sha)
            )
            checked, problems = await self._problems(client, repo, head_sha, changed)
            outcome = check_outcome(checked, problems)
            await client.create_check_run(
                head_sha,
                {
                    "name": CHECK_NAME,
                    "status": "completed",
                    "conclusion": outcome.conclusion,
                    "output": {
                        "title": outcome.title,
                        "summary": outcome.summary,
                        "annotations": list(outcome.annotations),
                    },
                },
            )
            _log.info(
                "webhook_check",
                owner=owner,
                repo=repo,
                conclusion=outcome.conclusion,
                files=len(checked),
            )
        except StsError as exc:
            _log.warning(
                "webhook_check_failed",
                owner=owner,
                repo=repo,
                reason=exc.reason,
                detail=exc.detail[:200],
            )

    async def _problems(
        self, client: RepoChecks, repo: str, head_sha: str, changed: Sequence[ChangedFile]
    ) -> tuple[list[str], list[FileProblem]]:
        checked: list[str] = []
        problems: list[FileProblem] = []
        org_repo = self._config.org_policy_repo
        for file in changed[:MAX_FILES_CHECKED]:
            if file.status == "removed" or not is_policy_path(
                file.path, repo=repo, org_policy_repo=org_repo
            ):
                continue
            content = await client.read_at(file.path, head_sha)
            if content is None:
                continue
            checked.append(file.path)
            problems += validate_file(
                file.path,
                content,
                repo=repo,
                org_policy_repo=org_repo,
                insecure_issuers=self._config.insecure_issuers,
            )
        return checked, problems

    async def drain(self, grace_seconds: float = 5.0) -> None:
        """Wait for (then cancel) running policy checks, at shutdown."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()


def _owner_repo(repository: Mapping[str, Any]) -> tuple[str, str]:
    owner = repository["owner"]["login"]
    repo = repository["name"]
    if not isinstance(owner, str) or not isinstance(repo, str) or not owner or not repo:
        raise ValueError("repository owner and name must be strings")
    return owner, repo
