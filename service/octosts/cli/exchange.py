"""``octo-sts exchange`` and ``octo-sts revoke``: the client side, for scripts and CI jobs.

Exit codes (also in docs/clients.md)::

    0  success (the token, JSON or env lines on stdout)
    1  unexpected server answer (INTERNAL, malformed response)
    2  usage: bad flags, endpoint or CA file
    3  the OIDC token could not be obtained (token source)
    4  refused: INVALID_ARGUMENT, UNAUTHENTICATED or PERMISSION_DENIED
       (revoke: GitHub answered 401, 403 or 404)
    5  rate limited (RESOURCE_EXHAUSTED)
    6  unavailable or timed out, after the retries

Only the requested output ever contains the token; errors go to stderr with
the server's code, reason and request id.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from urllib.parse import urlsplit

from octosts.client import (
    DEFAULT_GITHUB_API,
    BadRequest,
    Client,
    ClientError,
    ConfigError,
    DeadlineExceeded,
    ExchangeResult,
    Forbidden,
    RateLimited,
    RetryPolicy,
    RevokeError,
    TokenSourceError,
    Unauthenticated,
    Unavailable,
    parse_token_source,
    revoke,
)
from octosts.client.models import check_token

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TOKEN_SOURCE = 3
EXIT_REFUSED = 4
EXIT_RATE_LIMITED = 5
EXIT_UNAVAILABLE = 6

_EXIT_BY_ERROR: tuple[tuple[type[ClientError], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (TokenSourceError, EXIT_TOKEN_SOURCE),
    (BadRequest, EXIT_REFUSED),
    (Unauthenticated, EXIT_REFUSED),
    (Forbidden, EXIT_REFUSED),
    (RateLimited, EXIT_RATE_LIMITED),
    (Unavailable, EXIT_UNAVAILABLE),
    (DeadlineExceeded, EXIT_UNAVAILABLE),
)


def exit_code_for(error: ClientError) -> int:
    """The documented exit code for a client error."""
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(error, cls):
            return code
    if isinstance(error, RevokeError):
        if error.status in {401, 403, 404}:
            return EXIT_REFUSED
        return EXIT_UNAVAILABLE if error.status is None or error.status >= 500 else EXIT_ERROR
    return EXIT_ERROR


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser(
        "exchange",
        help="exchange a workload OIDC token for a GitHub token",
        description="Exchange this workload's OIDC token for a short-lived GitHub token.",
    )
    ex.add_argument(
        "--scope",
        required=True,
        action="append",
        help="`owner` or `owner/repo`; repeat it for one token covering several repositories "
        "of one owner (each one's policy must match; the token gets what they all grant)",
    )
    ex.add_argument("--identity", required=True, help="trust policy name")
    ex.add_argument(
        "--endpoint",
        default=os.environ.get("OCTO_STS_ENDPOINT", "https://localhost:8443"),
        help="https://host[:port] (TLS) or http://host:port (plaintext); "
        "default $OCTO_STS_ENDPOINT or https://localhost:8443",
    )
    ex.add_argument(
        "--audience",
        help="audience of the OIDC token (Actions: requested from GitHub; default: endpoint host)",
    )
    ex.add_argument("--ca-file", help="PEM CA bundle to trust instead of the system roots")
    ex.add_argument(
        "--token-source",
        default="actions",
        help="actions | file:PATH | env:NAME | stdin (default: actions)",
    )
    ex.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    ex.add_argument("--output", choices=("token", "json", "env"), default="token")
    ex.add_argument("--env-name", default="GITHUB_TOKEN", help="variable name for --output env")
    ex.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds")
    ex.add_argument("--attempts", type=int, default=4, help="attempts on UNAVAILABLE")
    ex.set_defaults(func=run_exchange)

    rv = sub.add_parser(
        "revoke",
        help="revoke a GitHub installation token early",
        description="DELETE /installation/token with the token read from an environment variable.",
    )
    rv.add_argument(
        "--github-api",
        default=os.environ.get("GITHUB_API_URL", DEFAULT_GITHUB_API),
        help="GitHub API base URL (default $GITHUB_API_URL or https://api.github.com)",
    )
    rv.add_argument("--token-env", default="GITHUB_TOKEN", help="variable holding the token")
    rv.add_argument("--timeout", type=float, default=10.0)
    rv.set_defaults(func=run_revoke)


def _fail(error: ClientError) -> int:
    print(f"octo-sts: {error}", file=sys.stderr)
    return exit_code_for(error)


def _render(result: ExchangeResult, output: str, env_name: str) -> str:
    if output == "token":
        return result.token
    if output == "json":
        return json.dumps(result.to_json(), indent=2, sort_keys=True)
    expires = result.to_json()["expires_at"]
    return f"{env_name}={shlex.quote(result.token)}\nOCTO_STS_EXPIRES_AT={expires}"


def run_exchange(args: argparse.Namespace) -> int:
    if not args.env_name.isidentifier():
        print(f"octo-sts: --env-name {args.env_name!r} is not a variable name", file=sys.stderr)
        return EXIT_USAGE
    try:
        retry = RetryPolicy(
            max_attempts=args.attempts,
            deadline=args.timeout,
            attempt_timeout=min(10.0, args.timeout),
        )
        default_audience = urlsplit(args.endpoint).hostname
        source = parse_token_source(args.token_source, default_audience=default_audience)
    except ValueError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with Client(
            args.endpoint, transport=args.transport, ca_file=args.ca_file, retry=retry
        ) as client:
            result = client.exchange(
                args.scope, args.identity, audience=args.audience, token=source
            )
    except ClientError as exc:
        return _fail(exc)
    except ValueError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(_render(result, args.output, args.env_name))
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env, "")
    try:
        check_token(token, f"${args.token_env}")
    except ValueError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        revoke(token, github_api=args.github_api, timeout=args.timeout)
    except ClientError as exc:
        return _fail(exc)
    print("revoked", file=sys.stderr)
    return EXIT_OK
