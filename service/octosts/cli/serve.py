"""`octo-sts serve`: run the gRPC service (configuration: environment, optional YAML file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from octosts.domain.errors import StsError
from octosts.settings import SettingsError, load


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the Security Token Service (gRPC)",
        description="Run the service. Settings come from environment variables (see README) "
        "and optionally a YAML file with the same names in lower case.",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (env vars win)")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from octosts import app  # noqa: PLC0415 - keeps `octo-sts policy ...` start-up light

    try:
        settings = load(path=args.config)
    except SettingsError as exc:
        print(f"octo-sts serve: {exc}", file=sys.stderr)
        return 2
    try:
        return app.serve(settings)
    except (StsError, ValueError) as exc:  # bad key, bad pattern...: a message, not a traceback
        print(f"octo-sts serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
