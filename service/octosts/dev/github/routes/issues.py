"""Issues and the repository itself (installation tokens): what an egress workload calls.

Creating an issue needs ``issues: write`` on the token (else GitHub's 403 "Resource not
accessible by integration"); reading issues needs ``issues: read``. ``GET /repos/{o}/{r}`` needs
only access to the repository (GitHub grants ``metadata: read`` to every installation token).
"""

from __future__ import annotations

from octosts.dev.github.answers import (
    Answer,
    HttpError,
    iso,
    json_answer,
    not_found,
    paginated,
    parse_json_object,
)
from octosts.dev.github.auth import authorize_repo
from octosts.dev.github.routes.shapes import repo_json
from octosts.dev.github.routing import Context, Request, Route, route

# GitHub's limits on an issue's title and body (characters).
MAX_TITLE = 256
MAX_BODY = 65536


def get_repo(ctx: Context, req: Request) -> Answer:
    owner_name, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner_name, repo, "read", "metadata")
    owner = ctx.repos.owner(owner_name)
    if owner is None:  # pragma: no cover - authorize_repo saw the repository
        raise not_found()
    return json_answer(200, repo_json(owner, repo.lower()))


def _issue_json(ctx: Context, owner: str, repo: str, issue: dict[str, object]) -> dict[str, object]:
    number = issue["number"]
    return {
        **issue,
        "url": f"{ctx.base_url()}/repos/{owner}/{repo}/issues/{number}",
        "html_url": f"https://github.com/{owner}/{repo}/issues/{number}",
    }


def create_issue(ctx: Context, req: Request) -> Answer:
    owner, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "write", "issues")
    request = parse_json_object(req.body)
    title, body = request.get("title"), request.get("body", "")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
        raise HttpError(422, "Validation Failed")
    if body is not None and (not isinstance(body, str) or len(body) > MAX_BODY):
        raise HttpError(422, "Validation Failed")
    issue = ctx.repos.add_issue(
        owner,
        repo,
        {
            "title": title,
            "body": body,
            "user": {"login": f"{ctx.app_of(req.principal).slug}[bot]", "type": "Bot"},
            "labels": [],
            "created_at": iso(ctx.clock.now()),
        },
    )
    return json_answer(201, _issue_json(ctx, owner, repo, issue))


def list_issues(ctx: Context, req: Request) -> Answer:
    owner, repo = req.params["owner"], req.params["repo"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "read", "issues")
    issues = [_issue_json(ctx, owner, repo, i) for i in reversed(ctx.repos.issues(owner, repo))]
    chunk, headers = paginated(issues, req.query, f"{ctx.base_url()}/repos/{owner}/{repo}/issues")
    return json_answer(200, chunk, headers)


def get_issue(ctx: Context, req: Request) -> Answer:
    owner, repo, raw = req.params["owner"], req.params["repo"], req.params["number"]
    authorize_repo(ctx.repos, req.principal.require_grant(), owner, repo, "read", "issues")
    found = [i for i in ctx.repos.issues(owner, repo) if str(i["number"]) == raw]
    if not found:
        raise not_found()
    return json_answer(200, _issue_json(ctx, owner, repo, found[0]))


ROUTES: tuple[Route, ...] = (
    route("GET", "/repos/{owner}/{repo}", "token", get_repo),
    route("GET", "/repos/{owner}/{repo}/issues", "token", list_issues),
    route("POST", "/repos/{owner}/{repo}/issues", "token", create_issue),
    route("GET", "/repos/{owner}/{repo}/issues/{number}", "token", get_issue),
)
