"""GitHub App installation-token permissions: names and the levels GitHub accepts.

Mirrors the ``permissions`` object of GitHub's REST "Create an installation
access token for an app" endpoint (the ``app-permissions`` schema). A policy
naming anything else is invalid at load time, so a typo never becomes a
422 from GitHub at mint time.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from octosts.domain.text import show

READ = "read"
WRITE = "write"
ADMIN = "admin"

# Ordering of levels, for callers comparing requested and granted permissions.
LEVEL_RANK: Mapping[str, int] = MappingProxyType({READ: 1, WRITE: 2, ADMIN: 3})

_R = frozenset({READ})
_W = frozenset({WRITE})
_RW = frozenset({READ, WRITE})
_RWA = frozenset({READ, WRITE, ADMIN})

PERMISSION_LEVELS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # Repository permissions.
        "actions": _RW,
        "administration": _RW,
        "artifact_metadata": _RW,
        "attestations": _RW,
        "checks": _RW,
        "codespaces": _RW,
        "contents": _RW,
        "dependabot_secrets": _RW,
        "deployments": _RW,
        "discussions": _RW,
        "environments": _RW,
        "issues": _RW,
        "merge_queues": _RW,
        "metadata": _RW,
        "packages": _RW,
        "pages": _RW,
        "pull_requests": _RW,
        "repository_custom_properties": _RW,
        "repository_hooks": _RW,
        "repository_projects": _RWA,
        "secret_scanning_alerts": _RW,
        "secrets": _RW,
        "security_events": _RW,
        "single_file": _RW,
        "statuses": _RW,
        "vulnerability_alerts": _RW,
        "workflows": _W,
        # Organization permissions.
        "custom_properties_for_organizations": _RW,
        "members": _RW,
        "organization_administration": _RW,
        "organization_announcement_banners": _RW,
        "organization_copilot_seat_management": _W,
        "organization_custom_org_roles": _RW,
        "organization_custom_properties": _RWA,
        "organization_custom_roles": _RW,
        "organization_events": _R,
        "organization_hooks": _RW,
        "organization_packages": _RW,
        "organization_personal_access_token_requests": _RW,
        "organization_personal_access_tokens": _RW,
        "organization_plan": _R,
        "organization_projects": _RWA,
        "organization_secrets": _RW,
        "organization_self_hosted_runners": _RW,
        "organization_user_blocking": _RW,
        "team_discussions": _RW,
        # Enterprise and user permissions GitHub also lists for installation tokens.
        "enterprise_custom_properties_for_organizations": _RWA,
        "email_addresses": _RW,
        "followers": _RW,
        "git_ssh_keys": _RW,
        "gpg_keys": _RW,
        "interaction_limits": _RW,
        "profile": _W,
        "starring": _RW,
    }
)


def permission_problem(name: str, level: object) -> str | None:
    """Why ``name: level`` is not a valid installation permission, or None when it is."""
    allowed = PERMISSION_LEVELS.get(name)
    if allowed is None:
        close = difflib.get_close_matches(name, PERMISSION_LEVELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown GitHub App permission{hint}"
    if not isinstance(level, str):
        return f"level must be a string, one of {_levels(allowed)}"
    if level not in allowed:
        return f"level {show(level, 40)} is not allowed; use one of {_levels(allowed)}"
    return None


def _levels(levels: frozenset[str]) -> str:
    return "|".join(sorted(levels, key=LEVEL_RANK.__getitem__))


def common_permissions(grants: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """What every grant allows: each permission all of them name, at the lowest level any grants.

    A permission missing from one grant is dropped; no grants, or nothing in common, is ``{}``.
    Levels are those of valid policies (``LEVEL_RANK``).
    """
    if not grants:
        return {}
    first, *rest = grants
    common: dict[str, str] = {}
    for name, level in first.items():
        others = [grant.get(name) for grant in rest]
        if all(other is not None for other in others):
            levels = [level, *(other for other in others if other is not None)]
            common[name] = min(levels, key=LEVEL_RANK.__getitem__)
    return common
