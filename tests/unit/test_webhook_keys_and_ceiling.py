"""The check run on pinned keys (key files, policies naming them) and the org's ceiling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from octosts.dev.issuer import generate_key
from octosts.domain.ceiling import PermissionCeiling, compile_ceiling
from octosts.domain.errors import GitHubUnavailable, PolicyInvalid
from octosts.domain.layout import CEILING_FILE
from octosts.webhook.handler import Ceilings, WebhookConfig, WebhookHandler
from octosts.webhook.validate import CEILING_INVALID
from tests.unit.test_webhook_handler import (
    PULL_REQUEST,
    PUSH,
    REPOSITORY,
    SECRET,
    FakeChecks,
    FakeInvalidator,
    deliver,
)

POLICY = ".github/chainguard/ci.sts.yaml"
KEYS = ".github/chainguard/keys/k8s.jwks.json"
JWK = generate_key("ec", kid="ec-1").public_jwk(publish_alg=True)
PINNED = (
    "issuer: https://k8s.cluster.invalid\nsubject: system:serviceaccount:ci:deploy\n"
    "permissions:\n  contents: write\n  issues: read\n"
)
CEILING = compile_ceiling({"default": "read", "permissions": {"contents": "read"}})


class FakeCeilings:
    def __init__(self, ceiling: PermissionCeiling | None, error: Exception | None = None) -> None:
        self.ceiling = ceiling
        self.error = error
        self.invalidated: list[str] = []

    async def permission_ceiling(self, installation_id: int, owner: str) -> Any:
        if self.error is not None:
            raise self.error
        return self.ceiling

    def invalidate(self, owner: str) -> bool:
        self.invalidated.append(owner)
        return True


_c: Ceilings = FakeCeilings(None)


async def check_run(
    files: dict[str, str], ceilings: FakeCeilings | None = None, repo: str = "demo"
) -> dict[str, Any]:
    checks = FakeChecks()
    checks.repo.files = {path: text.encode() for path, text in files.items()}
    handler = WebhookHandler(
        WebhookConfig(secrets=(SECRET,)),
        checks=checks,
        policies=FakeInvalidator(),
        issuers=FakeInvalidator(),
        ceilings=ceilings,
    )
    payload = {**PULL_REQUEST, "repository": {**REPOSITORY, "name": repo}}
    status, _ = await deliver(handler, "pull_request", json.dumps(payload).encode())
    assert status == 202
    await handler.drain()
    [run] = checks.repo.check_runs
    return run


def messages(run: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(a["path"], a["start_line"], a["message"]) for a in run["output"]["annotations"]]


async def test_a_key_file_a_pull_request_changes_is_validated() -> None:
    run = await check_run({KEYS: json.dumps({"keys": [{**JWK, "d": "AQAB"}]})})
    assert run["conclusion"] == "failure"
    [(path, _, message)] = messages(run)
    assert path == KEYS
    assert message.startswith("keys[0].d: private key material")
    assert run["output"]["annotations"][0]["title"].startswith("Invalid key file")


async def test_a_rotation_that_only_changes_the_key_file_passes() -> None:
    run = await check_run({KEYS: json.dumps({"keys": [JWK]})})
    assert run["conclusion"] == "success"


async def test_a_policy_naming_a_key_file_gets_that_file_checked_too() -> None:
    policy = PINNED + f"jwks_file: {KEYS}\n"
    missing = await check_run({POLICY: policy})
    assert messages(missing) == [
        (POLICY, 1, f"jwks_file: {KEYS} is not in the repository at this commit")
    ]
    checks = FakeChecks()
    bad = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
    checks.repo.files = {POLICY: policy.encode()}
    # The key file is in the repository but not in the change: still read and checked.
    read = checks.repo.read_at

    async def read_at(path: str, ref: str) -> bytes | None:
        return json.dumps(bad).encode() if path == KEYS else await read(path, ref)

    checks.repo.read_at = read_at  # type: ignore[method-assign]
    handler = WebhookHandler(
        WebhookConfig(secrets=(SECRET,)), checks=checks, policies=None, issuers=None
    )
    await deliver(handler, "pull_request", json.dumps(PULL_REQUEST).encode())
    await handler.drain()
    [run] = checks.repo.check_runs
    [(path, _, message)] = messages(run)
    assert (path, message.startswith("keys[0].kty: symmetric keys")) == (KEYS, True)


async def test_a_policy_above_the_orgs_ceiling_is_reported_on_its_lines() -> None:
    run = await check_run({POLICY: PINNED}, FakeCeilings(CEILING))
    assert run["conclusion"] == "failure"
    assert messages(run) == [
        (
            POLICY,
            4,
            "permissions.contents: write is above the organization's permission ceiling (read)",
        )
    ]


async def test_an_invalid_org_ceiling_is_said_on_every_policy() -> None:
    invalid = PolicyInvalid("bad", reason="permission_ceiling_invalid")
    run = await check_run({POLICY: PINNED}, FakeCeilings(None, error=invalid))
    assert messages(run) == [(POLICY, 1, CEILING_INVALID)]


async def test_a_ceiling_github_cannot_give_fails_the_check_as_incomplete() -> None:
    run = await check_run({POLICY: PINNED}, FakeCeilings(None, error=GitHubUnavailable("x")))
    assert run["conclusion"] == "failure"
    assert run["output"]["title"] == "Trust policies could not be validated"


@pytest.mark.parametrize(
    ("ceiling", "expected"),
    [
        ("default: write\n", []),  # the change's own new ceiling, not the org's current one
        ("default: read\n", [(POLICY, 4, "permissions.contents: write is above")]),
        ("default: rwx\n", [(CEILING_FILE, 1, "default: 'rwx' is not a level")]),
    ],
)
async def test_in_the_org_repository_a_new_ceiling_checks_the_policies_beside_it(
    ceiling: str, expected: list[tuple[str, int, str]]
) -> None:
    current = FakeCeilings(compile_ceiling({"default": "none"}))
    run = await check_run({POLICY: PINNED, CEILING_FILE: ceiling}, current, repo=".github")
    got = messages(run)
    assert len(got) == len(expected)
    pairs = zip(got, expected, strict=True)
    assert [(p, line, m[: len(e)]) for (p, line, m), (_, _, e) in pairs] == expected
    if expected and expected[0][0] == CEILING_FILE:
        assert "permission_ceiling_invalid" in run["output"]["summary"]


async def test_a_push_of_the_ceiling_file_forgets_the_cached_ceiling() -> None:
    ceilings = FakeCeilings(None)
    handler = WebhookHandler(
        WebhookConfig(secrets=(SECRET,)),
        checks=None,
        policies=FakeInvalidator(),
        issuers=FakeInvalidator(),
        ceilings=ceilings,
    )
    commit = {"added": [], "modified": [CEILING_FILE], "removed": []}
    push = {
        **PUSH,
        "repository": {**REPOSITORY, "name": ".github"},
        "commits": [commit],
        "head_commit": commit,
    }
    status, body = await deliver(handler, "push", json.dumps(push).encode())
    assert (status, body["ceiling_invalidated"], ceilings.invalidated) == (200, True, ["octo-org"])
    status, body = await deliver(handler, "push", json.dumps(PUSH).encode())  # another repo
    assert (body["ceiling_invalidated"], ceilings.invalidated) == (False, ["octo-org"])


async def test_the_key_files_policies_name_count_toward_the_checks_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Key files are read and parsed like the change's own files: a change cannot get more
    # than MAX_BYTES_CHECKED parsed by naming big key files from its policies.
    from octosts.webhook import handler as handler_module  # noqa: PLC0415

    policy = PINNED + f"jwks_file: {KEYS}\n"
    monkeypatch.setattr(handler_module, "MAX_BYTES_CHECKED", len(policy) + 10)
    checks = FakeChecks()
    checks.repo.files = {POLICY: policy.encode()}
    read = checks.repo.read_at

    async def read_at(path: str, ref: str) -> bytes | None:
        return json.dumps({"keys": [JWK]}).encode() if path == KEYS else await read(path, ref)

    checks.repo.read_at = read_at  # type: ignore[method-assign]
    handler = WebhookHandler(
        WebhookConfig(secrets=(SECRET,)), checks=checks, policies=None, issuers=None
    )
    status, _ = await deliver(handler, "pull_request", json.dumps(PULL_REQUEST).encode())
    assert status == 202
    await handler.drain()
    [run] = checks.repo.check_runs
    assert run["conclusion"] == "failure"
    assert messages(run) == [(KEYS, 1, handler_module.NOT_VALIDATED)]
