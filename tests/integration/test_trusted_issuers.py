"""Org trusted-token-issuers end to end: real gRPC service, dev issuer, GitHub emulator."""

from __future__ import annotations

import grpc
import pytest

from octosts.dev.github import GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.domain.layout import ISSUERS_FILE
from tests.integration.service_harness import running

C = grpc.StatusCode
FILE_PREFIX = f"/repos/octo-org/.github/contents/{ISSUERS_FILE}"


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def put(github: GitHubEmulator, text: str) -> None:
    github.set_file("octo-org", ".github", ISSUERS_FILE, text)


async def test_listed_issuer_is_allowed_and_unlisted_denied(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, github = backends
    put(github, f"issuers: ['{issuer.url}']\n")
    async with running(*backends, verbose_errors=True) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")
    put(github, "issuers: [https://token.actions.githubusercontent.com]\n")
    github.reset()
    async with running(*backends, verbose_errors=True) as stack:
        code, details = await status_of(stack.exchange())
        assert code == C.PERMISSION_DENIED
        assert "issuer_not_trusted" in details
        # refused before the trust policy is read
        assert stack.github.count("GET", "/repos/octo-org/demo/contents/") == 0


async def test_pattern_entries_full_match(backends: tuple[DevIssuer, GitHubEmulator]) -> None:
    _issuer, github = backends
    put(github, "issuer_patterns: ['http://127\\.0\\.0\\.1:[0-9]+']\n")
    async with running(*backends) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")


async def test_an_alternation_octo_sts_accepts_does_not_lock_the_org_out(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    """Was 403 trusted_issuers_invalid for every exchange: the '/' sit in the common prefix."""
    _issuer, github = backends
    put(github, "issuer_patterns: ['http://127\\.0\\.0\\.1:[0-9]+|http://localhost:[0-9]+']\n")
    async with running(*backends, verbose_errors=True) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")


async def test_loopback_http_entries_are_valid_in_the_org_file(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    """octo-sts accepts http://localhost entries; the file is valid here too (not a lock-out)."""
    issuer, github = backends
    put(github, f"issuers: ['http://localhost:9', 'http://[::1]:9', '{issuer.url}']\n")
    async with running(*backends, verbose_errors=True) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")


async def test_audit_mode_allows_and_counts(backends: tuple[DevIssuer, GitHubEmulator]) -> None:
    _issuer, github = backends
    put(github, "mode: audit\nissuers: [https://token.actions.githubusercontent.com]\n")
    async with running(*backends) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")
        registry = stack.app.metrics.registry
        assert registry.get_sample_value("octo_sts_issuer_audit_total") == 1.0


async def test_absent_file_means_no_restriction(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    async with running(*backends) as stack:
        assert (await stack.exchange()).token.startswith("ghs_")
        assert stack.github.count("GET", FILE_PREFIX) == 1


async def test_invalid_file_rejects_every_exchange(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    _issuer, github = backends
    put(github, "issuer_patterns: ['https://.*']\n")
    async with running(*backends, verbose_errors=True) as stack:
        for scope in ("octo-org/demo", "octo-org"):
            code, details = await status_of(stack.exchange(scope=scope))
            assert code == C.PERMISSION_DENIED
            assert "trusted_issuers_invalid" in details


async def test_rate_limited_without_last_known_good_rejects_then_recovers(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, github = backends
    put(github, f"issuers: ['{issuer.url}']\n")
    async with running(*backends, issuers_fresh_seconds=5.0) as stack:
        github.force_secondary_limit(path_prefix=FILE_PREFIX)
        code, _ = await status_of(stack.exchange())
        assert code == C.RESOURCE_EXHAUSTED
        # GitHub's limit is remembered for the installation: no call until it lifts.
        reads = github.count("GET", FILE_PREFIX)
        code, _ = await status_of(stack.exchange())
        assert code == C.RESOURCE_EXHAUSTED
        assert github.count("GET", FILE_PREFIX) == reads
        stack.clock.advance(61)
        assert (await stack.exchange()).token.startswith("ghs_")
        # now there is a last known good copy: GitHub failing after it goes stale is survivable
        stack.clock.advance(6)
        github.force_error(502, path_prefix=FILE_PREFIX)
        assert (await stack.exchange()).token.startswith("ghs_")
