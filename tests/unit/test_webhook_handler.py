"""The webhook handler on its own: malformed signed payloads, and checks that cannot finish."""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import hmac
import json
import threading
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import structlog

from octosts.domain.errors import GitHubUnavailable
from octosts.webhook import handler as handler_module
from octosts.webhook.github_checks import ChangedFile, ChecksFactory, RepoChecks
from octosts.webhook.handler import WebhookConfig, WebhookHandler
from octosts.webhook.validate import FileCheck
from tests.fakes import FakeInvalidator

SECRET = b"unit-secret-0123456789"
SECRET_TEXT = "ghs_SECRETSECRETSECRET"  # stands for anything an exception message could quote
POLICY = ".github/chainguard/ci.sts.yaml"
GOOD = (
    b"issuer: https://token.actions.githubusercontent.com\n"
    b"subject: x\npermissions:\n  issues: read\n"
)
REPOSITORY = {"name": "demo", "owner": {"login": "octo-org"}, "default_branch": "main"}
SENDER = {"type": "User"}

PUSH = {
    "ref": "refs/heads/main",
    "repository": REPOSITORY,
    "commits": [{"added": [POLICY], "modified": [], "removed": []}],
    "head_commit": {"added": [POLICY], "modified": [], "removed": []},
    "sender": SENDER,
}
PULL_REQUEST = {
    "action": "opened",
    "pull_request": {"number": 7, "head": {"sha": "a" * 40}},
    "repository": REPOSITORY,
    "installation": {"id": 42},
    "sender": SENDER,
}
CHECK_SUITE = {
    "action": "requested",
    "check_suite": {"head_sha": "b" * 40, "pull_requests": [{"number": 7}]},
    "repository": REPOSITORY,
    "installation": {"id": 42},
    "sender": SENDER,
}
BASES: dict[str, dict[str, Any]] = {
    "push": PUSH,
    "pull_request": PULL_REQUEST,
    "check_suite": CHECK_SUITE,
}
_DELETE = object()


class FakeRepo:
    def __init__(self, files: dict[str, bytes], fail: dict[str, BaseException]) -> None:
        self.files = files
        self.fail = fail
        self.check_runs: list[dict[str, Any]] = []

    def _maybe_fail(self, step: str) -> None:
        if step in self.fail:
            raise self.fail[step]

    async def pull_files(self, number: int) -> list[ChangedFile]:
        self._maybe_fail("pull_files")
        return [ChangedFile(path, "added") for path in self.files]

    async def compare(self, base: str, head: str) -> list[ChangedFile]:
        self._maybe_fail("compare")
        return [ChangedFile(path, "added") for path in self.files]

    async def read_at(self, path: str, ref: str) -> bytes | None:
        self._maybe_fail("read_at")
        return self.files.get(path)

    async def create_check_run(self, head_sha: str, body: dict[str, Any]) -> None:
        self._maybe_fail("create_check_run")
        self.check_runs.append({**body, "head_sha": head_sha})


class FakeChecks:
    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.fail = dict(fail or {})
        self.repo = FakeRepo({POLICY: GOOD}, self.fail)
        self.calls: list[tuple[int, str, str]] = []

    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks:
        self.calls.append((installation_id, owner, repo))
        if "for_repo" in self.fail:
            raise self.fail["for_repo"]
        return self.repo


_checks: ChecksFactory = FakeChecks()


def make_handler(checks: FakeChecks) -> tuple[WebhookHandler, FakeInvalidator]:
    invalidator = FakeInvalidator()
    handler = WebhookHandler(
        WebhookConfig(secrets=(SECRET,)), checks=checks, policies=invalidator, issuers=invalidator
    )
    return handler, invalidator


async def deliver(handler: WebhookHandler, event: str, body: bytes) -> tuple[int, dict[str, Any]]:
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    headers = {"x-github-event": event, "x-hub-signature-256": signature}
    reply = await handler.handle(headers, body)
    return reply.status, dict(reply.body)


def mutated(base: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """``base`` with ``path`` (dotted, ``[n]`` for list items) set to ``value`` (or deleted)."""
    payload = copy.deepcopy(base)
    keys: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        keys.append(name)
        if index:
            keys.append(int(index.rstrip("]")))
    target: Any = payload
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return payload


SHARED = [
    ("repository", []),
    ("repository", "octo-org/demo"),
    ("repository", None),
    ("repository", _DELETE),
    ("repository.owner", []),
    ("repository.owner", "octo-org"),
    ("repository.owner.login", 5),
    ("repository.owner.login", ""),
    ("repository.owner.login", "octo--org"),
    ("repository.owner.login", "octo-org-"),
    ("repository.owner.login", ["octo-org"]),
    ("repository.name", None),
    ("repository.name", ".."),
    ("repository.name", "a/b"),
    ("repository.default_branch", []),
    ("repository.default_branch", 5),
]
MALFORMED = [
    *(("push", path, value) for path, value in SHARED),
    ("push", "ref", []),
    ("push", "ref", 5),
    ("push", "commits", ["x"]),
    ("push", "commits", "x"),
    ("push", "commits", {"added": [POLICY]}),
    ("push", "commits", [None]),
    ("push", "commits", [[POLICY]]),
    ("push", "commits[0].added", POLICY),  # a string, not a list of paths
    ("push", "commits[0].added", [1]),
    ("push", "commits[0].removed", [None]),
    ("push", "commits[0].modified", {"path": POLICY}),
    ("push", "head_commit", "x"),
    ("push", "head_commit", []),
    ("push", "head_commit.modified", [{}]),
    *(("pull_request", path, value) for path, value in SHARED),
    ("pull_request", "action", []),
    ("pull_request", "action", {"opened": True}),
    ("pull_request", "pull_request", []),
    ("pull_request", "pull_request", "x"),
    ("pull_request", "pull_request", _DELETE),
    ("pull_request", "pull_request.head", []),
    ("pull_request", "pull_request.head", _DELETE),
    ("pull_request", "pull_request.head.sha", 5),
    ("pull_request", "pull_request.head.sha", ["a" * 40]),
    ("pull_request", "pull_request.head.sha", ""),
    ("pull_request", "pull_request.head.sha", "main"),
    ("pull_request", "pull_request.head.sha", "../../x" + "a" * 33),
    ("pull_request", "pull_request.head.sha", None),
    ("pull_request", "pull_request.number", "7"),
    ("pull_request", "pull_request.number", 7.5),
    ("pull_request", "pull_request.number", True),
    ("pull_request", "pull_request.number", 0),
    ("pull_request", "pull_request.number", -1),
    ("pull_request", "pull_request.number", 10**30),
    ("pull_request", "pull_request.number", None),
    ("pull_request", "installation", []),
    ("pull_request", "installation", _DELETE),
    ("pull_request", "installation.id", "42"),
    ("pull_request", "installation.id", True),
    ("pull_request", "installation.id", [42]),
    ("pull_request", "installation.id", 1e300),
    *(("check_suite", path, value) for path, value in SHARED),
    ("check_suite", "action", ["requested"]),
    ("check_suite", "check_suite", []),
    ("check_suite", "check_suite", "x"),
    ("check_suite", "check_suite", _DELETE),
    ("check_suite", "check_suite.head_sha", []),
    ("check_suite", "check_suite.head_sha", None),
    ("check_suite", "check_suite.head_sha", "zz" * 20),
    ("check_suite", "check_suite.pull_requests", "x"),
    ("check_suite", "check_suite.pull_requests", {"number": 7}),
    ("check_suite", "check_suite.pull_requests", ["x"]),
    ("check_suite", "check_suite.pull_requests", [[7]]),
    ("check_suite", "check_suite.pull_requests", [{}]),
    ("check_suite", "check_suite.pull_requests", [{"number": "7"}]),
    ("check_suite", "installation.id", None),
]


def _label(value: object) -> str:
    return "<deleted>" if value is _DELETE else repr(value)[:30]


@pytest.mark.parametrize(
    ("event", "path", "value"),
    MALFORMED,
    ids=[f"{e}-{p}={_label(v)}" for e, p, v in MALFORMED],
)
async def test_malformed_signed_payload_is_a_400_naming_nothing_secret(
    event: str, path: str, value: object
) -> None:
    checks = FakeChecks()
    handler, invalidator = make_handler(checks)
    body = json.dumps(mutated(BASES[event], path, value)).encode()
    status, reply = await deliver(handler, event, body)
    await handler.drain()
    assert status == 400, reply
    assert reply["error"].startswith(f"malformed {event} payload")
    assert checks.calls == []  # nothing scheduled
    assert invalidator.calls == []  # nothing forgotten


@pytest.mark.parametrize("event", sorted(BASES))
async def test_the_well_formed_bases_are_accepted(event: str) -> None:
    # the table above only proves something if the unmutated payloads pass
    checks = FakeChecks()
    handler, invalidator = make_handler(checks)
    status, reply = await deliver(handler, event, json.dumps(BASES[event]).encode())
    await handler.drain()
    assert status in {200, 202}, reply
    if event == "push":
        assert invalidator.calls == [("octo-org", "demo", POLICY)]
    else:
        assert checks.calls == [(42, "octo-org", "demo")]
        [run] = checks.repo.check_runs
        assert run["conclusion"] == "success"


async def test_check_suite_without_pull_requests_or_default_branch_is_accepted() -> None:
    checks = FakeChecks()
    handler, _ = make_handler(checks)
    payload = mutated(CHECK_SUITE, "check_suite.pull_requests", [])
    payload = mutated(payload, "repository.default_branch", None)
    status, _reply = await deliver(handler, "check_suite", json.dumps(payload).encode())
    await handler.drain()
    assert status == 202
    assert checks.repo.check_runs[0]["conclusion"] == "success"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, b"\xff\xfe"],
    ids=["deep-list", "deep-object", "not-utf8"],
)
async def test_unparseable_bodies_are_a_400(body: bytes) -> None:
    handler, _ = make_handler(FakeChecks())
    status, reply = await deliver(handler, "push", body)
    assert (status, reply) == (400, {"error": "body is not JSON"})


async def run_check(
    fail: dict[str, BaseException],
) -> tuple[FakeChecks, list[MutableMapping[str, Any]], list[dict[str, Any]]]:
    """One pull_request delivery; returns the fake, captured logs and loop errors."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        checks = FakeChecks(fail)
        handler, _ = make_handler(checks)
        with structlog.testing.capture_logs() as logs:
            status, _reply = await deliver(
                handler, "pull_request", json.dumps(PULL_REQUEST).encode()
            )
            assert status == 202
            await handler.drain()
            del handler
            gc.collect()  # an unretrieved task exception is reported when the task is freed
    finally:
        loop.set_exception_handler(previous)
    return checks, logs, errors


FAILURES: list[tuple[str, BaseException, str]] = [
    ("pull_files", ValueError(f"Expecting value near {SECRET_TEXT}"), "ValueError"),
    ("pull_files", json.JSONDecodeError(SECRET_TEXT, SECRET_TEXT, 0), "JSONDecodeError"),
    ("pull_files", httpx.ReadError(SECRET_TEXT), "ReadError"),
    ("compare", RuntimeError(SECRET_TEXT), ""),  # not reached: a pull request uses pull_files
    ("read_at", KeyError(SECRET_TEXT), "KeyError"),
    (
        "read_at",
        GitHubUnavailable(f"GitHub unreachable {SECRET_TEXT}"),
        "GitHubUnavailable (github_unavailable)",
    ),
]


@pytest.mark.parametrize(("step", "error", "named"), FAILURES)
async def test_a_check_that_cannot_finish_still_posts_a_failed_check_run(
    step: str, error: BaseException, named: str
) -> None:
    checks, logs, errors = await run_check({step: error})
    assert errors == []
    [run] = checks.repo.check_runs
    if not named:
        assert run["conclusion"] == "success"
        return
    assert run["conclusion"] == "failure"
    assert run["output"]["title"] == "Trust policies could not be validated"
    assert f"stopped with {named} before" in run["output"]["summary"]
    assert "re-run" in run["output"]["summary"]
    assert SECRET_TEXT not in json.dumps(run)
    [failed] = [entry for entry in logs if entry["event"] == "webhook_check_failed"]
    assert failed["error"] == type(error).__name__
    assert failed["step"] == "validate"
    assert SECRET_TEXT not in repr(logs)


@pytest.mark.parametrize("step", ["for_repo", "create_check_run"])
@pytest.mark.parametrize(
    "error", [RuntimeError(SECRET_TEXT), httpx.ConnectError(SECRET_TEXT), ValueError(SECRET_TEXT)]
)
async def test_when_github_cannot_be_reached_the_failure_is_logged_not_raised(
    step: str, error: BaseException
) -> None:
    checks, logs, errors = await run_check({step: error})
    assert errors == []  # no "Task exception was never retrieved"
    assert checks.repo.check_runs == []
    [failed] = [entry for entry in logs if entry["event"] == "webhook_check_failed"]
    assert failed["error"] == type(error).__name__
    assert failed["step"] == {"for_repo": "token", "create_check_run": "check_run"}[step]
    assert SECRET_TEXT not in repr(logs)


# -- policy parsing off the event loop, bounded per check ------------------------------------


async def test_policy_parsing_leaves_the_event_loop_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # Exchanges share the loop with the webhook's checks. The parse is held until a probe
    # coroutine on the loop has run: parsed on the loop, it would hold the probe instead,
    # and only its deadline would end the wait.
    parsing, released = threading.Event(), threading.Event()
    held: list[bool] = []
    real = handler_module.check_file

    def held_parse(*args: Any, **kwargs: Any) -> FileCheck:
        parsing.set()
        held.append(released.wait(timeout=10))
        return real(*args, **kwargs)

    async def probe() -> None:
        while not parsing.is_set():
            await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        released.set()

    monkeypatch.setattr(handler_module, "check_file", held_parse)
    checks = FakeChecks()
    handler, _ = make_handler(checks)
    status, _reply = await deliver(handler, "pull_request", json.dumps(PULL_REQUEST).encode())
    assert status == 202
    await asyncio.wait_for(probe(), timeout=30)
    await handler.drain(grace_seconds=30)
    assert held == [True]  # the loop ran the probe while the policy was being parsed
    [run] = checks.repo.check_runs
    assert run["conclusion"] == "success"


async def test_policy_bytes_past_a_checks_budget_are_reported_not_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handler_module, "MAX_BYTES_CHECKED", 2 * len(GOOD))
    parsed: list[str] = []
    real = handler_module.check_file

    def counted(path: str, *args: Any, **kwargs: Any) -> FileCheck:
        parsed.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(handler_module, "check_file", counted)
    checks = FakeChecks()
    names = [f".github/chainguard/p{i}.sts.yaml" for i in range(4)]
    checks.repo.files = dict.fromkeys(names, GOOD)
    handler, _ = make_handler(checks)
    status, _reply = await deliver(handler, "pull_request", json.dumps(PULL_REQUEST).encode())
    assert status == 202
    await handler.drain(grace_seconds=30)
    assert parsed == names[:2]
    [run] = checks.repo.check_runs
    assert run["conclusion"] == "failure"
    refused = {(a["path"], a["message"]) for a in run["output"]["annotations"]}
    assert refused == {(name, handler_module.NOT_VALIDATED) for name in names[2:]}
