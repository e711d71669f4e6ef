"""GitHub's "register an App from a manifest" flow, emulated end to end (docs/self-hosting.md).

On GitHub it takes two hosts and a person:

1. a browser POSTs the manifest (form field ``manifest``) to ``/settings/apps/new`` or
   ``/organizations/{org}/settings/apps/new`` (``?state=`` optional) on github.com; the owner
   confirms on GitHub's page and GitHub redirects to the manifest's ``redirect_url`` with
   ``?code=...&state=...``;
2. anyone holding the code POSTs ``/app-manifests/{code}/conversions`` to the REST API (no
   credentials) within an hour, once, and gets the new App: id, slug, owner, permissions,
   events, and its secrets (``pem``, ``webhook_secret``, ``client_secret``).

The emulator serves both on its one address and skips the confirmation page (the POST is the
owner's click). The App created is served from then on like any other (``GitHubEmulator.add_app``):
its own key and id, installed on every owner (the emulator's stand-in for "install the App"),
its installations holding exactly the manifest's ``default_permissions`` (so a token asking
for more is GitHub's 422), its webhook delivering to ``hook_attributes.url`` signed with the
secret handed out. Invalid manifests are refused with 422 and every reason, as GitHub's page
shows them.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.dev.github.answers import Answer, HttpError, not_found
from octosts.domain.permissions import permission_problem

if TYPE_CHECKING:
    from octosts.dev.github.auth import App
    from octosts.domain.ports import Clock

CODE_LIFETIME = 3600.0  # GitHub: a code must be converted within an hour
MAX_PENDING = 64  # codes waiting for their conversion; the oldest are forgotten first
MAX_MANIFEST_BYTES = 64 * 1024
MAX_NAME_LENGTH = 34
_SLUG_JUNK = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class NewApp:
    """What a valid manifest asks for."""

    name: str
    url: str
    description: str
    owner: str  # the organization's login, or the emulated user's
    owner_is_user: bool
    permissions: Mapping[str, str]
    events: tuple[str, ...]
    webhook_url: str | None  # None: no webhook, or an inactive one
    redirect_url: str
    public: bool


# Creates and serves the App (``GitHubEmulator``): returns it and its webhook secret, if any.
CreateApp = Callable[[NewApp, rsa.RSAPublicKey], tuple["App", str | None]]


def _problems(manifest: Mapping[str, Any]) -> list[str]:
    return [*_url_problems(manifest), *_content_problems(manifest)]


def _url_problems(manifest: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    url = manifest.get("url")
    if not isinstance(url, str) or not _is_http_url(url):
        found.append("url: required, an http(s) URL (the App's homepage)")
    redirect = manifest.get("redirect_url")
    if not isinstance(redirect, str) or not _is_http_url(redirect):
        # GitHub would show the code on its own page; a test or script needs the redirect.
        found.append("redirect_url: the emulator needs one (an http(s) URL) to hand the code to")
    hook = manifest.get("hook_attributes")
    if hook is not None:
        if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
            found.append("hook_attributes: an object with a url")
        elif not _is_http_url(hook["url"]):
            found.append("hook_attributes.url: an http(s) URL")
    return found


def _content_problems(manifest: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    name = manifest.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH):
        found.append(f"name: a string of 1 to {MAX_NAME_LENGTH} characters")
    permissions = manifest.get("default_permissions", {})
    if not isinstance(permissions, dict):
        found.append("default_permissions: an object of permission: level")
    else:
        for key, level in permissions.items():
            problem = permission_problem(key, level)
            if problem is not None:
                found.append(f"default_permissions.{key}: {problem}")
    events = manifest.get("default_events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        found.append("default_events: a list of event names")
    found.extend(
        f"{flag}: true or false"
        for flag in ("public", "request_oauth_on_install")
        if not isinstance(manifest.get(flag, False), bool)
    )
    return found


def _is_http_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


def parse_manifest(text: str, owner: str | None, user_login: str = "octocat") -> NewApp:
    """The App a manifest asks for. Raises HttpError 422 with every problem."""
    try:
        manifest = json.loads(text)
    except ValueError:
        raise HttpError(422, "Invalid manifest: not JSON") from None
    if not isinstance(manifest, dict):
        raise HttpError(422, "Invalid manifest: not a JSON object")
    problems = _problems(manifest)
    if problems:
        raise HttpError(422, "Invalid manifest: " + "; ".join(problems))
    hook = manifest.get("hook_attributes")
    active = isinstance(hook, dict) and hook.get("active", True) is not False
    return NewApp(
        name=manifest.get("name") or f"app-{secrets.token_hex(3)}",
        url=manifest["url"],
        description=str(manifest.get("description") or ""),
        owner=owner or user_login,
        owner_is_user=owner is None,
        # Every App has metadata: read, asked for or not.
        permissions={"metadata": "read", **manifest.get("default_permissions", {})},
        events=tuple(manifest.get("default_events", [])),
        webhook_url=hook["url"] if active and isinstance(hook, dict) else None,
        redirect_url=manifest["redirect_url"],
        public=bool(manifest.get("public", False)),
    )


def slug_of(name: str) -> str:
    return _SLUG_JUNK.sub("-", name.lower()).strip("-") or "app"


@dataclass(frozen=True, slots=True)
class _Pending:
    app: NewApp
    created_at: float


class ManifestFlow:
    """Codes handed out for manifests, each converted once within ``CODE_LIFETIME``. Thread-safe."""

    def __init__(self, create: CreateApp, clock: Clock, web_url: Callable[[], str]) -> None:
        self._create = create
        self._clock = clock
        self._web_url = web_url
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def submit(self, body: bytes, query: str, org: str | None) -> Answer:
        """The browser's form POST: 302 to ``redirect_url?code=...[&state=...]``."""
        if len(body) > MAX_MANIFEST_BYTES:
            raise HttpError(413, "Manifest too large")
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        state = urllib.parse.parse_qs(query).get("state", form.get("state", [None]))[0]
        texts = form.get("manifest")
        if not texts:
            raise HttpError(422, "Invalid manifest: the form has no `manifest` field")
        app = parse_manifest(texts[0], org)
        code = secrets.token_hex(10)
        with self._lock:
            now = self._clock.now()
            self._pending = {
                c: p for c, p in self._pending.items() if now - p.created_at < CODE_LIFETIME
            }
            while len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            self._pending[code] = _Pending(app, now)
        query_out = urllib.parse.urlencode({"code": code, **({"state": state} if state else {})})
        sep = "&" if urllib.parse.urlsplit(app.redirect_url).query else "?"
        location = f"{app.redirect_url}{sep}{query_out}"
        body_out = f"Redirecting to {location}\n".encode()
        return Answer(302, body_out, "text/plain; charset=utf-8", {"location": location})

    def convert(self, code: str) -> Answer:
        """``POST /app-manifests/{code}/conversions``: 201 with the App and its secrets, once."""
        with self._lock:
            pending = self._pending.pop(code, None)
        if pending is None or self._clock.now() - pending.created_at >= CODE_LIFETIME:
            raise not_found()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        served, webhook_secret = self._create(pending.app, key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        return _app_answer(pending.app, served, pem, webhook_secret, self._web_url())


def _app_answer(
    new: NewApp, served: App, pem: str, webhook_secret: str | None, web_url: str
) -> Answer:
    base = web_url.rstrip("/")
    owner = {
        "login": new.owner,
        "id": 9000 + served.app_id,
        "type": "User" if new.owner_is_user else "Organization",
    }
    data = {
        "id": served.app_id,
        "slug": served.slug,
        "node_id": f"A_emulated{served.app_id}",
        "owner": owner,
        "name": new.name,
        "description": new.description,
        "external_url": new.url,
        "html_url": f"{base}/apps/{served.slug}",
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "permissions": dict(served.permissions),
        "events": list(new.events),
        "client_id": f"Iv1.{secrets.token_hex(8)}",
        "client_secret": secrets.token_hex(20),
        "webhook_secret": webhook_secret,
        "pem": pem,
    }
    return Answer(201, json.dumps(data).encode())
