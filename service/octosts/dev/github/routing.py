"""The REST routes as a table: method, path pattern, who may call, handler.

A pattern is a path whose ``{name}`` segments match one path segment and whose last segment may
be ``{name+}`` (one or more segments, joined with ``/``). A route is for App JWTs (``app``),
installation tokens (``token``) or anyone (``any``: served before authentication is required and
without spending rate limit). Anything else is GitHub's 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from octosts.dev.github.answers import Answer, HttpError, not_found
from octosts.dev.github.auth import App, Principal
from octosts.dev.github.ledger import TokenLedger
from octosts.dev.github.limits import RateLimits
from octosts.dev.github.manifests import ManifestFlow
from octosts.dev.github.state import Repos

if TYPE_CHECKING:
    from octosts.domain.ports import Clock

Caller = Literal["app", "token", "any"]


@dataclass(frozen=True, slots=True)
class Context:
    """What route handlers work on. ``apps`` by id (the emulator adds to it)."""

    apps: Mapping[int, App]
    repos: Repos
    ledger: TokenLedger
    limits: RateLimits
    clock: Clock
    base_url: Callable[[], str]  # the server's URL, for absolute links (raises before start)
    manifests: ManifestFlow  # Apps registered from a manifest (docs/self-hosting.md)

    def app_of(self, principal: Principal) -> App:
        """The App calling (an App JWT) or whose installation the token is of."""
        app = self.apps.get(principal.app_id or 0)
        if app is None:  # pragma: no cover - authenticate() only names known Apps
            raise HttpError(401, "Bad credentials")
        return app


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # decoded, without the query
    query: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    principal: Principal
    params: Mapping[str, str]  # from the route's pattern


Handler = Callable[[Context, Request], Answer]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    caller: Caller
    handler: Handler

    def match(self, method: str, segments: list[str]) -> dict[str, str] | None:
        if method != self.method:
            return None
        params: dict[str, str] = {}
        for i, part in enumerate(self.pattern):
            if part.startswith("{") and part.endswith("+}"):
                if i >= len(segments):
                    return None
                params[part[1:-2]] = "/".join(segments[i:])
                return params
            if i >= len(segments):
                return None
            if part.startswith("{") and part.endswith("}"):
                params[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return params if len(segments) == len(self.pattern) else None


def route(method: str, pattern: str, caller: Caller, handler: Handler) -> Route:
    return Route(method, tuple(s for s in pattern.split("/") if s), caller, handler)


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple(routes)

    def _find(
        self, method: str, segments: list[str], caller: Caller
    ) -> tuple[Route, dict[str, str]] | None:
        for candidate in self._routes:
            if candidate.caller == caller:
                params = candidate.match(method, segments)
                if params is not None:
                    return candidate, params
        return None

    def dispatch(
        self,
        context: Context,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        principal: Principal,
    ) -> Answer:
        """Answer one authenticated request. Raises HttpError (401, 403 rate limit, 404, ...)."""
        segments = [s for s in path.split("/") if s]

        def call(found: tuple[Route, dict[str, str]]) -> Answer:
            handler, params = found[0].handler, found[1]
            request = Request(method, path, query, headers, body, principal, params)
            return handler(context, request)

        public = self._find(method, segments, "any")
        if public is not None:
            return call(public)
        if principal.kind == "none":
            raise HttpError(401, "Requires authentication")
        # Conditional reads cost no rate limit when they hit (304); they are never refused by it.
        if not (method == "GET" and segments[:1] == ["repos"] and "if-none-match" in headers):
            context.limits.check(principal.budget)
        found = self._find(method, segments, principal.kind)
        if found is None:
            raise not_found()
        return call(found)
