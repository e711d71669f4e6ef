"""The GitHub calls the webhook needs: PR files, compare, files at a commit, check runs.

Authenticates with a short-lived installation token minted through the app
(``GitHubApp.mint``) restricted to the one repository, with only
``checks: write``, ``contents: read`` and ``pull_requests: read``. Requests,
caps, deadline, rate limits, error mapping and Link checks are the GitHub REST
core's (``adapters.github_rest``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from octosts.adapters.github_rest import (
    JSON_MEDIA,
    RAW_MEDIA,
    Budget,
    ErrorMap,
    Request,
    Response,
    error_for,
    quote_path,
    repo_path,
)
from octosts.domain.errors import GitHubUnavailable, PolicyNotFound, StsError

if TYPE_CHECKING:
    from octosts.adapters.github_rest import GitHubRest
    from octosts.domain.ports import GitHubApp

CHECK_PERMISSIONS = {"checks": "write", "contents": "read", "pull_requests": "read"}
MAX_PAGES = 30  # 3000 files: GitHub's own PR files limit
MAX_RESPONSE_BYTES = 4 << 20  # a page of 100 changed files with patches


def _call_failed(detail: str) -> StsError:
    return StsError(detail, reason="github_webhook_call_failed")


# Rate limits and 5xx are the core's; any other failure stops the check.
_ERRORS = ErrorMap({}, _call_failed)
_CHECK_RUN_ERRORS = _ERRORS.but(
    {404: lambda d: PolicyNotFound(f"cannot create check runs in this repository ({d})")}
)


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
    """``ChecksFactory`` over the GitHub REST core."""

    def __init__(
        self, github: GitHubApp, *, rest: GitHubRest, max_response_bytes: int = MAX_RESPONSE_BYTES
    ) -> None:
        self._github = github
        self._rest = rest
        self._cap = max_response_bytes

    async def for_repo(self, installation_id: int, owner: str, repo: str) -> RepoChecks:
        """Raises MintRejected, RateLimited, GitHubUnavailable (from minting)."""
        minted = await self._github.mint(installation_id, CHECK_PERMISSIONS, [repo])
        return _RepoChecks(
            self._rest, minted.token, Budget(installation_id), repo_path(owner, repo), self._cap
        )


def _files(data: object) -> list[ChangedFile]:
    if not isinstance(data, list):
        raise GitHubUnavailable("GitHub file list is not a list")
    return [
        ChangedFile(str(f["filename"]), str(f.get("status", "")))
        for f in data
        if isinstance(f, dict) and isinstance(f.get("filename"), str)
    ]


class _RepoChecks:
    def __init__(self, rest: GitHubRest, token: str, budget: Budget, prefix: str, cap: int) -> None:
        self._rest = rest
        self._token = token
        self._budget = budget
        self._prefix = prefix
        self._cap = cap

    def __repr__(self) -> str:  # the token stays out of reprs
        return f"_RepoChecks({self._prefix!r})"

    async def _call(
        self,
        method: str,
        target: str,
        *,
        endpoint: str,
        what: str,
        accept: str = JSON_MEDIA,
        json_body: object = None,
    ) -> Response:
        return await self._rest.send(
            Request(
                method,
                target,
                authorization=f"token {self._token}",
                endpoint=endpoint,
                what=what,
                budget=self._budget,
                accept=accept,
                json_body=json_body,
                max_bytes=self._cap,
            )
        )

    async def pull_files(self, number: int) -> list[ChangedFile]:
        url: str | None = f"{self._prefix}/pulls/{number}/files?per_page=100"
        files: list[ChangedFile] = []
        what = "pull request files"
        for _ in range(MAX_PAGES):
            if url is None:
                break
            resp = _ok(await self._call("GET", url, endpoint="checks_pull_files", what=what), what)
            files += _files(resp.json(what))
            url = self._rest.next_link(resp)
        return files

    async def compare(self, base: str, head: str) -> list[ChangedFile]:
        b, h = urllib.parse.quote(base, safe=""), urllib.parse.quote(head, safe="")
        target = f"{self._prefix}/compare/{b}...{h}"
        what = "compare"
        resp = _ok(await self._call("GET", target, endpoint="checks_compare", what=what), what)
        data = resp.json(what)
        return _files(data.get("files", []) if isinstance(data, dict) else None)

    async def read_at(self, path: str, ref: str) -> bytes | None:
        quoted_ref = urllib.parse.quote(ref, safe="")
        target = f"{self._prefix}/contents/{quote_path(path)}?ref={quoted_ref}"
        what = "read file at ref"
        resp = await self._call(
            "GET", target, endpoint="checks_read_at", what=what, accept=RAW_MEDIA
        )
        if resp.status == 404:
            return None
        return _ok(resp, what).body

    async def create_check_run(self, head_sha: str, body: dict[str, Any]) -> None:
        what = "create check run"
        resp = await self._call(
            "POST",
            f"{self._prefix}/check-runs",
            endpoint="checks_create_run",
            what=what,
            json_body={**body, "head_sha": head_sha},
        )
        _ok(resp, what, _CHECK_RUN_ERRORS)


def _ok(resp: Response, what: str, errors: ErrorMap = _ERRORS) -> Response:
    """``resp`` when it is a success; else its error (see ``github_rest.error_for``)."""
    if not 200 <= resp.status < 300:
        raise error_for(resp, what, errors)
    return resp
