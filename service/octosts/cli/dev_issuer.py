"""`octo-sts dev issuer` and `octo-sts dev token` (placeholder until implemented)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("issuer", help="not implemented yet")
