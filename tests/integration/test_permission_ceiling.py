"""The org's permission ceiling end to end: real gRPC service and webhook, dev issuer, emulator.

The seeded policies (``service_harness``): ``octo-org/demo`` ci grants contents: read; the org
policy ci (``octo-org/.github``) grants contents: read and issues: write.
"""

from __future__ import annotations

import grpc
import pytest

from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.domain.layout import CEILING_FILE
from tests.integration.service_harness import repo_policy, running
from tests.polling import eventually

C = grpc.StatusCode
CEILING_PATH = f"/repos/octo-org/.github/contents/{CEILING_FILE}"
READ_ONLY = "default: read\n"
SECRET = "ceiling-secret-0123456789"


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def put(github: GitHubEmulator, text: str) -> None:
    github.set_file("octo-org", ".github", CEILING_FILE, text)


async def test_a_policy_above_the_ceiling_is_refused_one_within_it_allowed(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, READ_ONLY)
    async with running(*backends, verbose_errors=True) as stack:
        allowed = await stack.exchange()  # contents: read
        assert allowed.token.startswith("ghs_")
        mints = github.count("POST", "/app/installations/")
        code, details = await status_of(stack.exchange(scope="octo-org"))  # issues: write
        assert code == C.PERMISSION_DENIED
        assert "policy_exceeds_ceiling" in details
        assert "permissions.issues: write is above the organization's permission ceiling" in (
            details
        )
        # read once for both exchanges (cached per org), and no token minted for the refusal
        assert github.count("GET", CEILING_PATH) == 1
        assert github.count("POST", "/app/installations/") == mints


async def test_callers_read_the_family_only_without_verbose_errors(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, READ_ONLY)
    async with running(*backends) as stack:
        code, details = await status_of(stack.exchange(scope="octo-org"))
        assert code == C.PERMISSION_DENIED
        assert "permission_denied" in details
        assert "ceiling" not in details
        assert "issues" not in details


async def test_elevated_identities_only_get_write(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, "default: write\nelevated:\n  identities: [release]\n")
    async with running(*backends, verbose_errors=True) as stack:
        code, details = await status_of(stack.exchange(scope="octo-org"))
        assert code == C.PERMISSION_DENIED
        assert "above what this identity may be granted (read)" in details
    put(github, "default: write\nelevated:\n  identity_patterns: ['c[a-z]']\n")
    github.reset()
    async with running(*backends, verbose_errors=True) as stack:
        assert (await stack.exchange(scope="octo-org")).token.startswith("ghs_")


async def test_an_untrusted_caller_never_costs_the_ceilings_read(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, READ_ONLY)
    async with running(*backends, verbose_errors=True) as stack:
        token = stack.token(sub="repo:someone-else/x:ref:refs/heads/main")
        code, details = await status_of(stack.exchange(token=token))
        assert code == C.PERMISSION_DENIED
        assert "policy_exceeds_ceiling" not in details
        assert github.count("GET", CEILING_PATH) == 0


async def test_no_file_means_no_ceiling(backends: tuple[DevIssuer, GitHubEmulator]) -> None:
    async with running(*backends) as stack:
        assert (await stack.exchange(scope="octo-org")).token.startswith("ghs_")
        assert (await stack.exchange(scope="octo-org")).token.startswith("ghs_")
        assert stack.github.count("GET", CEILING_PATH) == 1  # the 404 is cached too


async def test_an_invalid_file_refuses_every_exchange_into_the_org(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, "permissions:\n  contents: reed\n")
    async with running(*backends, verbose_errors=True) as stack:
        for scope in ("octo-org/demo", "octo-org"):
            code, details = await status_of(stack.exchange(scope=scope))
            assert code == C.PERMISSION_DENIED
            assert "permission_ceiling_invalid" in details


async def test_the_last_valid_ceiling_is_kept_while_github_fails(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, READ_ONLY)
    async with running(*backends, verbose_errors=True, ceiling_fresh_seconds=5.0) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")
        stack.clock.advance(6)
        github.force_error(502, path_prefix=CEILING_PATH)
        code, details = await status_of(stack.exchange(scope="octo-org"))
        assert code == C.PERMISSION_DENIED  # the cap still holds, GitHub down or not
        assert "policy_exceeds_ceiling" in details


async def test_a_push_of_the_ceiling_is_enforced_at_once_and_checked_on_pull_requests(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(
        *backends,
        webhook_addr="127.0.0.1:0",
        webhook_secrets=(SECRET,),
        ceiling_fresh_seconds=600.0,
    ) as stack:
        url = f"http://127.0.0.1:{stack.app.webhook_port}/webhook"
        stack.github.configure_webhook(url, SECRET)
        assert (await stack.exchange(scope="octo-org")).token.startswith("ghs_")  # no ceiling
        stack.github.commit("octo-org", ".github", {CEILING_FILE: READ_ONLY})
        await eventually(stack.github.deliveries, "push delivery")
        code, _ = await status_of(stack.exchange(scope="octo-org"))
        assert code == C.PERMISSION_DENIED
        # A pull request adding a policy above the ceiling gets a failed check run saying so.
        writer = repo_policy(stack.issuer.url).replace(b"contents: read", b"contents: write")
        _number, head = stack.github.open_pull_request(
            "octo-org", "demo", {".github/chainguard/writer.sts.yaml": writer}
        )
        runs = await eventually(
            lambda: stack.github.check_runs("octo-org", "demo", head), "check run"
        )
        assert runs[0]["conclusion"] == "failure"
        [annotation] = runs[0]["output"]["annotations"]
        assert annotation["path"] == ".github/chainguard/writer.sts.yaml"
        assert "permissions.contents" in annotation["message"]
        assert "ceiling" in annotation["message"]
