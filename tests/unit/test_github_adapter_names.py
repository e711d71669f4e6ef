"""The GitHub adapter refuses exactly the owner and repository names ``domain.names`` refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import httpx
import pytest

from octosts.adapters.github import GitHubAppClient, GitHubConfig
from octosts.adapters.github_rest import GitHubRest, NotConnected, RestConfig
from octosts.domain.errors import InvalidRequest, StsError
from octosts.domain.names import is_owner_name, is_repo_name
from octosts.domain.ports import NullObserver
from tests.emulator import APP_ID, signer
from tests.fakes import FakeClock, HandlerPool

POLICY = ".github/chainguard/ci.sts.yaml"
OWNERS = ["octo-org", "a", "a" * 39, "a-b-c", "octo-", "-octo", "a--b", "a" * 40, "a_b", "a.b", ""]
REPOS = ["demo", ".github", "a" * 100, "a.b_c-d", "..", ".", "a" * 101, "a b", "a/b", "é", ""]


@pytest.fixture
async def client_and_calls() -> AsyncIterator[tuple[GitHubAppClient, list[httpx.Request]]]:
    calls: list[httpx.Request] = []

    def github(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise NotConnected("unreachable")  # only the attempt matters

    async with HandlerPool(github) as http:
        yield (
            GitHubAppClient(
                GitHubConfig(app_id=APP_ID),
                rest=GitHubRest(RestConfig(), http=http, clock=FakeClock()),
                signer=signer(),
                clock=FakeClock(),
                observer=NullObserver(),
            ),
            calls,
        )


async def _refused(call: Awaitable[object]) -> bool:
    try:
        await call
    except InvalidRequest:
        return True
    except StsError:
        return False
    return False


@pytest.mark.parametrize("owner", OWNERS)
async def test_owner_names(
    client_and_calls: tuple[GitHubAppClient, list[httpx.Request]], owner: str
) -> None:
    client, calls = client_and_calls
    refused = await _refused(client.installation_id(owner))
    assert refused is (not is_owner_name(owner))
    assert (calls == []) is refused
    calls.clear()
    refused = await _refused(client.read_file(1, owner, "demo", POLICY))
    assert refused is (not is_owner_name(owner))
    assert (calls == []) is refused


@pytest.mark.parametrize("repo", REPOS)
async def test_repository_names(
    client_and_calls: tuple[GitHubAppClient, list[httpx.Request]], repo: str
) -> None:
    client, calls = client_and_calls
    refused = await _refused(client.read_file(1, "octo-org", repo, POLICY))
    assert refused is (not is_repo_name(repo))
    assert (calls == []) is refused
    calls.clear()
    refused = await _refused(client.mint(1, {"contents": "read"}, [repo]))
    assert refused is (not is_repo_name(repo))
    assert (calls == []) is refused


def test_the_table_holds_names_the_old_adapter_rule_let_through() -> None:
    # trailing hyphen and "--": accepted by the adapter's own regex before it used domain.names
    assert not is_owner_name("octo-")
    assert not is_owner_name("a--b")
    assert {"octo-", "a--b"} <= set(OWNERS)
