"""The emulator serving several GitHub Apps ([fleet]): each App sees only its own installations,
spends its own rate-limit budgets, mints tokens the ledger names it for, and has its own webhook."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from octosts.adapters.signer import app_jwt
from octosts.dev.github import GitHubEmulator
from tests.emulator import APP_ID, make_emulator, pem, pool_key, signer
from tests.fakes import FakeClock
from tests.polling import eventually_blocking, first_line

APP_B = 7
APP_C = 9


@pytest.fixture
def emulator(tmp_path: Path, clock: FakeClock) -> Iterator[GitHubEmulator]:
    """App 4242 and App 7 on every owner, App 9 on octo-org only."""
    emu = make_emulator(tmp_path, clock)
    emu.add_app(APP_B, pool_key(2).public_key())
    emu.add_app(APP_C, pool_key(3).public_key(), owners=["octo-org"])
    with emu:
        yield emu


@pytest.fixture
async def gh(emulator: GitHubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=5) as client:
        yield client


async def auth(clock: FakeClock, app_id: int) -> dict[str, str]:
    key = {APP_ID: None, APP_B: pool_key(2), APP_C: pool_key(3)}[app_id]
    return {"Authorization": f"Bearer {await app_jwt(signer(key), app_id, clock)}"}


async def test_each_app_sees_its_own_installations(gh, emulator, clock) -> None:
    ids = {}
    for app_id in (APP_ID, APP_B, APP_C):
        resp = await gh.get("/orgs/octo-org/installation", headers=await auth(clock, app_id))
        assert resp.status_code == 200
        assert resp.json()["app_id"] == app_id
        ids[app_id] = resp.json()["id"]
    assert len(set(ids.values())) == 3  # unique across Apps
    assert ids == {a: emulator.installation_id("octo-org", a) for a in ids}
    # App 9 is not installed on the user account: 404, where the others answer.
    user = "/users/octo-user/installation"
    assert (await gh.get(user, headers=await auth(clock, APP_C))).status_code == 404
    assert (await gh.get(user, headers=await auth(clock, APP_B))).status_code == 200
    # Another App's installation id is not found, for reading and for minting.
    theirs = ids[APP_ID]
    headers = await auth(clock, APP_B)
    assert (await gh.get(f"/app/installations/{theirs}", headers=headers)).status_code == 404
    minted = await gh.post(f"/app/installations/{theirs}/access_tokens", json={}, headers=headers)
    assert minted.status_code == 404
    listed = await gh.get("/app/installations", headers=await auth(clock, APP_C))
    assert [i["id"] for i in listed.json()] == [ids[APP_C]]
    app = await gh.get("/app", headers=await auth(clock, APP_C))
    assert (app.json()["id"], app.json()["slug"]) == (APP_C, "octo-sts-emulated-9")


async def test_a_jwt_signed_by_another_apps_key_is_refused(gh, clock) -> None:
    forged = await app_jwt(signer(pool_key(2)), APP_C, clock)  # App 7's key, App 9's id
    resp = await gh.get("/app", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401


async def test_each_app_spends_its_own_budget(gh, emulator, clock) -> None:
    emulator.set_app_rate_limit(APP_B, 4)
    installation = emulator.installation_id("octo-org", APP_B)
    minted = await gh.post(
        f"/app/installations/{installation}/access_tokens",
        json={"permissions": {"contents": "read"}},
        headers=await auth(clock, APP_B),
    )
    assert minted.status_code == 201
    # Its installation has App 7's limit, in a budget of its own.
    read = await gh.get(
        "/repos/octo-org/demo/contents/README.md",
        headers={"Authorization": f"token {minted.json()['token']}"},
    )
    assert (read.headers["x-ratelimit-limit"], read.headers["x-ratelimit-remaining"]) == ("4", "3")
    lookup = "/orgs/octo-org/installation"
    for left in (2, 1, 0):
        resp = await gh.get(lookup, headers=await auth(clock, APP_B))
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit"] == "4"
        assert resp.headers["x-ratelimit-remaining"] == str(left)
    limited = await gh.get(lookup, headers=await auth(clock, APP_B))
    assert limited.status_code == 403
    assert limited.json()["message"] == f"API rate limit exceeded for app ID {APP_B}."
    assert limited.headers["x-ratelimit-remaining"] == "0"
    reset = int(limited.headers["x-ratelimit-reset"])
    # The other Apps are not held back by it.
    other = await gh.get(lookup, headers=await auth(clock, APP_ID))
    assert other.status_code == 200
    assert other.headers["x-ratelimit-limit"] == "5000"
    [described] = [a for a in (await gh.get("/_emulator/apps")).json()["apps"] if a["id"] == APP_B]
    assert described["core"]["remaining"] == 0
    assert described["installations"] == {
        "octo-org": installation,
        "octo-user": emulator.installation_id("octo-user", APP_B),
    }
    # The window ends at the reset: a new budget.
    clock.advance(reset - clock.now() + 1)
    assert (await gh.get(lookup, headers=await auth(clock, APP_B))).status_code == 200


async def test_tokens_and_check_runs_name_their_app(gh, emulator, clock) -> None:
    installation = emulator.installation_id("octo-org", APP_C)
    resp = await gh.post(
        f"/app/installations/{installation}/access_tokens",
        json={"permissions": {"checks": "write"}, "repositories": ["demo"]},
        headers=await auth(clock, APP_C),
    )
    assert resp.status_code == 201
    token = resp.json()["token"]
    [line] = emulator.tokens()
    assert (line["app_id"], line["installation_id"]) == (APP_C, installation)
    head = emulator.head("octo-org", "demo")
    run = await gh.post(
        "/repos/octo-org/demo/check-runs",
        json={"name": "octo-sts", "head_sha": head, "status": "completed"},
        headers={"Authorization": f"token {token}"},
    )
    assert run.status_code == 201
    assert run.json()["app"] == {"id": APP_C, "slug": "octo-sts-emulated-9"}
    calls = [c for c in emulator.calls() if c.path.endswith("/check-runs")]
    assert [(c.auth, c.app_id) for c in calls] == [("token", APP_C)]


def test_uninstalling_one_app_leaves_the_others(emulator) -> None:
    before = emulator.installation_id("octo-org")
    emulator.uninstall("octo-org", APP_B)
    assert emulator.installation_id("octo-org", APP_B) is None
    assert emulator.installation_id("octo-org") == before
    again = emulator.install("octo-org", APP_B)
    assert again not in {before, emulator.installation_id("octo-org", APP_C)}
    with pytest.raises(ValueError, match="taken"):
        emulator.add_app(APP_B, pool_key(2).public_key())


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], dict]]]]:
    """A webhook receiver recording each delivery's headers and JSON body."""
    got: list[tuple[dict[str, str], dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_each_app_delivers_its_own_webhook(emulator, receiver) -> None:
    url, got = receiver
    secret = "a-webhook-secret-of-16+"
    for app_id in (APP_ID, APP_B, APP_C):
        emulator.configure_webhook(url, secret, app_id=app_id)
    emulator.commit("octo-user", "hello", {"README.md": "# hi\n"})  # App 9 is not there
    emulator.commit("octo-org", "demo", {"README.md": "# hi\n"})
    eventually_blocking(lambda: len(emulator.deliveries()) == 5, "five deliveries")
    seen = sorted(
        (
            body["repository"]["owner"]["login"],
            int(headers["x-github-hook-installation-target-id"]),
            body["installation"]["id"],
        )
        for headers, body in got
    )
    assert seen == sorted(
        (owner, app, emulator.installation_id(owner, app))
        for owner, app in [
            ("octo-org", APP_ID),
            ("octo-org", APP_B),
            ("octo-org", APP_C),
            ("octo-user", APP_ID),
            ("octo-user", APP_B),
        ]
    )
    assert {h["x-github-hook-installation-target-type"] for h, _ in got} == {"integration"}
    assert len(emulator.deliveries(APP_C)) == 1


def test_cli_serves_several_apps(tmp_path) -> None:
    keys = {APP_ID: tmp_path / "a.pem", APP_B: tmp_path / "b.pem"}
    keys[APP_ID].write_bytes(pem(pool_key(3)))
    make_emulator(tmp_path)  # writes the seed tree; never started
    args = [
        *(sys.executable, "-m", "octosts", "dev", "github", "--listen", "127.0.0.1:0"),
        *("--repos", str(tmp_path / "repos"), "--app-key", str(keys[APP_ID])),
        *("--app-id", str(APP_ID), "--create-key"),
        *("--app", f"id={APP_B},key={keys[APP_B]},rate-limit=60,owner=octo-user"),
        *("--rate-window", "60"),
    ]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        try:
            url = first_line(proc, "the emulator's URL").split()[-1]
            apps = {a["id"]: a for a in httpx.get(f"{url}/_emulator/apps").json()["apps"]}
        finally:
            proc.terminate()
            proc.wait(10)
    assert keys[APP_B].is_file()  # --create-key made it
    assert list(apps[APP_B]["installations"]) == ["octo-user"]
    assert apps[APP_B]["core"]["limit"] == 60
    assert apps[APP_B]["core"]["reset"] - apps[APP_ID]["core"]["reset"] in {-1, 0, 1}
    assert apps[APP_ID]["core"]["limit"] == 5000
    assert set(apps[APP_ID]["installations"]) == {"octo-org", "octo-user"}
