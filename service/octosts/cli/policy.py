"""`octo-sts policy check|lint`: test trust policies offline.

``check`` exit codes: 0 allowed, 1 denied, 2 invalid policy or bad input.
A claims file that breaks the token field syntax rules (``iss``, ``sub``,
``aud``, ``exp``) is a *denial* with the rule's reason (``invalid_token_issuer``,
``invalid_token_subject``, ``invalid_token_audience``, ``token_claims_invalid``),
exit 1: the service would refuse such a token the same way.

``lint`` exit codes: 0 all valid, 1 any invalid or unreadable (one
``file:line: field: message`` line per problem on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from octosts.adapters.policy_yaml import (
    MAX_POLICY_BYTES,
    load_document,
    parse_trust_policy,
    parse_trusted_issuers,
)
from octosts.cli._inputs import InputError, decode_utf8, loads_object, printable, read_limited
from octosts.domain.errors import AuthenticationError, PolicyInvalid, PolicyProblem
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO, ISSUERS_FILE_NAME, POLICY_DIR
from octosts.domain.policy import PolicyKind, TrustPolicy, decide_trust
from octosts.domain.tokens import token_from_claims

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_INVALID = 2
MAX_CLAIMS_BYTES = 256 * 1024
ISSUERS_FILE_NAMES = frozenset({ISSUERS_FILE_NAME, ISSUERS_FILE_NAME.replace(".yaml", ".yml")})
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
        f"<dir named {DEFAULT_ORG_POLICY_REPO}>/{POLICY_DIR}/*.yaml "
        "(the org policy repository) -> org; "
        "anything else -> trust. Exit 0 all valid, 1 any invalid or unreadable.",
    )
    lint_parser.add_argument("--kind", choices=("trust", "org", "issuers"))
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
    invalid = False
    for name in args.files:
        kind = _lint_kind(name, args.kind)
        try:
            _lint_one(name, kind, allow_insecure=args.allow_insecure_issuer)
        except InputError as exc:
            # A file that cannot be read is not a valid policy: one problem line, exit 1
            # (the lint contract has two outcomes, so CI scripts need not special-case it).
            invalid = True
            print(printable(str(exc)))
        except PolicyInvalid as exc:
            invalid = True
            for problem in _by_line(exc.problems):
                print(_problem_line(name, problem))
    return EXIT_DENIED if invalid else EXIT_ALLOWED


def _lint_one(name: str, kind: str, *, allow_insecure: bool) -> None:
    """Raises InputError (unreadable, unsupported) or PolicyInvalid."""
    if kind == "issuers":
        data = read_limited(name, MAX_POLICY_BYTES, what="policy", overflow_error=False)
        insecure = _http_issuers(data) if allow_insecure else frozenset()
        parse_trusted_issuers(data, insecure_issuers=insecure)
        return
    _load_policy(name, "org" if kind == "org" else "repo")


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
