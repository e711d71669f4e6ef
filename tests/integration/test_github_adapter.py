"""GitHubAppClient against the real emulator over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry

from octosts.adapters.github import GitHubAppClient, GitHubConfig, _file_content
from octosts.adapters.github_rest import AiohttpPool, GitHubRest, Response, RestConfig, http_client
from octosts.dev.github import FIRST_INSTALLATION_ID, Fault, GitHubEmulator
from octosts.domain.errors import (
    GitHubUnavailable,
    InvalidRequest,
    MintRejected,
    NoInstallation,
    PermissionDenied,
    PolicyInvalid,
    PolicyNotFound,
    RateLimited,
    StsError,
    UpstreamUnavailable,
)
from octosts.domain.ports import GitHubApp, Stage, StageObserver
from octosts.observability.metrics import Metrics
from octosts.observability.stages import TelemetryObserver
from octosts.webhook.github_checks import GitHubChecks
from tests.emulator import APP_ID, other_key, signer

ORG_ID = FIRST_INSTALLATION_ID
USER_ID = FIRST_INSTALLATION_ID + 1
POLICY = ".github/chainguard/ci.sts.yaml"


class RecordingStage:
    def __init__(self) -> None:
        self.notes: dict[str, str | int | bool] = {}

    def annotate(self, key: str, value: str | int | bool) -> None:
        self.notes[key] = value


class RecordingObserver:
    def __init__(self) -> None:
        self.stages: list[tuple[str, RecordingStage, str | None]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        record = RecordingStage()
        try:
            yield record
        except StsError as exc:
            self.stages.append((name, record, exc.reason))
            raise
        self.stages.append((name, record, None))

    def named(self, name: str) -> list[tuple[RecordingStage, str | None]]:
        return [(s, r) for n, s, r in self.stages if n == name]


_obs: StageObserver = RecordingObserver()


@pytest.fixture
async def http() -> AsyncIterator[AiohttpPool]:
    async with http_client() as client:
        yield client


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


class RecordingTelemetry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | str]] = []
        self.rates: list[tuple[str, int]] = []
        self.held: list[tuple[str, float]] = []

    def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.calls.append((endpoint, status))

    def rate_limit_remaining(self, installation: int | str, remaining: float) -> None:
        self.rates.append((str(installation), int(remaining)))

    def rate_limited_until(self, installation: int | str, until: float) -> None:
        self.held.append((str(installation), until))


@pytest.fixture
def telemetry() -> RecordingTelemetry:
    return RecordingTelemetry()


@pytest.fixture
def rates(telemetry) -> list[tuple[str, int]]:
    return telemetry.rates


@pytest.fixture
def make_client(emulator, http, clock, observer, telemetry):
    def build(key=None, **config) -> GitHubAppClient:
        rest = GitHubRest(
            RestConfig(base_url=emulator.url, **config),
            http=http,
            clock=clock,
            telemetry=telemetry,
        )
        return GitHubAppClient(
            GitHubConfig(app_id=APP_ID),
            rest=rest,
            signer=signer(key),
            clock=clock,
            observer=observer,
        )

    return build


def remaining(client: GitHubAppClient) -> dict[str, int]:
    return client._rest.rate_limits.remaining()


@pytest.fixture
def client(make_client) -> GitHubAppClient:
    return make_client()


def test_is_a_github_app_port(client) -> None:
    _: GitHubApp = client
    assert "key" not in repr(client).lower()


def test_config_validation() -> None:
    assert RestConfig().base_url == "https://api.github.com"
    RestConfig(base_url="http://127.0.0.1:9/")
    RestConfig(base_url="http://[::1]:9")
    RestConfig(base_url="https://ghe.example.com/api/v3")
    for bad in (
        "http://ghe.example.com/api/v3",
        "ftp://x",
        "https://user:pw@x",
        "api.github.com",
    ):
        with pytest.raises(ValueError, match="base URL"):
            RestConfig(base_url=bad)
    with pytest.raises(ValueError, match="app_id"):
        GitHubConfig(app_id=0)
    with pytest.raises(ValueError, match="request_timeout"):
        RestConfig(request_timeout=0)


async def test_installation_org_then_user_fallback(client, emulator, observer) -> None:
    assert await client.installation_id("octo-org") == ORG_ID
    assert [(c.method, c.path, c.status) for c in emulator.calls()] == [
        ("GET", "/orgs/octo-org/installation", 200)
    ]
    emulator.reset()
    assert await client.installation_id("octo-user") == USER_ID
    assert [(c.path, c.status) for c in emulator.calls()] == [
        ("/orgs/octo-user/installation", 404),
        ("/users/octo-user/installation", 200),
    ]
    stages = observer.named("installation_lookup")
    assert [s.notes["cache"] for s, _ in stages] == ["miss", "miss"]
    assert stages[-1][0].notes["github.status"] == 200


async def test_installation_positive_and_negative_cache(client, emulator, clock, observer) -> None:
    for _ in range(3):
        assert await client.installation_id("Octo-Org") == ORG_ID
    assert emulator.count("GET", "/orgs/") == 1
    clock.advance(3601)
    assert await client.installation_id("octo-org") == ORG_ID
    assert emulator.count("GET", "/orgs/") == 2

    emulator.reset()
    for _ in range(3):
        with pytest.raises(NoInstallation):
            await client.installation_id("nobody")
    assert emulator.count("GET") == 2  # one /orgs + one /users, then cached
    assert observer.named("installation_lookup")[-1] == (
        observer.named("installation_lookup")[-1][0],
        "no_installation",
    )
    assert observer.named("installation_lookup")[-1][0].notes["cache"] == "negative_hit"
    emulator.add_repo("nobody", "repo")  # installed now; the negative entry expires
    clock.advance(301)
    assert await client.installation_id("nobody") == emulator.installation_id("nobody")


async def test_installation_single_flight(client, emulator) -> None:
    ids = await asyncio.gather(*(client.installation_id("octo-org") for _ in range(20)))
    assert set(ids) == {ORG_ID}
    assert emulator.count("GET", "/orgs/") == 1


async def test_invalid_names_rejected_before_any_call(client, emulator) -> None:
    for owner in ("../x", "a/b", "", "x" * 60):
        with pytest.raises(InvalidRequest):
            await client.installation_id(owner)
    with pytest.raises(InvalidRequest):
        await client.read_file(ORG_ID, "octo-org", "..", POLICY)
    with pytest.raises(InvalidRequest):
        await client.read_file(ORG_ID, "octo-org", "demo", "../../x")
    assert emulator.calls() == []


async def test_read_file_reuses_a_cached_contents_token(client, emulator, clock) -> None:
    read = await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    assert read.content is not None
    assert read.content.startswith(b"issuer:")
    assert read.etag
    await client.read_file(ORG_ID, "octo-org", "demo", "README.md")
    await client.read_file(ORG_ID, "octo-org", ".github", ".github/chainguard/deploy.sts.yaml")
    mints = [c for c in emulator.calls() if c.method == "POST"]
    assert len(mints) == 1
    # The token is installation-wide and read-only.
    token = client._contents_tokens.get(ORG_ID)
    assert token is not None
    grant = emulator.token_grant(token.token)
    assert grant == {
        "installation_id": ORG_ID,
        "permissions": {"contents": "read"},
        "repositories": None,
    }
    assert token.token not in repr(token)
    # Reused until 5 minutes before it expires (1 h), then replaced.
    clock.advance(54 * 60)
    await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    assert emulator.count("POST") == 1
    clock.advance(2 * 60)
    await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    assert emulator.count("POST") == 2


async def test_concurrent_cold_reads_mint_once(client, emulator) -> None:
    await asyncio.gather(*(client.read_file(ORG_ID, "octo-org", "demo", POLICY) for _ in range(10)))
    assert emulator.count("POST") == 1


async def test_revoked_contents_token_is_replaced_once(client, emulator) -> None:
    await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    cached = client._contents_tokens.get(ORG_ID)
    await client.revoke(cached.token)
    read = await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    assert read.content is not None
    assert emulator.count("POST") == 2
    statuses = [c.status for c in emulator.calls() if c.path.startswith("/repos/")]
    assert statuses == [200, 401, 200]


async def test_etag_revalidation(client, emulator, rates) -> None:
    first = await client.read_file(ORG_ID, "octo-org", "demo", POLICY)
    left = remaining(client)[str(ORG_ID)]
    again = await client.read_file(ORG_ID, "octo-org", "demo", POLICY, etag=first.etag)
    assert again.content is None
    assert again.etag == first.etag
    assert emulator.calls()[-1].status == 304
    assert remaining(client)[str(ORG_ID)] == left  # a 304 is free
    emulator.set_file("octo-org", "demo", POLICY, "issuer: https://changed\n")
    changed = await client.read_file(ORG_ID, "octo-org", "demo", POLICY, etag=first.etag)
    assert changed.content == b"issuer: https://changed\n"
    assert changed.etag != first.etag
    assert (str(ORG_ID), left) in rates
    assert ("app", remaining(client)["app"]) in rates


async def test_missing_policy_or_repo_is_policy_not_found(client) -> None:
    with pytest.raises(PolicyNotFound):
        await client.read_file(ORG_ID, "octo-org", "demo", ".github/chainguard/nope.sts.yaml")
    with pytest.raises(PolicyNotFound):
        await client.read_file(ORG_ID, "octo-org", "missing", POLICY)
    with pytest.raises(PolicyNotFound):  # a repository of another installation
        await client.read_file(ORG_ID, "octo-user", "hello", "README.md")


async def test_mint_happy_path(client, emulator, clock, observer) -> None:
    minted = await client.mint(ORG_ID, {"contents": "read", "issues": "write"}, ["demo"])
    assert minted.token.startswith("ghs_")
    assert minted.token not in repr(minted)
    assert minted.permissions == {"contents": "read", "issues": "write"}
    assert minted.repositories == ("demo",)
    expected = datetime.fromtimestamp(int(clock.now()) + 3600, UTC)
    assert abs((minted.expires_at - expected).total_seconds()) <= 1
    assert emulator.token_grant(minted.token)["repositories"] == {"demo"}
    everything = await client.mint(ORG_ID, {"contents": "read"}, [])
    assert emulator.token_grant(everything.token)["repositories"] is None  # omitted: all repos
    stage, reason = observer.named("token_mint")[-1]
    assert reason is None
    assert stage.notes["github.status"] == 201


async def test_mint_rejected_and_unknown_installation(client, observer) -> None:
    with pytest.raises(MintRejected):
        await client.mint(ORG_ID, {"administration": "write"}, [])
    with pytest.raises(MintRejected):
        await client.mint(ORG_ID, {"contents": "read"}, ["does-not-exist"])
    assert observer.named("token_mint")[-1][1] == "mint_rejected"
    assert observer.named("token_mint")[-1][0].notes["github.status"] == 422
    with pytest.raises(NoInstallation):
        await client.mint(999_999, {"contents": "read"}, [])


async def test_primary_rate_limit(client, emulator) -> None:
    emulator.rate_limit = 2
    await client.mint(ORG_ID, {"contents": "read"}, [])
    await client.mint(ORG_ID, {"contents": "read"}, [])
    assert remaining(client)["app"] == 0
    with pytest.raises(RateLimited) as info:
        await client.mint(ORG_ID, {"contents": "read"}, [])
    assert info.value.reason == "rate_limited_primary"


@pytest.mark.parametrize("status", [403, 429])
async def test_secondary_rate_limit(client, emulator, status) -> None:
    emulator.force_secondary_limit(status=status, retry_after=42)
    with pytest.raises(RateLimited) as info:
        await client.mint(ORG_ID, {"contents": "read"}, [])
    assert info.value.reason == "rate_limited_secondary"
    assert "42" in info.value.detail
    emulator.force_secondary_limit(status=status, path_prefix="/repos/")
    with pytest.raises(RateLimited):
        await client.read_file(ORG_ID, "octo-org", "demo", POLICY)


async def test_plain_403_is_permission_not_rate_limit(client, emulator) -> None:
    emulator.force_forbidden()
    with pytest.raises(PermissionDenied) as info:
        await client.mint(ORG_ID, {"contents": "read"}, [])
    assert not isinstance(info.value, RateLimited)
    assert info.value.reason == "github_forbidden"
    emulator.force_forbidden(path_prefix="/repos/")
    with pytest.raises(PolicyNotFound):
        await client.read_file(ORG_ID, "octo-org", "demo", POLICY)


async def test_server_errors_are_unavailable(client, emulator) -> None:
    emulator.force_error(502, times=2)  # a lookup is tried once more
    with pytest.raises(GitHubUnavailable):
        await client.installation_id("octo-org")
    emulator.force_error(500, times=2, path_prefix="/app/")  # a mint is tried once more too
    with pytest.raises(GitHubUnavailable):
        await client.mint(ORG_ID, {"contents": "read"}, [])
    # Faults are not cached: the next call succeeds.
    assert await client.installation_id("octo-org") == ORG_ID


async def test_timeout_is_unavailable(make_client, emulator) -> None:
    client = make_client(request_timeout=0.2)
    emulator.latency_ms = 600
    with pytest.raises(GitHubUnavailable, match="timed out"):
        await client.installation_id("octo-org")


async def test_connection_refused_is_unavailable(http, clock, observer) -> None:
    client = GitHubAppClient(
        GitHubConfig(app_id=APP_ID),
        rest=GitHubRest(RestConfig(base_url="http://127.0.0.1:9"), http=http, clock=clock),
        signer=signer(),
        clock=clock,
        observer=observer,
    )
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await client.installation_id("octo-org")


async def test_oversized_response_is_an_error_not_truncated(make_client, emulator) -> None:
    client = make_client(max_response_bytes=64 * 1024)
    emulator.set_file("octo-org", "demo", "big.yaml", b"x" * (64 * 1024 + 1))
    with pytest.raises(GitHubUnavailable, match="exceeds"):
        await client.read_file(ORG_ID, "octo-org", "demo", "big.yaml")
    emulator.set_file("octo-org", "demo", "ok.yaml", b"x" * 1000)
    assert (await client.read_file(ORG_ID, "octo-org", "demo", "ok.yaml")).content == b"x" * 1000


async def test_bad_app_key_is_a_server_misconfiguration(make_client, observer) -> None:
    client = make_client(key=other_key())
    with pytest.raises(StsError) as info:
        await client.installation_id("octo-org")
    assert type(info.value) is StsError  # INTERNAL: neither the caller's fault nor transient
    assert info.value.reason == "github_app_auth_failed"
    assert "GITHUB_APP_ID" in info.value.detail
    with pytest.raises(StsError) as info:
        await client.mint(ORG_ID, {"contents": "read"}, [])
    assert info.value.reason == "github_app_auth_failed"
    assert observer.named("token_mint")[-1][0].notes["github.status"] == 401


async def test_revoke(client, emulator) -> None:
    minted = await client.mint(ORG_ID, {"contents": "read"}, [])
    await client.revoke(minted.token)
    assert emulator.token_grant(minted.token) is None
    await client.revoke(minted.token)  # already invalid: fine


def _resp(body: bytes, content_type: str) -> Response:
    return Response(200, httpx.Headers({"content-type": content_type}), body)


def test_file_content_handles_both_media_types() -> None:
    assert _file_content(_resp(b"raw: 1\n", "application/vnd.github.raw"), "x") == b"raw: 1\n"
    as_json = b'{"type": "file", "encoding": "base64", "content": "cmF3OiAx\\nCg==\\n"}'
    assert _file_content(_resp(as_json, "application/json; charset=utf-8"), "x") == b"raw: 1\n"
    with pytest.raises(PolicyNotFound):
        _file_content(_resp(b"[]", "application/json"), "x")
    too_big = b'{"type": "file", "encoding": "none", "content": ""}'
    with pytest.raises(PolicyInvalid):
        _file_content(_resp(too_big, "application/json"), "x")
    with pytest.raises(GitHubUnavailable):
        _file_content(_resp(b"{not json", "application/json"), "x")
    bad_b64 = b'{"type": "file", "encoding": "base64", "content": "!!!"}'
    with pytest.raises(GitHubUnavailable):
        _file_content(_resp(bad_b64, "application/json"), "x")


# -- one REST core for the App's and the webhook's calls ------------------------------------


def limit(emulator: GitHubEmulator, kind: str, path_prefix: str) -> None:
    """The next call under ``path_prefix`` gets a rate-limited answer of ``kind``."""
    if kind == "primary":
        message = "API rate limit exceeded for installation."
        emulator.inject(Fault(403, message, exhaust=True, path_prefix=path_prefix))
    else:
        status = 429 if kind == "secondary-429" else 403
        emulator.force_secondary_limit(status=status, retry_after=42, path_prefix=path_prefix)


@pytest.mark.parametrize("kind", ["primary", "secondary-403", "secondary-429"])
async def test_webhook_calls_map_rate_limits_like_every_other_call(client, emulator, kind) -> None:
    # Before the core, these were StsError(github_webhook_call_failed): an internal error.
    number, head = emulator.open_pull_request("octo-org", "demo", {POLICY: "issuer: x\n"})
    checks = GitHubChecks(client, rest=client._rest)
    repo = await checks.for_repo(ORG_ID, "octo-org", "demo")
    calls = [
        ("/repos/octo-org/demo/pulls/", lambda: repo.pull_files(number)),
        ("/repos/octo-org/demo/compare/", lambda: repo.compare("main", head)),
        ("/repos/octo-org/demo/contents/", lambda: repo.read_at(POLICY, head)),
        ("/repos/octo-org/demo/check-runs", lambda: repo.create_check_run(head, {"name": "x"})),
    ]
    reason = "rate_limited_" + kind.split("-")[0]
    for prefix, call in calls:
        limit(emulator, kind, prefix)
        with pytest.raises(RateLimited) as info:
            await call()
        assert info.value.reason == reason
        if kind != "primary":
            assert "retry after 42 s" in info.value.detail
        # The same answer to the App's own calls maps to the same error.
        limit(emulator, kind, "/app/installations/")
        with pytest.raises(RateLimited) as same:
            await client.mint(ORG_ID, {"contents": "read"}, [])
        assert same.value.reason == reason


class CountingMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.request_feeds = 0
        self.gauge_feeds: list[tuple[str, float]] = []

    def github_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        self.request_feeds += 1
        super().github_request(endpoint, status, seconds)

    def rate_limit_remaining(self, installation: int | str, remaining: float) -> None:
        self.gauge_feeds.append((str(installation), remaining))
        super().rate_limit_remaining(installation, remaining)


async def test_every_github_call_is_counted_once_and_the_gauge_has_one_feed(
    emulator, http, clock
) -> None:
    metrics = CountingMetrics()
    rest = GitHubRest(RestConfig(base_url=emulator.url), http=http, clock=clock, telemetry=metrics)
    client = GitHubAppClient(
        GitHubConfig(app_id=APP_ID),
        rest=rest,
        signer=signer(),
        clock=clock,
        observer=TelemetryObserver(metrics, NoOpTracer()),  # the stages' feed, as in app.py
    )
    number, _head = emulator.open_pull_request("octo-org", "demo", {"README.md": "x"})
    await client.installation_id("octo-user")  # /orgs 404, then /users
    await client.read_file(ORG_ID, "octo-org", "demo", POLICY)  # mints a contents token
    minted = await client.mint(ORG_ID, {"contents": "read"}, ["demo"])
    await client.revoke(minted.token)
    repo = await GitHubChecks(client, rest=rest).for_repo(ORG_ID, "octo-org", "demo")
    await repo.pull_files(number)
    emulator.force_error(502, times=2, path_prefix="/repos/")  # a GET is tried twice
    with pytest.raises(GitHubUnavailable):
        await repo.pull_files(number)

    calls = emulator.calls()
    assert metrics.request_feeds == len(calls) == 10
    counted = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "octo_sts_github_requests_total"
    }
    assert counted == {
        ("installation_lookup", "404"): 1,
        ("installation_lookup", "200"): 1,
        ("contents_token_mint", "201"): 1,
        ("contents_read", "200"): 1,
        ("token_mint", "201"): 2,  # the exchange's and the webhook's
        ("token_revoke", "204"): 1,
        ("checks_pull_files", "200"): 1,
        ("checks_pull_files", "502"): 2,
    }
    value = metrics.registry.get_sample_value
    # One gauge reading per answer spending a watched budget (the revocation spends none).
    assert len(metrics.gauge_feeds) == len(calls) - 1
    last = rest.rate_limits.remaining()
    assert {"app", str(ORG_ID)} == set(last)
    for budget, left in last.items():
        assert value("octo_sts_github_rate_limit_remaining", {"installation": budget}) == left
