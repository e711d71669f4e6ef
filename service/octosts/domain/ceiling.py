"""The organization's permission ceiling: the most any trust policy in it may grant (pure).

An org file in the org policy repository (``domain.layout.CEILING_FILE``) caps every token
minted into the organization, whatever the policy that asks for it, repository or org::

    default: read              # permissions not listed: none | read | write | admin
    permissions:               # the highest level per permission (none: never)
      contents: write
      pull_requests: write
      administration: none
    elevated:                  # optional: only these identities get write or admin at all
      identities: [release]
      identity_patterns: ['deploy-[a-z0-9-]+']   # RE2, full match

``default`` is ``none`` when left out: the file is then an allowlist, and a permission the
org never thought about is refused rather than allowed. An identity is the policy's name
(``{identity}.sts.yaml``), what the exchange request names. A policy that asks for more
than its cap is refused as a whole (``policy_exceeds_ceiling``), never silently trimmed:
its owner learns what to change from the check run and ``octo-sts policy lint``.

``compile_ceiling`` validates parsed data (the YAML reading is the adapter's,
``adapters.policy_yaml.parse_permission_ceiling``); ``excesses`` is the one rule the
exchange, the webhook's check run and the linter apply.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from octosts.domain.errors import PolicyInvalid, PolicyProblem
from octosts.domain.names import MAX_IDENTITY, is_identity
from octosts.domain.permissions import ADMIN, LEVEL_RANK, PERMISSION_LEVELS, READ, WRITE
from octosts.domain.policy import Pattern, compile_pattern
from octosts.domain.text import clip, show

NONE = "none"
CAP_RANK: Mapping[str, int] = MappingProxyType({NONE: 0, **LEVEL_RANK})
FIELDS = ("default", "permissions", "elevated")
ELEVATED_FIELDS = ("identities", "identity_patterns")
MAX_ELEVATED = 64


@dataclass(frozen=True, slots=True)
class PermissionCeiling:
    """A validated ceiling file. ``elevated`` None: any identity may have write/admin."""

    default: str
    permissions: Mapping[str, str]
    elevated_identities: frozenset[str] | None = None
    elevated_patterns: tuple[Pattern, ...] = ()

    def cap(self, permission: str) -> str:
        """The highest level ``permission`` may have (``none``: not at all)."""
        return self.permissions.get(permission, self.default)

    def may_elevate(self, identity: str) -> bool:
        """Whether policies named ``identity`` may grant write or admin."""
        if self.elevated_identities is None:
            return True
        return identity in self.elevated_identities or any(
            p.fullmatch(identity) for p in self.elevated_patterns
        )


@dataclass(frozen=True, slots=True)
class Excess:
    """One permission a policy asks for above the ceiling: ``allowed`` is its cap for this
    identity; ``elevated`` says the cap came from the ``elevated`` list."""

    permission: str
    asked: str
    allowed: str
    elevated: bool

    def message(self) -> str:
        if self.elevated:
            return (
                f"{self.asked} is above what this identity may be granted ({self.allowed}): "
                "the organization's permission ceiling gives write and admin only to the "
                "identities it lists under elevated"
            )
        if self.allowed == NONE:
            return f"{self.asked} is not allowed: the organization's permission ceiling forbids it"
        return f"{self.asked} is above the organization's permission ceiling ({self.allowed})"


def excesses(
    permissions: Mapping[str, str], identity: str, ceiling: PermissionCeiling | None
) -> list[Excess]:
    """Every permission in ``permissions`` above the cap for a policy named ``identity``
    (none without a ceiling)."""
    found: list[Excess] = []
    if ceiling is None:
        return found
    for name, level in sorted(permissions.items()):
        cap = ceiling.cap(name)
        elevated = False
        if CAP_RANK[cap] > CAP_RANK[READ] and not ceiling.may_elevate(identity):
            cap, elevated = READ, True
        if CAP_RANK.get(level, CAP_RANK[ADMIN]) > CAP_RANK[cap]:
            found.append(Excess(name, level, cap, elevated))
    return found


def excess_problems(
    excess: list[Excess], lines: Mapping[str, int] | None = None
) -> list[PolicyProblem]:
    """The excesses as problems of the policy file (``permissions.<name>``, its line)."""
    return [
        PolicyProblem(
            f"permissions.{e.permission}",
            e.message(),
            (lines or {}).get(f"permissions.{e.permission}"),
        )
        for e in excess
    ]


def compile_ceiling(data: object, *, lines: Mapping[str, int] | None = None) -> PermissionCeiling:
    """Validate a parsed ceiling document.

    Raises PolicyInvalid listing every problem (field and line).
    """
    return _Compiler(lines or {}).run(data)


class _Compiler:
    def __init__(self, lines: Mapping[str, int]) -> None:
        self.lines = lines
        self.problems: list[PolicyProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(path, message, self.lines.get(path)))

    def run(self, data: object) -> PermissionCeiling:
        if not isinstance(data, Mapping):
            line = 1 if data is not None else None
            raise PolicyInvalid([PolicyProblem("", "the file must be a mapping of fields", line)])
        for key in data:
            if key not in FIELDS:
                self.problem(clip(str(key), 60), f"unknown field (allowed: {', '.join(FIELDS)})")
        # A field left empty (``default:``) is unset, as in the trusted-issuers file; YAML's
        # ``no``/``false``/``0`` are not: a level is one of the words, never a guess.
        raw_default = data.get("default")
        default = self.level("default", NONE if raw_default is None else raw_default, None)
        permissions = self.permissions(data.get("permissions"))
        identities, patterns = self.elevated(data)
        if "permissions" not in data and "default" not in data:
            self.problem("", "set permissions (the cap per permission), default, or both")
        if self.problems:
            raise PolicyInvalid(self.problems)
        return PermissionCeiling(default, permissions, identities, patterns)

    def level(self, path: str, value: object, permission: str | None) -> str:
        allowed = (
            sorted(PERMISSION_LEVELS[permission], key=LEVEL_RANK.__getitem__)
            if permission is not None
            else [READ, WRITE, ADMIN]
        )
        choices = [NONE, *allowed]
        if not isinstance(value, str) or value not in choices:
            self.problem(
                path, f"{show(str(value), 40)} is not a level: use one of {'|'.join(choices)}"
            )
            return NONE
        return value

    def permissions(self, value: object) -> Mapping[str, str]:
        result: dict[str, str] = {}
        if value is None:
            return MappingProxyType(result)
        if not isinstance(value, Mapping):
            self.problem("permissions", "must be a mapping of permission: level")
            return MappingProxyType(result)
        for name, level in value.items():
            path = clip(f"permissions.{name}")
            if not isinstance(name, str) or name not in PERMISSION_LEVELS:
                close = difflib.get_close_matches(str(name), PERMISSION_LEVELS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(path, f"unknown GitHub App permission{hint}")
                continue
            result[name] = self.level(path, level, name)
        return MappingProxyType(result)

    def elevated(
        self, data: Mapping[object, object]
    ) -> tuple[frozenset[str] | None, tuple[Pattern, ...]]:
        if "elevated" not in data:
            return None, ()
        value = data["elevated"]
        if not isinstance(value, Mapping):
            self.problem("elevated", "must be a mapping with identities and/or identity_patterns")
            return None, ()
        for key in value:
            if key not in ELEVATED_FIELDS:
                self.problem(
                    clip(f"elevated.{key}", 60),
                    f"unknown field (allowed: {', '.join(ELEVATED_FIELDS)})",
                )
        identities: set[str] = set()
        for path, item in self.entries(value, "identities"):
            if not is_identity(item):
                self.problem(
                    path,
                    f"{show(item, 40)} is not a policy name "
                    f"(1-{MAX_IDENTITY} of A-Z a-z 0-9 _ . -)",
                )
            identities.add(item)
        patterns: list[Pattern] = []
        for path, item in self.entries(value, "identity_patterns"):
            try:
                patterns.append(compile_pattern(item))
            except ValueError as exc:
                self.problem(path, str(exc))
        if not identities and not patterns:
            self.problem(
                "elevated",
                "list at least one identity or pattern (leave elevated out to let every "
                "identity have write and admin up to the caps)",
            )
        return frozenset(identities), tuple(patterns)

    def entries(self, value: Mapping[object, object], name: str) -> list[tuple[str, str]]:
        items = value.get(name) or []
        where = f"elevated.{name}"
        if not isinstance(items, list):
            self.problem(where, "must be a list of strings")
            return []
        if len(items) > MAX_ELEVATED:
            self.problem(where, f"at most {MAX_ELEVATED} entries")
        result = []
        for index, item in enumerate(items):
            path = f"{where}[{index}]"
            if not isinstance(item, str) or not item:
                self.problem(path, "must be a non-empty string")
            else:
                result.append((path, item))
        return result
