"""Issuer trust: which OIDC issuers are accepted at all, at two levels, one rule.

``IssuerAllowlist`` (exact issuers plus guarded RE2 patterns, full match) is
the one compiled value for both: the deployment's ``OCTOSTS_ISSUER_ALLOWLIST``
/ ``OCTOSTS_ISSUER_PATTERNS`` (checked by the OIDC verifier before any network
call) and each organization's trusted-token-issuers file. ``compile_allowlist``
applies the same entry rules to both: issuers follow the token ``iss`` URL
rules with a lowercase scheme and host; patterns compile with RE2 and pass the
slash guard (``domain.slash_guard``).

The organization's file (``domain.layout.ISSUERS_FILE`` in the org policy
repository) restricts, for every exchange into that organization, which token
issuers may be used, before any trust policy is read::

    mode: enforce            # or audit (default enforce)
    issuers:                 # exact match
      - https://token.actions.githubusercontent.com
    issuer_patterns:         # RE2, full match
      - https://[a-z0-9-]+\\.oidc\\.example\\.com

``compile_trusted_issuers`` validates parsed data (the YAML reading is the
adapter's, ``adapters.policy_yaml.parse_trusted_issuers``); on top of the
entry rules it bounds the lists and refuses duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from octosts.domain.errors import IssuerRejected, PolicyInvalid, PolicyProblem
from octosts.domain.policy import Pattern, compile_pattern
from octosts.domain.slash_guard import check_pattern_guard
from octosts.domain.text import show, show_pattern
from octosts.domain.tokens import parse_issuer_url

IssuersMode = Literal["enforce", "audit"]
AllowlistField = Literal["issuers", "issuer_patterns"]

MAX_ISSUERS = 64
MAX_ISSUER_PATTERNS = 16
MAX_ENTRY_LENGTH = 256
FIELDS = ("mode", "issuers", "issuer_patterns")


@dataclass(frozen=True, slots=True)
class IssuerAllowlist:
    """Accepted issuers: exact URLs and RE2 patterns (full match); see ``compile_allowlist``."""

    issuers: frozenset[str] = frozenset()
    patterns: tuple[Pattern, ...] = ()

    @property
    def restricts(self) -> bool:
        """False for the empty allowlist (a deployment without one accepts any issuer)."""
        return bool(self.issuers or self.patterns)

    def allows(self, issuer: str) -> bool:
        """True when ``issuer`` is listed exactly or fully matches a pattern."""
        return issuer in self.issuers or any(p.fullmatch(issuer) for p in self.patterns)


ANY_ISSUER = IssuerAllowlist()  # restricts nothing


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """Why entry ``index`` of list ``field`` was refused; ``message`` names the entry."""

    field: AllowlistField
    index: int
    message: str


class AllowlistInvalid(ValueError):
    """One or more allowlist entries break the rules; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[EntryProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p.field}[{p.index}]: {p.message}" for p in self.problems))


def compile_allowlist(
    issuers: Sequence[str],
    patterns: Sequence[str],
    *,
    insecure_issuers: frozenset[str] = frozenset(),
    loopback_http: bool = False,
) -> IssuerAllowlist:
    """Validate and compile allowlist entries (both levels of issuer trust).

    An issuer may be plain ``http://`` only when it is one of the operator's
    ``insecure_issuers``, or, with ``loopback_http`` (an organization's file,
    as the original accepts it), when its host is loopback: such an entry is
    inert unless the deployment also lists the issuer in ``insecure_issuers``,
    since the token verifier refuses every other ``http://`` issuer first.
    Raises AllowlistInvalid listing every bad entry.
    """
    problems: list[EntryProblem] = []
    for index, issuer in enumerate(issuers):
        allow_http = issuer in insecure_issuers or (loopback_http and is_loopback_http(issuer))
        problem = issuer_entry_problem(issuer, allow_insecure=allow_http)
        if problem is not None:
            problems.append(EntryProblem("issuers", index, problem))
    compiled: list[Pattern] = []
    for index, source in enumerate(patterns):
        try:
            compiled.append(compile_issuer_pattern(source))
        except ValueError as exc:
            problems.append(EntryProblem("issuer_patterns", index, str(exc)))
    if problems:
        raise AllowlistInvalid(problems)
    return IssuerAllowlist(frozenset(issuers), tuple(compiled))


def issuer_entry_problem(issuer: str, *, allow_insecure: bool) -> str | None:
    """Why ``issuer`` cannot be listed as an exact issuer, or None when it can."""
    try:
        url = parse_issuer_url(issuer, allow_insecure=allow_insecure)
    except IssuerRejected as exc:
        hint = _HTTP_HINT if issuer.startswith("http://") and not allow_insecure else ""
        return f"{show(issuer, 80)}: {exc.detail or 'issuer URL rejected'}{hint}"
    # Entries are compared with a token's iss as exact strings: keep them canonical.
    if url.scheme != url.scheme.lower() or url.host != url.host.lower():
        return f"{show(issuer, 80)}: issuer URL rejected: scheme and host must be lowercase"
    return None


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_HTTP_HINT = (
    " (http:// only for issuers the deployment lists in OCTOSTS_INSECURE_ISSUERS; in an "
    "organization's file also for localhost, 127.0.0.1 and [::1])"
)


def is_loopback_http(issuer: str) -> bool:
    """``http://localhost``, ``http://127.0.0.1`` or ``http://[::1]`` (any port and path)."""
    if not issuer.startswith("http://"):
        return False
    try:
        url = parse_issuer_url(issuer, allow_insecure=True)
    except IssuerRejected:
        return False
    return url.host in LOOPBACK_HOSTS


def compile_issuer_pattern(source: str) -> Pattern:
    """Compile an issuer pattern (RE2, full match) that passes the slash guard.

    Raises ValueError naming the pattern.
    """
    try:
        compiled = compile_pattern(source)
    except ValueError as exc:
        raise ValueError(f"pattern {show_pattern(source)}: {exc}") from None
    check_pattern_guard(source)
    return compiled


@dataclass(frozen=True, slots=True)
class TrustedIssuers:
    """A validated trusted-token-issuers file: its mode and its allowlist."""

    mode: IssuersMode
    allowlist: IssuerAllowlist

    def allows(self, issuer: str) -> bool:
        """True when the file's allowlist accepts ``issuer``."""
        return self.allowlist.allows(issuer)


@dataclass(frozen=True, slots=True)
class IssuerVerdict:
    """The org allowlist's answer for one verified issuer.

    ``allowed`` is False only in enforce mode; ``audited`` is True when an
    audit-mode file would have refused the issuer (the exchange proceeds and
    the audit event and metric record it).
    """

    allowed: bool
    audited: bool
    reason: str  # "no_restriction" | "issuer_trusted" | "issuer_not_trusted"


NO_RESTRICTION = IssuerVerdict(allowed=True, audited=False, reason="no_restriction")


def judge_issuer(trusted: TrustedIssuers | None, issuer: str) -> IssuerVerdict:
    """Pure decision: ``trusted`` None means the org has no (readable) file."""
    if trusted is None:
        return NO_RESTRICTION
    if trusted.allows(issuer):
        return IssuerVerdict(allowed=True, audited=False, reason="issuer_trusted")
    if trusted.mode == "audit":
        return IssuerVerdict(allowed=True, audited=True, reason="issuer_not_trusted")
    return IssuerVerdict(allowed=False, audited=False, reason="issuer_not_trusted")


def compile_trusted_issuers(
    data: object,
    *,
    lines: Mapping[str, int] | None = None,
    insecure_issuers: frozenset[str] = frozenset(),
) -> TrustedIssuers:
    """Validate a parsed trusted-token-issuers document.

    ``insecure_issuers`` are ``http://`` issuers the operator allowed (local
    development); every other issuer must be ``https`` or loopback ``http``
    (``http://localhost``, ``http://127.0.0.1``, ``http://[::1]``, as the
    original accepts them; see ``compile_allowlist``).

    Raises PolicyInvalid listing every problem (field and line).
    """
    return _Compiler(lines or {}, insecure_issuers).run(data)


class _Compiler:
    def __init__(self, lines: Mapping[str, int], insecure: frozenset[str]) -> None:
        self.lines = lines
        self.insecure = insecure
        self.problems: list[PolicyProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(path, message, self.lines.get(path)))

    def run(self, data: object) -> TrustedIssuers:
        if not isinstance(data, Mapping):
            line = 1 if data is not None else None
            raise PolicyInvalid([PolicyProblem("", "the file must be a mapping of fields", line)])
        for key in data:
            if key not in FIELDS:
                self.problem(str(key)[:60], f"unknown field (allowed: {', '.join(FIELDS)})")
        # A field left empty (``mode:``, ``issuers:``) is unset, as the original reads it.
        mode = self.mode(data.get("mode") or "enforce")
        issuers = self.entries("issuers", data.get("issuers") or [], MAX_ISSUERS)
        patterns = self.entries(
            "issuer_patterns", data.get("issuer_patterns") or [], MAX_ISSUER_PATTERNS
        )
        if not issuers and not patterns and not self.problems:
            self.problem("", "list at least one entry in issuers or issuer_patterns")
        allowlist = ANY_ISSUER
        try:
            allowlist = compile_allowlist(
                [item for _, item in issuers],
                [item for _, item in patterns],
                insecure_issuers=self.insecure,
                loopback_http=True,
            )
        except AllowlistInvalid as exc:
            paths = {"issuers": issuers, "issuer_patterns": patterns}
            for problem in exc.problems:
                self.problem(paths[problem.field][problem.index][0], problem.message)
        if self.problems:
            raise PolicyInvalid(self.problems)
        return TrustedIssuers(mode=mode, allowlist=allowlist)

    def mode(self, value: object) -> IssuersMode:
        if value == "enforce" or value == "audit":  # noqa: PLR1714 - narrows the Literal
            return value
        self.problem("mode", "must be exactly 'enforce' or 'audit'")
        return "enforce"

    def entries(self, name: str, value: object, limit: int) -> list[tuple[str, str]]:
        """(path, entry) of every well-formed, distinct entry; the file's own limits."""
        if not isinstance(value, list):
            self.problem(name, "must be a list of strings")
            return []
        if len(value) > limit:
            self.problem(name, f"at most {limit} entries")
        seen: set[str] = set()
        result: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            path = f"{name}[{index}]"
            if not isinstance(item, str) or not item:
                self.problem(path, "must be a non-empty string")
            elif len(item) > MAX_ENTRY_LENGTH:
                self.problem(path, f"longer than {MAX_ENTRY_LENGTH} characters")
            elif item in seen:
                self.problem(path, "duplicate entry")
            else:
                seen.add(item)
                result.append((path, item))
        return result
