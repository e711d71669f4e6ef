"""The ``octo-sts`` command.

Each sub-command group lives in its own module exposing
``register(subparsers)``; handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from octosts.cli import dev, exchange, policy, probe, serve, setup, token


class _Group(Protocol):
    def register(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


GROUPS: tuple[_Group, ...] = (serve, policy, token, dev, exchange, setup, probe)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="octo-sts",
        description="Security Token Service for GitHub: "
        "OIDC tokens in, short-lived GitHub tokens out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # unreadable files and the like: a message, never a traceback
        print(
            f"octo-sts: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return EXIT_USAGE
    return code
