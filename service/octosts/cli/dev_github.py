"""`octo-sts dev github`: run the GitHub API emulator until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from octosts.dev.github import GitHubEmulator, ensure_app_key, load_app_public_key
from octosts.dev.waiting import wait_for

EXIT_USAGE = 2
CONTROL_HELP = """\
control API (plain HTTP, no auth: keep --listen on loopback):
  GET    /_emulator/health             {"status": "ok"}
  GET    /_emulator/faults             fault rules in force, and how often each fired
  POST   /_emulator/faults             add a rule: {"kind": "error" | "secondary_rate_limit" |
                                       "primary_rate_limit" | "latency" | "disconnect",
                                       "status", "message", "retry_after", "reset_in",
                                       "path_prefix", "method", "rate", "latency_ms",
                                       "times", "seconds"}
  DELETE /_emulator/faults[/ID]        remove one rule, or all
  GET    /_emulator/tokens[?state=S]   ledger of minted tokens (id, token_sha256, permissions,
                                       repositories, live | revoked | expired | evicted)
  GET    /_emulator/calls[?since=T]    REST calls answered, with their time and App
  GET    /_emulator/apps               every App, its installations and rate-limit budget
  POST   /_emulator/reset              forget calls, budgets and fault rules

example: curl -XPOST http://127.0.0.1:8781/_emulator/faults \\
           -d '{"kind": "error", "status": 502, "rate": 0.2}'
every field and kind: docs/github-emulator.md
"""


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}")
    return number


def _non_negative(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    number = _non_negative(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class AppSpec:
    """Another App to serve (``--app``): its id, key file, rate limit and owners."""

    app_id: int
    key: Path
    rate_limit: int | None = None
    owners: tuple[str, ...] | None = None  # None: every owner


def _app_spec(value: str) -> AppSpec:
    """``id=N,key=FILE[,rate-limit=N][,owner=LOGIN]...``."""
    fields: dict[str, str] = {}
    owners: list[str] = []
    for part in value.split(","):
        name, sep, text = part.partition("=")
        name = name.strip()
        if not sep or not text or name not in {"id", "key", "rate-limit", "owner"}:
            raise argparse.ArgumentTypeError(
                f"expected id=N,key=FILE[,rate-limit=N][,owner=LOGIN]..., got {value!r}"
            )
        if name == "owner":
            owners.append(text)
        elif name in fields:
            raise argparse.ArgumentTypeError(f"{name}= given twice in {value!r}")
        else:
            fields[name] = text
    if "id" not in fields or "key" not in fields:
        raise argparse.ArgumentTypeError(f"--app needs id= and key=, got {value!r}")
    limit = fields.get("rate-limit")
    return AppSpec(
        _positive(fields["id"]),
        Path(fields["key"]),
        None if limit is None else _positive(limit),
        tuple(owners) if owners else None,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "github",
        help="GitHub API emulator (installations, contents, access tokens)",
        description="Serve the subset of the GitHub REST API Octo STS uses, from a directory "
        "of OWNER/REPO/... trees. Each owner is one installation with all its repositories; "
        "an owner directory holding a file named .user is a user account, others are orgs.",
        epilog=CONTROL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 8781), metavar="ADDR")
    parser.add_argument("--repos", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--app-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the app's private or public RSA PEM (only the public half is used)",
    )
    parser.add_argument(
        "--create-key",
        action="store_true",
        help="write a new RSA private key to --app-key first if that file does not exist",
    )
    parser.add_argument("--app-id", type=_positive, default=1, metavar="N")
    parser.add_argument(
        "--app",
        type=_app_spec,
        action="append",
        default=[],
        metavar="id=N,key=FILE[,rate-limit=N][,owner=LOGIN]...",
        help="serve another GitHub App (repeatable): its id and key file (made with "
        "--create-key), its own rate limit, the owners it is installed on (default: every owner)",
    )
    parser.add_argument(
        "--latency-ms", type=_non_negative, default=0, metavar="N", help="added to every request"
    )
    parser.add_argument(
        "--rate-limit",
        type=_positive,
        default=5000,
        metavar="N",
        help="requests per window per budget (each App's JWT, each installation)",
    )
    parser.add_argument(
        "--rate-window",
        type=_positive,
        default=3600,
        metavar="SECONDS",
        help="the rate limits' window (GitHub's is an hour)",
    )
    parser.add_argument(
        "--fail-rate", type=_fraction, default=0.0, metavar="F", help="fraction answered 500"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for --fail-rate and rules")
    parser.add_argument(
        "--user", action="append", default=[], metavar="OWNER", help="treat OWNER as a user"
    )
    parser.add_argument(
        "--tls-dir", type=Path, default=None, metavar="DIR", help="serve HTTPS with dev certs"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.repos.is_dir():
        print(f"octo-sts: --repos {args.repos}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.create_key:
        for key in (args.app_key, *(spec.key for spec in args.app)):
            ensure_app_key(key)
    try:
        public_key = load_app_public_key(args.app_key.read_bytes())
        others = [(spec, load_app_public_key(spec.key.read_bytes())) for spec in args.app]
    except (OSError, ValueError) as exc:
        print(f"octo-sts: app key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = args.listen
    emulator = GitHubEmulator(
        app_public_key=public_key,
        app_id=args.app_id,
        repos_dir=args.repos,
        host=host,
        port=port,
        tls_dir=args.tls_dir,
        latency_ms=args.latency_ms,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        fail_rate=args.fail_rate,
        seed=args.seed,
        user_owners=frozenset(args.user),
    )
    for spec, key in others:
        try:
            emulator.add_app(spec.app_id, key, rate_limit=spec.rate_limit, owners=spec.owners)
        except ValueError as exc:
            print(f"octo-sts: --app id={spec.app_id}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    with emulator:
        print(f"GitHub API emulator listening on {emulator.url}", flush=True)
        for app_id in emulator.apps:
            print(f"  app {app_id}:", flush=True)
            for login, installation, is_user in emulator.owners(app_id):
                kind = "user" if is_user else "org"
                print(f"    installation {installation}: {login} ({kind})", flush=True)
        # Ctrl-C raises KeyboardInterrupt here and SIGTERM (process managers, `make run`)
        # ends the wait; either way `with` stops the server on the way out.
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        wait_for(stop)
    return 0
