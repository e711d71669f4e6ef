"""The GitHub App manifest of an Octo STS deployment (``octo-sts setup manifest``).

GitHub's "register a GitHub App from a manifest" flow takes a JSON document POSTed, as the
form field ``manifest``, from a browser to ``https://github.com/settings/apps/new`` (a
personal App) or ``.../organizations/ORG/settings/apps/new``; the owner confirms the App on
GitHub's page and GitHub redirects to ``redirect_url?code=...``. ``ops.conversion`` trades
that code for the App's id, private key and webhook secret.

What the manifest asks for, each from its one home:

* what the service itself asks GitHub for: ``metadata: read`` (every App has it), the
  policy-reading token's permissions (``adapters.github.POLICY_READ_PERMISSIONS``) and, with
  the webhook, the check-run token's (``webhook.github_checks.CHECK_PERMISSIONS``);
* what trust policies may grant: an installation token never gets more than its App has, so
  every permission a policy will ask for must be in the App (``NAME=LEVEL``, checked against
  ``domain.permissions``); where both name a permission the higher level is asked for;
* the webhook (``{url}/webhook`` through Envoy unless told) and the events it handles,
  ``EVENT_PERMISSIONS`` (GitHub sends an event only to Apps holding its permission);
* no user authorization: no callback URLs, ``request_oauth_on_install: false``; a private
  App unless ``public``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

from octosts.adapters.github import POLICY_READ_PERMISSIONS
from octosts.adapters.github_rest import is_loopback_host
from octosts.domain.names import is_owner_name
from octosts.domain.permissions import LEVEL_RANK, READ, permission_problem
from octosts.domain.text import show
from octosts.webhook.github_checks import CHECK_PERMISSIONS
from octosts.webhook.server import PATH as WEBHOOK_PATH

# The webhook events the service handles (webhook/handler.py), and the permission GitHub
# requires an App to hold before it sends each one.
EVENT_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {"push": "contents", "pull_request": "pull_requests", "check_suite": "checks"}
)
# GitHub refuses longer App names.
MAX_NAME_LENGTH = 34
DEFAULT_GITHUB_WEB = "https://github.com"
DEFAULT_DESCRIPTION = (
    "Octo STS: short-lived GitHub tokens for workloads with OIDC identities, "
    "as the trust policies in .github/chainguard/ allow."
)
_GRANT = re.compile(r"([a-z_]+)[=:]([a-z]+)")


class ManifestError(ValueError):
    """The App cannot be described as asked; ``problems`` lists every reason."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class AppSpec:
    """What an operator decides about the App; ``build_manifest`` checks it."""

    name: str
    url: str  # the service's public URL: the App's homepage
    webhook_url: str | None  # None: no webhook (no events, no check runs on policy changes)
    redirect_url: str | None = None  # where GitHub sends the browser with ?code=
    grants: Mapping[str, str] = field(default_factory=dict)  # what policies may grant
    description: str = DEFAULT_DESCRIPTION
    public: bool = False


def service_permissions(*, webhook: bool) -> dict[str, str]:
    """What the service's own GitHub calls need the App to hold."""
    needs = {"metadata": READ, **POLICY_READ_PERMISSIONS}
    return merge_permissions(needs, CHECK_PERMISSIONS) if webhook else needs


def merge_permissions(*sets: Mapping[str, str]) -> dict[str, str]:
    """Every permission any set names, at the highest level any names (levels must be valid)."""
    merged: dict[str, str] = {}
    for permissions in sets:
        for name, level in permissions.items():
            if LEVEL_RANK[level] > LEVEL_RANK.get(merged.get(name, ""), 0):
                merged[name] = level
    return dict(sorted(merged.items()))


def parse_grants(texts: Iterable[str]) -> dict[str, str]:
    """``NAME=LEVEL`` (or ``NAME:LEVEL``) items as a mapping. Raises ManifestError."""
    grants: dict[str, str] = {}
    problems: list[str] = []
    for text in texts:
        found = _GRANT.fullmatch(text.strip())
        if found is None:
            problems.append(
                f"permission {show(text, 60)}: expected NAME=LEVEL, e.g. contents=write"
            )
            continue
        name, level = found.groups()
        if name in grants:
            problems.append(f"permission {name}: given twice")
        grants[name] = level
    if problems:
        raise ManifestError(problems)
    return grants


def permission_problems(permissions: Mapping[str, str]) -> list[str]:
    """Why each entry is not an installation permission GitHub knows (none: all valid)."""
    problems = []
    for name, level in permissions.items():
        problem = permission_problem(name, level)
        if problem is not None:
            problems.append(f"permission {show(name, 60)}: {problem}")
    return problems


def grants_from_document(data: object, where: str) -> dict[str, str]:
    """The grants in a parsed YAML/JSON document: a ``NAME: LEVEL`` mapping, or a trust
    policy (its ``permissions``). Raises ManifestError."""
    if isinstance(data, dict) and isinstance(data.get("permissions"), dict):
        data = data["permissions"]
    if not isinstance(data, dict) or not data:
        raise ManifestError([f"{where}: expected a mapping of permission: level"])
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ManifestError(
            [f"{where}: {show(str(k), 60)}: names and levels must be strings" for k in bad]
        )
    return {str(k): str(v) for k, v in data.items()}


def default_webhook_url(url: str) -> str:
    """The webhook behind the service's public URL (Envoy routes ``POST /webhook``)."""
    return url.rstrip("/") + WEBHOOK_PATH


def build_manifest(spec: AppSpec) -> dict[str, Any]:
    """The manifest JSON for ``spec``. Raises ManifestError listing every problem."""
    problems = _spec_problems(spec) + permission_problems(spec.grants)
    if problems:
        raise ManifestError(problems)
    webhook = spec.webhook_url is not None
    manifest: dict[str, Any] = {
        "name": spec.name,
        "url": spec.url,
        "description": spec.description,
        "public": spec.public,
        "default_permissions": merge_permissions(service_permissions(webhook=webhook), spec.grants),
        "request_oauth_on_install": False,
    }
    if spec.webhook_url is not None:
        manifest["hook_attributes"] = {"url": spec.webhook_url, "active": True}
        manifest["default_events"] = list(EVENT_PERMISSIONS)
    if spec.redirect_url is not None:
        manifest["redirect_url"] = spec.redirect_url
    return manifest


def _spec_problems(spec: AppSpec) -> list[str]:
    problems: list[str] = []
    name = spec.name.strip()
    if not name or name != spec.name or not name.isprintable():
        problems.append("name: must be printable text without leading or trailing spaces")
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(f"name: GitHub allows at most {MAX_NAME_LENGTH} characters")
    urls = [("url", spec.url, False), ("webhook url", spec.webhook_url, True)]
    urls.append(("redirect url", spec.redirect_url, True))
    for what, value, private in urls:
        problem = None if value is None else url_problem(value, https_only=private)
        if problem is not None:
            problems.append(f"{what} {show(value or '', 80)}: {problem}")
    return problems


def url_problem(value: str, *, https_only: bool) -> str | None:
    """Why ``value`` cannot be one of the App's URLs, or None.

    ``https_only``: webhook deliveries carry repository data and the redirect carries a code
    that is worth the App's private key for an hour, so plain http is for loopback only.
    """
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "expected an absolute http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a #fragment"
    if https_only and parts.scheme != "https" and not is_loopback_host(parts.hostname):
        return "must be https (plain http only for localhost)"
    return None


def creation_url(github_web: str = DEFAULT_GITHUB_WEB, org: str | None = None) -> str:
    """Where the manifest is POSTed: an organization's App settings, or the user's.

    Raises ManifestError for an organization name GitHub would not have.
    """
    problem = url_problem(github_web, https_only=True)
    if problem is not None:
        raise ManifestError([f"GitHub URL {show(github_web, 80)}: {problem}"])
    base = github_web.rstrip("/")
    if org is None:
        return f"{base}/settings/apps/new"
    if not is_owner_name(org):
        raise ManifestError([f"organization {show(org, 60)}: not a GitHub organization name"])
    return f"{base}/organizations/{quote(org)}/settings/apps/new"


def creation_form(manifest: Mapping[str, Any], action: str, state: str | None = None) -> str:
    """A page whose button POSTs ``manifest`` to GitHub's App creation URL ``action``.

    GitHub takes a manifest only from a browser form; opening this file and pressing the button
    is that step. ``state`` comes back with the code (compare it if you automate the redirect).
    """
    target = action if state is None else f"{action}?state={quote(state, safe='')}"
    body = json.dumps(manifest, indent=2)
    title = f"Create the GitHub App {html.escape(str(manifest['name']))}"
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>{title}</h1>
<p>The button sends this manifest to GitHub, which asks you to confirm the App.
GitHub then redirects to the manifest's <code>redirect_url</code> with <code>?code=...</code>:
pass that code to <code>octo-sts setup convert --code CODE</code> within the hour.</p>
<form action="{html.escape(target)}" method="post">
<input type="hidden" name="manifest" value="{html.escape(json.dumps(manifest))}">
<button type="submit">Create the GitHub App on {html.escape(urlsplit(action).netloc)}</button>
</form>
<pre>{html.escape(body)}</pre>
</body>
</html>
"""
