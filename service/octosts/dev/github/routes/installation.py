"""Routes for an installation token about itself, and the rate-limit status (anyone)."""

from __future__ import annotations

from octosts.dev.github.answers import Answer, json_answer, no_content, not_found
from octosts.dev.github.routes.shapes import repo_json
from octosts.dev.github.routing import Context, Request, Route, route


def revoke_token(ctx: Context, req: Request) -> Answer:
    ctx.ledger.revoke(req.principal.token, ctx.clock.now())
    return no_content()


def list_repositories(ctx: Context, req: Request) -> Answer:
    grant = req.principal.require_grant()
    owner = ctx.repos.owner_by_installation(grant.installation_id)
    if owner is None:
        raise not_found()
    names = sorted(grant.repositories if grant.repositories is not None else owner.repos)
    repos = [repo_json(owner, n) for n in names]
    return json_answer(200, {"total_count": len(repos), "repositories": repos})


def rate_limit(ctx: Context, req: Request) -> Answer:
    core = ctx.limits.core(req.principal.budget)
    return json_answer(200, {"resources": {"core": core}, "rate": core})


ROUTES: tuple[Route, ...] = (
    route("GET", "/rate_limit", "any", rate_limit),
    route("DELETE", "/installation/token", "token", revoke_token),
    route("GET", "/installation/repositories", "token", list_repositories),
)
