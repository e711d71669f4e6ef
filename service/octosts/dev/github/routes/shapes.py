"""GitHub's JSON shapes for the objects several routes return."""

from __future__ import annotations

from octosts.dev.github.auth import App
from octosts.dev.github.state import DEFAULT_BRANCH, Owner

APP_SLUG = "octo-sts-emulated"


def app_json(app: App) -> dict[str, object]:
    return {
        "id": app.app_id,
        "slug": APP_SLUG,
        "name": "Octo STS (emulated)",
        "permissions": dict(app.permissions),
        "events": [],
    }


def account_json(owner: Owner) -> dict[str, object]:
    return {
        "login": owner.login,
        "id": owner.installation_id * 10,
        "type": "User" if owner.is_user else "Organization",
    }


def installation_json(app: App, owner: Owner) -> dict[str, object]:
    return {
        "id": owner.installation_id,
        "account": account_json(owner),
        "app_id": app.app_id,
        "app_slug": APP_SLUG,
        "target_id": owner.installation_id * 10,
        "target_type": "User" if owner.is_user else "Organization",
        "repository_selection": "all",
        "access_tokens_url": f"/app/installations/{owner.installation_id}/access_tokens",
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
