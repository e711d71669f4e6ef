"""The GitHub calls the webhook needs: PR files, compare, files at a commit, check runs.

Authenticates with a short-lived installation token minted through the app
(``GitHubApp.mint``) restricted to the one repository, with only
``checks: write``, ``contents: read`` and ``pull_requests: read``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

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
        self._timeout = timeout
        self._cap = max_response_bytes

    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks:
        """Raises MintRejected, RateLimited, GitHubUnavailable (from minting)."""
        minted = await self._github.mint(installation_id, CHECK_PERMISSIONS, [repo])
        return _RepoChecks(self, minted.token, owner, repo)

    async def request(
        self, method: str, url: str, token: str, *, accept: str, json_body: object = None
    ) -> httpx.Response:
        """Raises GitHubUnavailable for transport failures, timeouts and oversized answers."""
        headers = {
            "Authorization": f"token {token}",
            "Accept": accept,
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "octo-sts-webhook",
        }
        full = url if url.startswith(self._base) else self._base + url
        try:
            async with self._http.stream(
                method, full, headers=headers, json=json_body, timeout=self._timeout
            ) as resp:
                body = bytearray()
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > self._cap:
                        raise GitHubUnavailable(f"GitHub answer exceeds {self._cap} bytes")
                return httpx.Response(resp.status_code, headers=resp.headers, content=bytes(body))
        except httpx.HTTPError as exc:
            raise GitHubUnavailable(f"GitHub unreachable: {type(exc).__name__}") from exc


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
            files += _files(resp.json())
            match = _NEXT_RE.search(resp.headers.get("link", ""))
            url = match.group(1) if match else None
        return files

    async def compare(self, base: str, head: str) -> list[ChangedFile]:
        b, h = urllib.parse.quote(base, safe=""), urllib.parse.quote(head, safe="")
        resp = await self._get(f"{self._prefix}/compare/{b}...{h}", "compare")
        data = resp.json()
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
