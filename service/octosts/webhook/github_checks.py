"""The GitHub calls the webhook needs: PR files, compare, files at a commit, check runs.

Authenticates with a short-lived installation token minted through the app
(``GitHubApp.mint``) restricted to the one repository, with only
``checks: write``, ``contents: read`` and ``pull_requests: read``.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from octosts.adapters.http_body import BodyCompressed, BodyTooLarge, read_capped
from octosts.domain.errors import GitHubUnavailable, PolicyNotFound, StsError

if TYPE_CHECKING:
    from octosts.domain.ports import GitHubApp

CHECK_PERMISSIONS = {"checks": "write", "contents": "read", "pull_requests": "read"}
MAX_PAGES = 30  # 3000 files: GitHub's own PR files limit
_NEXT_RE = re.compile(r'<([^>]+)>;\s*rel="next"')


@dataclass(frozen=True, slots=True)
class ChangedFile:
    path: str
    status: str  # added | modified | removed | renamed | ...


class RepoChecks(Protocol):
    """What the webhook handler needs from GitHub for one repository."""

    async def pull_files(self, number: int) -> list[ChangedFile]: ...
    async def compare(self, base: str, head: str) -> list[ChangedFile]: ...
    async def read_at(self, path: str, ref: str) -> bytes | None: ...
    async def create_check_run(self, head_sha: str, body: dict[str, Any]) -> None: ...


class ChecksFactory(Protocol):
    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks: ...


class GitHubChecks:
    """``ChecksFactory`` over the REST API (size-capped, deadline-bound requests)."""

    def __init__(
        self,
        github: GitHubApp,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        timeout: float = 10.0,
        max_response_bytes: int = 4 << 20,
    ) -> None:
        self._github = github
        self._http = http
        self._base = base_url.rstrip("/")
        self._origin = _origin(self._base)
        self._base_path = urllib.parse.urlsplit(self._base).path
        self._timeout = timeout
        self._cap = max_response_bytes

    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks:
        """Raises MintRejected, RateLimited, GitHubUnavailable (from minting)."""
        minted = await self._github.mint(installation_id, CHECK_PERMISSIONS, [repo])
        return _RepoChecks(self, minted.token, owner, repo)

    def resolve(self, url: str) -> str:
        """``url`` as an absolute URL under the API base.

        A path (``/repos/...``) is appended to the base. An absolute URL (a
        pagination ``Link``) must have the base's scheme, host and port and a
        path under the base path, since the installation token goes with it.
        Raises GitHubUnavailable otherwise.
        """
        full = self._base + url if url.startswith("/") and not url.startswith("//") else url
        try:
            parts = urllib.parse.urlsplit(full)
            origin = _origin(full)
        except ValueError:
            origin = None
        if (
            origin is None
            or origin != self._origin
            or parts.username is not None
            or parts.password is not None
            or not _under(parts.path, self._base_path)
        ):
            raise GitHubUnavailable("GitHub answer links outside the API base URL")
        return full

    async def request(
        self, method: str, url: str, token: str, *, accept: str, json_body: object = None
    ) -> httpx.Response:
        """One call, bounded as a whole (connect to last body byte) by ``timeout``.

        Raises GitHubUnavailable for transport failures, timeouts, oversized or
        compressed answers and URLs outside the API base.
        """
        headers = {
            "Authorization": f"token {token}",
            "Accept": accept,
            # The body is read raw under a byte cap: a gzip answer would reach
            # the JSON parser compressed (httpx's raw stream does not decode).
            "Accept-Encoding": "identity",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "octo-sts-webhook",
        }
        full = self.resolve(url)
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._http.stream(
                    method, full, headers=headers, json=json_body, timeout=self._timeout
                ) as resp,
            ):
                try:
                    body = await read_capped(resp, self._cap)
                except BodyTooLarge as exc:
                    raise GitHubUnavailable(f"GitHub answer exceeds {self._cap} bytes") from exc
                except BodyCompressed as exc:
                    raise GitHubUnavailable("GitHub answer is compressed despite identity") from exc
                return httpx.Response(resp.status_code, headers=resp.headers, content=body)
        except TimeoutError as exc:
            raise GitHubUnavailable(f"GitHub request took longer than {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise GitHubUnavailable(f"GitHub unreachable: {type(exc).__name__}") from exc


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-cased host, port with the scheme's default). Raises ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def _under(path: str, base_path: str) -> bool:
    """``path`` is ``base_path`` or below it, with no dot segments to climb out."""
    base = base_path.rstrip("/")
    if not (path == base or path.startswith(base + "/")):
        return False
    segments = urllib.parse.unquote(path).split("/")
    return not any(s in {".", ".."} for s in segments)


def _json(resp: httpx.Response, what: str) -> object:
    try:
        return resp.json()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise GitHubUnavailable(f"GitHub answer to {what} is not JSON") from exc


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 500:
        raise GitHubUnavailable(f"GitHub {resp.status_code} on {what}")
    if resp.status_code >= 300:
        raise StsError(f"GitHub {resp.status_code} on {what}", reason="github_webhook_call_failed")


def _files(data: object) -> list[ChangedFile]:
    if not isinstance(data, list):
        raise GitHubUnavailable("GitHub file list is not a list")
    return [
        ChangedFile(str(f["filename"]), str(f.get("status", "")))
        for f in data
        if isinstance(f, dict) and isinstance(f.get("filename"), str)
    ]


class _RepoChecks:
    def __init__(self, client: GitHubChecks, token: str, owner: str, repo: str) -> None:
        self._client = client
        self._token = token
        self._prefix = (
            f"/repos/{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(repo, safe='')}"
        )

    def __repr__(self) -> str:  # the token stays out of reprs
        return f"_RepoChecks({self._prefix!r})"

    async def _get(
        self, url: str, what: str, accept: str = "application/vnd.github+json"
    ) -> httpx.Response:
        resp = await self._client.request("GET", url, self._token, accept=accept)
        _check(resp, what)
        return resp

    async def pull_files(self, number: int) -> list[ChangedFile]:
        url: str | None = f"{self._prefix}/pulls/{number}/files?per_page=100"
        files: list[ChangedFile] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            resp = await self._get(url, "pull request files")
            files += _files(_json(resp, "pull request files"))
            match = _NEXT_RE.search(resp.headers.get("link", ""))
            url = self._client.resolve(match.group(1)) if match else None
        return files

    async def compare(self, base: str, head: str) -> list[ChangedFile]:
        b, h = urllib.parse.quote(base, safe=""), urllib.parse.quote(head, safe="")
        resp = await self._get(f"{self._prefix}/compare/{b}...{h}", "compare")
        data = _json(resp, "compare")
        return _files(data.get("files", []) if isinstance(data, dict) else None)

    async def read_at(self, path: str, ref: str) -> bytes | None:
        quoted = "/".join(urllib.parse.quote(s, safe="") for s in path.split("/"))
        url = f"{self._prefix}/contents/{quoted}?ref={urllib.parse.quote(ref, safe='')}"
        resp = await self._client.request(
            "GET", url, self._token, accept="application/vnd.github.raw+json"
        )
        if resp.status_code == 404:
            return None
        _check(resp, "read file at ref")
        return resp.content

    async def create_check_run(self, head_sha: str, body: dict[str, Any]) -> None:
        resp = await self._client.request(
            "POST",
            f"{self._prefix}/check-runs",
            self._token,
            accept="application/vnd.github+json",
            json_body={**body, "head_sha": head_sha},
        )
        if resp.status_code == 404:
            raise PolicyNotFound("cannot create check runs in this repository")
        _check(resp, "create check run")
