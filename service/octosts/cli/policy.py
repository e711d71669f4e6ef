"""`octo-sts policy check|lint`: test trust policies offline.

``check`` exit codes: 0 allowed, 1 denied, 2 invalid policy or bad input.
A claims file that breaks the token field syntax rules (``iss``, ``sub``,
``aud``, ``exp``) is a *denial* with the rule's reason (``invalid_token_issuer``,
``invalid_token_subject``, ``invalid_token_audience``, ``token_claims_invalid``),
exit 1: the service would refuse such a token the same way.

``lint`` exit codes: 0 all valid, 1 any invalid or unreadable (one
``file:line: field: message`` line per problem on stdout). With a permission ceiling
among the files (or ``--ceiling``), every trust policy is also checked against it, as the
service and the webhook's check run do; a policy naming a key file (``jwks_file``) gets
that file checked too, found from the checkout's root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from octosts.adapters.pinned_keys import parse_jwks_file
from octosts.adapters.policy_yaml import (
    MAX_POLICY_BYTES,
    load_document,
    parse_permission_ceiling,
    parse_trust_policy,
    parse_trusted_issuers,
    read_trust_policy,
)
from octosts.cli._inputs import InputError, decode_utf8, loads_object, printable, read_limited
from octosts.domain.ceiling import PermissionCeiling, excess_problems, excesses
from octosts.domain.errors import AuthenticationError, PolicyInvalid, PolicyProblem
from octosts.domain.layout import (
    CEILING_FILE_NAME,
    DEFAULT_ORG_POLICY_REPO,
    ISSUERS_FILE_NAME,
    JWKS_SUFFIX,
    POLICY_DIR,
    POLICY_SUFFIX,
)
from octosts.domain.policy import PolicyKind, TrustPolicy, decide_trust
from octosts.domain.tokens import token_from_claims

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_INVALID = 2
MAX_CLAIMS_BYTES = 256 * 1024
ISSUERS_FILE_NAMES = frozenset({ISSUERS_FILE_NAME, ISSUERS_FILE_NAME.replace(".yaml", ".yml")})
CEILING_FILE_NAMES = frozenset({CEILING_FILE_NAME, CEILING_FILE_NAME.replace(".yaml", ".yml")})
KINDS = ("trust", "org", "issuers", "ceiling", "jwks")
# An org policy in a checkout of the conventionally named org policy repository.
_ORG_POLICY_DIR = (DEFAULT_ORG_POLICY_REPO, *POLICY_DIR.split("/"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("policy", help="check and lint trust policies offline")
    policy_sub = parser.add_subparsers(
        dest="policy_command", required=True, metavar="POLICY_COMMAND"
    )

    check_parser = policy_sub.add_parser(
        "check",
        help="decide whether a token's claims satisfy a policy",
        description="Prints {allowed, reason, detail} as JSON. "
        "Exit 0 allowed, 1 denied, 2 invalid policy or bad input.",
    )
    check_parser.add_argument("--policy", required=True, metavar="FILE", help="policy YAML")
    check_parser.add_argument(
        "--claims", required=True, metavar="FILE", help="JSON payload of a token ('-': stdin)"
    )
    check_parser.add_argument(
        "--domain",
        help="the service's domain; required in aud when the policy names no audience "
        "(then this flag is required too)",
    )
    check_parser.add_argument(
        "--org", action="store_true", help="the policy is an organization policy"
    )
    check_parser.add_argument(
        "--allow-insecure-issuer",
        action="store_true",
        help="accept http:// issuers (local development issuers only)",
    )
    check_parser.set_defaults(func=_run_check)

    lint_parser = policy_sub.add_parser(
        "lint",
        help="validate policy files",
        description=f"Kind by default: {ISSUERS_FILE_NAME} -> issuers; "
        f"{CEILING_FILE_NAME} -> ceiling; *{JWKS_SUFFIX} -> jwks (a key file); "
        f"<dir named {DEFAULT_ORG_POLICY_REPO}>/{POLICY_DIR}/*.yaml "
        "(the org policy repository) -> org; "
        "anything else -> trust. With a ceiling among the files (or --ceiling), every "
        "trust and org policy is checked against it. Exit 0 all valid, 1 any invalid or "
        "unreadable.",
    )
    lint_parser.add_argument("--kind", choices=KINDS)
    lint_parser.add_argument(
        "--ceiling",
        metavar="FILE",
        help=f"the org's {CEILING_FILE_NAME}: check the policies against it",
    )
    lint_parser.add_argument(
        "--allow-insecure-issuer",
        action="store_true",
        help="issuers files: accept any http:// issuer, as a deployment listing it in "
        "OCTOSTS_INSECURE_ISSUERS does (loopback http:// issuers are accepted without it)",
    )
    lint_parser.add_argument("files", nargs="+", metavar="FILE")
    lint_parser.set_defaults(func=_run_lint)


def _run_check(args: argparse.Namespace) -> int:
    kind: PolicyKind = "org" if args.org else "repo"
    try:
        policy = _load_policy(args.policy, kind)
        claims_text = decode_utf8(
            read_limited(args.claims, MAX_CLAIMS_BYTES, what="claims"),
            where=printable(args.claims),
        )
        claims = loads_object(claims_text, where=printable(args.claims))
    except InputError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except PolicyInvalid as exc:
        for problem in _by_line(exc.problems):
            print(f"octo-sts: {_problem_line(args.policy, problem)}", file=sys.stderr)
        return EXIT_INVALID
    domain = args.domain or ""
    if policy.audience is None and policy.audience_pattern is None and not domain:
        print(
            f"octo-sts: policy {printable(args.policy)} names no audience, so the token's aud "
            "must contain the service's domain: pass --domain",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        token = token_from_claims(claims, allow_insecure=args.allow_insecure_issuer)
    except AuthenticationError as exc:
        _print_decision(allowed=False, reason=exc.reason, detail=exc.detail)
        return EXIT_DENIED
    decision = decide_trust(policy, token, domain=domain)
    _print_decision(allowed=decision.allowed, reason=decision.reason, detail=decision.detail)
    return EXIT_ALLOWED if decision.allowed else EXIT_DENIED


def _run_lint(args: argparse.Namespace) -> int:
    kinds = {name: _lint_kind(name, args.kind) for name in args.files}
    ceilings = [name for name, kind in kinds.items() if kind == "ceiling"]
    if args.ceiling is not None:
        ceilings.insert(0, args.ceiling)
        kinds.setdefault(args.ceiling, "ceiling")
    if len(set(ceilings)) > 1:
        print("octo-sts: give one permission ceiling (one org's)", file=sys.stderr)
        return EXIT_INVALID
    invalid, ceiling = _lint_files(kinds, allow_insecure=args.allow_insecure_issuer)
    if ceilings and ceiling is None:
        return EXIT_DENIED  # the ceiling's own problems are printed above
    for name, kind in kinds.items():
        if kind in {"trust", "org"}:
            invalid |= _lint_against(name, kind, ceiling)
    return EXIT_DENIED if invalid else EXIT_ALLOWED


def _lint_files(
    kinds: dict[str, str], *, allow_insecure: bool
) -> tuple[bool, PermissionCeiling | None]:
    """Each file's own problems, printed. Returns (any invalid, the valid ceiling given)."""
    invalid = False
    ceiling: PermissionCeiling | None = None
    for name, kind in kinds.items():
        try:
            parsed = _lint_one(name, kind, allow_insecure=allow_insecure)
        except InputError as exc:
            # A file that cannot be read is not a valid policy: one problem line, exit 1
            # (the lint contract has two outcomes, so CI scripts need not special-case it).
            invalid = True
            print(printable(str(exc)))
        except PolicyInvalid as exc:
            invalid = True
            for problem in _by_line(exc.problems):
                print(_problem_line(name, problem))
        else:
            if isinstance(parsed, PermissionCeiling):
                ceiling = parsed
    return invalid, ceiling


def _lint_one(
    name: str, kind: str, *, allow_insecure: bool
) -> PermissionCeiling | TrustPolicy | None:
    """Raises InputError (unreadable, unsupported) or PolicyInvalid."""
    data = read_limited(name, MAX_POLICY_BYTES, what="policy", overflow_error=False)
    if kind == "issuers":
        insecure = _http_issuers(data) if allow_insecure else frozenset()
        parse_trusted_issuers(data, insecure_issuers=insecure)
        return None
    if kind == "ceiling":
        return parse_permission_ceiling(data)
    if kind == "jwks":
        parse_jwks_file(data, path=name)
        return None
    return read_trust_policy(data, kind="org" if kind == "org" else "repo")[0]


def _lint_against(name: str, kind: str, ceiling: PermissionCeiling | None) -> bool:
    """A valid policy's ceiling excesses and key file problems, printed. True: any."""
    try:
        data = read_limited(name, MAX_POLICY_BYTES, what="policy", overflow_error=False)
        policy, lines = read_trust_policy(data, kind="org" if kind == "org" else "repo")
    except (InputError, PolicyInvalid):
        return False  # printed by the first pass
    identity = Path(name).name.removesuffix(POLICY_SUFFIX)
    problems = excess_problems(excesses(policy.permissions, identity, ceiling), lines)
    if policy.jwks_file is not None:
        problems += _key_file_problems(name, policy.jwks_file, lines.get("jwks_file"))
    for problem in _by_line(problems):
        print(_problem_line(name, problem))
    return bool(problems)


def _key_file_problems(policy: str, jwks_file: str, line: int | None) -> list[PolicyProblem]:
    """The key file a policy names, found from the root of the checkout the policy is in
    (the folder holding its POLICY_DIR; else the current folder)."""
    path = Path(policy).absolute()
    parts = POLICY_DIR.split("/")
    root = Path.cwd()
    for parent in path.parents:
        if parent.parts[-len(parts) :] == tuple(parts):
            root = parent.parents[len(parts) - 1]
            break
    target = root / jwks_file
    try:
        parse_jwks_file(
            read_limited(str(target), MAX_POLICY_BYTES, what="key file", overflow_error=False),
            path=jwks_file,
        )
    except InputError:
        return [
            PolicyProblem("jwks_file", f"{jwks_file} not found at {printable(str(target))}", line)
        ]
    except PolicyInvalid as exc:
        return [
            PolicyProblem("jwks_file", f"{jwks_file}: {p.render()}", line) for p in exc.problems
        ]
    return []


def _http_issuers(data: bytes) -> frozenset[str]:
    """The file's ``http://`` issuers: what a deployment allowing them would list."""
    try:
        document = load_document(data)
    except PolicyInvalid:
        return frozenset()  # the real parse reports it
    issuers = document.data.get("issuers") if isinstance(document.data, dict) else None
    if not isinstance(issuers, list):
        return frozenset()
    return frozenset(i for i in issuers if isinstance(i, str) and i.startswith("http://"))


def _lint_kind(name: str, explicit: str | None) -> str:
    """--kind if given; else by name and location (see the ``lint`` description)."""
    if explicit is not None:
        return explicit
    path = Path(name)
    if path.name in ISSUERS_FILE_NAMES:
        return "issuers"
    if path.name in CEILING_FILE_NAMES:
        return "ceiling"
    if path.name.endswith(JWKS_SUFFIX):
        return "jwks"
    parts = path.absolute().parts
    # The org policy repository is conventionally named `.github`, so an org
    # policy checkout path ends in `.github/.github/chainguard/NAME.sts.yaml`.
    if parts[-len(_ORG_POLICY_DIR) - 1 : -1] == _ORG_POLICY_DIR:
        return "org"
    return "trust"


def _load_policy(name: str, kind: PolicyKind) -> TrustPolicy:
    """Raises InputError (unreadable) or PolicyInvalid."""
    # One byte over the cap is enough for the parser to report the size as a
    # policy problem (an oversized policy is invalid, not unreadable).
    data = read_limited(name, MAX_POLICY_BYTES, what="policy", overflow_error=False)
    return parse_trust_policy(data, kind=kind)


def _by_line(problems: list[PolicyProblem]) -> list[PolicyProblem]:
    """Problems in file order; those without a line (missing fields) last."""
    return sorted(problems, key=lambda p: p.line if p.line is not None else sys.maxsize)


def _problem_line(name: str, problem: PolicyProblem) -> str:
    where = printable(name) + (f":{problem.line}" if problem.line is not None else "")
    field = f"{printable(problem.field)}: " if problem.field else ""
    return f"{where}: {field}{printable(problem.message)}"


def _print_decision(*, allowed: bool, reason: str, detail: str) -> None:
    # ensure_ascii keeps terminal control sequences from claims out of the output.
    print(json.dumps({"allowed": allowed, "reason": reason, "detail": detail}))
