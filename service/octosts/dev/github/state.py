"""Repository state: owners, the Apps' installations on them, repositories, files, commits, pull
requests and check runs. Thread-safe; knows nothing of HTTP, tokens or rate limits.

Names are matched case-insensitively (as on GitHub) and reported as first registered. Files on
``main`` are what the contents API serves; commits and branches exist for webhook tests.

Installations: each App is installed on an owner at most once, with an id unique across Apps
and never reused (as on GitHub). An App listed in ``auto_install`` is installed on every owner,
including owners added later (the emulator's first App is: one App, every owner one
installation); other Apps only where ``install`` puts them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIRST_INSTALLATION_ID = 1001
DEFAULT_BRANCH = "main"


def blob_sha(content: bytes) -> str:
    """Git's blob id for ``content`` (what the contents API calls ``sha``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class Owner:
    login: str
    account_id: int
    is_user: bool
    repos: dict[str, str] = field(default_factory=dict)  # lower -> canonical name
    installations: dict[int, int] = field(default_factory=dict)  # app id -> installation id


@dataclass(slots=True)
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    changed: dict[str, str]  # path -> added | modified | removed


@dataclass(slots=True)
class Pull:
    number: int
    head_ref: str
    base_sha: str
    head_sha: str


@dataclass(frozen=True, slots=True)
class Pushed:
    """What ``Repos.commit`` did: the new head, the previous one and the changed paths."""

    sha: str
    before: str
    changed: Mapping[str, str]


def _key(owner: str, repo: str) -> tuple[str, str]:
    return owner.lower(), repo.lower()


class Repos:
    """Owners, repositories and their history, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[tuple[str, str], dict[str, bytes]] = {}
        self._owners: dict[str, Owner] = {}
        self._next_installation_id = FIRST_INSTALLATION_ID
        self._next_account_id = FIRST_INSTALLATION_ID * 10
        self._auto_install: list[int] = []
        self._installations: dict[int, tuple[Owner, int]] = {}  # id -> (owner, app id)
        self._commits: dict[str, Commit] = {}
        self._heads: dict[tuple[str, str, str], str] = {}  # (owner, repo, branch) -> sha
        self._pulls: dict[tuple[str, str, int], Pull] = {}
        self._check_runs: list[dict[str, Any]] = []
        self._issues: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- owners and repositories -----------------------------------------------------------

    def load(self, root: Path, user_owners: frozenset[str]) -> None:
        """Read ``root/OWNER/REPO/...`` (owners and repositories in sorted order)."""
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

    def add_owner(self, login: str, *, is_user: bool = False) -> Owner:
        """The owner named ``login``, created (with the auto-installed Apps) if new."""
        with self._lock:
            owner = self._owners.get(login.lower())
            if owner is None:
                owner = Owner(login, self._next_account_id, is_user)
                self._next_account_id += 10
                self._owners[login.lower()] = owner
                for app_id in self._auto_install:
                    self._install(owner, app_id)
            return owner

    def auto_install(self, app_id: int) -> None:
        """Install ``app_id`` on every owner, now and as owners are added."""
        with self._lock:
            if app_id not in self._auto_install:
                self._auto_install.append(app_id)
            for owner in sorted(self._owners.values(), key=lambda o: o.account_id):
                self._install(owner, app_id)

    def install(self, login: str, app_id: int) -> int:
        """Install ``app_id`` on ``login`` (creating the owner); returns the installation id."""
        with self._lock:
            return self._install(self.add_owner(login), app_id)

    def _install(self, owner: Owner, app_id: int) -> int:
        if app_id not in owner.installations:
            # Ids are never reused: a reinstalled owner gets a new one, as on GitHub.
            installation_id = self._next_installation_id
            self._next_installation_id += 1
            owner.installations[app_id] = installation_id
            self._installations[installation_id] = (owner, app_id)
        return owner.installations[app_id]

    def uninstall(self, login: str, app_id: int) -> None:
        """Remove ``app_id``'s installation from ``login`` (its id answers 404 afterwards)."""
        with self._lock:
            owner = self._owners.get(login.lower())
            if owner is not None and app_id in owner.installations:
                del self._installations[owner.installations.pop(app_id)]

    def remove_owner(self, login: str) -> None:
        with self._lock:
            owner = self._owners.pop(login.lower(), None)
            if owner is not None:
                for installation_id in owner.installations.values():
                    del self._installations[installation_id]
                for repo in owner.repos:
                    self._files.pop((login.lower(), repo), None)
                    self._issues.pop((login.lower(), repo), None)

    def add_repo(self, owner: str, repo: str) -> None:
        with self._lock:
            self.add_owner(owner)
            self._owners[owner.lower()].repos.setdefault(repo.lower(), repo)
            self._files.setdefault(_key(owner, repo), {})

    def owners(self) -> Iterator[Owner]:
        """Every owner, in the order they were added."""
        with self._lock:
            owners = sorted(self._owners.values(), key=lambda o: o.account_id)
        yield from owners

    def owner(self, login: str) -> Owner | None:
        with self._lock:
            return self._owners.get(login.lower())

    def installation(self, installation_id: int) -> tuple[Owner, int] | None:
        """(owner, app id) of an installation, or None."""
        with self._lock:
            return self._installations.get(installation_id)

    def owner_by_installation(self, installation_id: int) -> Owner | None:
        found = self.installation(installation_id)
        return None if found is None else found[0]

    def repo_names(self, owner: Owner) -> set[str]:
        """The lower-cased names of ``owner``'s repositories."""
        with self._lock:
            return set(owner.repos)

    def has_repo(self, owner: str, repo: str) -> bool:
        with self._lock:
            return _key(owner, repo) in self._files

    # -- files on the default branch -------------------------------------------------------

    def set_file(self, owner: str, repo: str, path: str, content: bytes | str) -> None:
        data = content.encode() if isinstance(content, str) else content
        with self._lock:
            self.add_repo(owner, repo)
            self._files[_key(owner, repo)][path.strip("/")] = data

    def delete_file(self, owner: str, repo: str, path: str) -> None:
        with self._lock:
            self._files.get(_key(owner, repo), {}).pop(path.strip("/"), None)

    def get_file(self, owner: str, repo: str, path: str) -> bytes | None:
        with self._lock:
            return self._files.get(_key(owner, repo), {}).get(path.strip("/"))

    def children(self, owner: str, repo: str, path: str) -> list[str]:
        """Names directly under directory ``path`` (``""``: the root), sorted."""
        return sorted(self.entries(owner, repo, path))

    def entries(self, owner: str, repo: str, path: str) -> dict[str, str]:
        """Name -> ``file`` or ``dir``, directly under directory ``path`` (``""``: the root)."""
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        with self._lock:
            files = self._files.get(_key(owner, repo), {})
            found: dict[str, str] = {}
            for p in files:
                if p.startswith(prefix):
                    name, sep, _ = p[len(prefix) :].partition("/")
                    found[name] = "dir" if sep else "file"
            return found

    # -- commits and branches --------------------------------------------------------------

    def head(self, owner: str, repo: str, branch: str = DEFAULT_BRANCH) -> str:
        """The head commit of a branch (creating an initial commit for ``main``)."""
        with self._lock:
            key = (*_key(owner, repo), branch)
            if key not in self._heads:
                if branch != DEFAULT_BRANCH:
                    raise KeyError(branch)
                self.add_repo(owner, repo)
                self._heads[key] = self._new_commit(None, dict(self._files[_key(owner, repo)]), {})
            return self._heads[key]

    def _new_commit(
        self, parent: str | None, files: dict[str, bytes], changed: dict[str, str]
    ) -> str:
        sha = secrets.token_hex(20)
        self._commits[sha] = Commit(sha, parent, files, changed)
        return sha

    def commit(
        self,
        owner: str,
        repo: str,
        changes: Mapping[str, bytes | str | None],
        branch: str = DEFAULT_BRANCH,
    ) -> Pushed:
        """Commit changes (None deletes) on ``branch``; commits on ``main`` change the files."""
        with self._lock:
            self.add_repo(owner, repo)
            key = (*_key(owner, repo), branch)
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
            if branch == DEFAULT_BRANCH:
                self._files[_key(owner, repo)] = dict(files)
        return Pushed(sha, parent, changed)

    def branch_from(self, owner: str, repo: str, branch: str, sha: str) -> None:
        with self._lock:
            self._heads[(*_key(owner, repo), branch)] = sha

    def resolve(self, owner: str, repo: str, ref: str) -> str | None:
        """The commit a sha or branch name points at, or None."""
        with self._lock:
            if ref in self._commits:
                return ref
            return self._heads.get((*_key(owner, repo), ref))

    def file_at(self, sha: str, path: str) -> bytes | None:
        with self._lock:
            return self._commits[sha].files.get(path.strip("/"))

    def diff(self, base_sha: str, head_sha: str) -> list[dict[str, str]]:
        """Changed files between two commits, as the compare API lists them."""
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
        return files

    def has_commit(self, sha: object) -> bool:
        with self._lock:
            return isinstance(sha, str) and sha in self._commits

    # -- issues ----------------------------------------------------------------------------

    def add_issue(self, owner: str, repo: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Open an issue (numbers count from 1 per repository); returns what was stored."""
        with self._lock:
            issues = self._issues.setdefault(_key(owner, repo), [])
            issue = {"number": len(issues) + 1, "state": "open", **fields}
            issues.append(issue)
            return dict(issue)

    def issues(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """A repository's issues, oldest first."""
        with self._lock:
            return [dict(i) for i in self._issues.get(_key(owner, repo), [])]

    # -- pull requests and check runs ------------------------------------------------------

    def next_pull_number(self, owner: str, repo: str) -> int:
        with self._lock:
            return 1 + sum(1 for k in self._pulls if k[:2] == _key(owner, repo))

    def add_pull(self, owner: str, repo: str, pull: Pull) -> None:
        with self._lock:
            self._pulls[(*_key(owner, repo), pull.number)] = pull

    def pull(self, owner: str, repo: str, number: int) -> Pull | None:
        with self._lock:
            return self._pulls.get((*_key(owner, repo), number))

    def add_check_run(self, owner: str, repo: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Record a check run (ids count from 1 across repositories); returns GitHub's shape."""
        with self._lock:
            run = {"id": len(self._check_runs) + 1, **fields, "_repo": _key(owner, repo)}
            self._check_runs.append(run)
        return {k: v for k, v in run.items() if k != "_repo"}

    def check_runs(
        self, owner: str, repo: str, head_sha: str | None = None
    ) -> list[dict[str, Any]]:
        """Check runs created in a repository (optionally for one commit), oldest first."""
        with self._lock:
            return [
                {k: v for k, v in run.items() if k != "_repo"}
                for run in self._check_runs
                if run["_repo"] == _key(owner, repo)
                and (head_sha is None or run["head_sha"] == head_sha)
            ]
