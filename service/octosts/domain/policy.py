"""Trust policies: compile (validate) once, check many tokens against them.

A policy is plain data (``compile_policy`` takes the mapping an adapter read
from YAML) turned into a frozen ``TrustPolicy`` whose regexes are already
compiled, so every mistake surfaces at load time with the field (and line)
that caused it. ``check`` is pure and total: it returns a ``Decision`` and
never raises for any token.

Regexes use RE2 (google-re2): linear-time matching, RE2 syntax (POSIX classes,
``\\pL``), no backreferences or lookarounds. They always match the whole value,
as if written ``^(?:pattern)$``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import re2

from octosts.domain.decision import (
    AUDIENCE_MISMATCH,
    CLAIM_MISMATCH,
    CLAIM_MISSING,
    CLAIM_NOT_STRING,
    ISSUER_MISMATCH,
    SUBJECT_MISMATCH,
    Decision,
)
from octosts.domain.errors import IssuerRejected, PolicyInvalid, PolicyProblem
from octosts.domain.jwks import PinnedJwks, compile_pinned_jwks
from octosts.domain.layout import jwks_path_problem
from octosts.domain.names import MAX_REPO, is_repo_name
from octosts.domain.permissions import permission_problem
from octosts.domain.text import clip, show
from octosts.domain.tokens import VerifiedToken, parse_issuer_url

PolicyKind = Literal["repo", "org"]

MAX_PATTERN = 4096
MAX_CLAIM_PATTERNS = 64
MAX_REPOSITORIES = 500

# Why a policy without permissions is refused, and the fix (lint, check run, service log).
PERMISSIONS_WHY = (
    "without permissions GitHub would grant the token every permission the App "
    "installation holds (octo-sts allows that; this service refuses it). List only what "
    "the workload needs, e.g. 'permissions: {contents: read}' or 'permissions: "
    "{contents: write, pull_requests: write}'"
)

REPO_FIELDS = (
    "issuer",
    "issuer_pattern",
    "subject",
    "subject_pattern",
    "audience",
    "audience_pattern",
    "claim_pattern",
    "permissions",
    "jwks",
    "jwks_file",
)
ORG_FIELDS = (*REPO_FIELDS, "repositories")


def _re2_options() -> Any:
    options = re2.Options()
    # Invalid patterns are reported as policy problems; RE2's own stderr
    # logging would only duplicate them in the service log.
    options.log_errors = False
    return options


_OPTIONS = _re2_options()


@dataclass(frozen=True, slots=True)
class Pattern:
    """An RE2 pattern matched against whole values (``^(?:source)$``)."""

    source: str
    _regex: Any = field(compare=False, repr=False)

    def fullmatch(self, text: str) -> bool:
        try:
            return self._regex.fullmatch(text) is not None
        except UnicodeEncodeError:
            # Lone surrogates (possible in JSON strings) have no UTF-8 form, so
            # no RE2 pattern can match them.
            return False


def compile_pattern(source: str) -> Pattern:
    """Compile an RE2 pattern for full matching.

    Raises ValueError with a message fit for a PolicyProblem.
    """
    if len(source) > MAX_PATTERN:
        raise ValueError(f"pattern longer than {MAX_PATTERN} characters")
    try:
        regex = re2.compile(source, _OPTIONS)
    except re2.error as exc:
        raise ValueError(f"invalid RE2 pattern: {_re2_message(exc)}") from exc
    except UnicodeEncodeError as exc:
        raise ValueError("pattern is not valid Unicode (lone surrogate)") from exc
    return Pattern(source=source, _regex=regex)


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """A validated trust policy. Exactly one of each literal/pattern pair is set
    for issuer and subject; at most one for audience."""

    kind: PolicyKind
    issuer: str | None
    issuer_pattern: Pattern | None
    subject: str | None
    subject_pattern: Pattern | None
    audience: str | None
    audience_pattern: Pattern | None
    claim_pattern: Mapping[str, Pattern]
    permissions: Mapping[str, str]
    # Org policies only: the repositories the minted token is limited to;
    # None means every repository the installation can reach.
    repositories: tuple[str, ...] | None = None
    # Keys pinned for ``issuer`` (docs/policies.md, "Pinned keys"): inline (``jwks``), or
    # the key file ``jwks_file`` whose keys the policy source fills in as ``jwks``. Tokens of
    # that issuer are verified with these keys only; nothing is fetched from the issuer.
    jwks: PinnedJwks | None = None
    jwks_file: str | None = None

    @property
    def pins_keys(self) -> bool:
        return self.jwks is not None or self.jwks_file is not None


def compile_policy(
    data: Mapping[str, object],
    *,
    kind: PolicyKind,
    lines: Mapping[str, int] | None = None,
) -> TrustPolicy:
    """Validate ``data`` (a parsed policy document) and compile its patterns.

    ``lines`` maps field paths (``subject``, ``claim_pattern.ref``,
    ``repositories[2]``) to 1-based source lines so problems can name them.

    Raises PolicyInvalid listing every problem found.
    """
    return _Compiler(kind, lines or {}).run(data)


class _Compiler:
    def __init__(self, kind: PolicyKind, lines: Mapping[str, int]) -> None:
        self.kind = kind
        self.lines = lines
        self.problems: list[PolicyProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(field=path, message=message, line=self.lines.get(path)))

    def run(self, data: Mapping[str, object]) -> TrustPolicy:
        if not isinstance(data, Mapping):
            raise PolicyInvalid([PolicyProblem("", "a policy must be a mapping of fields")])
        self.check_keys(data)
        issuer, issuer_pattern = self.pair(data, "issuer", required=True)
        subject, subject_pattern = self.pair(data, "subject", required=True)
        audience, audience_pattern = self.pair(data, "audience", required=False)
        claims = self.claim_patterns(data)
        permissions = self.permissions(data)
        repositories = self.repositories(data) if self.kind == "org" else None
        jwks, jwks_file = self.pinned(data, issuer)
        if self.problems:
            raise PolicyInvalid(self.problems)
        return TrustPolicy(
            kind=self.kind,
            issuer=issuer,
            issuer_pattern=issuer_pattern,
            subject=subject,
            subject_pattern=subject_pattern,
            audience=audience,
            audience_pattern=audience_pattern,
            claim_pattern=claims,
            permissions=permissions,
            repositories=repositories,
            jwks=jwks,
            jwks_file=jwks_file,
        )

    def check_keys(self, data: Mapping[str, object]) -> None:
        allowed = ORG_FIELDS if self.kind == "org" else REPO_FIELDS
        for key in data:
            if not isinstance(key, str):
                self.problem(clip(str(key)), "field names must be strings")
            elif key == "repositories" and self.kind == "repo":
                self.problem(
                    key, "only allowed in organization policies (in the org policy repository)"
                )
            elif key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(clip(key), f"unknown field{hint}")

    def pair(
        self, data: Mapping[str, object], name: str, *, required: bool
    ) -> tuple[str | None, Pattern | None]:
        pattern_name = f"{name}_pattern"
        literal = data.get(name)
        pattern = data.get(pattern_name)
        if name in data and pattern_name in data:
            self.problem(pattern_name, f"set either {name} or {pattern_name}, not both")
            return None, None
        if name in data:
            return self.string(name, literal), None
        if pattern_name in data:
            return None, self.pattern(pattern_name, pattern)
        if required:
            self.problem(name, f"one of {name} or {pattern_name} is required")
        return None, None

    def string(self, path: str, value: object) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"must be a string, not {_type_name(value)}")
            return None
        if not value:
            self.problem(path, "must not be empty")
            return None
        return value

    def pattern(self, path: str, value: object) -> Pattern | None:
        source = self.string(path, value)
        if source is None:
            return None
        try:
            return compile_pattern(source)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None

    def claim_patterns(self, data: Mapping[str, object]) -> Mapping[str, Pattern]:
        compiled: dict[str, Pattern] = {}
        if "claim_pattern" not in data:
            return MappingProxyType(compiled)
        value = data["claim_pattern"]
        if not isinstance(value, Mapping):
            self.problem("claim_pattern", f"must be a mapping, not {_type_name(value)}")
            return MappingProxyType(compiled)
        if len(value) > MAX_CLAIM_PATTERNS:
            self.problem("claim_pattern", f"at most {MAX_CLAIM_PATTERNS} claims")
        for name, source in value.items():
            if not isinstance(name, str) or not name:
                self.problem("claim_pattern", "claim names must be non-empty strings")
                continue
            path = f"claim_pattern.{name}"
            compiled_pattern = self.pattern(clip(path), source)
            if compiled_pattern is not None:
                compiled[name] = compiled_pattern
        return MappingProxyType(compiled)

    def permissions(self, data: Mapping[str, object]) -> Mapping[str, str]:
        result: dict[str, str] = {}
        value = data.get("permissions")
        if "permissions" not in data:
            # Deliberately required: an installation token requested without
            # permissions carries everything the installation holds.
            self.problem("permissions", f"is required: {PERMISSIONS_WHY}")
            return MappingProxyType(result)
        if value is None or (isinstance(value, Mapping) and not value):  # {} or left empty
            self.problem("permissions", f"must name at least one permission: {PERMISSIONS_WHY}")
            return MappingProxyType(result)
        if not isinstance(value, Mapping):
            self.problem("permissions", f"must be a mapping, not {_type_name(value)}")
            return MappingProxyType(result)
        for name, level in value.items():
            if not isinstance(name, str):
                self.problem("permissions", "permission names must be strings")
                continue
            path = clip(f"permissions.{name}")
            problem = permission_problem(name, level)
            if problem is not None:
                self.problem(path, problem)
            elif isinstance(level, str):
                result[name] = level
        return MappingProxyType(result)

    def pinned(
        self, data: Mapping[str, object], issuer: str | None
    ) -> tuple[PinnedJwks | None, str | None]:
        """``jwks`` or ``jwks_file``: keys for exactly one issuer, named by ``issuer``."""
        if "jwks" not in data and "jwks_file" not in data:
            return None, None
        if "jwks" in data and "jwks_file" in data:
            self.problem("jwks_file", "set either jwks or jwks_file, not both")
            return None, None
        name = "jwks" if "jwks" in data else "jwks_file"
        if "issuer_pattern" in data:
            self.problem(
                name,
                "pinned keys belong to one issuer: name it with issuer, not issuer_pattern",
            )
        elif issuer is not None:
            try:
                parse_issuer_url(issuer, allow_insecure=True)
            except IssuerRejected as exc:
                self.problem("issuer", f"{exc.detail} (required with {name})")
        if name == "jwks":
            jwks, problems = compile_pinned_jwks(
                data["jwks"], where="jwks", source="jwks", lines=self.lines
            )
            self.problems += problems
            return jwks, None
        path = self.string("jwks_file", data["jwks_file"])
        problem = jwks_path_problem(path) if path is not None else None
        if problem is not None:
            self.problem("jwks_file", problem)
            return None, None
        return None, path

    def repositories(self, data: Mapping[str, object]) -> tuple[str, ...] | None:
        if "repositories" not in data:
            return None
        value = data["repositories"]
        if not isinstance(value, list | tuple):
            self.problem("repositories", f"must be a list, not {_type_name(value)}")
            return None
        if not value:
            self.problem("repositories", "must not be empty (omit it to allow every repository)")
        if len(value) > MAX_REPOSITORIES:
            self.problem("repositories", f"at most {MAX_REPOSITORIES} repositories")
        seen: set[str] = set()
        names: list[str] = []
        for index, item in enumerate(value):
            path = f"repositories[{index}]"
            if not isinstance(item, str):
                self.problem(path, f"must be a string, not {_type_name(item)}")
            elif not is_repo_name(item):
                self.problem(
                    path,
                    f"{show(item)} is not a repository name "
                    f"(1-{MAX_REPO} of A-Z a-z 0-9 . _ -, not '.' or '..', no owner)",
                )
            elif item in seen:
                self.problem(path, f"duplicate repository {item!r}")
            else:
                seen.add(item)
                names.append(item)
        return tuple(names)


def decide_trust(policy: TrustPolicy, token: VerifiedToken, *, domain: str) -> Decision:
    """Decide whether ``policy`` trusts ``token``: allowed, or denied with the first reason.

    ``domain`` is the service's own audience, required in ``aud`` when the
    policy names no audience. Rules run in a fixed order (issuer, subject,
    audience, claims) and the first failure is the reason. Pure and total:
    never raises.
    """
    for rule in (_check_issuer, _check_subject, _check_audience, _check_claims):
        denial = rule(policy, token, domain)
        if denial is not None:
            return denial
    return Decision.allow()


def pinned_keys_for(policy: TrustPolicy, issuer: str) -> PinnedJwks | None:
    """The keys that alone verify a token claiming ``issuer`` under ``policy``; None: the
    deployment's verifier (discovery) applies.

    Pinned keys apply to exactly the policy's ``issuer``. A token claiming another issuer is
    verified the usual way and then fails the policy's issuer rule, like under any policy, so
    an unverified token is never answered differently by a policy that pins keys. Raises
    PolicyInvalid when the policy's key file was not read (fail closed; the policy source
    fills ``jwks`` in).
    """
    if not policy.pins_keys or policy.issuer != issuer:
        return None
    if policy.jwks is None:
        raise PolicyInvalid(
            [PolicyProblem("jwks_file", f"{show(policy.jwks_file or '')} was not read")]
        )
    return policy.jwks


def claim_text(value: object) -> str | None:
    """The text a ``claim_pattern`` matches a claim value as: a string as it is, a boolean as
    ``true``/``false`` (as the original prints it); None for any other type (never matched)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return None


def _check_issuer(policy: TrustPolicy, token: VerifiedToken, _domain: str) -> Decision | None:
    return _exact_or_pattern(
        "issuer", token.issuer, policy.issuer, policy.issuer_pattern, ISSUER_MISMATCH
    )


def _check_subject(policy: TrustPolicy, token: VerifiedToken, _domain: str) -> Decision | None:
    return _exact_or_pattern(
        "subject", token.subject, policy.subject, policy.subject_pattern, SUBJECT_MISMATCH
    )


def _exact_or_pattern(
    name: str, value: str, exact: str | None, pattern: Pattern | None, reason: str
) -> Decision | None:
    """The policy's ``name`` (exact) and ``name_pattern`` (RE2, full match) against ``value``."""
    if exact is not None and value != exact:
        return Decision.deny(
            reason, f"{name} {show(value)} is not the policy's {name} {show(exact)}"
        )
    if pattern is not None and not pattern.fullmatch(value):
        return Decision.deny(
            reason, f"{name} {show(value)} does not match {name}_pattern {show(pattern.source)}"
        )
    return None


def _check_claims(policy: TrustPolicy, token: VerifiedToken, _domain: str) -> Decision | None:
    for name, pattern in policy.claim_pattern.items():
        if name not in token.claims:
            return Decision.deny(CLAIM_MISSING, f"claim {show(name)} is not in the token")
        value = token.claims[name]
        text = claim_text(value)
        if text is None:
            return Decision.deny(
                CLAIM_NOT_STRING,
                f"claim {show(name)} is {_type_name(value)}, not a string or boolean",
            )
        if not pattern.fullmatch(text):
            return Decision.deny(
                CLAIM_MISMATCH,
                f"claim {show(name)} value {show(text)} does not match {show(pattern.source)}",
            )
    return None


def _check_audience(policy: TrustPolicy, token: VerifiedToken, domain: str) -> Decision | None:
    if policy.audience is not None:
        if policy.audience not in token.audience:
            return Decision.deny(
                AUDIENCE_MISMATCH,
                f"audience {show(policy.audience)} is not among the token's "
                f"{len(token.audience)} aud value(s)",
            )
    elif policy.audience_pattern is not None:
        if not any(policy.audience_pattern.fullmatch(aud) for aud in token.audience):
            return Decision.deny(
                AUDIENCE_MISMATCH,
                f"no aud value matches audience_pattern {show(policy.audience_pattern.source)}",
            )
    elif not domain or domain not in token.audience:
        return Decision.deny(
            AUDIENCE_MISMATCH,
            f"the policy names no audience, so aud must contain the service domain {show(domain)}",
        )
    return None


def _re2_message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else ""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return clip(text, 200)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
