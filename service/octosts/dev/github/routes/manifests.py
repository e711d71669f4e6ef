"""Registering an App from a manifest (``dev.github.manifests``): GitHub's web form and the
REST conversion, both without credentials."""

from __future__ import annotations

from octosts.dev.github.answers import Answer, not_found
from octosts.dev.github.routing import Context, Request, Route, route
from octosts.domain.names import is_owner_name


def new_user_app(ctx: Context, req: Request) -> Answer:
    return ctx.manifests.submit(req.body, req.query, None)


def new_org_app(ctx: Context, req: Request) -> Answer:
    org = req.params["org"]
    if not is_owner_name(org):
        raise not_found()
    return ctx.manifests.submit(req.body, req.query, org)


def convert(ctx: Context, req: Request) -> Answer:
    return ctx.manifests.convert(req.params["code"])


ROUTES: tuple[Route, ...] = (
    route("POST", "/settings/apps/new", "any", new_user_app),
    route("POST", "/organizations/{org}/settings/apps/new", "any", new_org_app),
    route("POST", "/app-manifests/{code}/conversions", "any", convert),
)
