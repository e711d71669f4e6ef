"""Which changed files are policies, and the "Trust Policy Validation" check-run output (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_yaml import (
    parse_permission_ceiling,
    parse_trusted_issuers,
    read_trust_policy,
)
from octosts.domain.ceiling import PermissionCeiling, excess_problems, excesses
from octosts.domain.errors import PolicyInvalid, PolicyProblem
from octosts.domain.layout import (
    CEILING_FILE,
    ISSUERS_FILE,
    POLICY_SUFFIX,
    is_jwks_path,
    is_org_policy_repo,
    is_trust_policy_path,
)

CHECK_NAME = "Trust Policy Validation"
MAX_ANNOTATIONS = 50  # GitHub's per-request limit


def is_policy_path(path: str, *, repo: str, org_policy_repo: str) -> bool:
    """A trust policy, a key file policies pin (``*.jwks.json``), or, when ``repo`` is the
    org policy repository, the issuers or the permission ceiling file."""
    if is_trust_policy_path(path) or is_jwks_path(path):
        return True
    return is_org_policy_repo(repo, org_policy_repo) and path in {ISSUERS_FILE, CEILING_FILE}


@dataclass(frozen=True, slots=True)
class FileProblem:
    path: str
    line: int | None
    message: str


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One file's problems, and the key file a valid policy names (to be checked too)."""

    problems: list[FileProblem]
    jwks_file: str | None = None


def validate_file(
    path: str,
    content: bytes,
    *,
    repo: str,
    org_policy_repo: str,
    insecure_issuers: frozenset[str] = frozenset(),
) -> list[FileProblem]:
    """Every problem of one policy file (empty when valid)."""
    return check_file(
        path, content, repo=repo, org_policy_repo=org_policy_repo, insecure_issuers=insecure_issuers
    ).problems


def ceiling_of(content: bytes) -> PermissionCeiling | None:
    """A ceiling file's ceiling; None when it is invalid (its own check reports why)."""
    try:
        return parse_permission_ceiling(content)
    except PolicyInvalid:
        return None


def check_file(
    path: str,
    content: bytes,
    *,
    repo: str,
    org_policy_repo: str,
    insecure_issuers: frozenset[str] = frozenset(),
    ceiling: PermissionCeiling | None = None,
) -> FileCheck:
    """Every problem of one policy file: its own, and for a trust policy what it asks above
    the org's ``ceiling`` (``domain.ceiling.excesses``, the exchange's rule)."""
    org = is_org_policy_repo(repo, org_policy_repo)
    try:
        if org and path == ISSUERS_FILE:
            parse_trusted_issuers(content, insecure_issuers=insecure_issuers)
        elif org and path == CEILING_FILE:
            parse_permission_ceiling(content)
        elif is_jwks_path(path):
            parse_jwks_file(content, path=path)
        else:
            policy, lines = read_trust_policy(content, kind="org" if org else "repo")
            identity = path.rpartition("/")[2].removesuffix(POLICY_SUFFIX)
            excess = excesses(policy.permissions, identity, ceiling)
            problems = [_problem(path, p) for p in excess_problems(excess, lines)]
            return FileCheck(problems, policy.jwks_file)
    except PolicyInvalid as exc:
        return FileCheck([_problem(path, p) for p in exc.problems])
    return FileCheck([])


def _problem(path: str, problem: PolicyProblem) -> FileProblem:
    where = f"{problem.field}: " if problem.field else ""
    return FileProblem(path, problem.line, f"{where}{problem.message}"[:500])


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    conclusion: str  # success | failure
    title: str
    summary: str
    annotations: tuple[dict[str, object], ...]


# What an invalid issuers file does once it is on the default branch: said in the check
# run, so an organization is never locked out without being told.
ISSUERS_EFFECT = (
    f"**`{ISSUERS_FILE}` is invalid.** Once this reaches the default branch of the "
    "organization policy repository, every token exchange into the organization is refused "
    "(`PERMISSION_DENIED`, reason `trusted_issuers_invalid`) as soon as the last valid copy "
    "the service holds expires (`OCTOSTS_ISSUERS_STALE_SECONDS`, default one hour). "
    "Fix the entries below; each names the pattern or issuer and the reason."
)


# The same for an invalid ceiling file (``permission_ceiling_invalid``).
CEILING_EFFECT = (
    f"**`{CEILING_FILE}` is invalid.** Once this reaches the default branch of the "
    "organization policy repository, every token exchange into the organization is refused "
    "(`PERMISSION_DENIED`, reason `permission_ceiling_invalid`) as soon as the last valid copy "
    "the service holds expires (`OCTOSTS_CEILING_STALE_SECONDS`, default one hour). "
    "Fix the entries below; each names the field and the reason."
)
# A policy checked against an org ceiling that is itself invalid: said on every policy.
CEILING_INVALID = (
    "the organization's permission ceiling "
    f"({CEILING_FILE} in the org policy repository) is invalid: every token exchange into "
    "the organization is refused (permission_ceiling_invalid) until it is fixed"
)


def check_outcome(checked: list[str], problems: list[FileProblem]) -> CheckOutcome:
    """The check run for ``checked`` files with ``problems`` among them."""
    if not problems:
        files = ", ".join(f"`{p}`" for p in checked[:20]) or "no policy files changed"
        return CheckOutcome("success", "All trust policies are valid", f"Checked: {files}", ())
    lines = [
        f"- `{p.path}`" + (f" line {p.line}" if p.line else "") + f": {p.message}" for p in problems
    ]
    if any(p.path == ISSUERS_FILE for p in problems):
        lines = [ISSUERS_EFFECT, "", *lines]
    if any(p.path == CEILING_FILE for p in problems):
        lines = [CEILING_EFFECT, "", *lines]
    annotations = tuple(
        {
            "path": p.path,
            "start_line": p.line or 1,
            "end_line": p.line or 1,
            "annotation_level": "failure",
            "title": _annotation_title(p.path),
            "message": p.message,
        }
        for p in problems[:MAX_ANNOTATIONS]
    )
    bad = len({p.path for p in problems})
    title = f"{len(problems)} problem(s) in {bad} policy file(s)"
    return CheckOutcome("failure", title, "\n".join(lines)[:60000], annotations)


def _annotation_title(path: str) -> str:
    if path == ISSUERS_FILE:
        return "Invalid trusted token issuers file: exchanges into the organization will be refused"
    if path == CEILING_FILE:
        return "Invalid permission ceiling: exchanges into the organization will be refused"
    if is_jwks_path(path):
        return "Invalid key file: the policies pinning it will be refused"
    return "Invalid trust policy"


def incomplete_outcome(error: str) -> CheckOutcome:
    """The check run when validation could not finish (``error``: a type and reason, no message).

    A failure rather than neutral: GitHub counts a neutral conclusion as passing
    for a required check, and these files were not validated.
    """
    return CheckOutcome(
        "failure",
        "Trust policies could not be validated",
        f"The policy check stopped with {error} before it could read and check every "
        "changed policy file. Nothing was validated: re-run the check to try again.",
        (),
    )
