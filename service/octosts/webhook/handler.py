"""Webhook event handling: signature, event dispatch, policy checks, cache invalidation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from octosts.adapters.cache import TtlCache
from octosts.domain.errors import PolicyInvalid, StsError
from octosts.domain.layout import (
    CEILING_FILE,
    DEFAULT_ORG_POLICY_REPO,
    ISSUERS_FILE,
    in_policy_dir,
    is_org_policy_repo,
    is_trust_policy_path,
)
from octosts.domain.names import is_owner_name, is_repo_name
from octosts.domain.ports import Clock, SystemClock
from octosts.webhook.signature import signature_valid
from octosts.webhook.validate import (
    CEILING_INVALID,
    CHECK_NAME,
    FileCheck,
    FileProblem,
    ceiling_of,
    check_file,
    check_outcome,
    incomplete_outcome,
    is_policy_path,
)

if TYPE_CHECKING:
    from octosts.domain.ceiling import PermissionCeiling
    from octosts.webhook.github_checks import ChangedFile, ChecksFactory, RepoChecks

_log = structlog.get_logger("octosts.webhook")
PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
SUITE_ACTIONS = frozenset({"requested", "rerequested"})
CHECK_EVENTS = frozenset({"pull_request", "check_suite"})  # the events that get a check run
MAX_PENDING = 64
MAX_FILES_CHECKED = 200
# The policy bytes one check parses (a policy is at most 64 KiB; a typical one under 1 KiB).
# Parsing is pure Python, ~10 ms of CPU per 64 KiB file at best; past this budget, the rest
# of the change is reported as not validated rather than parsed.
MAX_BYTES_CHECKED = 1024 * 1024
_SHA_RE = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_MAX_ID = (1 << 63) - 1
NOT_VALIDATED = (
    f"not validated: this change has more than {MAX_BYTES_CHECKED // 1024} KiB of policy files"
    " to check; split it"
)
# Replays: a signed delivery is processed once. GitHub's signature covers the body only, so a
# delivery is known by its X-GitHub-Delivery id and by its body's digest (the same bytes under
# a new id are a replay too). Remembered per process (and fleet-wide with Redis) for a day, at
# most this many; only the deliveries answered 2xx (a refused one may come again: GitHub
# redelivers failures).
REPLAY_WINDOW_SECONDS = 24 * 3600.0
MAX_REMEMBERED_DELIVERIES = 20_000  # ~4 MB; the oldest go first


class DeliveryMemory(Protocol):
    """Which signed deliveries were accepted already (``LocalDeliveries``, or the fleet's
    ``adapters.shared_cache.SharedDeliveries`` with Redis)."""

    async def remember(self, keys: Sequence[tuple[str, str]], ttl: float) -> bool:
        """Remember a delivery by its keys; False when one of them was remembered already.
        The check and the remembering in this process happen before any await."""
        ...

    async def forget(self, keys: Sequence[tuple[str, str]]) -> None: ...


class LocalDeliveries:
    """This process's memory of deliveries (``DeliveryMemory``)."""

    def __init__(self, seen: TtlCache[tuple[str, str], bool]) -> None:
        self._seen = seen

    async def remember(self, keys: Sequence[tuple[str, str]], ttl: float) -> bool:
        if any(self._seen.get(key) for key in keys):
            return False
        for key in keys:
            self._seen.set(key, value=True, ttl=ttl)
        return True

    async def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            self._seen.delete(key)


def delivery_cache(clock: Clock | None = None) -> TtlCache[tuple[str, str], bool]:
    """The bounded per-process memory of deliveries."""
    return TtlCache(
        name="webhook_deliveries",
        maxsize=2 * MAX_REMEMBERED_DELIVERIES,  # an id and a digest each
        clock=clock or SystemClock(),
    )


class PolicyInvalidator(Protocol):
    def invalidate(self, owner: str, repo: str, path: str | None = None) -> int: ...


class IssuersInvalidator(Protocol):
    def invalidate(self, owner: str) -> bool: ...


class Ceilings(Protocol):
    """The orgs' permission ceilings as the service applies them (``PermissionCeilingSource``),
    forgotten when the org policy repository's ceiling file is pushed."""

    async def permission_ceiling(
        self, installation_id: int, owner: str
    ) -> PermissionCeiling | None: ...

    def invalidate(self, owner: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    secrets: tuple[bytes, ...] = field(repr=False)
    org_policy_repo: str = DEFAULT_ORG_POLICY_REPO
    insecure_issuers: frozenset[str] = frozenset()
    # The GitHub App whose check runs this service makes (docs/github-apps.md): a delivery
    # naming another App (X-GitHub-Hook-Installation-Target-ID) gets none, so several Apps'
    # webhooks never check one pull request twice. None: any.
    checks_app_id: int | None = None


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
        clock: Clock | None = None,
        deliveries: DeliveryMemory | None = None,
        ceilings: Ceilings | None = None,
        ceiling_invalidator: IssuersInvalidator | None = None,
    ) -> None:
        """``ceiling_invalidator``: where a push of the ceiling file is forgotten when that is
        not ``ceilings`` itself (a fleet's, ``shared_cache.Fleet.org_file``)."""
        self._config = config
        self._ceilings = ceilings
        self._ceiling_files = ceiling_invalidator or ceilings
        self._checks = checks
        self._policies = policies
        self._issuers = issuers
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries = deliveries or LocalDeliveries(delivery_cache(clock))
        # Policy files are parsed in a worker thread, one file at a time across all checks:
        # on the event loop a pull request of 200 large policies held every exchange served
        # by this process for seconds.
        self._parsing = asyncio.Semaphore(1)

    def __repr__(self) -> str:
        return f"WebhookHandler(secrets={len(self._config.secrets)})"

    async def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        """``headers`` lower-cased. Never raises for bad input: answers 4xx."""
        if not signature_valid(body, headers.get("x-hub-signature-256"), self._config.secrets):
            return WebhookReply(401, {"error": "invalid or missing X-Hub-Signature-256"})
        delivery = headers.get("x-github-delivery", "")
        keys = _delivery_keys(delivery, body)
        # Remembered before dispatching, forgotten again unless accepted, so the same
        # delivery arriving twice at once is handled once.
        if not await self._deliveries.remember(keys, REPLAY_WINDOW_SECONDS):
            _log.info("webhook_replay", delivery=_printable(delivery[:64]))
            return WebhookReply(200, {"ignored": "delivery already processed"})
        reply = await self._verified(headers, body)
        if not 200 <= reply.status < 300:
            await self._deliveries.forget(keys)
        return reply

    async def _verified(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        event = headers.get("x-github-event", "")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return WebhookReply(400, {"error": "body is not JSON"})
        if not isinstance(payload, dict):
            return WebhookReply(400, {"error": "body is not a JSON object"})
        sender = payload.get("sender")
        if isinstance(sender, dict) and sender.get("type") == "Bot":
            return WebhookReply(202, {"ignored": "bot sender"})
        what = _printable(event[:40])
        target = headers.get("x-github-hook-installation-target-id")
        app = self._config.checks_app_id
        if event in CHECK_EVENTS and app is not None and target not in (None, str(app)):
            return WebhookReply(202, {"ignored": f"check runs are made by GitHub App {app}"})
        try:
            return await self._dispatch(event, payload)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            # MalformedPayload names the part; any other of these is a shape the
            # checks missed, still the sender's mistake and not a crash.
            part = f": {exc.field}" if isinstance(exc, MalformedPayload) else ""
            return WebhookReply(400, {"error": f"malformed {what} payload{part}"})

    async def _dispatch(self, event: str, payload: dict[str, Any]) -> WebhookReply:
        if event == "ping":
            return WebhookReply(200, {"ok": True})
        if event == "push":
            return self._push(payload)
        if event == "pull_request" and _action(payload) in PR_ACTIONS:
            pr = _object(payload, "pull_request")
            head = _object(pr, "head", "pull_request.")
            return self._schedule(
                payload,
                _sha(head, "sha", "pull_request.head."),
                pr_number=_number(pr, "number", "pull_request."),
            )
        if event == "check_suite" and _action(payload) in SUITE_ACTIONS:
            suite = _object(payload, "check_suite")
            prs = _list(suite, "pull_requests", "check_suite.")
            number = None
            if prs:
                first = prs[0]
                if not isinstance(first, dict):
                    raise MalformedPayload("check_suite.pull_requests[0]")
                number = _number(first, "number", "check_suite.pull_requests[0].")
            _owner, _repo, base = _repository(payload)
            head_sha = _sha(suite, "head_sha", "check_suite.")
            return self._schedule(payload, head_sha, pr_number=number, base=base)
        return WebhookReply(202, {"ignored": f"event {_printable(event[:40])!r}"})

    def _push(self, payload: dict[str, Any]) -> WebhookReply:
        owner, repo, default = _repository(payload)
        if _text(payload, "ref") != f"refs/heads/{default}":
            return WebhookReply(202, {"ignored": "push to a non-default branch"})
        commits = _list(payload, "commits")
        paths = _pushed_paths(payload, commits)
        # GitHub lists at most 20 commits (and none for some forced pushes): then forget all.
        whole_repo = len(commits) >= 20 or not commits
        dropped = 0
        if self._policies is not None:
            if whole_repo:
                dropped += self._policies.invalidate(owner, repo)
            for path in paths:
                if in_policy_dir(path):
                    dropped += self._policies.invalidate(owner, repo, path)
        issuers_changed = is_org_policy_repo(repo, self._config.org_policy_repo) and (
            whole_repo or ISSUERS_FILE in paths
        )
        if issuers_changed and self._issuers is not None:
            self._issuers.invalidate(owner)
        ceiling_changed = is_org_policy_repo(repo, self._config.org_policy_repo) and (
            whole_repo or CEILING_FILE in paths
        )
        if ceiling_changed and self._ceiling_files is not None:
            self._ceiling_files.invalidate(owner)
        _log.info(
            "webhook_push",
            owner=owner,
            repo=repo,
            invalidated=dropped,
            issuers=issuers_changed,
            ceiling=ceiling_changed,
        )
        return WebhookReply(
            200,
            {
                "invalidated": dropped,
                "issuers_invalidated": issuers_changed,
                "ceiling_invalidated": ceiling_changed,
            },
        )

    def _schedule(
        self, payload: dict[str, Any], head_sha: str, *, pr_number: int | None, base: str = ""
    ) -> WebhookReply:
        owner, repo, _default = _repository(payload)
        installation = _number(_object(payload, "installation"), "id", "installation.")
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
        """Post the check run for ``head_sha``. Never raises: it runs as a background task.

        A check that cannot complete (GitHub unreachable, an unreadable answer, a
        bug) still ends in a failed check run when GitHub can be reached, so a
        policy change is never shown as validated when it was not.
        """
        assert self._checks is not None  # _schedule checked
        try:
            client = await self._checks.for_repo(installation, owner, repo)
        except Exception as exc:  # noqa: BLE001 - background task: log, never "never retrieved"
            _log_failure("webhook_check_failed", exc, owner=owner, repo=repo, step="token")
            return
        checked: list[str] = []
        try:
            changed = await (
                client.pull_files(pr) if pr is not None else client.compare(base, head_sha)
            )
            checked, problems = await self._problems(
                client, installation, owner, repo, head_sha, changed
            )
            outcome = check_outcome(checked, problems)
        except Exception as exc:  # noqa: BLE001 - reported as a failed check run below
            _log_failure("webhook_check_failed", exc, owner=owner, repo=repo, step="validate")
            outcome = incomplete_outcome(_error_name(exc))
        try:
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
        except Exception as exc:  # noqa: BLE001 - background task: log, never "never retrieved"
            _log_failure("webhook_check_failed", exc, owner=owner, repo=repo, step="check_run")
            return
        _log.info(
            "webhook_check",
            owner=owner,
            repo=repo,
            conclusion=outcome.conclusion,
            files=len(checked),
        )

    async def _problems(
        self,
        client: RepoChecks,
        installation: int,
        owner: str,
        repo: str,
        head_sha: str,
        changed: Sequence[ChangedFile],
    ) -> tuple[list[str], list[FileProblem]]:
        org_repo = self._config.org_policy_repo
        files = [
            f.path
            for f in changed[:MAX_FILES_CHECKED]
            if f.status != "removed" and is_policy_path(f.path, repo=repo, org_policy_repo=org_repo)
        ]
        ceiling, ceiling_invalid = None, False
        if any(is_trust_policy_path(path) for path in files):
            ceiling, ceiling_invalid = await self._ceiling(
                client, installation, owner, repo, head_sha, changed
            )
        checked: list[str] = []
        problems: list[FileProblem] = []
        budget = MAX_BYTES_CHECKED
        key_files: dict[str, str] = {}  # key file -> the first policy naming it
        for path in files:
            # Once the budget is spent, the rest is neither read nor parsed.
            content = await client.read_at(path, head_sha) if budget else None
            if content is None and budget:
                continue
            checked.append(path)
            if content is None or len(content) > budget:
                budget = 0
                problems.append(FileProblem(path, None, NOT_VALIDATED))
                continue
            budget -= len(content)
            result = await self._check_file(path, content, repo=repo, ceiling=ceiling)
            problems += result.problems
            if ceiling_invalid and is_trust_policy_path(path):
                problems.append(FileProblem(path, None, CEILING_INVALID))
            if result.jwks_file is not None:
                key_files.setdefault(result.jwks_file, path)
        problems += await self._check_key_files(client, head_sha, repo, key_files, checked, budget)
        return checked, problems

    async def _check_key_files(
        self,
        client: RepoChecks,
        head_sha: str,
        repo: str,
        key_files: Mapping[str, str],
        checked: list[str],
        budget: int,
    ) -> list[FileProblem]:
        """The key files the change's policies name (not in the change themselves), read at
        its commit within what is left of the byte budget; appends them to ``checked``."""
        problems: list[FileProblem] = []
        for key_file, policy in key_files.items():
            if key_file in checked:
                continue
            content = await client.read_at(key_file, head_sha) if budget else None
            if content is None and budget:
                message = f"jwks_file: {key_file} is not in the repository at this commit"
                problems.append(FileProblem(policy, None, message))
                continue
            checked.append(key_file)
            if content is None or len(content) > budget:
                budget = 0
                problems.append(FileProblem(key_file, None, NOT_VALIDATED))
                continue
            budget -= len(content)
            problems += (await self._check_file(key_file, content, repo=repo)).problems
        return problems

    async def _check_file(
        self, path: str, content: bytes, *, repo: str, ceiling: PermissionCeiling | None = None
    ) -> FileCheck:
        """``check_file`` in the parsing thread (one file at a time across all checks)."""
        async with self._parsing:
            return await asyncio.to_thread(
                check_file,
                path,
                content,
                repo=repo,
                org_policy_repo=self._config.org_policy_repo,
                insecure_issuers=self._config.insecure_issuers,
                ceiling=ceiling,
            )

    async def _ceiling(
        self,
        client: RepoChecks,
        installation: int,
        owner: str,
        repo: str,
        head_sha: str,
        changed: Sequence[ChangedFile],
    ) -> tuple[PermissionCeiling | None, bool]:
        """The ceiling this change's policies are held to, and whether it is invalid.

        In the org policy repository a change to the ceiling file is checked against its
        own new ceiling (its problems are that file's); otherwise the org's ceiling as the
        service applies it. Raises RateLimited / GitHubUnavailable (the check then fails as
        incomplete: not validated is never shown as valid).
        """
        if is_org_policy_repo(repo, self._config.org_policy_repo):
            own = next((f for f in changed if f.path == CEILING_FILE), None)
            if own is not None and own.status == "removed":
                return None, False
            if own is not None:
                content = await client.read_at(CEILING_FILE, head_sha)
                return (ceiling_of(content), False) if content is not None else (None, False)
        if self._ceilings is None:
            return None, False
        try:
            return await self._ceilings.permission_ceiling(installation, owner), False
        except PolicyInvalid:
            return None, True

    async def drain(self, grace_seconds: float = 5.0) -> None:
        """Wait for (then cancel) running policy checks, at shutdown."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()


class MalformedPayload(ValueError):
    """A signed delivery whose shape is not what GitHub sends; ``field`` names the part."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _action(payload: Mapping[str, Any]) -> str | None:
    return _text(payload, "action", optional=True)


def _object(parent: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}{key}")
    return value


def _list(parent: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    """A list member; absent or null is empty."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}{key}")
    return value


def _text(
    parent: Mapping[str, Any], key: str, where: str = "", *, optional: bool = False
) -> str | None:
    value = parent.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"{where}{key}")
    return value


def _number(parent: Mapping[str, Any], key: str, where: str = "") -> int:
    value = parent.get(key)
    # bool is an int subclass: ``"id": true`` is not an id
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_ID:
        raise MalformedPayload(f"{where}{key}")
    return value


def _sha(parent: Mapping[str, Any], key: str, where: str = "") -> str:
    value = parent.get(key)
    if not isinstance(value, str) or _SHA_RE.fullmatch(value) is None:
        raise MalformedPayload(f"{where}{key}")
    return value


def _pushed_paths(payload: Mapping[str, Any], commits: list[Any]) -> set[str]:
    """Every path added, modified or removed by the push's commits and head commit."""
    head_commit = payload.get("head_commit")
    if head_commit is not None and not isinstance(head_commit, dict):
        raise MalformedPayload("head_commit")
    paths: set[str] = set()
    for index, commit in enumerate([*commits, head_commit or {}]):
        where = f"commits[{index}]." if index < len(commits) else "head_commit."
        if not isinstance(commit, dict):
            raise MalformedPayload(where.rstrip("."))
        for kind in ("added", "modified", "removed"):
            for path in _list(commit, kind, where):
                if not isinstance(path, str):
                    raise MalformedPayload(f"{where}{kind}")
                paths.add(path)
    return paths


def _repository(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    """(owner, repo, default branch) of the delivery's repository."""
    repository = _object(payload, "repository")
    owner = _text(_object(repository, "owner", "repository."), "login", "repository.owner.")
    repo = _text(repository, "name", "repository.")
    if owner is None or not is_owner_name(owner):
        raise MalformedPayload("repository.owner.login")
    if repo is None or not is_repo_name(repo):
        raise MalformedPayload("repository.name")
    default = _text(repository, "default_branch", "repository.", optional=True)
    return owner, repo, default or "main"


def _delivery_keys(delivery: str, body: bytes) -> tuple[tuple[str, str], ...]:
    """How a delivery is recognised: its body's digest, and its id when it has one (last)."""
    digest = ("body", hashlib.sha256(body).hexdigest())
    return (digest, ("id", delivery)) if delivery else (digest,)


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _error_name(exc: BaseException) -> str:
    """The exception's type, with the reason of an StsError: never its message."""
    reason = exc.reason if isinstance(exc, StsError) else ""
    return f"{type(exc).__name__} ({reason})" if reason else type(exc).__name__


def _log_failure(event: str, exc: BaseException, **fields: object) -> None:
    # Only the type and reason: messages of foreign exceptions can quote URLs,
    # headers or response bodies.
    _log.warning(
        event,
        error=type(exc).__name__,
        reason=exc.reason if isinstance(exc, StsError) else None,
        **fields,
    )
