"""Routes for the App itself (JWT): the app, installation lookups, minting installation tokens."""

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


def get_app(ctx: Context, _: Request) -> Answer:
    return json_answer(200, app_json(ctx.app))


def _installation(ctx: Context, login: str, *, orgs_only: bool) -> Answer:
    owner = ctx.repos.owner(login)
    # Organizations answer on /orgs/ and /users/, users on /users/ only (as on GitHub).
    if owner is None or (orgs_only and owner.is_user):
        raise not_found()
    return json_answer(200, installation_json(ctx.app, owner))


def get_org_installation(ctx: Context, req: Request) -> Answer:
    return _installation(ctx, req.params["owner"], orgs_only=True)


def get_user_installation(ctx: Context, req: Request) -> Answer:
    return _installation(ctx, req.params["owner"], orgs_only=False)


def list_installations(ctx: Context, req: Request) -> Answer:
    """Every installation of the app, by id, paged with ``Link`` (what go-github's
    ``Apps.ListInstallations`` walks, as the original Octo STS does to find an owner's)."""
    everything = [installation_json(ctx.app, owner) for owner in ctx.repos.owners()]
    chunk, headers = paginated(everything, req.query, f"{ctx.base_url()}/app/installations")
    return json_answer(200, chunk, headers)


def get_installation(ctx: Context, req: Request) -> Answer:
    owner = installation_owner(ctx, req.params["installation_id"])
    return json_answer(200, installation_json(ctx.app, owner))


def installation_owner(ctx: Context, raw_id: str) -> Owner:
    """The owner of installation ``raw_id`` (its canonical decimal spelling only), else 404."""
    owner = ctx.repos.owner_by_installation(int(raw_id)) if raw_id.isdecimal() else None
    if owner is None or str(owner.installation_id) != raw_id:
        raise not_found()
    return owner


def create_access_token(ctx: Context, req: Request) -> Answer:
    owner = installation_owner(ctx, req.params["installation_id"])
    request = parse_json_object(req.body, empty_ok=True)
    installation = ctx.app.permissions
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
        owner.installation_id, owner.login, permissions, selected, ctx.clock.now()
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
