"""Syntax of the request's ``scope`` (owner or owner/repo) and ``identity`` (policy name).

Both reach GitHub API paths, so anything outside GitHub's naming rules is
refused before any lookup. Error messages quote at most a short, sanitised
prefix of the input: it comes from an unauthenticated caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from octosts.domain.errors import InvalidRequest
from octosts.domain.text import show

MAX_OWNER = 39
MAX_REPO = 100
MAX_IDENTITY = 100

# ASCII classes spelled out: Python's \w would admit any Unicode letter.
_OWNER = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9])*")
_REPO = re.compile(r"[A-Za-z0-9._-]+")
_IDENTITY = re.compile(r"[A-Za-z0-9_.-]+")
_SHOWN = 40


@dataclass(frozen=True, slots=True)
class Scope:
    """Who the token is for: an owner (org or user), optionally one of its repositories."""

    owner: str
    repo: str | None

    def __str__(self) -> str:
        return self.owner if self.repo is None else f"{self.owner}/{self.repo}"


def parse_scope(text: str) -> Scope:
    """Parse ``owner`` or ``owner/repo``.

    Raises InvalidRequest naming the broken rule.
    """
    if not isinstance(text, str) or not text:
        raise InvalidRequest("scope is empty; expected 'owner' or 'owner/repo'")
    parts = text.split("/")
    if len(parts) > 2:
        raise InvalidRequest(
            f"scope {show(text, _SHOWN)} has more than one '/'; expected 'owner' or 'owner/repo'"
        )
    owner = parts[0]
    if not is_owner_name(owner):
        raise InvalidRequest(
            f"scope owner {show(owner, _SHOWN)} is not a GitHub owner name "
            f"(1-{MAX_OWNER} letters, digits and single inner hyphens)"
        )
    if len(parts) == 1:
        return Scope(owner=owner, repo=None)
    repo = parts[1]
    if not is_repo_name(repo):
        raise InvalidRequest(
            f"scope repository {show(repo, _SHOWN)} is not a GitHub repository name "
            f"(1-{MAX_REPO} of A-Z a-z 0-9 . _ -, not '.' or '..')"
        )
    return Scope(owner=owner, repo=repo)


def check_identity(text: str) -> str:
    """Return ``text`` if it is a valid policy name (one path segment).

    Raises InvalidRequest naming the broken rule.
    """
    if not isinstance(text, str) or not text:
        raise InvalidRequest("identity is empty")
    if not is_identity(text):
        raise InvalidRequest(
            f"identity {show(text, _SHOWN)} is not a policy name "
            f"(1-{MAX_IDENTITY} of A-Z a-z 0-9 _ . -, not '.' or '..')"
        )
    return text


def is_identity(text: str) -> bool:
    """Whether ``text`` is a policy name: 1-100 of ``A-Z a-z 0-9 _ . -``, not ``.``/``..``."""
    return (
        0 < len(text) <= MAX_IDENTITY
        and text not in {".", ".."}
        and _IDENTITY.fullmatch(text) is not None
    )


def is_owner_name(text: str) -> bool:
    return 0 < len(text) <= MAX_OWNER and _OWNER.fullmatch(text) is not None


def is_repo_name(text: str) -> bool:
    return (
        0 < len(text) <= MAX_REPO and text not in {".", ".."} and _REPO.fullmatch(text) is not None
    )
