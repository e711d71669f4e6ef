"""The emulated REST API, one module per area; ``ROUTES`` is the whole table."""

from __future__ import annotations

from octosts.dev.github.routes import apps, checks, contents, installation, issues, manifests
from octosts.dev.github.routing import Route

ROUTES: tuple[Route, ...] = (
    *installation.ROUTES,
    *apps.ROUTES,
    *contents.ROUTES,
    *checks.ROUTES,
    *issues.ROUTES,
    *manifests.ROUTES,
)
