"""`octo-sts dev ...`: development servers shipped with the product."""

from __future__ import annotations

import argparse

from octosts.cli import dev_github, dev_issuer, dev_stack


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dev", help="development servers: GitHub API emulator, OIDC issuer")
    dev_sub = parser.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")
    dev_issuer.register(dev_sub)
    dev_github.register(dev_sub)
    dev_stack.register(dev_sub)
