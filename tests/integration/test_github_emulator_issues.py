"""The emulator's issues, repository and contents-root routes: what an egress workload calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from octosts.adapters.signer import app_jwt
from octosts.dev.github import FIRST_INSTALLATION_ID, GitHubEmulator
from tests.emulator import APP_ID, signer
from tests.fakes import FakeClock

DEMO = "/repos/octo-org/demo"
DOCS = "https://docs.github.com/rest"


@pytest.fixture
async def gh(emulator: GitHubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=5) as client:
        yield client


async def token(gh: httpx.AsyncClient, clock: FakeClock, permissions: dict[str, str]) -> dict:
    """``Authorization`` for an installation token of octo-org limited to demo."""
    auth = {"Authorization": f"Bearer {await app_jwt(signer(), APP_ID, clock)}"}
    body = {"permissions": permissions, "repositories": ["demo"]}
    resp = await gh.post(
        f"/app/installations/{FIRST_INSTALLATION_ID}/access_tokens", json=body, headers=auth
    )
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"token {resp.json()['token']}"}


async def test_an_issue_is_created_with_issues_write_and_listed_with_issues_read(
    gh, clock, emulator
) -> None:
    writer = await token(gh, clock, {"issues": "write"})
    created = await gh.post(f"{DEMO}/issues", json={"title": "hello", "body": "x"}, headers=writer)
    assert created.status_code == 201, created.text
    issue = created.json()
    assert (issue["number"], issue["title"], issue["body"]) == (1, "hello", "x")
    assert issue["state"] == "open"
    assert issue["url"] == f"{emulator.url}{DEMO}/issues/1"
    second = await gh.post(f"{DEMO}/issues", json={"title": "again"}, headers=writer)
    assert second.json()["number"] == 2

    reader = await token(gh, clock, {"issues": "read"})
    listed = await gh.get(f"{DEMO}/issues", headers=reader)
    assert [i["title"] for i in listed.json()] == ["again", "hello"]  # newest first, as GitHub
    one = await gh.get(f"{DEMO}/issues/1", headers=reader)
    assert one.json()["title"] == "hello"
    assert (await gh.get(f"{DEMO}/issues/9", headers=reader)).status_code == 404


async def test_creating_an_issue_without_issues_write_is_githubs_403(gh, clock) -> None:
    for permissions in ({"contents": "write"}, {"issues": "read"}):
        refused = await gh.post(
            f"{DEMO}/issues", json={"title": "no"}, headers=await token(gh, clock, permissions)
        )
        assert refused.status_code == 403
        assert refused.json() == {
            "message": "Resource not accessible by integration",
            "documentation_url": DOCS,
        }
    reader = await token(gh, clock, {"issues": "read"})
    assert (await gh.get(f"{DEMO}/issues", headers=reader)).json() == []  # nothing was created


@pytest.mark.parametrize("body", [{}, {"title": ""}, {"title": 7}, {"title": "t", "body": 3}])
async def test_an_invalid_issue_is_422(gh, clock, body) -> None:
    writer = await token(gh, clock, {"issues": "write"})
    resp = await gh.post(f"{DEMO}/issues", json=body, headers=writer)
    assert resp.status_code == 422
    assert resp.json()["message"] == "Validation Failed"


async def test_contents_root_lists_files_and_directories(gh, clock) -> None:
    reader = await token(gh, clock, {"contents": "read"})
    root = await gh.get(f"{DEMO}/contents", headers=reader)
    assert root.status_code == 200
    assert root.json() == [
        {"type": "dir", "name": ".github", "path": ".github"},
        {"type": "file", "name": "README.md", "path": "README.md"},
    ]
    assert (await gh.get(f"{DEMO}/contents/", headers=reader)).json() == root.json()
    no_issues = await token(gh, clock, {"issues": "write"})
    assert (await gh.get(f"{DEMO}/contents", headers=no_issues)).status_code == 403


async def test_repository_is_visible_to_any_token_of_it(gh, clock) -> None:
    reader = await token(gh, clock, {"issues": "read"})
    repo = await gh.get(DEMO, headers=reader)
    assert repo.status_code == 200
    assert repo.json()["full_name"] == "octo-org/demo"
    # The token is limited to demo: another repository does not exist for it.
    assert (await gh.get("/repos/octo-org/other", headers=reader)).status_code == 404
