"""Scope (``owner`` or ``owner/repo``) and identity (policy name) syntax.

Input: UTF-8 text; the whole text and each of its lines are tried as a scope and
as an identity, and the lines as the chainguard API's repeated ``scopes``.
Path: ``domain.names.parse_scope``, ``check_identity``, ``transport.compat.scope_of``.

Property: only ``InvalidRequest`` escapes, and each answer agrees with an
independent, regex-free reading of GitHub's naming rules (below): what is
accepted reaches GitHub API paths, so the two must never differ.
"""

from __future__ import annotations

import string

from octosts.domain.errors import InvalidRequest
from octosts.domain.names import check_identity, parse_scope
from octosts.transport.compat import scope_of
from tests.fuzz.targets._support import text

_ALNUM = frozenset(string.ascii_letters + string.digits)
_REPO_CHARS = _ALNUM | frozenset("._-")
MAX_PIECES = 8


def spec_owner(name: str) -> bool:
    """1-39 ASCII letters, digits and hyphens; no hyphen first, last or doubled."""
    return (
        0 < len(name) <= 39
        and all(c in _ALNUM or c == "-" for c in name)
        and not name.startswith("-")
        and not name.endswith("-")
        and "--" not in name
    )


def spec_repo(name: str) -> bool:
    """1-100 of ASCII letters, digits, '.', '_', '-'; not '.' or '..'."""
    return 0 < len(name) <= 100 and all(c in _REPO_CHARS for c in name) and name not in {".", ".."}


def spec_scope(scope: str) -> bool:
    owner, slash, repo = scope.partition("/")
    return spec_owner(owner) and (not slash or spec_repo(repo))


def spec_scope_of(scope: str, scopes: list[str]) -> str | None:
    if not scopes:
        return scope
    if any(s != scopes[0] for s in scopes) or (scope and scope != scopes[0]):
        return None
    return scopes[0]


def one_input(data: bytes) -> None:
    whole = text(data)
    pieces = [whole, *whole.split("\n")[:MAX_PIECES]]
    for piece in pieces:
        try:
            scope = parse_scope(piece)
        except InvalidRequest:
            assert not spec_scope(piece), piece
        else:
            assert spec_scope(piece), piece
            assert str(scope) == piece
        try:
            check_identity(piece)
        except InvalidRequest:
            assert not spec_repo(piece), piece
        else:
            assert spec_repo(piece), piece
    scopes = pieces[1:]
    for scope in ("", whole, scopes[0]):
        try:
            chosen = scope_of(scope, scopes)
        except InvalidRequest:
            assert spec_scope_of(scope, scopes) is None
        else:
            assert chosen == spec_scope_of(scope, scopes)
