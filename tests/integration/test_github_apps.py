"""Several GitHub Apps ([fleet]): each mint goes to the App with the most quota left.

A real service over gRPC and the GitHub emulator serving three Apps over sockets, on one clock
(limits last minutes, not the test). Which App minted a token is read from the emulator's ledger,
matched to the tokens the callers received.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from octosts.adapters.signer import SignerConfig
from octosts.app import GITHUB_HEALTH
from octosts.dev.github import Delivery, GitHubEmulator, token_sha256
from octosts.dev.issuer import DevIssuer
from octosts.settings import GitHubAppEntry
from tests.emulator import APP_ID, app_key, pem, pool_key, real_time_clock
from tests.fakes import FakeClock
from tests.integration.service_harness import SUBJECT, Stack, running, servers
from tests.polling import eventually

APPS = (APP_ID, 7, 9)  # in the configured order
KEYS = {APP_ID: app_key(), 7: pool_key(2), 9: pool_key(3)}
C = grpc.StatusCode
GHA_HEAD = b"issuer: https://token.actions.githubusercontent.com\n"


def app_settings(checks: int | None = None) -> dict[str, Any]:
    """The service's settings for the three Apps (``checks``: the App with ``checks: true``)."""
    entries = tuple(
        GitHubAppEntry(app, SignerConfig(private_key_pem=pem(KEYS[app]).decode()), app == checks)
        for app in APPS
    )
    return {"github_app_id": 0, "github_app_private_key": "", "github_apps": entries}


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[DevIssuer, GitHubEmulator, FakeClock]]:
    """The dev issuer and the emulator, App 4242 first, then Apps 7 and 9, all on octo-org."""
    clock = real_time_clock()
    with servers(tmp_path, clock) as (issuer, github):
        for app in APPS[1:]:
            github.add_app(app, KEYS[app].public_key())
        yield issuer, github, clock


@asynccontextmanager
async def service(
    backends: tuple[DevIssuer, GitHubEmulator, FakeClock], **overrides: Any
) -> AsyncIterator[Stack]:
    issuer, github, clock = backends
    async with running(issuer, github, clock=clock, **{**app_settings(), **overrides}) as s:
        yield s


@pytest.fixture
async def stack(backends: tuple[DevIssuer, GitHubEmulator, FakeClock]) -> AsyncIterator[Stack]:
    async with service(backends) as s:
        yield s


async def minted_by(stack: Stack, count: int, identity: str = "ci") -> list[int]:
    """``count`` exchanges one after another; the App that minted each token, in order."""
    tokens = [(await stack.exchange(identity=identity)).token for _ in range(count)]
    ledger = {line["token_sha256"]: line["app_id"] for line in stack.github.tokens()}
    return [ledger[token_sha256(token)] for token in tokens]


def mint_path(stack: Stack, app: int) -> str:
    return f"/app/installations/{stack.github.installation_id('octo-org', app)}/access_tokens"


def gauge(stack: Stack, name: str, **labels: str) -> float | None:
    return stack.app.metrics.registry.get_sample_value(name, labels)


async def refused(stack: Stack, identity: str = "ci") -> tuple[grpc.StatusCode, int | None, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.exchange(identity=identity)
    retry_after = dict(info.value.trailing_metadata() or ()).get("retry-after")
    return (
        info.value.code(),
        None if retry_after is None else int(retry_after),
        info.value.details() or "",
    )


async def test_mints_spread_over_the_apps_by_quota_left(stack: Stack) -> None:
    with structlog.testing.capture_logs() as logs:
        apps = await minted_by(stack, 12)
    assert collections.Counter(apps) == {APP_ID: 4, 7: 4, 9: 4}
    # Every App spends its own budget, and they are kept level: what each has left differs
    # by at most the one App's installation lookup and contents token (made by App 4242).
    left = [
        gauge(stack, "octo_sts_github_rate_limit_remaining", installation=f"app:{a}") for a in APPS
    ]
    assert None not in left
    assert max(left) - min(left) <= 2  # type: ignore[type-var, operator]
    for app in APPS:
        assert gauge(stack, "octo_sts_github_app_mints_total", app=str(app)) == 4
    # The audit event names the App and the installation that minted.
    events = [e for e in logs if e["event"] == "exchange"]
    assert [e["app_id"] for e in events] == apps
    assert [e["installation_id"] for e in events] == [
        stack.github.installation_id("octo-org", app) for app in apps
    ]


async def test_an_app_at_its_limit_is_skipped_until_it_lifts(stack: Stack) -> None:
    assert set(await minted_by(stack, 3)) == set(APPS)  # every App's installation is known
    limited = mint_path(stack, 7)
    rule = stack.github.force_primary_limit(reset_in=120, path_prefix=limited)
    before = stack.github.count("POST", limited)
    # App 7 turns out to be held on the first mint sent to it: that caller is served by
    # another App at once, and App 7 hears nothing more while its limit lasts.
    apps = await minted_by(stack, 9)
    assert 7 not in apps
    assert stack.github.count("POST", limited) == before + 1
    until = gauge(stack, "octo_sts_github_rate_limited_until", installation="app:7")
    assert until == pytest.approx(stack.clock.now() + 120, abs=1)
    assert gauge(stack, "octo_sts_github_rate_limited_until", installation="app:9") is None
    # GitHub lifts the limit at its reset; App 7 mints again.
    stack.github.remove_fault(rule)
    stack.clock.advance(121)
    assert 7 in await minted_by(stack, 3)


async def test_every_app_held_is_answered_at_once_with_the_earliest_retry_after(
    stack: Stack,
) -> None:
    assert set(await minted_by(stack, 3)) == set(APPS)
    resets = {APP_ID: 300, 7: 120, 9: 200}
    rules = {
        app: stack.github.force_primary_limit(reset_in=wait, path_prefix=mint_path(stack, app))
        for app, wait in resets.items()
    }
    mints = {app: stack.github.count("POST", mint_path(stack, app)) for app in APPS}
    code, retry_after, details = await refused(stack)
    assert code == C.RESOURCE_EXHAUSTED
    assert retry_after in {120, 121}  # App 7's reset (whole seconds), the first to lift
    assert "rate_limited_primary" in details
    # Each App was asked once (each limit is news to the service), then no more.
    answers = await asyncio.gather(*(refused(stack) for _ in range(10)))
    assert {a[0] for a in answers} == {C.RESOURCE_EXHAUSTED}
    assert all(a[1] is not None and a[1] <= 121 for a in answers)
    assert {
        app: stack.github.count("POST", mint_path(stack, app)) - mints[app] for app in APPS
    } == dict.fromkeys(APPS, 1)
    health = health_pb2_grpc.HealthStub(stack.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=GITHUB_HEALTH))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # App 7 lifts first, and serves.
    stack.github.remove_fault(rules[7])
    stack.clock.advance(121)
    assert await minted_by(stack, 2) == [7, 7]


async def test_an_app_not_installed_for_the_org_is_never_chosen(
    backends: tuple[DevIssuer, GitHubEmulator, FakeClock],
) -> None:
    github = backends[1]
    github.uninstall("octo-org", 9)
    async with service(backends) as stack:
        apps = await minted_by(stack, 12)
        assert collections.Counter(apps) == {APP_ID: 6, 7: 6}
        # App 9 was asked once where octo-org's installation is (org, then user: 404 both)
        # and is not asked again while that answer is cached.
        asked = [(c.method, c.path, c.status) for c in github.calls() if c.app_id == 9]
        assert asked == [
            ("GET", "/orgs/octo-org/installation", 404),
            ("GET", "/users/octo-org/installation", 404),
        ]
        # Installed nowhere: the caller is told so, as with one App.
        github.add_repo("elsewhere", "demo")
        for app in APPS:
            github.uninstall("elsewhere", app)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.exchange(scope="elsewhere/demo")
        assert info.value.code() == C.PERMISSION_DENIED


async def test_check_runs_stay_on_the_app_whose_webhook_delivers(
    backends: tuple[DevIssuer, GitHubEmulator, FakeClock],
) -> None:
    secret = "shared-secret-0123456789"
    settings = {
        **app_settings(checks=7),
        "webhook_addr": "127.0.0.1:0",
        "webhook_secrets": (secret,),
    }
    issuer, github, clock = backends
    async with running(issuer, github, clock=clock, **settings) as stack:
        url = f"http://127.0.0.1:{stack.app.webhook_port}/webhook"
        for app in APPS:  # every App's webhook reaches the service (a misconfiguration)
            github.configure_webhook(url, secret, app_id=app)
        good = GHA_HEAD + b"subject: y\npermissions:\n  issues: read\n"
        _number, head = github.open_pull_request(
            "octo-org", "demo", {".github/chainguard/new.sts.yaml": good}
        )
        # Each App's webhook delivers a push (of the PR's branch) and the pull request.
        await eventually(lambda: len(github.deliveries()) == 6, "six deliveries")
        runs = await eventually(lambda: github.check_runs("octo-org", "demo", head), "check run")

        def pull_request(app: int) -> Delivery:
            [delivery] = [d for d in github.deliveries(app) if d.event == "pull_request"]
            return delivery

        assert json.loads(pull_request(7).body) == {"checking": head}
        # The other Apps' deliveries are acknowledged and get no check run.
        for app in (APP_ID, 9):
            assert pull_request(app).status == 202
            assert json.loads(pull_request(app).body) == {
                "ignored": "check runs are made by GitHub App 7"
            }
        assert [run["app"]["id"] for run in runs] == [7]
        assert [r["conclusion"] for r in runs] == ["success"]
        checks = [t for t in github.tokens() if t["permissions"].get("checks") == "write"]
        assert [t["app_id"] for t in checks] == [7]
        # Exchanges are still routed over every App: App 7 spent quota on the check run (and
        # the org's ceiling read for it), so it comes up once the others have spent as much.
        assert set(await minted_by(stack, 9)) == set(APPS)  # App 7: the 5th, measured


def grant_checks_write(backends: tuple[DevIssuer, GitHubEmulator, FakeClock]) -> None:
    """Identity ``checks`` on octo-org/demo: a token that may create and update check runs."""
    issuer, github, _clock = backends
    policy = f"issuer: {issuer.url}\nsubject: {SUBJECT}\npermissions:\n  checks: write\n"
    github.set_file("octo-org", "demo", ".github/chainguard/checks.sts.yaml", policy)


async def test_checks_write_tokens_come_from_one_app_whatever_its_quota(
    backends: tuple[DevIssuer, GitHubEmulator, FakeClock],
) -> None:
    """GitHub lets only the App that created a check run update it: a workload's every
    ``checks: write`` token comes from the checks App, even when another has more quota."""
    grant_checks_write(backends)
    async with service(backends, **app_settings(checks=9)) as stack:
        assert await minted_by(stack, 6, identity="checks") == [9] * 6
        # Other exchanges are still routed over every App (App 9, the most spent, last).
        assert collections.Counter(await minted_by(stack, 8)) == {APP_ID: 4, 7: 4}
        # App 9 held: a checks:write caller waits for it rather than get another App's token.
        limited = mint_path(stack, 9)
        stack.github.force_primary_limit(reset_in=120, path_prefix=limited)
        before = {app: stack.github.count("POST", mint_path(stack, app)) for app in APPS}
        code, retry_after, _details = await refused(stack, identity="checks")
        assert code == C.RESOURCE_EXHAUSTED
        assert retry_after in {120, 121}  # App 9's reset (whole seconds)
        code, _retry_after, _details = await refused(stack, identity="checks")
        assert code == C.RESOURCE_EXHAUSTED
        after = {app: stack.github.count("POST", mint_path(stack, app)) for app in APPS}
        assert after == {**before, 9: before[9] + 1}  # asked once, then held without a call
        assert 9 not in await minted_by(stack, 2)  # the others serve everyone else


async def test_checks_write_tokens_use_the_first_listed_app_where_the_checks_app_is_not(
    backends: tuple[DevIssuer, GitHubEmulator, FakeClock],
) -> None:
    grant_checks_write(backends)
    backends[1].uninstall("octo-org", 9)
    async with service(backends, **app_settings(checks=9)) as stack:
        assert await minted_by(stack, 4, identity="checks") == [APP_ID] * 4
