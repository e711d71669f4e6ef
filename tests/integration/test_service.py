"""The Exchange service end to end over real sockets: gRPC in, dev issuer + GitHub emulator out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from octosts._gen.octosts.v1 import sts_pb2
from octosts.dev.github import Fault, GitHubEmulator
from octosts.dev.issuer import DevIssuer
from octosts.transport.admission import MIN_IN_FLIGHT
from tests.integration.service_harness import DOMAIN, Stack, repo_policy, running
from tests.polling import eventually

C = grpc.StatusCode
POLICY = ".github/chainguard/ci.sts.yaml"


@pytest.fixture
async def verbose(backends: tuple[DevIssuer, GitHubEmulator]) -> AsyncIterator[Stack]:
    async with running(*backends, verbose_errors=True) as s:
        yield s


async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def error_info(call: object) -> error_details_pb2.ErrorInfo:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    trailers = dict(info.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == info.value.code().value[0]
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    return detail


async def test_allowed_exchange_returns_a_working_read_only_token(stack: Stack) -> None:
    response = await stack.exchange()
    assert response.token.startswith("ghs_")
    assert response.access_token == response.token
    assert response.token_type == "Bearer"
    assert 3000 < response.expires_in <= 3600
    assert dict(response.permissions) == {"contents": "read"}
    assert list(response.repositories) == ["demo"]
    grant = stack.github.token_grant(response.token)
    assert grant is not None
    assert grant["permissions"] == {"contents": "read"}
    headers = {"authorization": f"Bearer {response.token}"}
    async with httpx.AsyncClient(base_url=stack.github.url, headers=headers) as gh:
        read = await gh.get("/repos/octo-org/demo/contents/README.md")
        assert read.status_code in {200, 404}  # authorised (the file may not exist)
        assert (await gh.get(f"/repos/octo-org/demo/contents/{POLICY}")).status_code == 200
        other = await gh.get(f"/repos/octo-org/.github/contents/{POLICY}")
        assert other.status_code in {403, 404}  # not a repository of this token
        write = await gh.put(
            "/repos/octo-org/demo/contents/x.txt", json={"message": "m", "content": "eA=="}
        )
        assert write.status_code == 403


async def test_org_scope_uses_org_policy_and_its_repositories(stack: Stack) -> None:
    response = await stack.exchange(scope="octo-org")
    assert dict(response.permissions) == {"contents": "read", "issues": "write"}
    assert list(response.repositories) == ["demo"]


async def test_chainguard_compatible_call(stack: Stack) -> None:
    raw = await stack.chainguard_exchange(stack.token(), "octo-org/demo", "ci")
    assert raw.token.startswith("ghs_")
    assert raw.refresh_token == ""


@pytest.mark.parametrize(
    ("claims", "scope", "identity", "reason"),
    [
        (
            {"sub": "repo:octo-org/demo:ref:refs/heads/dev"},
            "octo-org/demo",
            "ci",
            "subject_mismatch",
        ),
        ({"aud": "someone-else"}, "octo-org/demo", "ci", "audience_mismatch"),
        ({}, "octo-org/demo", "missing", "policy_not_found"),
        ({}, "nobody/demo", "ci", "no_installation"),
    ],
)
async def test_denials_are_permission_denied_with_reason_only_when_verbose(
    stack: Stack, verbose: Stack, claims: dict, scope: str, identity: str, reason: str
) -> None:
    code, details = await code_of(stack.exchange(scope, identity, stack.token(**claims)))
    assert code == C.PERMISSION_DENIED
    assert reason not in details  # callers cannot probe which policies exist
    assert "request_id" in details
    code, details = await code_of(verbose.exchange(scope, identity, verbose.token(**claims)))
    assert code == C.PERMISSION_DENIED
    assert reason in details


async def test_failures_carry_error_info_for_clients(stack: Stack, verbose: Stack) -> None:
    quiet = await error_info(stack.exchange(identity="missing"))
    assert quiet.reason == "permission_denied"
    assert quiet.metadata["request_id"]
    loud = await error_info(verbose.exchange(identity="missing"))
    assert loud.reason == "policy_not_found"
    bad = await error_info(stack.exchange(scope="a/b/c"))
    assert bad.reason == "invalid_request"


async def test_issuer_mismatch_in_policy(stack: Stack) -> None:
    stack.github.set_file(
        "octo-org", "demo", POLICY, repo_policy("https://token.actions.githubusercontent.com")
    )
    code, _ = await code_of(stack.exchange())
    assert code == C.PERMISSION_DENIED


async def test_invalid_policy_is_denied_and_the_detail_names_the_field(verbose: Stack) -> None:
    verbose.github.set_file("octo-org", "demo", POLICY, b"issuer: x\nsubject: y\nbogus: 1\n")
    code, details = await code_of(verbose.exchange())
    assert code == C.PERMISSION_DENIED
    assert "bogus" in details


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), C.UNAUTHENTICATED),
        ((("authorization", "Basic dXNlcjpwYXNz"),), C.UNAUTHENTICATED),
        ((("authorization", "Bearer not-a-jwt"),), C.UNAUTHENTICATED),
        (
            (("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")),
            C.INVALID_ARGUMENT,
        ),
        ((("authorization", "Bearer " + "a" * 17_000),), C.UNAUTHENTICATED),
    ],
)
async def test_bad_metadata(stack: Stack, metadata: tuple, code: grpc.StatusCode) -> None:
    call = stack.stub.Exchange(
        sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"), metadata=metadata
    )
    assert (await code_of(call))[0] == code
    assert stack.github_calls() == 0


async def test_expired_and_foreign_tokens_are_unauthenticated(stack: Stack) -> None:
    expired = stack.issuer.mint({"sub": "x", "aud": DOMAIN}, iat=1_600_000_000, exp=1_600_000_060)
    assert (await code_of(stack.exchange(token=expired)))[0] == C.UNAUTHENTICATED
    with DevIssuer() as other:
        other.add_key("rsa")
        foreign = other.mint({"sub": "x", "aud": DOMAIN})  # http issuer not explicitly allowed
        code, details = await code_of(stack.exchange(token=foreign))
    assert code == C.UNAUTHENTICATED
    assert foreign not in details


@pytest.mark.parametrize(
    ("scope", "identity"),
    [
        ("", "ci"),
        ("a/b/c", "ci"),
        ("octo-org/demo", "../../etc"),
        ("x" * 300, "ci"),
        ("o/r", "i" * 200),
    ],
)
async def test_bad_request_fields_are_invalid_argument(
    stack: Stack, scope: str, identity: str
) -> None:
    assert (await code_of(stack.exchange(scope, identity)))[0] == C.INVALID_ARGUMENT


async def test_oversized_request_message_is_refused(stack: Stack) -> None:
    call = stack.stub.Exchange(
        sts_pb2.ExchangeRequest(scope="o/" + "r" * 100_000, identity="ci"),
        metadata=(("authorization", "Bearer x"),),
    )
    assert (await code_of(call))[0] == C.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault(502, "Bad Gateway"), C.UNAVAILABLE),
        (Fault(403, "API rate limit exceeded", exhaust=True), C.RESOURCE_EXHAUSTED),
        (
            Fault(403, "You have exceeded a secondary rate limit", retry_after=60),
            C.RESOURCE_EXHAUSTED,
        ),
        (Fault(429, "Too Many Requests", retry_after=30), C.RESOURCE_EXHAUSTED),
    ],
)
async def test_github_faults_on_mint(stack: Stack, fault: Fault, code: grpc.StatusCode) -> None:
    await stack.exchange()  # warm: the next exchange's only GitHub call is the mint
    # Twice: a 5xx to a mint is tried once more (a rate limit is not, and stays held).
    stack.github.inject(dataclass_replace(fault, path_prefix="/app/installations/"), times=2)
    assert (await code_of(stack.exchange()))[0] == code


def dataclass_replace(fault: Fault, **changes: object) -> Fault:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(fault, **changes)  # type: ignore[arg-type]


async def test_mint_beyond_the_installation_is_permission_denied(stack: Stack) -> None:
    stack.github.set_file(
        "octo-org",
        "demo",
        POLICY,
        repo_policy(stack.issuer.url).replace(b"contents: read", b"administration: write"),
    )
    assert (await code_of(stack.exchange()))[0] == C.PERMISSION_DENIED


async def test_github_timeout_is_unavailable(backends: tuple[DevIssuer, GitHubEmulator]) -> None:
    async with running(*backends, outbound_timeout_seconds=2.0) as stack:
        await stack.exchange()
        stack.github.latency_ms = 3000  # beyond the 2 s outbound timeout
        try:
            assert (await code_of(stack.exchange()))[0] == C.UNAVAILABLE
        finally:
            stack.github.latency_ms = 0


async def test_issuer_down_is_unavailable(backends: tuple[DevIssuer, GitHubEmulator]) -> None:
    issuer, github = backends
    async with running(issuer, github) as stack:
        token = stack.token()
        issuer.stop()
        assert (await code_of(stack.exchange(token=token)))[0] == C.UNAVAILABLE


async def test_github_call_budget_cold_and_warm(stack: Stack) -> None:
    # first ever: installation, contents token, org trusted-issuers read, policy read, org
    # permission-ceiling read, mint
    await stack.exchange()
    first = stack.github_calls()
    assert first <= 6
    await stack.exchange()
    assert stack.github_calls() - first == 1  # warm: only the mint
    before = stack.github_calls()
    await stack.exchange(scope="octo-org")  # cold policy, installation known: read + mint
    assert stack.github_calls() - before <= 2


async def test_missing_policy_is_negatively_cached(stack: Stack) -> None:
    await code_of(stack.exchange(identity="nope"))
    reads = stack.github.count("GET", "/repos/")
    for _ in range(3):
        await code_of(stack.exchange(identity="nope"))
    assert stack.github.count("GET", "/repos/") == reads


async def test_changed_policy_is_enforced_after_the_freshness_window(stack: Stack) -> None:
    await stack.exchange()
    stack.github.set_file(
        "octo-org", "demo", POLICY, repo_policy(stack.issuer.url).replace(b"main", b"prod")
    )
    await stack.exchange()  # still fresh: the old policy
    stack.clock.advance(11)
    assert (await code_of(stack.exchange()))[0] == C.PERMISSION_DENIED


async def test_last_good_policy_is_served_while_github_rate_limits_reads(stack: Stack) -> None:
    await stack.exchange()
    stack.clock.advance(11)
    stack.github.inject(Fault(403, "API rate limit exceeded", exhaust=True, path_prefix="/repos/"))
    response = await stack.exchange()
    assert response.token.startswith("ghs_")


async def test_fifty_concurrent_cold_exchanges_share_one_policy_read_and_one_discovery(
    stack: Stack,
) -> None:
    await stack.exchange(scope="octo-org")  # learn the installation and contents token
    stack.github.reset()
    discovery_before = stack.issuer.requests[stack.issuer.discovery_path]
    tokens = [stack.token(jti=str(i)) for i in range(50)]
    responses = await asyncio.gather(*(stack.exchange(token=t) for t in tokens))
    assert all(r.token for r in responses)
    assert stack.github.count("GET", "/repos/octo-org/demo/contents/") == 1
    assert stack.issuer.requests[stack.issuer.discovery_path] == discovery_before


async def test_concurrent_cold_verifications_share_one_discovery(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    # As many at once as admission control always takes: beyond MIN_IN_FLIGHT, a loaded CPU
    # (the event loop running late) rightly sheds the excess as `overloaded`, which is
    # test_admission's subject, not this one's.
    async with running(*backends) as stack:
        tokens = [stack.token(jti=str(i)) for i in range(MIN_IN_FLIGHT)]
        await asyncio.gather(*(stack.exchange(token=t) for t in tokens))
        assert stack.issuer.requests[stack.issuer.discovery_path] == 1
        assert stack.issuer.requests[stack.issuer.jwks_path] == 1
        assert stack.github.count("GET", "/repos/octo-org/demo/contents/") == 1


async def test_health_is_serving(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    health = health_pb2_grpc.HealthStub(stack.channel)
    for service in ("", "octosts.v1.SecurityTokenService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reinstalled_app_is_found_again_without_waiting_for_the_cache(stack: Stack) -> None:
    await stack.exchange()  # installation id cached for an hour
    old_id = stack.github.installation_id("octo-org")
    stack.github.remove_owner("octo-org")
    new_id = stack.github.add_owner("octo-org")
    assert new_id != old_id
    for repo in ("demo", ".github"):
        stack.github.add_repo("octo-org", repo)
    stack.github.set_file("octo-org", "demo", POLICY, repo_policy(stack.issuer.url))
    stack.clock.advance(11)  # policy cache stale: it is read again under the new installation
    # The mint for the old id answers 404: denied once, and the stale id is forgotten.
    assert (await code_of(stack.exchange()))[0] == C.PERMISSION_DENIED
    assert (await stack.exchange()).token.startswith("ghs_")


async def test_shutdown_lets_in_flight_exchanges_finish(
    backends: tuple[DevIssuer, GitHubEmulator],
) -> None:
    issuer, github = backends
    async with running(issuer, github, shutdown_grace_seconds=5.0) as stack:
        await stack.exchange()  # warm: the next exchange only waits for the mint
        github.latency_ms = 500
        registry = stack.app.metrics.registry
        labels = {"stage": "policy_match", "outcome": "ok"}
        name = "octo_sts_stage_duration_seconds_count"
        matched = registry.get_sample_value(name, labels)
        in_flight = asyncio.create_task(stack.exchange())
        # Once the policy matched, the (slow) mint is under way.
        await eventually(
            lambda: registry.get_sample_value(name, labels) != matched, "the policy to match"
        )
        await stack.app.server.stop(5.0)  # SIGTERM path: NOT_SERVING, then drain
        assert (await in_flight).token.startswith("ghs_")
        github.latency_ms = 0
