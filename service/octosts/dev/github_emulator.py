"""A GitHub REST API emulator for development and tests.

It speaks the subset Octo STS uses, with GitHub's response shapes and status
codes, so policies can be tried without a real GitHub App:

* App JWT authentication (RS256 against the app's public key; ``iat``/``exp``
  bounds, at most 10 minutes apart; ``iss`` = app id) -> 401 otherwise.
* ``GET /app``, ``GET /orgs/{o}/installation``, ``GET /users/{o}/installation``.
* ``POST /app/installations/{id}/access_tokens`` with permission and repository
  checks (422 beyond the installation); tokens ``ghs_...`` valid 1 hour.
* ``GET /repos/{o}/{r}/contents/{path}`` (JSON+base64 or raw media types,
  ETag / If-None-Match -> 304, which costs no rate limit) and
  ``PUT /repos/{o}/{r}/contents/{path}`` (needs ``contents: write``).
* ``DELETE /installation/token``, ``GET /rate_limit``.
* Commits and pull requests for webhook tests (``commit``, ``open_pull_request``):
  ``GET /repos/{o}/{r}/contents/{path}?ref=SHA``, ``GET /repos/{o}/{r}/compare/{base}...{head}``,
  ``GET /repos/{o}/{r}/pulls/{n}/files`` (paginated with ``Link``), ``POST
  /repos/{o}/{r}/check-runs`` (needs ``checks: write``) and ``GET
  /repos/{o}/{r}/commits/{ref}/check-runs``. With ``configure_webhook(url,
  secrets)`` every commit and pull request sends a signed delivery
  (``X-Hub-Signature-256``) from a background thread; ``deliveries()`` lists them.
* Rate-limit headers on every answer, a primary limit per budget (app, or
  installation) per hour, forced faults (secondary limits, 5xx), latency and a
  random failure rate from a seeded RNG.
* ``GET /_emulator/calls``, ``POST /_emulator/reset``, ``POST /_emulator/fault``,
  ``GET /_emulator/health``: control endpoints for tests (no auth: bind to
  loopback).

The repository tree is ``DIR/OWNER/REPO/...``; every owner is one installation
covering all its repositories, ids assigned in sorted owner order starting at
``FIRST_INSTALLATION_ID``. An owner is an organization unless its directory
holds a file named ``.user`` (or it is listed in ``user_owners``): organizations
answer on ``/orgs/{o}/installation`` and ``/users/{o}/installation``, users on
``/users/...`` only (as on GitHub). Every repository's default branch is ``main``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import json
import queue
import random
import secrets
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.dev.certs import ensure_dev_certs
from octosts.dev.httpserver import DevHTTPServer

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

FIRST_INSTALLATION_ID = 1001
TOKEN_LIFETIME = 3600
MAX_JWT_LIFETIME = 600
JWT_SKEW = 60
MAX_BODY = 10 * 1024 * 1024
CALL_LOG_SIZE = 10_000
# Issued installation tokens kept for authentication. A load test mints thousands a
# second; beyond this the oldest are forgotten (their holders get 401, as for a
# revoked token) so memory and per-mint work stay flat.
MAX_TOKENS = 50_000
DOCS = "https://docs.github.com/rest"

_LEVELS = {"read": 1, "write": 2, "admin": 3}

# What the emulated app may grant in every installation. ``administration`` is
# read-only so a test can ask for more than the installation has (422).
DEFAULT_INSTALLATION_PERMISSIONS: Mapping[str, str] = {
    "actions": "write",
    "administration": "read",
    "checks": "write",
    "contents": "write",
    "deployments": "write",
    "environments": "write",
    "issues": "write",
    "members": "read",
    "metadata": "read",
    "packages": "write",
    "pages": "write",
    "pull_requests": "write",
    "statuses": "write",
    "workflows": "write",
}


class _System:
    def now(self) -> float:
        return time.time()


def load_app_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The public half of an app key given as a private or public PEM. Raises ValueError."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        private = None
    if private is not None:
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("the app key must be an RSA key")
        return private.public_key()
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("the app key is not a PEM RSA private or public key") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("the app key must be an RSA key")  # noqa: TRY004 - a CLI input error
    return public


def ensure_app_key(path: Path) -> Path:
    """Write a new 2048-bit RSA app private key (mode 0600) unless ``path`` exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


@dataclass(frozen=True, slots=True)
class Call:
    """One request the emulator answered (control endpoints excluded)."""

    method: str
    path: str
    status: int
    auth: str  # "app", "token", "none"


@dataclass(frozen=True, slots=True)
class Fault:
    """A forced answer for the next matching requests."""

    status: int
    message: str
    retry_after: int | None = None
    exhaust: bool = False  # answer with x-ratelimit-remaining: 0 (primary limit)
    path_prefix: str = ""


@dataclass(slots=True)
class _Grant:
    installation_id: int
    owner: str
    permissions: dict[str, str]
    repositories: frozenset[str] | None  # lower-cased names; None = all
    expires_at: float


@dataclass(slots=True)
class _Budget:
    window_start: float
    used: int = 0


@dataclass(slots=True)
class _Owner:
    login: str
    installation_id: int
    is_user: bool
    repos: dict[str, str] = field(default_factory=dict)  # lower -> canonical name


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery the emulator sent, and the receiver's HTTP status (0: no answer)."""

    event: str
    action: str
    status: int
    body: bytes = field(repr=False, default=b"")


@dataclass(slots=True)
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    changed: dict[str, str]  # path -> added | modified | removed


@dataclass(slots=True)
class _Pull:
    number: int
    head_ref: str
    base_sha: str
    head_sha: str


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: object, headers: Mapping[str, str] | None = None) -> _Answer:
    return _Answer(status, json.dumps(data, indent=None).encode(), headers=dict(headers or {}))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


class GitHubEmulator:
    """The emulator's state and HTTP server. Thread-safe; use ``start``/``stop`` or ``with``."""

    def __init__(  # noqa: PLR0913 - keyword-only knobs of a dev server
        self,
        *,
        app_public_key: rsa.RSAPublicKey,
        app_id: int = 1,
        repos_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        latency_ms: int = 0,
        rate_limit: int = 5000,
        fail_rate: float = 0.0,
        seed: int | None = None,
        user_owners: frozenset[str] = frozenset(),
        installation_permissions: Mapping[str, str] = DEFAULT_INSTALLATION_PERMISSIONS,
        clock: Clock | None = None,
    ) -> None:
        if rate_limit < 1:
            raise ValueError("rate_limit must be at least 1")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        self.app_id = app_id
        self._public_key = app_public_key
        self._host, self._port = host, port
        self._tls_dir = tls_dir
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._clock: Clock = clock or _System()
        self._permissions = dict(installation_permissions)
        self._lock = threading.RLock()
        self._files: dict[tuple[str, str], dict[str, bytes]] = {}
        self._owners: dict[str, _Owner] = {}
        self._next_installation_id = FIRST_INSTALLATION_ID
        # Insertion order is expiry order (one fixed lifetime): expired tokens are
        # dropped from the front, the oldest evicted first when the store is full.
        self._tokens: dict[str, _Grant] = {}
        self._budgets: dict[str, _Budget] = {}
        self._faults: collections.deque[Fault] = collections.deque()
        self._calls: collections.deque[Call] = collections.deque(maxlen=CALL_LOG_SIZE)
        self._server: DevHTTPServer | None = None
        self.ca_cert: Path | None = None
        self._commits: dict[str, _Commit] = {}
        self._heads: dict[tuple[str, str, str], str] = {}  # (owner, repo, branch) -> sha
        self._pulls: dict[tuple[str, str, int], _Pull] = {}
        self._check_runs: list[dict[str, Any]] = []
        self._webhook_url: str | None = None
        self._webhook_secrets: tuple[str, ...] = ()
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._sender: threading.Thread | None = None
        if repos_dir is not None:
            self._load(repos_dir, user_owners)
        else:
            for login in sorted(user_owners):
                self.add_owner(login, is_user=True)

    # -- repository state ------------------------------------------------------------------

    def _load(self, root: Path, user_owners: frozenset[str]) -> None:
        users = {u.lower() for u in user_owners}
        for owner_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            login = owner_dir.name
            self.add_owner(login, is_user=login.lower() in users or (owner_dir / ".user").is_file())
            for repo_dir in sorted(p for p in owner_dir.iterdir() if p.is_dir()):
                self.add_repo(login, repo_dir.name)
                for file in sorted(repo_dir.rglob("*")):
                    if file.is_file():
                        rel = file.relative_to(repo_dir).as_posix()
                        self.set_file(login, repo_dir.name, rel, file.read_bytes())

    def add_owner(self, login: str, *, is_user: bool = False) -> int:
        """Register an owner (one installation); returns its installation id."""
        with self._lock:
            owner = self._owners.get(login.lower())
            if owner is None:
                # Ids are never reused: a reinstalled owner gets a new one, as on GitHub.
                next_id = max(
                    (o.installation_id + 1 for o in self._owners.values()),
                    default=FIRST_INSTALLATION_ID,
                )
                next_id = max(next_id, self._next_installation_id)
                self._next_installation_id = next_id + 1
                owner = _Owner(login, next_id, is_user)
                self._owners[login.lower()] = owner
            return owner.installation_id

    def remove_owner(self, login: str) -> None:
        """Uninstall the app from an owner (its installation answers 404 afterwards)."""
        with self._lock:
            owner = self._owners.pop(login.lower(), None)
            if owner is not None:
                for repo in owner.repos:
                    self._files.pop((login.lower(), repo), None)

    def add_repo(self, owner: str, repo: str) -> None:
        with self._lock:
            self.add_owner(owner)
            record = self._owners[owner.lower()]
            record.repos.setdefault(repo.lower(), repo)
            self._files.setdefault((owner.lower(), repo.lower()), {})

    def owners(self) -> Iterator[tuple[str, int, bool]]:
        """(login, installation id, is_user) for every owner, by installation id."""
        with self._lock:
            owners = sorted(self._owners.values(), key=lambda o: o.installation_id)
        for owner in owners:
            yield owner.login, owner.installation_id, owner.is_user

    def installation_id(self, owner: str) -> int | None:
        with self._lock:
            record = self._owners.get(owner.lower())
            return record.installation_id if record else None

    def set_file(self, owner: str, repo: str, path: str, content: bytes | str) -> None:
        """Create or replace a file on the default branch (creating owner and repo)."""
        data = content.encode() if isinstance(content, str) else content
        with self._lock:
            self.add_repo(owner, repo)
            self._files[(owner.lower(), repo.lower())][path.strip("/")] = data

    def delete_file(self, owner: str, repo: str, path: str) -> None:
        with self._lock:
            self._files.get((owner.lower(), repo.lower()), {}).pop(path.strip("/"), None)

    def get_file(self, owner: str, repo: str, path: str) -> bytes | None:
        with self._lock:
            return self._files.get((owner.lower(), repo.lower()), {}).get(path.strip("/"))

    # -- commits, pull requests, webhooks ---------------------------------------------------

    def configure_webhook(self, url: str, secrets: tuple[str, ...] | str) -> None:
        """Send deliveries to ``url``, signed with the first of ``secrets``. Raises ValueError."""
        if not url.startswith(("http://", "https://")):
            raise ValueError("the webhook URL must be http(s)")
        with self._lock:
            self._webhook_url = url
            self._webhook_secrets = (secrets,) if isinstance(secrets, str) else tuple(secrets)
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, daemon=True)
                self._sender.start()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def check_runs(
        self, owner: str, repo: str, head_sha: str | None = None
    ) -> list[dict[str, Any]]:
        """Check runs created in a repository (optionally for one commit), oldest first."""
        with self._lock:
            return [
                dict(run)
                for run in self._check_runs
                if run["_repo"] == (owner.lower(), repo.lower())
                and (head_sha is None or run["head_sha"] == head_sha)
            ]

    def head(self, owner: str, repo: str, branch: str = "main") -> str:
        """The head commit of a branch (creating an initial commit for ``main``)."""
        with self._lock:
            key = (owner.lower(), repo.lower(), branch)
            if key not in self._heads:
                if branch != "main":
                    raise KeyError(branch)
                self.add_repo(owner, repo)
                files = dict(self._files[(owner.lower(), repo.lower())])
                sha = self._new_commit(None, files, {})
                self._heads[key] = sha
            return self._heads[key]

    def _new_commit(
        self, parent: str | None, files: dict[str, bytes], changed: dict[str, str]
    ) -> str:
        sha = secrets.token_hex(20)
        self._commits[sha] = _Commit(sha, parent, files, changed)
        return sha

    def commit(
        self,
        owner: str,
        repo: str,
        changes: Mapping[str, bytes | str | None],
        *,
        branch: str = "main",
        sender: str = "octocat",
        sender_type: str = "User",
    ) -> str:
        """Commit file changes (None deletes) to a branch and send a ``push`` delivery.

        Commits to ``main`` change what the contents API serves. Returns the sha.
        """
        with self._lock:
            self.add_repo(owner, repo)
            key = (owner.lower(), repo.lower(), branch)
            parent = self._heads.get(key) or self.head(owner, repo)
            files = dict(self._commits[parent].files)
            changed: dict[str, str] = {}
            for raw_path, content in changes.items():
                path = raw_path.strip("/")
                if content is None:
                    if files.pop(path, None) is not None:
                        changed[path] = "removed"
                    continue
                changed[path] = "modified" if path in files else "added"
                files[path] = content.encode() if isinstance(content, str) else content
            sha = self._new_commit(parent, files, changed)
            self._heads[key] = sha
            if branch == "main":
                self._files[(owner.lower(), repo.lower())] = dict(files)
            before = parent
        commit_json = {
            "id": sha,
            "message": "emulated commit",
            "added": sorted(p for p, k in changed.items() if k == "added"),
            "modified": sorted(p for p, k in changed.items() if k == "modified"),
            "removed": sorted(p for p, k in changed.items() if k == "removed"),
        }
        self._enqueue(
            "push",
            {
                "ref": f"refs/heads/{branch}",
                "before": before,
                "after": sha,
                "commits": [commit_json],
                "head_commit": commit_json,
                **self._event_context(owner, repo, sender, sender_type),
            },
        )
        return sha

    def open_pull_request(
        self,
        owner: str,
        repo: str,
        changes: Mapping[str, bytes | str | None],
        *,
        sender: str = "octocat",
        sender_type: str = "User",
    ) -> tuple[int, str]:
        """Commit ``changes`` on a new branch, open a PR into ``main`` and send
        ``pull_request`` (opened). Returns (number, head sha)."""
        with self._lock:
            number = 1 + sum(1 for k in self._pulls if k[:2] == (owner.lower(), repo.lower()))
            base = self.head(owner, repo)
        branch = f"pr-{number}"
        with self._lock:
            self._heads[(owner.lower(), repo.lower(), branch)] = base
        head = self.commit(
            owner, repo, changes, branch=branch, sender=sender, sender_type=sender_type
        )
        with self._lock:
            self._pulls[(owner.lower(), repo.lower(), number)] = _Pull(number, branch, base, head)
        self._enqueue(
            "pull_request",
            {
                "action": "opened",
                "number": number,
                "pull_request": self._pull_json(
                    owner, repo, self._pulls[(owner.lower(), repo.lower(), number)]
                ),
                **self._event_context(owner, repo, sender, sender_type),
            },
        )
        return number, head

    def _pull_json(self, owner: str, repo: str, pull: _Pull) -> dict[str, Any]:
        return {
            "number": pull.number,
            "state": "open",
            "head": {"ref": pull.head_ref, "sha": pull.head_sha},
            "base": {"ref": "main", "sha": pull.base_sha},
            "url": f"/repos/{owner}/{repo}/pulls/{pull.number}",
        }

    def _event_context(
        self, owner: str, repo: str, sender: str, sender_type: str
    ) -> dict[str, Any]:
        installation = self.installation_id(owner)
        return {
            "repository": {
                "name": repo,
                "full_name": f"{owner}/{repo}",
                "owner": {"login": owner},
                "default_branch": "main",
            },
            "installation": {"id": installation},
            "sender": {"login": sender, "type": sender_type},
        }

    def _enqueue(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            configured = self._webhook_url is not None
        if configured:
            self._outbox.put((event, payload))

    def send_event(self, event: str, payload: dict[str, Any]) -> None:
        """Queue an arbitrary signed delivery (e.g. ``check_suite``, ``ping``)."""
        self._enqueue(event, payload)

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            event, payload = item
            body = json.dumps(payload).encode()
            with self._lock:
                url, keys = self._webhook_url, self._webhook_secrets
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/emulator",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": str(uuid.uuid4()),
            }
            if keys:
                digest = hmac.new(keys[0].encode(), body, hashlib.sha256).hexdigest()
                headers["X-Hub-Signature-256"] = f"sha256={digest}"
            status, answer = 0, b""
            try:
                request = urllib.request.Request(  # noqa: S310 - http(s) checked when configured
                    str(url), data=body, headers=headers, method="POST"
                )
                with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                    status, answer = resp.status, resp.read(65536)
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read(65536)
            except OSError:
                status = 0
            with self._lock:
                self._deliveries.append(
                    Delivery(event, str(payload.get("action", "")), status, answer)
                )

    def _route_repo_extras(
        self, method: str, segments: list[str], body: bytes, grant: _Grant, query: str
    ) -> _Answer | None:
        owner, repo, kind = segments[1], segments[2], segments[3]
        if method == "GET" and kind == "compare" and len(segments) == 5:
            self._authorize_repo(grant, owner, repo, "read")
            base, sep, head = segments[4].partition("...")
            if not sep:
                raise _HttpError(404, "Not Found")
            return _json(200, self._compare(owner, repo, base, head))
        if method == "GET" and kind == "pulls" and len(segments) == 6 and segments[5] == "files":
            self._authorize_repo(grant, owner, repo, "read", "pull_requests")
            return self._pull_files_answer(owner, repo, segments[4], query)
        if method == "POST" and kind == "check-runs" and len(segments) == 4:
            self._authorize_repo(grant, owner, repo, "write", "checks")
            return self._create_check_run(owner, repo, body)
        if (
            method == "GET"
            and kind == "commits"
            and len(segments) == 6
            and segments[5] == "check-runs"
        ):
            self._authorize_repo(grant, owner, repo, "read", "checks")
            runs = [
                {k: v for k, v in run.items() if k != "_repo"}
                for run in self.check_runs(owner, repo, self._resolve(owner, repo, segments[4]))
            ]
            return _json(200, {"total_count": len(runs), "check_runs": runs})
        return None

    def _resolve(self, owner: str, repo: str, ref: str) -> str:
        with self._lock:
            if ref in self._commits:
                return ref
            sha = self._heads.get((owner.lower(), repo.lower(), ref))
        if sha is None:
            raise _HttpError(404, "No commit found for the ref")
        return sha

    def _compare(self, owner: str, repo: str, base: str, head: str) -> dict[str, Any]:
        base_sha, head_sha = self._resolve(owner, repo, base), self._resolve(owner, repo, head)
        with self._lock:
            old, new = self._commits[base_sha].files, self._commits[head_sha].files
        files = []
        for path in sorted(set(old) | set(new)):
            if path not in new:
                files.append({"filename": path, "status": "removed"})
            elif path not in old:
                files.append({"filename": path, "status": "added"})
            elif old[path] != new[path]:
                files.append({"filename": path, "status": "modified"})
        return {"status": "ahead", "ahead_by": 1, "files": files}

    def _pull_files_answer(self, owner: str, repo: str, raw_number: str, query: str) -> _Answer:
        with self._lock:
            pull = self._pulls.get(
                (owner.lower(), repo.lower(), int(raw_number) if raw_number.isdigit() else -1)
            )
        if pull is None:
            raise _HttpError(404, "Not Found")
        files = self._compare(owner, repo, pull.base_sha, pull.head_sha)["files"]
        params = urllib.parse.parse_qs(query)
        per_page = min(max(int(params.get("per_page", ["30"])[0] or 30), 1), 100)
        page = max(int(params.get("page", ["1"])[0] or 1), 1)
        chunk = files[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(files):
            link = f"/repos/{owner}/{repo}/pulls/{pull.number}/files"
            headers["link"] = f'<{self.url}{link}?per_page={per_page}&page={page + 1}>; rel="next"'
        return _json(200, chunk, headers)

    def _create_check_run(self, owner: str, repo: str, body: bytes) -> _Answer:
        try:
            request = json.loads(body)
        except ValueError:
            raise _HttpError(400, "Problems parsing JSON") from None
        if not isinstance(request, dict) or not isinstance(request.get("name"), str):
            raise _HttpError(422, "Invalid request. name is required.")
        head_sha = request.get("head_sha")
        with self._lock:
            known = isinstance(head_sha, str) and head_sha in self._commits
        if not known:
            raise _HttpError(422, "No commit found for SHA")
        output = request.get("output") or {}
        if len(output.get("annotations") or []) > 50:
            raise _HttpError(422, "Only 50 annotations are allowed per request")
        with self._lock:
            run = {
                "id": len(self._check_runs) + 1,
                "name": request["name"],
                "head_sha": head_sha,
                "status": request.get("status", "queued"),
                "conclusion": request.get("conclusion"),
                "output": output,
                "_repo": (owner.lower(), repo.lower()),
            }
            self._check_runs.append(run)
        return _json(201, {k: v for k, v in run.items() if k != "_repo"})

    def _read_at_answer(self, grant: _Grant, owner: str, repo: str, path: str, ref: str) -> _Answer:
        self._authorize_repo(grant, owner, repo, "read")
        sha = self._resolve(owner, repo, ref)
        with self._lock:
            content = self._commits[sha].files.get(path.strip("/"))
        if content is None:
            raise _HttpError(404, "Not Found")
        return _Answer(200, content, content_type="application/vnd.github.raw; charset=utf-8")

    # -- test hooks ------------------------------------------------------------------------

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, method: str, path_prefix: str = "") -> int:
        """How many answered calls match ``method`` and start with ``path_prefix``."""
        return sum(1 for c in self.calls() if c.method == method and c.path.startswith(path_prefix))

    def reset(self) -> None:
        """Forget the call log, rate-limit budgets and pending faults."""
        with self._lock:
            self._calls.clear()
            self._budgets.clear()
            self._faults.clear()

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``fault``."""
        with self._lock:
            self._faults.extend([fault] * times)

    def force_error(self, status: int = 502, times: int = 1, path_prefix: str = "") -> None:
        self.inject(Fault(status, "Server Error", path_prefix=path_prefix), times)

    def force_secondary_limit(
        self, status: int = 403, retry_after: int = 60, times: int = 1, path_prefix: str = ""
    ) -> None:
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you"
            " try again."
        )
        self.inject(Fault(status, message, retry_after=retry_after, path_prefix=path_prefix), times)

    def force_forbidden(self, times: int = 1, path_prefix: str = "") -> None:
        """A plain permission 403 (rate-limit headers show budget left)."""
        fault = Fault(403, "Resource not accessible by integration", path_prefix=path_prefix)
        self.inject(fault, times)

    def token_grant(self, token: str) -> Mapping[str, Any] | None:
        """What a token issued here may do (for assertions), or None."""
        with self._lock:
            grant = self._tokens.get(token)
            if grant is None:
                return None
            return {
                "installation_id": grant.installation_id,
                "permissions": dict(grant.permissions),
                "repositories": None if grant.repositories is None else set(grant.repositories),
            }

    # -- server ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        host, port = self._server.server_address[:2]
        host_str = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_str:
            host_str = f"[{host_str}]"
        scheme = "https" if self._tls_dir is not None else "http"
        return f"{scheme}://{host_str}:{port}"

    def start(self) -> Self:
        handler = type("_BoundHandler", (_Handler,), {"emulator": self})
        server = DevHTTPServer((self._host, self._port), handler)
        if self._tls_dir is not None:
            paths = ensure_dev_certs(self._tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(paths.cert, paths.key)
            server.ssl_context = context
            self.ca_cert = paths.ca_cert
        self._server = server.start("github-emulator")
        return self

    def stop(self) -> None:
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=15)
            self._sender = None
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> _Answer:
        parts = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parts.path)
        if path.startswith("/_emulator/"):
            return self._control(method, path, body)
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000)  # emulated network latency, not a readiness wait
        auth_kind = "none"
        budget = "anon"
        try:
            self._maybe_fail(path)
            auth_kind, budget, principal = self._authenticate(headers)
            answer = self._route(
                method, path, headers, body, auth_kind, principal, budget, query=parts.query
            )
        except _HttpError as err:
            answer = _json(
                err.status, {"message": err.message, "documentation_url": DOCS}, err.headers
            )
        # Conditional hits and GET /rate_limit cost nothing, as on GitHub.
        free = answer.status == HTTPStatus.NOT_MODIFIED or path == "/rate_limit"
        self._add_rate_headers(answer, budget, count=not free)
        answer.headers.setdefault("x-github-request-id", secrets.token_hex(8).upper())
        with self._lock:
            self._calls.append(Call(method, path, answer.status, auth_kind))
        return answer

    def _maybe_fail(self, path: str) -> None:
        with self._lock:
            fault = next((f for f in self._faults if path.startswith(f.path_prefix)), None)
            if fault is not None:
                self._faults.remove(fault)
            elif self.fail_rate and self._rng.random() < self.fail_rate:
                fault = Fault(500, "Server Error")
        if fault is None:
            return
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = str(fault.retry_after)
        if fault.exhaust:
            headers["x-ratelimit-remaining"] = "0"
        raise _HttpError(fault.status, fault.message, headers)

    def _authenticate(self, headers: Mapping[str, str]) -> tuple[str, str, object]:
        value = headers.get("authorization", "")
        if not value:
            return "none", "anon", None
        scheme, _, credential = value.partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and credential.count(".") == 2:
            self._verify_app_jwt(credential)
            return "app", "app", None
        if scheme.lower() in {"bearer", "token"}:
            with self._lock:
                grant = self._tokens.get(credential)
                if grant is not None and grant.expires_at <= self._clock.now():
                    del self._tokens[credential]
                    grant = None
            if grant is None:
                raise _HttpError(401, "Bad credentials")
            return "token", f"installation:{grant.installation_id}", grant
        raise _HttpError(401, "Bad credentials")

    def _verify_app_jwt(self, token: str) -> None:
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={
                    "require": ["iat", "exp", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            raise _HttpError(401, "A JSON web token could not be decoded") from None
        now = self._clock.now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise _HttpError(401, "'iat' and 'exp' claims must be numeric")
        if exp <= now:
            raise _HttpError(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the"
                " future time at which the assertion expires",
            )
        if iat > now + JWT_SKEW:
            raise _HttpError(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the"
                " time that the assertion was issued",
            )
        if exp - iat > MAX_JWT_LIFETIME or exp > now + MAX_JWT_LIFETIME + JWT_SKEW:
            raise _HttpError(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims.get("iss")) != str(self.app_id):
            raise _HttpError(401, "'Issuer' claim ('iss') must be an Integer")

    def _consume(self, budget: str) -> _Budget:
        now = self._clock.now()
        with self._lock:
            state = self._budgets.get(budget)
            if state is None or now >= state.window_start + 3600:
                state = _Budget(window_start=now)
                self._budgets[budget] = state
            return state

    def _check_budget(self, budget: str) -> None:
        state = self._consume(budget)
        with self._lock:
            if state.used >= self.rate_limit:
                who = budget.replace(":", " ID ") if budget != "anon" else "this client"
                raise _HttpError(
                    403,
                    f"API rate limit exceeded for {who}.",
                    {"x-ratelimit-remaining": "0"},
                )

    def _add_rate_headers(self, answer: _Answer, budget: str, *, count: bool) -> None:
        state = self._consume(budget)
        with self._lock:
            exhausted = answer.headers.get("x-ratelimit-remaining") == "0"
            if count and not exhausted and state.used < self.rate_limit:
                state.used += 1
            remaining = 0 if exhausted else max(self.rate_limit - state.used, 0)
            answer.headers.update(
                {
                    "x-ratelimit-limit": str(self.rate_limit),
                    "x-ratelimit-remaining": str(remaining),
                    "x-ratelimit-used": str(state.used),
                    "x-ratelimit-reset": str(int(state.window_start + 3600)),
                    "x-ratelimit-resource": "core",
                }
            )

    # -- routes ----------------------------------------------------------------------------

    def _route(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        auth: str,
        principal: object,
        budget: str,
        *,
        query: str = "",
    ) -> _Answer:
        segments = [s for s in path.split("/") if s]
        if method == "GET" and segments == ["rate_limit"]:
            return self._rate_limit_answer(budget)
        if auth == "none":
            raise _HttpError(401, "Requires authentication")
        if not (method == "GET" and segments[:1] == ["repos"] and "if-none-match" in headers):
            self._check_budget(budget)
        if auth == "app":
            return self._route_app(method, segments, body)
        if not isinstance(principal, _Grant):  # pragma: no cover - auth is "token" here
            raise _HttpError(401, "Bad credentials")
        return self._route_token(method, segments, headers, body, principal, query=query)

    def _route_app(self, method: str, segments: list[str], body: bytes) -> _Answer:
        if method == "GET" and segments == ["app"]:
            return _json(200, self._app_json())
        if (
            method == "GET"
            and len(segments) == 3
            and segments[0] in {"orgs", "users"}
            and segments[2] == "installation"
        ):
            return self._installation_answer(segments[0], segments[1])
        if (
            method == "POST"
            and len(segments) == 4
            and segments[:2] == ["app", "installations"]
            and segments[3] == "access_tokens"
        ):
            return self._access_token_answer(segments[2], body)
        raise _HttpError(404, "Not Found")

    def _route_token(
        self,
        method: str,
        segments: list[str],
        headers: Mapping[str, str],
        body: bytes,
        grant: _Grant,
        *,
        query: str = "",
    ) -> _Answer:
        if segments[:1] == ["repos"] and len(segments) >= 4:
            answer = self._route_repo_extras(method, segments, body, grant, query)
            if answer is not None:
                return answer
        if method == "DELETE" and segments == ["installation", "token"]:
            with self._lock:
                for key in [k for k, v in self._tokens.items() if v is grant]:
                    del self._tokens[key]
            return _Answer(204, b"", content_type="")
        if method == "GET" and segments == ["installation", "repositories"]:
            return self._repositories_answer(grant)
        if len(segments) >= 5 and segments[0] == "repos" and segments[3] == "contents":
            owner, repo, file_path = segments[1], segments[2], "/".join(segments[4:])
            ref = urllib.parse.parse_qs(query).get("ref", [""])[0]
            if method == "GET" and ref and ref != "main":
                return self._read_at_answer(grant, owner, repo, file_path, ref)
            if method == "GET":
                return self._read_answer(grant, owner, repo, file_path, headers)
            if method == "PUT":
                return self._write_answer(grant, owner, repo, file_path, body)
        raise _HttpError(404, "Not Found")

    def _app_json(self) -> dict[str, object]:
        return {
            "id": self.app_id,
            "slug": "octo-sts-emulated",
            "name": "Octo STS (emulated)",
            "permissions": dict(self._permissions),
            "events": [],
        }

    def _account(self, owner: _Owner) -> dict[str, object]:
        return {
            "login": owner.login,
            "id": owner.installation_id * 10,
            "type": "User" if owner.is_user else "Organization",
        }

    def _installation_answer(self, kind: str, login: str) -> _Answer:
        with self._lock:
            owner = self._owners.get(login.lower())
        if owner is None or (kind == "orgs" and owner.is_user):
            raise _HttpError(404, "Not Found")
        return _json(
            200,
            {
                "id": owner.installation_id,
                "account": self._account(owner),
                "app_id": self.app_id,
                "app_slug": "octo-sts-emulated",
                "target_id": owner.installation_id * 10,
                "target_type": "User" if owner.is_user else "Organization",
                "repository_selection": "all",
                "access_tokens_url": f"/app/installations/{owner.installation_id}/access_tokens",
                "repositories_url": "/installation/repositories",
                "permissions": dict(self._permissions),
                "events": [],
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
                "single_file_name": None,
            },
        )

    def _owner_by_installation(self, raw_id: str) -> _Owner:
        with self._lock:
            for owner in self._owners.values():
                if str(owner.installation_id) == raw_id:
                    return owner
        raise _HttpError(404, "Not Found")

    def _access_token_answer(self, raw_id: str, body: bytes) -> _Answer:
        owner = self._owner_by_installation(raw_id)
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            raise _HttpError(400, "Problems parsing JSON") from None
        if not isinstance(request, dict):
            raise _HttpError(400, "Problems parsing JSON")
        permissions = request.get("permissions", dict(self._permissions))
        if not isinstance(permissions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in permissions.items()
        ):
            raise _HttpError(422, "Invalid request. permissions must be an object of strings.")
        for name, level in permissions.items():
            allowed = self._permissions.get(name)
            if allowed is None or level not in _LEVELS or _LEVELS[level] > _LEVELS.get(allowed, 0):
                raise _HttpError(
                    422, "The permissions requested are not granted to this installation."
                )
        names = request.get("repositories")
        selected: frozenset[str] | None = None
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _HttpError(422, "Invalid request. repositories must be an array of strings.")
            with self._lock:
                known = set(owner.repos)
            wanted = {n.lower() for n in names}
            if not wanted <= known:
                raise _HttpError(
                    422,
                    "There is at least one repository that does not exist or is not accessible"
                    " to the parent installation.",
                )
            selected = frozenset(wanted)
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]
        expires = self._clock.now() + TOKEN_LIFETIME
        grant = _Grant(owner.installation_id, owner.login, dict(permissions), selected, expires)
        with self._lock:
            self._drop_old_tokens(self._clock.now())
            self._tokens[token] = grant
        answer: dict[str, object] = {
            "token": token,
            "expires_at": _iso(expires),
            "permissions": dict(permissions),
            "repository_selection": "all" if selected is None else "selected",
        }
        if selected is not None:
            answer["repositories"] = [self._repo_json(owner, n) for n in sorted(selected)]
        return _json(201, answer)

    def _drop_old_tokens(self, now: float) -> None:
        """Forget expired tokens and make room for one more (caller holds the lock).

        Amortised O(1) per mint: only the front (oldest) entries are looked at. A
        token that expired out of order (a clock set back) is still refused when used.
        """
        tokens = self._tokens
        while tokens:
            oldest = next(iter(tokens))
            if tokens[oldest].expires_at > now and len(tokens) < MAX_TOKENS:
                return
            del tokens[oldest]

    def _repo_json(self, owner: _Owner, lower_name: str) -> dict[str, object]:
        name = owner.repos.get(lower_name, lower_name)
        return {
            "id": abs(hash((owner.login.lower(), lower_name))) % 10**9,
            "name": name,
            "full_name": f"{owner.login}/{name}",
            "private": True,
            "owner": self._account(owner),
            "default_branch": "main",
        }

    def _repositories_answer(self, grant: _Grant) -> _Answer:
        owner = self._owner_by_installation(str(grant.installation_id))
        names = sorted(grant.repositories if grant.repositories is not None else owner.repos)
        repos = [self._repo_json(owner, n) for n in names]
        return _json(200, {"total_count": len(repos), "repositories": repos})

    def _authorize_repo(
        self, grant: _Grant, owner: str, repo: str, level: str, permission: str = "contents"
    ) -> None:
        with self._lock:
            known = (owner.lower(), repo.lower()) in self._files
        visible = (
            known
            and grant.owner.lower() == owner.lower()
            and (grant.repositories is None or repo.lower() in grant.repositories)
        )
        if not visible:
            # GitHub answers 404 for repositories a token cannot see.
            raise _HttpError(404, "Not Found")
        granted = grant.permissions.get(permission)
        if granted is None or _LEVELS.get(granted, 0) < _LEVELS[level]:
            raise _HttpError(403, "Resource not accessible by integration")

    def _read_answer(
        self, grant: _Grant, owner: str, repo: str, path: str, headers: Mapping[str, str]
    ) -> _Answer:
        self._authorize_repo(grant, owner, repo, "read")
        content = self.get_file(owner, repo, path)
        accept = headers.get("accept", "")
        raw = "application/vnd.github.raw" in accept
        if content is None:
            return self._dir_answer(owner, repo, path)
        sha = _blob_sha(content)
        etag = f'"{hashlib.sha256(f"{sha}:{raw}".encode()).hexdigest()[:40]}"'
        if etag in [t.strip() for t in headers.get("if-none-match", "").split(",")]:
            return _Answer(304, b"", content_type="", headers={"etag": etag})
        if raw:
            return _Answer(
                200,
                content,
                content_type="application/vnd.github.raw; charset=utf-8",
                headers={"etag": etag},
            )
        too_large = len(content) > 1024 * 1024
        data = {
            "type": "file",
            "encoding": "none" if too_large else "base64",
            "size": len(content),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "content": "" if too_large else base64.encodebytes(content).decode(),
            "sha": sha,
        }
        return _json(200, data, {"etag": etag})

    def _dir_answer(self, owner: str, repo: str, path: str) -> _Answer:
        prefix = path.strip("/") + "/"
        with self._lock:
            files = self._files.get((owner.lower(), repo.lower()), {})
            children = sorted(
                {p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)}
            )
        if not children:
            raise _HttpError(404, "Not Found")
        return _json(200, [{"type": "file", "name": n, "path": prefix + n} for n in children])

    def _write_answer(
        self, grant: _Grant, owner: str, repo: str, path: str, body: bytes
    ) -> _Answer:
        self._authorize_repo(grant, owner, repo, "write")
        try:
            request = json.loads(body)
            content = base64.b64decode(request["content"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _HttpError(422, "Invalid request. content must be base64.") from None
        existing = self.get_file(owner, repo, path)
        if existing is not None and request.get("sha") != _blob_sha(existing):
            raise _HttpError(409, f"{path} does not match {request.get('sha')}")
        self.set_file(owner, repo, path, content)
        return _json(
            200 if existing is not None else 201,
            {
                "content": {
                    "name": path.rsplit("/", 1)[-1],
                    "path": path,
                    "sha": _blob_sha(content),
                },
                "commit": {
                    "sha": secrets.token_hex(20),
                    "message": str(request.get("message", "")),
                },
            },
        )

    def _rate_limit_answer(self, budget: str) -> _Answer:
        state = self._consume(budget)
        with self._lock:
            core = {
                "limit": self.rate_limit,
                "used": state.used,
                "remaining": max(self.rate_limit - state.used, 0),
                "reset": int(state.window_start + 3600),
            }
        return _json(200, {"resources": {"core": core}, "rate": core})

    # -- control endpoints -----------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> _Answer:
        if method == "GET" and path == "/_emulator/health":
            return _json(200, {"status": "ok"})
        if method == "GET" and path == "/_emulator/calls":
            return _json(
                200,
                [
                    {"method": c.method, "path": c.path, "status": c.status, "auth": c.auth}
                    for c in self.calls()
                ],
            )
        if method == "POST" and path == "/_emulator/reset":
            self.reset()
            return _Answer(204, b"", content_type="")
        if method == "POST" and path == "/_emulator/fault":
            try:
                spec = json.loads(body)
                fault = Fault(
                    status=int(spec["status"]),
                    message=str(spec.get("message", "Server Error")),
                    retry_after=None
                    if spec.get("retry_after") is None
                    else int(spec["retry_after"]),
                    exhaust=bool(spec.get("exhaust", False)),
                    path_prefix=str(spec.get("path_prefix", "")),
                )
                times = int(spec.get("times", 1))
            except (ValueError, KeyError, TypeError):
                return _json(400, {"message": "expected {status, message?, retry_after?, times?}"})
            self.inject(fault, times)
            return _Answer(204, b"", content_type="")
        return _json(404, {"message": "Not Found"})


class _Handler(BaseHTTPRequestHandler):
    emulator: ClassVar[GitHubEmulator]
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com-emulator"
    timeout = 30  # idle keep-alive connections do not pin threads forever

    def _serve(self) -> None:
        length_raw = self.headers.get("content-length", "0")
        length = int(length_raw) if length_raw.isdigit() else -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(_json(413, {"message": "request body too large or malformed length"}))
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            answer = self.emulator.handle(self.command, self.path, headers, body)
        except Exception:  # noqa: BLE001 - an emulator bug must still answer, as GitHub's 500
            answer = _json(500, {"message": "Server Error"})
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        if answer.content_type:
            self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if answer.body and self.command != "HEAD":
            self.wfile.write(answer.body)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - stdlib
        # The call log replaces the stderr access log (which would print nothing secret, but noise).
        return
