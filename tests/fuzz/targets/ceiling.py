"""Organization permission ceiling files, as an org owner may commit them.

Input: the file's bytes. Path: ``adapters.policy_yaml.parse_permission_ceiling`` (strict
YAML, then ``domain.ceiling.compile_ceiling``), the webhook's ``validate_file`` for it; then
``domain.ceiling.excesses`` for every permission and level GitHub has, for a few identities.

Property: only ``PolicyInvalid`` escapes; every problem renders and names a line inside the
file (or none); the check run fails exactly when the file is invalid. For an accepted
ceiling, ``excesses`` agrees with a reading of the file's rules written here: a level is
refused exactly when it ranks above the permission's cap (its own, else ``default``), the
cap being at most ``read`` for an identity ``elevated`` does not list; a policy's excesses
are the union of its permissions' own, and no ceiling refuses nothing.
"""

from __future__ import annotations

from octosts.adapters.policy_yaml import parse_permission_ceiling
from octosts.domain.ceiling import CAP_RANK, PermissionCeiling, excesses
from octosts.domain.errors import PolicyInvalid
from octosts.domain.layout import CEILING_FILE
from octosts.domain.permissions import PERMISSION_LEVELS
from octosts.webhook.validate import validate_file
from tests.fuzz.targets.policy import _lines

IDENTITIES = ("ci", "release", "deploy-prod", "Deploy-prod", "x" * 64)


def one_input(data: bytes) -> None:
    ceiling = _parse(data, _lines(data))
    problems = validate_file(CEILING_FILE, data, repo=".github", org_policy_repo=".github")
    assert (ceiling is None) == bool(problems), problems
    if ceiling is None:
        return
    for identity in IDENTITIES:
        _check(ceiling, identity)


def _parse(data: bytes, lines: int) -> PermissionCeiling | None:
    try:
        return parse_permission_ceiling(data)
    except PolicyInvalid as exc:
        problems = exc.problems
    assert problems
    for problem in problems:
        problem.render()
        assert problem.line is None or 1 <= problem.line <= lines, problem
    return None


def _check(ceiling: PermissionCeiling, identity: str) -> None:
    elevated = ceiling.may_elevate(identity)
    everything: dict[str, str] = {}
    expected: set[str] = set()
    for permission, levels in sorted(PERMISSION_LEVELS.items()):
        cap = ceiling.permissions.get(permission, ceiling.default)
        assert cap == "none" or cap in levels or permission not in ceiling.permissions, cap
        if not elevated:
            cap = min(cap, "read", key=CAP_RANK.__getitem__)
        for level in levels:
            found = excesses({permission: level}, identity, ceiling)
            assert bool(found) == (CAP_RANK[level] > CAP_RANK[cap]), (permission, level, cap)
            assert excesses({permission: level}, identity, None) == []
        top = max(levels, key=CAP_RANK.__getitem__)
        everything[permission] = top
        if CAP_RANK[top] > CAP_RANK[cap]:
            expected.add(permission)
    assert {e.permission for e in excesses(everything, identity, ceiling)} == expected
