"""``octo-sts probe``: is the deployment answering as it must? (docs/probers.md)

One run: the positive check (``--scope``, ``--identity``, ``--expect``: allowed with exactly
those permissions, the token then revoked) and/or the negative one (``--negative-identity``:
refused). Prints one JSON line per run; ``--textfile`` writes Prometheus metrics for
node_exporter's textfile collector; ``--interval`` repeats the run until SIGTERM, with
``--metrics-addr`` serving ``/metrics``.

Exit codes (of a single run; the loop exits 0 when stopped)::

    0  every check passed
    1  an expectation broken: other permissions than expected, the negative exchange
       allowed, a minted token GitHub does not honour, a malformed answer
    2  usage: bad flags, endpoint, CA file or textfile directory
    3  the OIDC token could not be obtained (token source)
    4  the positive exchange was refused (or the negative one for another reason than policy)
    5  rate limited
    6  the service (or GitHub, for the revocation) unavailable or timed out
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile

from octosts.cli.exchange import EXIT_ERROR, EXIT_OK, EXIT_USAGE, exit_code_for
from octosts.client import (
    DEFAULT_GITHUB_API,
    Client,
    ClientError,
    RetryPolicy,
    parse_token_source,
    revoke,
)
from octosts.ops.manifest import ManifestError, parse_grants, permission_problems
from octosts.ops.probe import (
    CheckResult,
    ProbeMetrics,
    Prober,
    ProbeReport,
    ProbeSpec,
    Target,
    parse_scopes,
)

# When several checks fail, the exit code of the most telling failure: a wrong answer first
# (the alarm), then refusals, rate limits, outages, token trouble.
_PRECEDENCE = (EXIT_ERROR, 4, 5, 6, 3, EXIT_USAGE)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "probe",
        help="synthetic exchanges that must be allowed / refused (prober, negative prober)",
        description="Run the positive check (an exchange that must be allowed with exactly "
        "--expect's permissions; the token is then revoked) and/or the negative check (an "
        "exchange that must be refused). One JSON line per run. Exit codes: 0 passed, "
        "1 expectation broken, 2 usage, 3 token source, 4 refused, 5 rate limited, "
        "6 unavailable (docs/probers.md).",
    )
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("OCTO_STS_ENDPOINT"),
        help="https://host[:port] of the service (default $OCTO_STS_ENDPOINT)",
    )
    parser.add_argument("--ca-file", help="PEM CA bundle to trust instead of the system roots")
    parser.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--token-source",
        required=True,
        help="the prober's OIDC token: file:PATH (a Kubernetes projected service-account "
        "token), actions, env:NAME or stdin",
    )
    parser.add_argument("--audience", help="audience of the OIDC token (default: endpoint host)")
    parser.add_argument("--scope", help="positive check: owner/repo (or repositories, a,b)")
    parser.add_argument("--identity", help="positive check: trust policy name")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="NAME=LEVEL",
        help="positive check: a permission the token must have (all of them, nothing more)",
    )
    parser.add_argument("--negative-identity", help="negative check: a policy that must refuse")
    parser.add_argument("--negative-scope", help="negative check's scope (default --scope)")
    parser.add_argument(
        "--github-api",
        default=os.environ.get("GITHUB_API_URL", DEFAULT_GITHUB_API),
        metavar="URL",
        help="where minted tokens are revoked (default $GITHUB_API_URL or api.github.com)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per exchange, seconds")
    parser.add_argument("--attempts", type=int, default=1, help="attempts on UNAVAILABLE")
    parser.add_argument(
        "--textfile", type=Path, metavar="FILE.prom", help="write metrics here after each run"
    )
    parser.add_argument(
        "--interval", type=float, metavar="SECONDS", help="run again every SECONDS until SIGTERM"
    )
    parser.add_argument(
        "--metrics-addr", metavar="HOST:PORT", help="with --interval: serve /metrics here"
    )
    parser.set_defaults(func=run)


class _Usage(ValueError):
    pass


def _target(scope: str | None, identity: str | None, what: str) -> Target | None:
    if identity is None:
        return None
    if not scope:
        raise _Usage(f"the {what} check needs --scope")
    try:
        return Target(parse_scopes(scope), identity)
    except ValueError as exc:
        raise _Usage(str(exc)) from exc


def _spec(args: argparse.Namespace) -> ProbeSpec:
    try:
        expected = parse_grants(args.expect)
    except ManifestError as exc:
        raise _Usage("; ".join(exc.problems)) from exc
    problems = permission_problems(expected)
    if problems:
        raise _Usage("--expect: " + "; ".join(problems))
    positive = _target(args.scope, args.identity, "positive")
    negative = _target(args.negative_scope or args.scope, args.negative_identity, "negative")
    if positive is not None and not expected:
        raise _Usage("the positive check needs --expect NAME=LEVEL (every permission expected)")
    if positive is None and expected:
        raise _Usage("--expect goes with --scope and --identity")
    try:
        return ProbeSpec(positive, negative, expected, args.audience)
    except ValueError as exc:
        raise _Usage(f"{exc} (--identity and/or --negative-identity)") from exc


def _check_args(args: argparse.Namespace) -> None:
    if not args.endpoint:
        raise _Usage("--endpoint (or $OCTO_STS_ENDPOINT) is required")
    if args.timeout <= 0 or args.attempts < 1:
        raise _Usage("--timeout must be positive and --attempts at least 1")
    if args.interval is not None and args.interval <= 0:
        raise _Usage("--interval must be positive")
    if args.metrics_addr is not None and args.interval is None:
        raise _Usage("--metrics-addr serves a loop: give --interval too")
    if args.textfile is not None:
        if args.textfile.suffix != ".prom":
            raise _Usage("--textfile: node_exporter reads only files named *.prom")
        if not os.access(args.textfile.parent, os.W_OK | os.X_OK):
            raise _Usage(f"--textfile: cannot write into {args.textfile.parent}")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise _Usage(f"--metrics-addr: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a scrape target


def exit_code(report: ProbeReport) -> int:
    """The run's exit code (module docstring)."""
    codes = [_check_exit(check) for check in report.checks if not check.passed]
    return min(codes, key=_PRECEDENCE.index) if codes else EXIT_OK


def _check_exit(check: CheckResult) -> int:
    return EXIT_ERROR if check.error is None else exit_code_for(check.error)


def _prober(args: argparse.Namespace, spec: ProbeSpec) -> Prober:
    retry = RetryPolicy(
        max_attempts=args.attempts, deadline=args.timeout, attempt_timeout=min(10.0, args.timeout)
    )
    source = parse_token_source(
        args.token_source, default_audience=urlsplit(args.endpoint).hostname
    )
    github_api, timeout = args.github_api, min(10.0, args.timeout)
    return Prober(
        spec,
        endpoint=args.endpoint,
        client=lambda: Client(
            args.endpoint, transport=args.transport, ca_file=args.ca_file, retry=retry
        ),
        token_source=source,
        revoke=lambda token: revoke(token, github_api=github_api, timeout=timeout),
    )


def run(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
        spec = _spec(args)
        prober = _prober(args, spec)
        listen = _listen(args.metrics_addr) if args.metrics_addr else None
    except ValueError as exc:  # _Usage, and parse_token_source's
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry)

    def once() -> int:
        try:
            report = prober.run()
        except ClientError as exc:  # the client itself cannot be built: endpoint, CA file
            print(f"octo-sts: {exc}", file=sys.stderr)
            return EXIT_USAGE
        code = exit_code(report)
        print(json.dumps({**report.to_json(), "exit_code": code}), flush=True)
        metrics.observe(report)
        if args.textfile is not None:
            _write_textfile(args.textfile, registry)
        return code

    if args.interval is None:
        return once()
    return _loop(once, args.interval, listen, registry)


def _write_textfile(path: Path, registry: CollectorRegistry) -> None:
    try:
        write_to_textfile(str(path), registry)  # a temporary file renamed over it
    except OSError as exc:
        print(f"octo-sts: --textfile {path}: {exc.strerror or exc}", file=sys.stderr)


def _loop(
    once: Callable[[], int],
    interval: float,
    listen: tuple[str, int] | None,
    registry: CollectorRegistry,
) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = None
    if listen is not None:
        try:
            server, _ = start_http_server(listen[1], listen[0], registry=registry)
        except OSError as exc:
            print(f"octo-sts: --metrics-addr: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"serving /metrics on {listen[0]}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        while True:
            if once() == EXIT_USAGE:
                return EXIT_USAGE
            if stop.wait(interval):
                return EXIT_OK
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
