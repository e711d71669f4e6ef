"""Routes for an App itself (its JWT): the app, installation lookups, minting installation tokens.

Each App sees its own installations only: another App's installation id answers 404.
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
from octosts.dev.github.auth import covers
from octosts.dev.github.routes.shapes import app_json, installation_json, repo_json
from octosts.dev.github.routing import Context, Request, Route, route
from octosts.dev.github.state import Owner


def get_app(ctx: Context, req: Request) -> Answer:
    return json_answer(200, app_json(ctx.app_of(req.principal)))


def _installation(ctx: Context, req: Request, *, orgs_only: bool) -> Answer:
    app = ctx.app_of(req.principal)
    owner = ctx.repos.owner(req.params["owner"])
    # Organizations answer on /orgs/ and /users/, users on /users/ only (as on GitHub).
    if owner is None or (orgs_only and owner.is_user) or app.app_id not in owner.installations:
        raise not_found()
    return json_answer(200, installation_json(app, owner))


def get_org_installation(ctx: Context, req: Request) -> Answer:
    return _installation(ctx, req, orgs_only=True)


def get_user_installation(ctx: Context, req: Request) -> Answer:
    return _installation(ctx, req, orgs_only=False)


def list_installations(ctx: Context, req: Request) -> Answer:
    """Every installation of the app, by id, paged with ``Link`` (what go-github's
    ``Apps.ListInstallations`` walks, as the original Octo STS does to find an owner's)."""
    app = ctx.app_of(req.principal)
    installed = [o for o in ctx.repos.owners() if app.app_id in o.installations]
    installed.sort(key=lambda o: o.installations[app.app_id])
    everything = [installation_json(app, owner) for owner in installed]
    chunk, headers = paginated(everything, req.query, f"{ctx.base_url()}/app/installations")
    return json_answer(200, chunk, headers)


def get_installation(ctx: Context, req: Request) -> Answer:
    owner = installation_owner(ctx, req)
    return json_answer(200, installation_json(ctx.app_of(req.principal), owner))


def installation_owner(ctx: Context, req: Request) -> Owner:
    """The owner of the calling App's installation ``{installation_id}`` (its canonical decimal
    spelling only), else 404."""
    raw_id = req.params["installation_id"]
    found = ctx.repos.installation(int(raw_id)) if raw_id.isdecimal() else None
    if found is None or found[1] != req.principal.app_id or str(int(raw_id)) != raw_id:
        raise not_found()
    return found[0]


def create_access_token(ctx: Context, req: Request) -> Answer:
    owner = installation_owner(ctx, req)
    app = ctx.app_of(req.principal)
    request = parse_json_object(req.body, empty_ok=True)
    installation = app.permissions
    permissions = request.get("permissions", dict(installation))
    if not isinstance(permissions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in permissions.items()
    ):
        raise HttpError(422, "Invalid request. permissions must be an object of strings.")
    for name, level in permissions.items():
        if not covers(installation.get(name), level):
            raise HttpError(422, "The permissions requested are not granted to this installation.")
    names = request.get("repositories")
    selected: frozenset[str] | None = None
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HttpError(422, "Invalid request. repositories must be an array of strings.")
        wanted = {n.lower() for n in names}
        if not wanted <= ctx.repos.repo_names(owner):
            raise HttpError(
                422,
                "There is at least one repository that does not exist or is not accessible"
                " to the parent installation.",
            )
        selected = frozenset(wanted)
    token, grant = ctx.ledger.mint(
        owner.installations[app.app_id],
        owner.login,
        permissions,
        selected,
        ctx.clock.now(),
        app_id=app.app_id,
    )
    answer: dict[str, object] = {
        "token": token,
        "expires_at": iso(grant.expires_at),
        "permissions": dict(permissions),
        "repository_selection": "all" if selected is None else "selected",
    }
    if selected is not None:
        answer["repositories"] = [repo_json(owner, n) for n in sorted(selected)]
    return json_answer(201, answer)


ROUTES: tuple[Route, ...] = (
    route("GET", "/app", "app", get_app),
    route("GET", "/orgs/{owner}/installation", "app", get_org_installation),
    route("GET", "/users/{owner}/installation", "app", get_user_installation),
    route("GET", "/app/installations", "app", list_installations),
    route("GET", "/app/installations/{installation_id}", "app", get_installation),
    route("POST", "/app/installations/{installation_id}/access_tokens", "app", create_access_token),
)
