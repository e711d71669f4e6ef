"""``octo-sts dev issuer`` and ``octo-sts dev token``.

``dev issuer`` serves OIDC discovery and JWKS from a state directory holding
its signing key and URL; ``dev token`` signs tokens with that key, standing
in for GitHub Actions or Kubernetes tokens when trying policies locally.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from octosts.dev.certs import ensure_dev_certs
from octosts.dev.issuer import (
    DevIssuer,
    IssuerState,
    generate_key,
    load_state,
    mint_token,
    save_state,
)
from octosts.domain.errors import IssuerRejected
from octosts.domain.tokens import check_issuer_url

DEFAULT_STATE_DIR = Path(".run/dev-issuer")
EXIT_USAGE = 2


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return host, int(port)


def _issuer_url(value: str) -> str:
    try:
        check_issuer_url(value, allow_insecure=True)
    except IssuerRejected as exc:
        raise argparse.ArgumentTypeError(exc.detail) from exc
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    issuer = sub.add_parser(
        "issuer",
        help="run a development OIDC issuer (discovery + JWKS)",
        description="Serve OIDC discovery and JWKS until Ctrl-C/SIGTERM. The signing key "
        "and issuer URL are kept in --state-dir, where `octo-sts dev token` finds them. "
        "Configure the service to allow this issuer explicitly (it is http and local).",
    )
    issuer.add_argument("--listen", type=_listen, default=("127.0.0.1", 8090), metavar="HOST:PORT")
    issuer.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    issuer.add_argument(
        "--issuer-url",
        type=_issuer_url,
        metavar="URL",
        help="URL put in tokens and discovery (default: http://HOST:PORT)",
    )
    issuer.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a dev CA kept in DIR/tls"
    )
    issuer.add_argument(
        "--key-type",
        choices=["rsa", "ec", "ed25519"],
        default="rsa",
        help="type of a newly generated signing key (default rsa)",
    )
    issuer.set_defaults(func=run_issuer)

    token = sub.add_parser(
        "token",
        help="print a token signed by the dev issuer's key",
        description="Print a signed JWT with iss/iat/exp set, like a CI workload's OIDC token.",
    )
    token.add_argument("--sub", required=True, help="subject claim")
    token.add_argument("--aud", action="append", required=True, help="audience (repeat for a list)")
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra string claim (repeatable; overrides the defaults)",
    )
    token.add_argument(
        "--claim-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra claim with a JSON value, e.g. ref_protected=true (repeatable)",
    )
    token.add_argument("--ttl", type=int, default=600, metavar="SECONDS")
    token.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    token.add_argument("--issuer-url", type=_issuer_url, metavar="URL")
    token.set_defaults(func=run_token)


def run_issuer(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    try:
        state = load_state(state_dir)
    except ValueError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = state.key if state is not None else generate_key(args.key_type)
    host, port = args.listen
    tls = ensure_dev_certs(state_dir / "tls") if args.tls else None
    server = DevIssuer(
        host=host,
        port=port,
        tls=tls,
        issuer_url=args.issuer_url,
        keys=[key],
    )
    save_state(state_dir, server.url, key)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # first line is machine-readable: scripts and tests read the URL from it
    print(server.url, flush=True)
    print(
        f"dev OIDC issuer: discovery at {server.base_url}{server.discovery_path}, "
        f"key {key.kid} in {state_dir}" + (f", CA {tls.ca_cert}" if tls else ""),
        file=sys.stderr,
        flush=True,
    )
    server.serve_until(stop)
    return 0


def _parse_claims(pairs: list[str], *, as_json: bool) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if as_json:
            try:
                claims[name] = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"--claim-json {name}: not JSON") from exc
        else:
            claims[name] = value
    return claims


def _token_inputs(args: argparse.Namespace) -> tuple[IssuerState, dict[str, Any]]:
    state = load_state(args.state_dir)
    if state is None:
        raise ValueError(
            f"no dev issuer state in {args.state_dir}: run `octo-sts dev issuer` first"
        )
    if args.ttl <= 0:
        raise ValueError("--ttl must be positive")
    aud: str | list[str] = args.aud[0] if len(args.aud) == 1 else list(args.aud)
    claims: dict[str, Any] = {"sub": args.sub, "aud": aud}
    claims.update(_parse_claims(args.claim, as_json=False))
    claims.update(_parse_claims(args.claim_json, as_json=True))
    return state, claims


def run_token(args: argparse.Namespace) -> int:
    try:
        state, claims = _token_inputs(args)
    except ValueError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(mint_token(state.key, args.issuer_url or state.issuer_url, claims, ttl=args.ttl))
    return 0
