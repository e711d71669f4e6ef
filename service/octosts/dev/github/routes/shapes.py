"""GitHub's JSON shapes for the objects several routes return."""

from __future__ import annotations

from octosts.dev.github.auth import APP_SLUG, App
from octosts.dev.github.state import DEFAULT_BRANCH, Owner


def app_json(app: App) -> dict[str, object]:
    return {
        "id": app.app_id,
        "slug": app.slug,
        "name": "Octo STS (emulated)" if app.slug == APP_SLUG else f"Octo STS ({app.slug})",
        "permissions": dict(app.permissions),
        "events": [],
    }


def account_json(owner: Owner) -> dict[str, object]:
    return {
        "login": owner.login,
        "id": owner.account_id,
        "type": "User" if owner.is_user else "Organization",
    }


def installation_json(app: App, owner: Owner) -> dict[str, object]:
    installation_id = owner.installations[app.app_id]
    return {
        "id": installation_id,
        "account": account_json(owner),
        "app_id": app.app_id,
        "app_slug": app.slug,
        "target_id": owner.account_id,
        "target_type": "User" if owner.is_user else "Organization",
        "repository_selection": "all",
        "access_tokens_url": f"/app/installations/{installation_id}/access_tokens",
        "repositories_url": "/installation/repositories",
        "permissions": dict(app.permissions),
        "events": [],
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "single_file_name": None,
    }


def repo_json(owner: Owner, lower_name: str) -> dict[str, object]:
    name = owner.repos.get(lower_name, lower_name)
    return {
        "id": abs(hash((owner.login.lower(), lower_name))) % 10**9,
        "name": name,
        "full_name": f"{owner.login}/{name}",
        "private": True,
        "owner": account_json(owner),
        "default_branch": DEFAULT_BRANCH,
    }
