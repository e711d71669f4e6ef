"""The GitHub webhook over real sockets: signatures, limits, check runs, push invalidation."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import structlog

from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from tests.integration.service_harness import Stack, repo_policy, running
from tests.polling import eventually

OLD_SECRET = "old-secret-0123456789"
NEW_SECRET = "new-secret-0123456789"
POLICY = ".github/chainguard/ci.sts.yaml"
MAX_BODY = 4096
GHA_HEAD = b"issuer: https://token.actions.githubusercontent.com\n"


@pytest.fixture
async def stack(backends: tuple[DevIssuer, GitHubEmulator]) -> AsyncIterator[Stack]:
    async with running(
        *backends,
        webhook_addr="127.0.0.1:0",
        webhook_secrets=(NEW_SECRET, OLD_SECRET),
        webhook_max_body_bytes=MAX_BODY,
        policy_fresh_seconds=600.0,
        policy_missing_seconds=600.0,
    ) as s:
        s.github.configure_webhook(webhook_url(s), OLD_SECRET)
        yield s


def webhook_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.app.webhook_port}/webhook"


def signed(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(stack: Stack, event: str, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"X-GitHub-Event": event, "Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(webhook_url(stack), content=body, headers=headers)


PING = json.dumps({"zen": "Keep it logically awesome.", "sender": {"type": "User"}}).encode()


async def test_good_signature_with_either_rotated_secret(stack: Stack) -> None:
    for secret in (NEW_SECRET, OLD_SECRET):
        # Two deliveries: the same bytes twice would be a replay.
        ping = json.dumps({"zen": secret, "sender": {"type": "User"}}).encode()
        resp = await post(stack, "ping", ping, signed(ping, secret))
        assert resp.status_code == 200
        assert resp.json() == {"ok": True}


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=",
        "sha1=" + "0" * 40,
        signed(PING, "not-the-secret-at-all"),
        signed(PING + b" ", NEW_SECRET),
        signed(PING, NEW_SECRET).replace("sha256=", "SHA256="),
    ],
)
async def test_bad_or_missing_signature_is_refused(stack: Stack, signature: str | None) -> None:
    resp = await post(stack, "ping", PING, signature)
    assert resp.status_code == 401
    assert "X-Hub-Signature-256" in resp.json()["error"]


async def test_oversized_body_is_refused_before_reading(stack: Stack) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    resp = await post(stack, "ping", body, signed(body, NEW_SECRET))
    assert resp.status_code == 413


async def test_unknown_events_and_bots_are_acknowledged_and_ignored(stack: Stack) -> None:
    body = json.dumps({"action": "created", "sender": {"type": "User"}}).encode()
    resp = await post(stack, "star", body, signed(body, NEW_SECRET))
    assert resp.status_code == 202
    assert "ignored" in resp.json()
    bot = json.dumps({"ref": "refs/heads/main", "sender": {"type": "Bot"}}).encode()
    resp = await post(stack, "push", bot, signed(bot, NEW_SECRET))
    assert (resp.status_code, resp.json()) == (202, {"ignored": "bot sender"})


async def test_malformed_payload_is_a_400_not_a_traceback(stack: Stack) -> None:
    for body in (b"not json", b"[]", json.dumps({"sender": {}}).encode()):
        resp = await post(stack, "push", body, signed(body, NEW_SECRET))
        assert resp.status_code == 400


REPOSITORY = {"name": "demo", "owner": {"login": "octo-org"}, "default_branch": "main"}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("push", {"ref": "refs/heads/main", "repository": []}),
        ("push", {"ref": "refs/heads/main", "repository": REPOSITORY, "commits": ["x"]}),
        ("push", {"ref": "refs/heads/main", "repository": REPOSITORY, "head_commit": "x"}),
        ("pull_request", {"action": "opened", "pull_request": [], "repository": REPOSITORY}),
        ("pull_request", {"action": [], "repository": REPOSITORY}),
        ("check_suite", {"action": "requested", "check_suite": {"head_sha": []}}),
        ("check_suite", {"action": "requested", "check_suite": "x", "repository": []}),
    ],
)
async def test_malformed_signed_shapes_get_a_json_400_over_the_wire(
    stack: Stack, event: str, payload: dict[str, object]
) -> None:
    body = json.dumps({**payload, "sender": {"type": "User"}}).encode()
    resp = await post(stack, event, body, signed(body, NEW_SECRET))
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"].startswith(f"malformed {event} payload")
    # the listener is still serving
    ping = await post(stack, "ping", PING, signed(PING, NEW_SECRET))
    assert ping.status_code == 200


async def test_wrong_path_and_method(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        base = f"http://127.0.0.1:{stack.app.webhook_port}"
        assert (await client.get(base + "/webhook")).status_code == 405
        assert (await client.post(base + "/other", content=b"{}")).status_code == 404


async def test_policy_with_an_error_gets_a_failed_check_run_naming_the_line(stack: Stack) -> None:
    bad = GHA_HEAD + b"subject: x\npermissions:\n  contents: reed\n"
    good = GHA_HEAD + b"subject: y\npermissions:\n  issues: read\n"
    _number, head = stack.github.open_pull_request(
        "octo-org",
        "demo",
        {
            ".github/chainguard/bad.sts.yaml": bad,
            ".github/chainguard/ok.sts.yaml": good,
            "README.md": "x",
        },
    )
    runs = await eventually(lambda: stack.github.check_runs("octo-org", "demo", head), "check run")
    assert len(runs) == 1
    run = runs[0]
    assert run["name"] == "Trust Policy Validation"
    assert run["conclusion"] == "failure"
    [annotation] = run["output"]["annotations"]
    assert annotation["path"] == ".github/chainguard/bad.sts.yaml"
    assert annotation["start_line"] == 4
    assert "permissions.contents" in annotation["message"]
    assert (
        "`.github/chainguard/bad.sts.yaml` line 4: permissions.contents" in run["output"]["summary"]
    )


async def test_a_rate_limited_installation_gets_no_check_run_until_the_limit_lifts(
    stack: Stack,
) -> None:
    # GitHub limits the PR files read; posting the (failed) check run would be one more call
    # on that installation while GitHub's limit lasts, which GitHub bans Apps for: not sent.
    rule = stack.github.force_secondary_limit(
        retry_after=30, times=100, path_prefix="/repos/octo-org/demo/pulls/"
    )
    good = GHA_HEAD + b"subject: y\npermissions:\n  issues: read\n"
    with structlog.testing.capture_logs() as logs:
        _number, head = stack.github.open_pull_request("octo-org", "demo", {POLICY: good})
        failed = await eventually(
            lambda: [e for e in logs if e.get("step") == "check_run"], "the check run refused"
        )
    assert failed[0]["reason"] == "rate_limited_secondary"
    assert stack.github.count("GET", "/repos/octo-org/demo/pulls/") == 1
    assert stack.github.count("POST", "/repos/octo-org/demo/check-runs") == 0
    assert stack.github.check_runs("octo-org", "demo", head) == []
    # Once the limit has lifted, the next pull request is checked as usual.
    stack.github.remove_fault(rule)
    stack.clock.advance(31)
    _number, head = stack.github.open_pull_request("octo-org", "demo", {POLICY: good})
    runs = await eventually(lambda: stack.github.check_runs("octo-org", "demo", head), "check run")
    assert runs[0]["conclusion"] == "success"


async def test_valid_policies_get_a_successful_check_run_across_pages(stack: Stack) -> None:
    good = GHA_HEAD + b"subject: y\npermissions:\n  issues: read\n"
    changes: dict[str, bytes | str | None] = {f"docs/{n}.md": "x" for n in range(150)}
    changes[".github/chainguard/zz.sts.yaml"] = good  # sorted last: on the second page
    _number, head = stack.github.open_pull_request("octo-org", "demo", changes)
    runs = await eventually(lambda: stack.github.check_runs("octo-org", "demo", head), "check run")
    assert runs[0]["conclusion"] == "success"
    assert "zz.sts.yaml" in runs[0]["output"]["summary"]
    assert stack.github.count("GET", "/repos/octo-org/demo/pulls/1/files") == 2


async def test_issuers_file_in_the_policy_repo_is_validated(stack: Stack) -> None:
    _number, head = stack.github.open_pull_request(
        "octo-org",
        ".github",
        {".github/chainguard/trusted-token-issuers.yaml": "issuer_patterns:\n  - 'https://.*'\n"},
    )
    runs = await eventually(
        lambda: stack.github.check_runs("octo-org", ".github", head), "check run"
    )
    assert runs[0]["conclusion"] == "failure"
    [annotation] = runs[0]["output"]["annotations"]
    assert annotation["start_line"] == 2
    assert 'pattern "https://.*" may match' in annotation["message"]
    # What the file will do once merged is said, not left to be found out.
    assert "every token exchange into the organization is refused" in runs[0]["output"]["summary"]


async def test_issuers_alternation_octo_sts_accepts_passes_the_check(stack: Stack) -> None:
    text = "issuer_patterns:\n  - 'https://a\\.example\\.com|https://b\\.example\\.com'\n"
    _number, head = stack.github.open_pull_request(
        "octo-org", ".github", {".github/chainguard/trusted-token-issuers.yaml": text}
    )
    runs = await eventually(
        lambda: stack.github.check_runs("octo-org", ".github", head), "check run"
    )
    assert runs[0]["conclusion"] == "success"


async def test_deleted_policy_stops_the_next_exchange_at_once(stack: Stack) -> None:
    assert (await stack.exchange()).token.startswith("ghs_")
    assert (await stack.exchange()).token.startswith("ghs_")  # cached for 600 s
    stack.github.commit("octo-org", "demo", {POLICY: None})
    pushed = await eventually(
        lambda: [d for d in stack.github.deliveries() if d.event == "push"], "push delivery"
    )
    assert pushed[0].status == 200
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.exchange()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # and a policy created again takes effect at once too (the negative entry is dropped)
    stack.github.commit(
        "octo-org",
        "demo",
        {POLICY: repo_policy(stack.issuer.url)},
    )
    await eventually(lambda: len(stack.github.deliveries()) >= 2, "second push delivery")
    assert (await stack.exchange()).token.startswith("ghs_")


async def test_issuers_file_change_is_enforced_at_once(stack: Stack) -> None:
    issuers = ".github/chainguard/trusted-token-issuers.yaml"
    assert (await stack.exchange()).token.startswith("ghs_")  # absent: no restriction, cached
    stack.github.commit(
        "octo-org", ".github", {issuers: "issuers: [https://token.actions.githubusercontent.com]\n"}
    )
    await eventually(stack.github.deliveries, "push delivery")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.exchange()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
