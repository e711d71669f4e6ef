"""Organization trusted-token-issuers: which OIDC issuers an org accepts at all.

The file ``.github/chainguard/trusted-token-issuers.yaml`` in the org policy
repository restricts, for every exchange into that organization, which token
issuers may be used, before any trust policy is read::

    mode: enforce            # or audit (default enforce)
    issuers:                 # exact match
      - https://token.actions.githubusercontent.com
    issuer_patterns:         # RE2, full match
      - https://[a-z0-9-]+\\.oidc\\.example\\.com

``compile_trusted_issuers`` validates parsed data (the YAML reading is the
adapter's, ``adapters.policy_yaml.parse_trusted_issuers``).

Every pattern must pass the slash guard (``domain.slash_guard``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from octosts.domain.errors import IssuerRejected, PolicyInvalid, PolicyProblem
from octosts.domain.policy import Pattern, compile_pattern
from octosts.domain.slash_guard import check_pattern_guard
from octosts.domain.tokens import parse_issuer_url

IssuersMode = Literal["enforce", "audit"]

ISSUERS_FILE = ".github/chainguard/trusted-token-issuers.yaml"
MAX_ISSUERS = 64
MAX_ISSUER_PATTERNS = 16
MAX_ENTRY_LENGTH = 256
FIELDS = ("mode", "issuers", "issuer_patterns")


@dataclass(frozen=True, slots=True)
class TrustedIssuers:
    """A validated trusted-token-issuers file."""

    mode: IssuersMode
    issuers: frozenset[str]
    patterns: tuple[Pattern, ...]

    def allows(self, issuer: str) -> bool:
        """True when ``issuer`` is listed exactly or fully matches a pattern."""
        return issuer in self.issuers or any(p.fullmatch(issuer) for p in self.patterns)


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
    development); every other issuer must be ``https``.

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
        mode = self.mode(data.get("mode", "enforce"))
        issuers = self.issuers(data.get("issuers", []))
        patterns = self.patterns(data.get("issuer_patterns", []))
        if not issuers and not patterns and not self.problems:
            self.problem("", "list at least one entry in issuers or issuer_patterns")
        if self.problems:
            raise PolicyInvalid(self.problems)
        return TrustedIssuers(mode=mode, issuers=frozenset(issuers), patterns=tuple(patterns))

    def mode(self, value: object) -> IssuersMode:
        if value == "enforce" or value == "audit":  # noqa: PLR1714 - narrows the Literal
            return value
        self.problem("mode", "must be exactly 'enforce' or 'audit'")
        return "enforce"

    def entries(self, name: str, value: object, limit: int) -> list[tuple[str, str]]:
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

    def issuers(self, value: object) -> list[str]:
        good: list[str] = []
        for path, issuer in self.entries("issuers", value, MAX_ISSUERS):
            try:
                url = parse_issuer_url(issuer, allow_insecure=issuer in self.insecure)
            except IssuerRejected as exc:
                self.problem(path, exc.detail or "not a valid issuer URL")
                continue
            # Entries are compared with a token's iss as exact strings: keep them canonical.
            if url.scheme != url.scheme.lower() or url.host != url.host.lower():
                self.problem(path, "scheme and host must be lowercase")
                continue
            good.append(issuer)
        return good

    def patterns(self, value: object) -> list[Pattern]:
        good: list[Pattern] = []
        for path, source in self.entries("issuer_patterns", value, MAX_ISSUER_PATTERNS):
            try:
                compiled = compile_pattern(source)
                check_pattern_guard(source)
            except ValueError as exc:
                self.problem(path, str(exc))
                continue
            good.append(compiled)
        return good
