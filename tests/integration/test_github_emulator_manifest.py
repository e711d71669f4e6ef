"""The emulator's App-from-a-manifest flow with the real CLI on both ends: `octo-sts setup
manifest` makes the manifest, the form POST answers with GitHub's redirect and code, `octo-sts
setup convert` trades the code for the App, and the App so made is served (its key, its
installations holding exactly the manifest's permissions, its webhook with the secret handed
out)."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.adapters.signer import app_jwt
from octosts.cli import main
from octosts.dev.github import GitHubEmulator
from octosts.dev.github.manifests import CODE_LIFETIME
from tests.emulator import make_emulator, signer
from tests.fakes import FakeClock
from tests.polling import eventually_blocking

REDIRECT = "https://sts.example.com/setup"


class Receiver:
    """A webhook receiver on loopback: what it was sent, with headers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def emulator(tmp_path: Path, clock: FakeClock) -> Iterator[GitHubEmulator]:
    with make_emulator(tmp_path, clock) as emu:
        yield emu


def manifest(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(
        ["setup", "manifest", "--name", "Acme STS", "--url", "https://sts.example.com",
         "--redirect-url", REDIRECT, "--permission", "contents=read", *extra]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def create(emulator: GitHubEmulator, text: str, path: str) -> httpx.Response:
    """What the browser does with `setup manifest --html`'s form (GitHub's confirmation
    page is the emulator's to skip)."""
    return httpx.post(f"{emulator.url}{path}", data={"manifest": text}, timeout=5)


def code_of(answer: httpx.Response) -> tuple[str, dict[str, str]]:
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    return query["code"], query


def convert(emulator: GitHubEmulator, code: str, out: Path) -> int:
    return main(
        ["setup", "convert", "--code", code, "--github-api", emulator.url, "--out-dir", str(out)]
    )


def env_file(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


async def jwt_headers(key_file: Path, app_id: int, clock: FakeClock) -> dict[str, str]:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return {"Authorization": f"Bearer {await app_jwt(signer(key), app_id, clock)}"}


async def test_an_app_made_from_the_manifest_is_served_with_exactly_its_permissions(
    emulator: GitHubEmulator,
    clock: FakeClock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    receiver: Receiver,
) -> None:
    text = manifest(capsys, "--webhook-url", receiver.url)
    code, query = code_of(
        create(emulator, text, "/organizations/octo-org/settings/apps/new?state=s1")
    )
    assert query["state"] == "s1"
    out = tmp_path / "app"
    assert convert(emulator, code, out) == 0
    settings = env_file(out / "octo-sts.env")
    app_id = int(settings["GITHUB_APP_ID"])
    assert app_id not in (1, emulator.app_id)
    assert settings["GITHUB_BASE_URL"] == emulator.url
    assert json.loads((out / "app.json").read_text())["owner"] == "octo-org"

    async with httpx.AsyncClient(base_url=emulator.url, timeout=5) as gh:
        auth = await jwt_headers(out / "app.pem", app_id, clock)
        app = (await gh.get("/app", headers=auth)).json()
        assert (app["id"], app["slug"]) == (app_id, "acme-sts")
        # The manifest's permissions: the service's own and the one trust policies may grant.
        wanted = json.loads(text)["default_permissions"]
        assert app["permissions"] == wanted
        installation = (await gh.get("/orgs/octo-org/installation", headers=auth)).json()
        assert installation["app_id"] == app_id
        mint = f"/app/installations/{installation['id']}/access_tokens"
        allowed = await gh.post(mint, headers=auth, json={"permissions": {"contents": "read"}})
        assert allowed.status_code == 201
        beyond = await gh.post(mint, headers=auth, json={"permissions": {"issues": "write"}})
        assert beyond.status_code == 422
        # Another App's key does not sign for this one.
        other = await jwt_headers(out / "app.pem", emulator.app_id, clock)
        assert (await gh.get("/app", headers=other)).status_code == 401

    # The webhook GitHub was told about gets the App's events, signed with its secret.
    emulator.commit("octo-org", "demo", {"README.md": "# changed\n"})
    eventually_blocking(lambda: receiver.received, "a push delivered to the App's webhook")
    headers, body = receiver.received[0]
    secret = settings["OCTOSTS_WEBHOOK_SECRETS"].encode()
    assert headers["x-github-event"] == "push"
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert headers["x-hub-signature-256"] == expected
    assert json.loads(body)["installation"]["id"] == installation["id"]


def test_a_code_works_once(
    emulator: GitHubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = code_of(create(emulator, manifest(capsys, "--no-webhook"), "/settings/apps/new"))
    assert convert(emulator, code, tmp_path / "a") == 0
    assert "GitHub made no webhook secret" in capsys.readouterr().err
    assert "OCTOSTS_WEBHOOK_SECRETS" not in env_file(tmp_path / "a" / "octo-sts.env")
    assert convert(emulator, code, tmp_path / "b") == 4  # GitHub's 404: the CLI's "refused"
    assert "GitHub does not know this code" in capsys.readouterr().err
    assert not (tmp_path / "b" / "app.pem").exists()


def test_a_code_expires_after_an_hour(
    emulator: GitHubEmulator, clock: FakeClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = code_of(create(emulator, manifest(capsys), "/settings/apps/new"))
    clock.advance(CODE_LIFETIME)
    assert convert(emulator, code, tmp_path / "late") == 4


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"manifest": "{"}, "not JSON"),
        ({"nothing": "here"}, "no `manifest` field"),
        (
            {"manifest": json.dumps({"url": "https://x.example", "redirect_url": REDIRECT,
                                     "default_permissions": {"contents": "sudo"}})},
            "default_permissions.contents: level 'sudo' is not allowed",
        ),
        ({"manifest": json.dumps({"url": "ftp://x"})}, "url: required"),
    ],
)  # fmt: skip
def test_an_invalid_manifest_is_refused_with_the_reason(
    emulator: GitHubEmulator, form: dict[str, str], reason: str
) -> None:
    answer = httpx.post(f"{emulator.url}/settings/apps/new", data=form, timeout=5)
    assert answer.status_code == 422
    assert reason in answer.json()["message"]
    assert len(emulator.apps) == 1


def test_the_html_page_posts_where_the_emulator_answers(
    emulator: GitHubEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`setup manifest --html --github-web EMULATOR`: the form a browser submits (its action and
    hidden field, as parsed from the page) is answered with the redirect and a working code."""
    page = manifest(capsys, "--html", "--org", "octo-org", "--state", "xyz",
                    "--github-web", emulator.url)  # fmt: skip
    action = re.search(r'<form action="([^"]+)" method="post">', page)
    field = re.search(r'<input type="hidden" name="manifest" value="([^"]+)">', page)
    assert action is not None
    assert field is not None
    target = html.unescape(action.group(1))
    assert target == f"{emulator.url}/organizations/octo-org/settings/apps/new?state=xyz"
    answer = httpx.post(target, data={"manifest": html.unescape(field.group(1))}, timeout=5)
    code, query = code_of(answer)
    assert query["state"] == "xyz"
    assert convert(emulator, code, tmp_path / "app") == 0
    assert json.loads((tmp_path / "app" / "app.json").read_text())["owner"] == "octo-org"
