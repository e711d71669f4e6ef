"""The contents API (installation tokens): read files and directories, write files.

Reads honour ``Accept: application/vnd.github.raw`` and ``If-None-Match`` (304, which costs no
rate limit); ``?ref=`` reads a file at a commit or branch; writes need ``contents: write`` and the
current blob sha of a file they replace (409 otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import urllib.parse

from octosts.dev.github.answers import RAW, Answer, HttpError, json_answer, not_found
from octosts.dev.github.auth import authorize_repo
from octosts.dev.github.routing import Context, Request, Route, route
from octosts.dev.github.state import DEFAULT_BRANCH, blob_sha

# GitHub's JSON answer leaves ``content`` empty for files over 1 MiB (raw media type needed).
JSON_CONTENT_LIMIT = 1024 * 1024


def get_contents(ctx: Context, req: Request) -> Answer:
    owner, repo, path = req.params["owner"], req.params["repo"], req.params.get("path", "")
    grant = req.principal.require_grant()
    ref = urllib.parse.parse_qs(req.query).get("ref", [""])[0]
    authorize_repo(ctx.repos, grant, owner, repo, "read")
    if ref and ref != DEFAULT_BRANCH:
        return _read_at(ctx, owner, repo, path, ref)
    content = ctx.repos.get_file(owner, repo, path)
    if content is None:
        return _list_dir(ctx, owner, repo, path)
    raw = "application/vnd.github.raw" in req.headers.get("accept", "")
    sha = blob_sha(content)
    etag = f'"{hashlib.sha256(f"{sha}:{raw}".encode()).hexdigest()[:40]}"'
    if etag in [t.strip() for t in req.headers.get("if-none-match", "").split(",")]:
        return Answer(304, b"", content_type="", headers={"etag": etag})
    if raw:
        return Answer(200, content, content_type=RAW, headers={"etag": etag})
    too_large = len(content) > JSON_CONTENT_LIMIT
    data = {
        "type": "file",
        "encoding": "none" if too_large else "base64",
        "size": len(content),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "content": "" if too_large else base64.encodebytes(content).decode(),
        "sha": sha,
    }
    return json_answer(200, data, {"etag": etag})


def _list_dir(ctx: Context, owner: str, repo: str, path: str) -> Answer:
    """A directory (``""``: the repository's root) as GitHub lists it: entries sorted by name."""
    entries = ctx.repos.entries(owner, repo, path)
    if not entries:
        raise not_found() if path.strip("/") else HttpError(404, "This repository is empty.")
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    listing = sorted(entries.items())
    return json_answer(200, [{"type": t, "name": n, "path": prefix + n} for n, t in listing])


def _read_at(ctx: Context, owner: str, repo: str, path: str, ref: str) -> Answer:
    sha = resolve(ctx, owner, repo, ref)
    content = ctx.repos.file_at(sha, path)
    if content is None:
        raise not_found()
    return Answer(200, content, content_type=RAW)


def resolve(ctx: Context, owner: str, repo: str, ref: str) -> str:
    """The commit ``ref`` (a sha or a branch) names, else GitHub's 404."""
    sha = ctx.repos.resolve(owner, repo, ref)
    if sha is None:
        raise HttpError(404, "No commit found for the ref")
    return sha


def put_contents(ctx: Context, req: Request) -> Answer:
    owner, repo, path = req.params["owner"], req.params["repo"], req.params["path"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "write")
    try:
        request = json.loads(req.body)
        content = base64.b64decode(request["content"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise HttpError(422, "Invalid request. content must be base64.") from None
    existing = ctx.repos.get_file(owner, repo, path)
    if existing is not None and request.get("sha") != blob_sha(existing):
        raise HttpError(409, f"{path} does not match {request.get('sha')}")
    ctx.repos.set_file(owner, repo, path, content)
    return json_answer(
        200 if existing is not None else 201,
        {
            "content": {"name": path.rsplit("/", 1)[-1], "path": path, "sha": blob_sha(content)},
            "commit": {"sha": secrets.token_hex(20), "message": str(request.get("message", ""))},
        },
    )


ROUTES: tuple[Route, ...] = (
    route("GET", "/repos/{owner}/{repo}/contents", "token", get_contents),
    route("GET", "/repos/{owner}/{repo}/contents/{path+}", "token", get_contents),
    route("PUT", "/repos/{owner}/{repo}/contents/{path+}", "token", put_contents),
)
