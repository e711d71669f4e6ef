"""Finishing GitHub's manifest flow: ``POST /app-manifests/{code}/conversions``.

After the owner confirmed the App on GitHub, GitHub redirects the browser to the manifest's
``redirect_url`` with ``?code=``. That code, sent to the REST API without credentials, is
answered (201) with the new App: its id, slug, owner and permissions, and its secrets: the
private key (``pem``), the ``webhook_secret`` and an OAuth client secret the service has no use
for (it is not kept). A code works once, for an hour: the files are checked writable before
GitHub is asked, and the key is on disk before anything else is done with the answer.

The files (``write_app_files``), every one but ``app.json`` mode 0600:

``app.pem``         the App's private key (``GITHUB_APP_PRIVATE_KEY_FILE``)
``octo-sts.env``    the settings, webhook secret included: ``set -a; . FILE`` for a shell,
                    ``docker-compose --env-file FILE`` (its ``GITHUB_APP_PRIVATE_KEY_PATH``)
``app.json``        what the App is (id, slug, owner, permissions, events, install URL); no secret
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.domain.text import clip, show

MAX_ANSWER_BYTES = 256 * 1024  # an App description and a 4096-bit PEM are a few KiB
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,256}")
# What a value in the env file may hold, so both a shell and docker-compose read it verbatim.
_ENV_SAFE = re.compile(r"[A-Za-z0-9_./@%+=:,-]+")
_SECRET = re.compile(r"[A-Za-z0-9_.-]+")
KEY_FILE = "app.pem"
ENV_FILE = "octo-sts.env"
APP_FILE = "app.json"
WEBHOOK_ADDR = "0.0.0.0:8090"  # Envoy, in another container, reaches it
_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class ConversionError(Exception):
    """GitHub did not hand over the App. ``status``: GitHub's HTTP status, None if unreachable.

    The message never carries the code or a secret.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ConvertedApp:
    """The App GitHub created; its repr shows no secret."""

    app_id: int
    slug: str
    name: str
    owner: str
    html_url: str
    permissions: Mapping[str, str]
    events: tuple[str, ...]
    pem: str = field(repr=False)
    webhook_secret: str | None = field(repr=False)

    @property
    def install_url(self) -> str:
        """Where an owner installs the App (GitHub's page for it)."""
        return f"{self.html_url.rstrip('/')}/installations/new"

    def describe(self) -> dict[str, Any]:
        """The App without its secrets (``app.json``)."""
        return {
            "id": self.app_id,
            "slug": self.slug,
            "name": self.name,
            "owner": self.owner,
            "html_url": self.html_url,
            "install_url": self.install_url,
            "permissions": dict(self.permissions),
            "events": list(self.events),
        }


def check_code(code: str) -> str:
    """``code`` if it can be a manifest code. Raises ValueError (without echoing it)."""
    if _CODE.fullmatch(code) is None:
        raise ValueError("the code is not a GitHub manifest code (letters, digits, '-', '_')")
    return code


def convert(
    code: str,
    *,
    github_api: str,
    timeout: float = 10.0,
    verify: Any = True,
    transport: httpx.BaseTransport | None = None,
) -> ConvertedApp:
    """Trade a manifest ``code`` for the App. Raises ConversionError, ValueError (bad code)."""
    url = f"{github_api.rstrip('/')}/app-manifests/{quote(check_code(code), safe='')}/conversions"
    try:
        with (
            httpx.Client(timeout=timeout, verify=verify, transport=transport) as client,
            client.stream("POST", url, headers=_HEADERS) as response,
        ):
            body = _read_capped(response)
            status = response.status_code
    except httpx.TimeoutException as exc:
        raise ConversionError("GitHub did not answer in time") from exc
    except httpx.HTTPError as exc:
        # The type only: httpx's message names the URL, and the URL holds the code.
        raise ConversionError(f"cannot reach GitHub: {type(exc).__name__}") from exc
    if status == 404:
        raise ConversionError(
            "GitHub does not know this code: a code works once, within an hour of the redirect",
            status,
        )
    if status != 201:
        raise ConversionError(f"GitHub answered HTTP {status}: {_message(body)}", status)
    return parse_app(body)


def _read_capped(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ConversionError(f"GitHub's answer is larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "(no JSON message)"
    message = data.get("message") if isinstance(data, dict) else None
    return show(message, 200) if isinstance(message, str) else "(no message)"


def parse_app(body: bytes) -> ConvertedApp:
    """The conversion's answer as a ConvertedApp. Raises ConversionError when it is not one."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ConversionError("GitHub's answer is not JSON") from exc
    if not isinstance(data, dict):
        raise ConversionError("GitHub's answer is not a JSON object")
    app_id = data.get("id")
    if isinstance(app_id, bool) or not isinstance(app_id, int) or app_id < 1:
        raise ConversionError("GitHub's answer has no App id")
    pem = data.get("pem")
    if not isinstance(pem, str) or not _is_rsa_private_key(pem):
        raise ConversionError("GitHub's answer has no RSA private key (pem)")
    secret = data.get("webhook_secret")
    if secret is not None and (not isinstance(secret, str) or _SECRET.fullmatch(secret) is None):
        raise ConversionError("GitHub's webhook secret is not a plain token")
    owner = data.get("owner")
    permissions = data.get("permissions")
    events = data.get("events")
    return ConvertedApp(
        app_id=app_id,
        slug=_text(data.get("slug")),
        name=_text(data.get("name")),
        owner=_text(owner.get("login")) if isinstance(owner, dict) else "",
        html_url=url
        if (url := _text(data.get("html_url"))).startswith(("https://", "http://"))
        else "",
        permissions=MappingProxyType(
            {str(k): str(v) for k, v in permissions.items()}
            if isinstance(permissions, dict)
            else {}
        ),
        events=tuple(str(e) for e in events) if isinstance(events, list) else (),
        pem=pem,
        webhook_secret=secret or None,
    )


def _text(value: object) -> str:
    """GitHub's text as it is, if printable (it goes into files and a terminal), else ``""``."""
    return clip(value, 200) if isinstance(value, str) and value.isprintable() else ""


def _is_rsa_private_key(pem: str) -> bool:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return isinstance(key, rsa.RSAPrivateKey)


@dataclass(frozen=True, slots=True)
class AppFiles:
    key: Path
    env: Path
    app: Path

    def all(self) -> tuple[Path, ...]:
        return (self.key, self.env, self.app)


def app_files(out_dir: Path) -> AppFiles:
    """Where ``write_app_files`` writes. Raises ValueError when the directory's absolute path
    cannot be written into the env file verbatim."""
    base = out_dir.resolve()
    if _ENV_SAFE.fullmatch(str(base)) is None:
        raise ValueError(
            f"{show(str(base), 120)}: choose a directory whose path has no spaces or shell "
            "characters (it is written into the env file)"
        )
    return AppFiles(base / KEY_FILE, base / ENV_FILE, base / APP_FILE)


def check_writable(files: AppFiles, *, force: bool) -> None:
    """Before the code is spent: the directory can be made and nothing would be overwritten
    (unless ``force``). Raises FileExistsError, OSError."""
    files.key.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(files.key.parent, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(files.key.parent))
    existing = [p for p in files.all() if p.exists()]
    if existing and not force:
        raise FileExistsError(17, "would overwrite (pass --force)", str(existing[0]))


def env_settings(app: ConvertedApp, files: AppFiles, github_api: str) -> dict[str, str]:
    """The service's settings for this App, secrets included (the env file's lines)."""
    settings = {
        "GITHUB_APP_ID": str(app.app_id),
        "GITHUB_APP_PRIVATE_KEY_FILE": str(files.key),
        # docker-compose.yml mounts the key as a secret from this host path.
        "GITHUB_APP_PRIVATE_KEY_PATH": str(files.key),
        "GITHUB_BASE_URL": github_api.rstrip("/"),
    }
    if app.webhook_secret is not None:
        # The webhook listener Envoy's /webhook route goes to (docker-compose.yml: sts:8090).
        settings["OCTOSTS_WEBHOOK_ADDR"] = WEBHOOK_ADDR
        settings["OCTOSTS_WEBHOOK_SECRETS"] = app.webhook_secret
    bad = [k for k, v in settings.items() if _ENV_SAFE.fullmatch(v) is None]
    if bad:
        raise ValueError(f"{', '.join(bad)}: cannot be written into an env file verbatim")
    return settings


def write_app_files(app: ConvertedApp, files: AppFiles, github_api: str) -> dict[str, str]:
    """Write the key, the env file and app.json (key first); returns the settings."""
    _write_private(files.key, app.pem.encode())
    settings = env_settings(app, files, github_api)
    header = (
        f"# GitHub App {app.slug or app.name} (id {app.app_id}), written by "
        "`octo-sts setup convert`.\n"
        "# It holds the webhook secret: keep it (mode 0600) out of version control.\n"
    )
    lines = "".join(f"{k}={v}\n" for k, v in settings.items())
    _write_private(files.env, (header + lines).encode())
    _write_private(files.app, (json.dumps(app.describe(), indent=2) + "\n").encode(), mode=0o644)
    return settings


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a new file created with ``mode`` (never readable by
    others, not even for a moment), then renamed over ``path``."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have taken bits away; set exactly
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
