"""The GitHub API emulator over real sockets (httpx as the client)."""

from __future__ import annotations

import base64
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from octosts.adapters.signer import app_jwt
from octosts.dev.github import (
    FIRST_INSTALLATION_ID,
    GitHubEmulator,
    ensure_app_key,
    load_app_public_key,
)
from tests.emulator import APP_ID, app_key, make_emulator, other_key, pem, real_time_clock, signer
from tests.fakes import FakeClock
from tests.polling import first_line

ORG_ID = FIRST_INSTALLATION_ID  # octo-org sorts first
USER_ID = FIRST_INSTALLATION_ID + 1


@pytest.fixture
async def gh(emulator: GitHubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=5) as client:
        yield client


async def _jwt(clock: FakeClock, key=None, app_id: int = APP_ID) -> dict[str, str]:
    return {"Authorization": f"Bearer {await app_jwt(signer(key), app_id, clock)}"}


async def _mint(gh: httpx.AsyncClient, clock: FakeClock, body: dict) -> str:
    resp = await gh.post(
        f"/app/installations/{ORG_ID}/access_tokens", json=body, headers=await _jwt(clock)
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["token"])


def _tok(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def test_installation_lookup_org_and_user(gh, clock) -> None:
    auth = await _jwt(clock)
    org = await gh.get("/orgs/octo-org/installation", headers=auth)
    assert org.status_code == 200
    assert org.json()["id"] == ORG_ID
    assert org.json()["account"] == {"login": "octo-org", "id": ORG_ID * 10, "type": "Organization"}
    assert (await gh.get("/orgs/octo-user/installation", headers=auth)).status_code == 404
    user = await gh.get("/users/octo-user/installation", headers=auth)
    assert user.json()["id"] == USER_ID
    assert user.json()["target_type"] == "User"
    missing = await gh.get("/users/nobody/installation", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["message"] == "Not Found"


async def test_app_jwt_rules(gh, clock) -> None:
    path = "/orgs/octo-org/installation"
    good = await _jwt(clock)
    assert (await gh.get(path, headers=good)).status_code == 200
    forged = await _jwt(clock, key=other_key())
    wrong_iss = await _jwt(clock, app_id=APP_ID + 1)
    now = int(clock.now())
    key = pem(app_key())
    too_long = jwt.encode({"iat": now - 60, "exp": now + 600, "iss": str(APP_ID)}, key, "RS256")
    hs256 = jwt.encode(
        {"iat": now, "exp": now + 60, "iss": str(APP_ID)},
        "secret-secret-secret-secret-32bytes!",
        "HS256",
    )
    for headers in (
        forged,
        wrong_iss,
        {"Authorization": f"Bearer {too_long}"},
        {"Authorization": f"Bearer {hs256}"},
        {"Authorization": "Bearer a.b.c"},
        {},
    ):
        resp = await gh.get(path, headers=headers)
        assert resp.status_code == 401, headers
        assert "message" in resp.json()
    clock.advance(10 * 60)  # the JWT made above has expired
    assert (await gh.get(path, headers=good)).status_code == 401


async def test_minted_read_token_reads_but_cannot_write(gh, clock, emulator) -> None:
    token = await _mint(gh, clock, {"permissions": {"contents": "read"}, "repositories": ["demo"]})
    assert token.startswith("ghs_")
    url = "/repos/octo-org/demo/contents/README.md"
    read = await gh.get(url, headers=_tok(token))
    assert read.status_code == 200
    assert base64.b64decode(read.json()["content"]) == b"# demo\n"
    sha = read.json()["sha"]
    body = {"message": "x", "content": base64.b64encode(b"pwned").decode(), "sha": sha}
    denied = await gh.put(url, json=body, headers=_tok(token))
    assert denied.status_code == 403
    assert denied.json()["message"] == "Resource not accessible by integration"
    assert emulator.get_file("octo-org", "demo", "README.md") == b"# demo\n"
    # The token is restricted to demo: other repositories are invisible.
    other = await gh.get("/repos/octo-org/other/contents/README.md", headers=_tok(token))
    assert other.status_code == 404

    writer = await _mint(gh, clock, {"permissions": {"contents": "write"}})
    wrote = await gh.put(url, json=body, headers=_tok(writer))
    assert wrote.status_code == 200
    assert emulator.get_file("octo-org", "demo", "README.md") == b"pwned"
    stale = await gh.put(url, json=body, headers=_tok(writer))
    assert stale.status_code == 409  # sha no longer matches


async def test_access_token_checks(gh, clock) -> None:
    path = f"/app/installations/{ORG_ID}/access_tokens"
    auth = await _jwt(clock)
    for body in (
        {"permissions": {"administration": "write"}},  # beyond the installation
        {"permissions": {"no_such_permission": "read"}},
        {"permissions": {"contents": "owner"}},
        {"permissions": {"contents": "read"}, "repositories": ["nope"]},
    ):
        resp = await gh.post(path, json=body, headers=auth)
        assert resp.status_code == 422, body
    unknown = await gh.post("/app/installations/999/access_tokens", json={}, headers=auth)
    assert unknown.status_code == 404
    ok = await gh.post(
        path, json={"permissions": {"issues": "write"}, "repositories": ["Demo"]}, headers=auth
    )
    assert ok.status_code == 201
    data = ok.json()
    assert data["permissions"] == {"issues": "write"}
    assert data["repository_selection"] == "selected"
    assert [r["name"] for r in data["repositories"]] == ["demo"]
    expires = time.mktime(time.strptime(data["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (clock.now() + 3600)) < 5


async def test_token_expiry_and_revocation(gh, clock) -> None:
    token = await _mint(gh, clock, {"permissions": {"contents": "read"}})
    url = "/repos/octo-org/demo/contents/README.md"
    assert (await gh.get(url, headers=_tok(token))).status_code == 200
    assert (await gh.delete("/installation/token", headers=_tok(token))).status_code == 204
    bad = await gh.get(url, headers=_tok(token))
    assert bad.status_code == 401
    assert bad.json()["message"] == "Bad credentials"
    token = await _mint(gh, clock, {"permissions": {"contents": "read"}})
    clock.advance(3601)
    assert (await gh.get(url, headers=_tok(token))).status_code == 401


async def test_contents_media_types_etag_and_dirs(gh, clock, emulator) -> None:
    token = await _mint(gh, clock, {"permissions": {"contents": "read"}})
    url = "/repos/octo-org/demo/contents/.github/chainguard/ci.sts.yaml"
    raw = await gh.get(url, headers={**_tok(token), "Accept": "application/vnd.github.raw+json"})
    assert raw.status_code == 200
    assert raw.content.startswith(b"issuer:")
    assert raw.headers["content-type"].startswith("application/vnd.github.raw")
    etag = raw.headers["etag"]
    remaining = int(raw.headers["x-ratelimit-remaining"])
    hit = await gh.get(
        url,
        headers={
            **_tok(token),
            "Accept": "application/vnd.github.raw+json",
            "If-None-Match": etag,
        },
    )
    assert hit.status_code == 304
    assert hit.content == b""
    assert int(hit.headers["x-ratelimit-remaining"]) == remaining  # 304s are free
    emulator.set_file("octo-org", "demo", ".github/chainguard/ci.sts.yaml", b"issuer: changed\n")
    changed = await gh.get(
        url,
        headers={
            **_tok(token),
            "Accept": "application/vnd.github.raw+json",
            "If-None-Match": etag,
        },
    )
    assert changed.status_code == 200
    assert changed.content == b"issuer: changed\n"
    as_json = await gh.get(url, headers=_tok(token))
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json()["type"] == "file"
    assert base64.b64decode(as_json.json()["content"]) == b"issuer: changed\n"
    listing = await gh.get("/repos/octo-org/demo/contents/.github", headers=_tok(token))
    assert [e["name"] for e in listing.json()] == ["chainguard"]
    emulator.delete_file("octo-org", "demo", ".github/chainguard/ci.sts.yaml")
    assert (await gh.get(url, headers=_tok(token))).status_code == 404


async def test_rate_limit_headers_primary_limit_and_rate_limit_endpoint(
    gh, clock, emulator
) -> None:
    emulator.rate_limit = 3
    auth = await _jwt(clock)
    path = "/orgs/octo-org/installation"
    seen = []
    for _ in range(4):
        resp = await gh.get(path, headers=auth)
        seen.append((resp.status_code, resp.headers["x-ratelimit-remaining"]))
        assert resp.headers["x-ratelimit-limit"] == "3"
        assert int(resp.headers["x-ratelimit-reset"]) > clock.now()
    assert seen == [(200, "2"), (200, "1"), (200, "0"), (403, "0")]
    assert "rate limit exceeded" in resp.json()["message"]
    status = await gh.get("/rate_limit", headers=auth)
    assert status.status_code == 200
    assert status.json()["resources"]["core"]["remaining"] == 0
    # An installation token has its own budget.
    emulator.reset()
    token = await _mint(gh, clock, {"permissions": {"contents": "read"}})
    ok = await gh.get("/repos/octo-org/demo/contents/README.md", headers=_tok(token))
    assert ok.headers["x-ratelimit-remaining"] == "2"


async def test_forced_faults_latency_and_fail_rate(gh, clock, emulator) -> None:
    auth = await _jwt(clock)
    path = "/orgs/octo-org/installation"
    emulator.force_secondary_limit(status=429, retry_after=30)
    limited = await gh.get(path, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "30"
    assert "secondary rate limit" in limited.json()["message"]
    emulator.force_error(503)
    assert (await gh.get(path, headers=auth)).status_code == 503
    assert (await gh.get(path, headers=auth)).status_code == 200
    emulator.latency_ms = 150
    slept: list[float] = []
    emulator.faults.sleep = slept.append
    assert (await gh.get(path, headers=auth)).status_code == 200
    assert slept == [0.15]  # once per request, before the answer
    emulator.latency_ms = 0
    emulator.fail_rate = 1.0
    assert (await gh.get(path, headers=auth)).status_code == 500


async def test_tls(tmp_path) -> None:
    with make_emulator(tmp_path, tls_dir=tmp_path / "certs") as emu:
        assert emu.url.startswith("https://")
        assert emu.ca_cert is not None
        context = ssl.create_default_context(cafile=str(emu.ca_cert))
        async with httpx.AsyncClient(verify=context, timeout=5) as client:
            resp = await client.get(emu.url + "/_emulator/health")
        assert resp.json() == {"status": "ok"}


@pytest.fixture
def cli_process(tmp_path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    key = tmp_path / "app.pem"
    key.write_bytes(pem(app_key()))
    repos = make_emulator(tmp_path)  # writes the seed tree; never started
    del repos
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "octosts",
            "dev",
            "github",
            "--listen",
            "127.0.0.1:0",
            "--repos",
            str(tmp_path / "repos"),
            "--app-key",
            str(key),
            "--app-id",
            str(APP_ID),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = first_line(proc, "the emulator's URL")  # printed once the socket is bound
        assert "listening on" in first, first
        yield proc, first.rsplit(" ", 1)[-1]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_cli_serves_and_stops_on_signal(cli_process, signum, code) -> None:
    proc, url = cli_process
    clock = real_time_clock()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        resp = await client.get("/orgs/octo-org/installation", headers=await _jwt(clock))
        assert resp.status_code == 200
        assert resp.json()["id"] == ORG_ID
    os.kill(proc.pid, signum)
    # A bound for a hang, not a speed: interpreter teardown alone took over 5 s under load.
    assert proc.wait(timeout=30) == code


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "not a PEM"),
        # Another App ([fleet]): id=N,key=FILE[,rate-limit=N][,owner=LOGIN]...
        *(
            (("--app", spec), "--app")
            for spec in (
                "id=2",
                "key=k.pem",
                "id=x,key=k",
                "id=2,key=k,color=red",
                "id=2,id=3,key=k",
            )
        ),
    ],
)
def test_cli_rejects_bad_keys_and_apps(tmp_path, args, message) -> None:
    key = tmp_path / "bad.pem"
    key.write_text("nope")
    (tmp_path / "repos").mkdir()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "octosts", "dev", "github"),
            *("--repos", str(tmp_path / "repos"), "--app-key", str(key), *args),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_ensure_app_key_creates_once_with_private_mode(tmp_path) -> None:
    path = ensure_app_key(tmp_path / "keys" / "app.pem")
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert ensure_app_key(path).read_bytes() == first
    public = load_app_public_key(first)
    assert (
        load_app_public_key(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).public_numbers()
        == public.public_numbers()
    )
    with pytest.raises(ValueError, match="not a PEM"):
        load_app_public_key(b"junk")


def _links(header: str) -> dict[str, str]:
    """``Link`` as GitHub writes it, parsed strictly (what go-github and Octokit read)."""
    links = {}
    for part in header.split(", "):
        match = re.fullmatch(r'<([^>]+)>; rel="([a-z]+)"', part)
        assert match is not None, part
        links[match[2]] = match[1]
    return links


async def test_app_installations_are_listed_in_pages_linked_like_githubs(
    gh, clock, emulator
) -> None:
    for login in ("org-a", "org-b", "org-c"):
        emulator.add_owner(login)
    auth = await _jwt(clock)
    # A client that follows rel="next" from the first page sees every installation once.
    url, pages, seen = "/app/installations?per_page=2", [], []
    while url:
        resp = await gh.get(url, headers=auth)
        assert resp.status_code == 200
        pages.append(_links(resp.headers.get("link", "")) if "link" in resp.headers else {})
        seen += [(i["id"], i["account"]["login"]) for i in resp.json()]
        url = pages[-1].get("next", "")
    assert [login for _, login in seen] == ["octo-org", "octo-user", "org-a", "org-b", "org-c"]
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)
    assert len(pages) == 3
    base = f"{emulator.url}/app/installations?per_page=2"
    assert pages[0] == {"next": f"{base}&page=2", "last": f"{base}&page=3"}
    assert pages[1] == {
        "prev": f"{base}&page=1",
        "next": f"{base}&page=3",
        "last": f"{base}&page=3",
        "first": f"{base}&page=1",
    }
    assert pages[2] == {"prev": f"{base}&page=2", "first": f"{base}&page=1"}

    one = await gh.get(f"/app/installations/{ORG_ID}", headers=auth)
    assert one.json()["account"]["login"] == "octo-org"
    # GitHub's defaults where the paging values are not numbers; an App JWT is required.
    junk = await gh.get("/app/installations?per_page=x&page=-1", headers=auth)
    assert len(junk.json()) == 5
    assert "link" not in junk.headers
    assert (await gh.get("/app/installations")).status_code == 401
    token = await _mint(gh, clock, {})
    assert (await gh.get("/app/installations", headers=_tok(token))).status_code != 200
