"""`octo-sts token decode`: show a JWT's header and claims, UNVERIFIED.

The debugging the octo-sts FAQ does with base64 and jq, without a traceback
for garbage. Reading the token from stdin (the default, or ``-``) keeps it out
of shell history and process listings. The signature is never printed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

from octosts.cli._inputs import InputError, decode_utf8, loads_object, read_limited
from octosts.domain.tokens import MAX_TOKEN_BYTES

EXIT_OK = 0
EXIT_BAD_INPUT = 2
TIME_CLAIMS = ("exp", "nbf", "iat")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("token", help="inspect tokens")
    token_sub = parser.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")
    decode = token_sub.add_parser(
        "decode",
        help="print a JWT's header and claims WITHOUT verifying it",
        description="Exit 0 decoded, 2 not a JWT. The signature is NOT checked.",
    )
    decode.add_argument(
        "token", nargs="?", default="-", metavar="TOKEN|-", help="the JWT, or '-' for stdin"
    )
    decode.set_defaults(func=_run_decode)


def _run_decode(args: argparse.Namespace) -> int:
    try:
        if args.token == "-":  # noqa: S105 - "-" means stdin, not a secret
            raw = decode_utf8(
                read_limited("-", MAX_TOKEN_BYTES, what="token"), where="token on stdin"
            )
        else:
            raw = args.token
        header, claims = decode_unverified(raw)
    except InputError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("UNVERIFIED: the signature was NOT checked; do not trust these values.")
    print("header:")
    print(json.dumps(header, indent=2, sort_keys=True))
    print("claims:")
    print(json.dumps(claims, indent=2, sort_keys=True))
    times = [_time_line(name, claims[name]) for name in TIME_CLAIMS if name in claims]
    if times:
        print("times (UTC):")
        for line in times:
            print(f"  {line}")
    return EXIT_OK


def decode_unverified(raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a compact JWS and decode its header and payload, without verifying.

    Raises InputError for anything that is not a JWT with JSON-object parts.
    """
    text = raw.strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    if not text:
        raise InputError("token: empty input")
    if len(text) > MAX_TOKEN_BYTES:
        raise InputError(f"token: larger than {MAX_TOKEN_BYTES} bytes")
    parts = text.split(".")
    if len(parts) == 5:
        raise InputError("token: this is an encrypted JWT (JWE); it cannot be decoded")
    if len(parts) != 3:
        raise InputError(f"token: a JWT has 3 dot-separated parts, this has {len(parts)}")
    header = loads_object(_b64_text(parts[0], "header"), where="token header")
    claims = loads_object(_b64_text(parts[1], "payload"), where="token payload")
    return header, claims


def _b64_text(part: str, name: str) -> str:
    if not part or _B64URL.fullmatch(part) is None:
        raise InputError(f"token {name}: not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"token {name}: not base64url") from exc
    return decode_utf8(data, where=f"token {name}")


def _time_line(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name}: {json.dumps(value)} (not a number)"
    try:
        when = datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{name}: {value} (out of range)"
    stamp = when.isoformat().replace("+00:00", "Z")
    note = ""
    if name == "exp" and when < datetime.now(tz=UTC):
        note = " (expired)"
    return f"{name}: {stamp}{note}"
