"""``octo-sts setup``: register the GitHub App an instance runs as (docs/self-hosting.md).

``setup manifest`` prints the App manifest (or, with ``--html``, a page whose button sends it
to GitHub); ``setup convert`` trades the code GitHub redirects with for the App's id, key and
webhook secret, written to files.

Exit codes::

    0  done
    1  GitHub's answer was not an App (unexpected status or body)
    2  usage: bad flags, an invalid permission or URL, files that would be overwritten
    4  refused: GitHub does not know the code (used, expired or mistyped)
    6  GitHub unreachable, timed out or failing (5xx)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

import yaml

from octosts.cli._inputs import InputError, decode_utf8, read_limited
from octosts.ops.conversion import (
    ConversionError,
    app_files,
    check_writable,
    convert,
    write_app_files,
)
from octosts.ops.manifest import (
    DEFAULT_GITHUB_WEB,
    AppSpec,
    ManifestError,
    build_manifest,
    creation_form,
    creation_url,
    default_webhook_url,
    grants_from_document,
    parse_grants,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 4
EXIT_UNAVAILABLE = 6
MAX_PERMISSIONS_FILE = 64 * 1024
DEFAULT_GITHUB_API = "https://api.github.com"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "setup",
        help="register the GitHub App this instance runs as",
        description="Register the GitHub App an Octo STS instance runs as: "
        "docs/self-hosting.md walks through it.",
    )
    setup_sub = parser.add_subparsers(dest="setup_command", required=True, metavar="SETUP_COMMAND")
    _register_manifest(setup_sub)
    _register_convert(setup_sub)


def _register_manifest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "manifest",
        help="print the GitHub App manifest (or a page that sends it to GitHub)",
        description="Print the GitHub App manifest: the permissions the service needs, the "
        "ones trust policies may grant (--permission), the webhook and its events, no user "
        "authorization. Exit 0, or 2 with every problem listed.",
    )
    parser.add_argument("--name", required=True, help="the App's name (at most 34 characters)")
    parser.add_argument(
        "--url", required=True, help="the service's public URL, e.g. https://sts.example.com"
    )
    hook = parser.add_mutually_exclusive_group()
    hook.add_argument("--webhook-url", help="where GitHub delivers events (default URL/webhook)")
    hook.add_argument(
        "--no-webhook",
        action="store_true",
        help="no webhook: no events, no check runs on policy changes",
    )
    parser.add_argument(
        "--redirect-url", help="where GitHub sends the browser with ?code= (default: --url)"
    )
    parser.add_argument(
        "--permission",
        action="append",
        default=[],
        metavar="NAME=LEVEL",
        help="a permission trust policies may grant, e.g. contents=write; repeat it",
    )
    parser.add_argument(
        "--permissions-file",
        type=Path,
        metavar="FILE",
        help="YAML/JSON mapping of permission: level, or a trust policy (its permissions); "
        "--permission flags override it",
    )
    parser.add_argument("--description", help="the App's description")
    parser.add_argument("--public", action="store_true", help="let other accounts install it")
    parser.add_argument(
        "--html",
        action="store_true",
        help="print an HTML page whose button POSTs the manifest to GitHub instead",
    )
    parser.add_argument("--org", help="with --html: create the App in this organization")
    parser.add_argument(
        "--github-web",
        default=DEFAULT_GITHUB_WEB,
        metavar="URL",
        help=f"with --html: GitHub's web address (default {DEFAULT_GITHUB_WEB})",
    )
    parser.add_argument("--state", help="with --html: a value GitHub returns with the code")
    parser.set_defaults(func=run_manifest)


def _register_convert(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "convert",
        help="trade the code GitHub redirected with for the App's id, key and webhook secret",
        description="POST /app-manifests/CODE/conversions and write the App's private key "
        "(app.pem), its settings (octo-sts.env), both mode 0600, and app.json to --out-dir. "
        "Prints the settings (not the webhook secret). Exit codes: 0 done, 1 unexpected "
        "answer, 2 usage or files in the way, 4 unknown code, 6 GitHub unreachable.",
    )
    parser.add_argument(
        "--code", required=True, help="the code from the redirect (`-`: read it from stdin)"
    )
    parser.add_argument(
        "--github-api",
        default=os.environ.get("GITHUB_API_URL", DEFAULT_GITHUB_API),
        metavar="URL",
        help="GitHub's REST API (default $GITHUB_API_URL or https://api.github.com)",
    )
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument("--force", action="store_true", help="overwrite files in --out-dir")
    parser.add_argument("--ca-file", type=Path, help="PEM CA bundle for --github-api")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.set_defaults(func=run_convert)


def _usage(message: str) -> int:
    print(f"octo-sts: {message}", file=sys.stderr)
    return EXIT_USAGE


def _grants(args: argparse.Namespace) -> dict[str, str]:
    """Raises ManifestError, InputError."""
    from_file: dict[str, str] = {}
    if args.permissions_file is not None:
        where = str(args.permissions_file)
        raw = read_limited(where, MAX_PERMISSIONS_FILE, what="permissions file")
        try:
            data = yaml.safe_load(decode_utf8(raw, where=where))
        except yaml.YAMLError as exc:
            raise InputError(f"{where}: not YAML: {str(exc).splitlines()[0]}") from exc
        from_file = grants_from_document(data, where)
    # A flag names a permission the file names too: the flag decides.
    return {**from_file, **parse_grants(args.permission)}


def run_manifest(args: argparse.Namespace) -> int:
    if not args.html and (args.org or args.state or args.github_web != DEFAULT_GITHUB_WEB):
        return _usage("--org, --state and --github-web go with --html")
    try:
        spec = AppSpec(
            name=args.name,
            url=args.url,
            webhook_url=None
            if args.no_webhook
            else args.webhook_url or default_webhook_url(args.url),
            redirect_url=args.redirect_url or args.url,
            grants=_grants(args),
            public=args.public,
            **({"description": args.description} if args.description else {}),
        )
        manifest = build_manifest(spec)
        if args.html:
            action = creation_url(args.github_web, args.org)
            print(creation_form(manifest, action, args.state), end="")
            return EXIT_OK
    except ManifestError as exc:
        for problem in exc.problems:
            print(f"octo-sts: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        return _usage(str(exc))
    print(json.dumps(manifest, indent=2))
    return EXIT_OK


def _read_code(value: str) -> str:
    if value != "-":
        return value.strip()
    return decode_utf8(read_limited("-", 1024, what="code"), where="code on stdin").strip()


def run_convert(args: argparse.Namespace) -> int:
    try:
        code = _read_code(args.code)
        files = app_files(args.out_dir)
        check_writable(files, force=args.force)
        verify = True if args.ca_file is None else _ca(args.ca_file)
        app = convert(code, github_api=args.github_api, timeout=args.timeout, verify=verify)
    except (InputError, ValueError) as exc:
        return _usage(str(exc))
    except FileExistsError as exc:
        return _usage(f"{exc.filename}: exists; pass --force to overwrite it")
    except ConversionError as exc:
        print(f"octo-sts: {exc}", file=sys.stderr)
        if exc.status == 404:
            return EXIT_REFUSED
        if exc.status is None or exc.status >= 500:
            return EXIT_UNAVAILABLE
        return EXIT_ERROR
    settings = write_app_files(app, files, args.github_api)
    for name, value in settings.items():
        if name != "OCTOSTS_WEBHOOK_SECRETS":
            print(f"{name}={value}")
    secret_note = (
        f"OCTOSTS_WEBHOOK_SECRETS (the webhook secret) is in {files.env}, not printed."
        if "OCTOSTS_WEBHOOK_SECRETS" in settings
        else "GitHub made no webhook secret: the App has no webhook."
    )
    note = f"""\
        GitHub App {app.slug or app.name} (id {app.app_id}) created; owner {app.owner or "?"}.
        Wrote {files.key} (mode 0600), {files.env} (mode 0600) and {files.app}.
        {secret_note}
        GitHub also made an OAuth client secret; the service does not use it and it was not kept.
        Next: install the App on your organization: {app.install_url}"""
    print(textwrap.dedent(note), file=sys.stderr)
    return EXIT_OK


def _ca(path: Path) -> object:
    import ssl  # noqa: PLC0415 - only with --ca-file

    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ca-file {path}: not a readable PEM CA bundle") from exc
