"""Routes the webhook's policy checks use (installation tokens): compare, pull request files,
check runs."""

from __future__ import annotations

import json

from octosts.dev.github.answers import Answer, HttpError, json_answer, not_found, paginated
from octosts.dev.github.auth import authorize_repo
from octosts.dev.github.routes.contents import resolve
from octosts.dev.github.routing import Context, Request, Route, route

MAX_ANNOTATIONS = 50


def compare(ctx: Context, req: Request) -> Answer:
    owner, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "read")
    base, sep, head = req.params["basehead"].partition("...")
    if not sep:
        raise not_found()
    files = ctx.repos.diff(resolve(ctx, owner, repo, base), resolve(ctx, owner, repo, head))
    return json_answer(200, {"status": "ahead", "ahead_by": 1, "files": files})


def pull_files(ctx: Context, req: Request) -> Answer:
    owner, repo, raw_number = req.params["owner"], req.params["repo"], req.params["number"]
    grant = req.principal.require_grant()
    authorize_repo(ctx.repos, grant, owner, repo, "read", "pull_requests")
    pull = ctx.repos.pull(owner, repo, int(raw_number) if raw_number.isdigit() else -1)
    if pull is None:
        raise not_found()
    files = ctx.repos.diff(
        resolve(ctx, owner, repo, pull.base_sha), resolve(ctx, owner, repo, pull.head_sha)
    )
    url = f"{ctx.base_url()}/repos/{owner}/{repo}/pulls/{pull.number}/files"
    chunk, headers = paginated(files, req.query, url)
    return json_answer(200, chunk, headers)


def create_check_run(ctx: Context, req: Request) -> Answer:
    owner, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "write", "checks")
    try:
        request = json.loads(req.body)
    except ValueError:
        raise HttpError(400, "Problems parsing JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("name"), str):
        raise HttpError(422, "Invalid request. name is required.")
    head_sha = request.get("head_sha")
    if not ctx.repos.has_commit(head_sha):
        raise HttpError(422, "No commit found for SHA")
    output = request.get("output") or {}
    if len(output.get("annotations") or []) > MAX_ANNOTATIONS:
        raise HttpError(422, f"Only {MAX_ANNOTATIONS} annotations are allowed per request")
    app = ctx.app_of(req.principal)
    run = ctx.repos.add_check_run(
        owner,
        repo,
        {
            "name": request["name"],
            # The App that owns the run: only it may update it (as on GitHub).
            "app": {"id": app.app_id, "slug": app.slug},
            "head_sha": head_sha,
            "status": request.get("status", "queued"),
            "conclusion": request.get("conclusion"),
            "output": output,
        },
    )
    return json_answer(201, run)


def list_check_runs(ctx: Context, req: Request) -> Answer:
    owner, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "read", "checks")
    runs = ctx.repos.check_runs(owner, repo, resolve(ctx, owner, repo, req.params["ref"]))
    return json_answer(200, {"total_count": len(runs), "check_runs": runs})


ROUTES: tuple[Route, ...] = (
    route("GET", "/repos/{owner}/{repo}/compare/{basehead}", "token", compare),
    route("GET", "/repos/{owner}/{repo}/pulls/{number}/files", "token", pull_files),
    route("POST", "/repos/{owner}/{repo}/check-runs", "token", create_check_run),
    route("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs", "token", list_check_runs),
)
