"""`octo-sts dev stack`: the whole local stack in the foreground (what `make run` runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import signal
import sys
import threading
from pathlib import Path

import httpx

from octosts.cli._inputs import InputError, decode_utf8, read_limited
from octosts.dev.stack import DevStack, StackError, StackPorts
from octosts.dev.waiting import wait_for

DEMO_SUBJECT = "repo:octo-org/demo:ref:refs/heads/main"
DEMO_WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "stack",
        help="run issuer + GitHub emulator + STS replicas + Envoy and show an exchange",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".run"), metavar="DIR")
    parser.add_argument("--replicas", type=int, default=2, choices=range(1, 9), metavar="N")
    parser.add_argument(
        "--apps",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="GitHub Apps the emulator serves and the replicas mint with (docs/github-apps.md)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="exit after the demo exchange (smoke test)"
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="run as the GitHub App in FILE (`octo-sts setup convert`'s octo-sts.env) against "
        "its GITHUB_BASE_URL, instead of starting an emulator (docs/self-hosting.md)",
    )
    parser.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="move every port by N (a second stack on the same machine)",
    )
    parser.add_argument(
        "--edge-jwt",
        action="store_true",
        help="Envoy's jwt_authn refuses bad tokens of the exact allowlisted issuers before any "
        "Check (docs/gateway.md); the dev issuer is then the allowlist",
    )
    parser.set_defaults(func=_run)


MAX_ENV_FILE = 64 * 1024
_ENV_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines skipped), as ``docker-compose
    --env-file`` and ``set -a; . FILE`` read the file ``setup convert`` writes. Raises
    ValueError, InputError."""
    settings: dict[str, str] = {}
    text = decode_utf8(read_limited(str(path), MAX_ENV_FILE, what="env file"), where=str(path))
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _ENV_LINE.fullmatch(line.strip())
        if found is None:
            raise ValueError(f"{path}:{number}: expected NAME=VALUE")
        settings[found.group(1)] = found.group(2)
    if "GITHUB_BASE_URL" not in settings or "GITHUB_APP_ID" not in settings:
        raise ValueError(f"{path}: needs GITHUB_APP_ID and GITHUB_BASE_URL (setup convert's file)")
    return settings


def _demo(stack: DevStack) -> int:
    cli = shlex.quote(str(Path(sys.executable).parent / "octo-sts"))
    token_cmd = (
        f"{cli} dev token --state-dir {shlex.quote(str(stack.workdir / 'dev-issuer'))} "
        f"--sub {DEMO_SUBJECT} --aud {stack.domain} --claim workflow_ref={DEMO_WORKFLOW}"
    )
    url = f"{stack.gateway_url}/sts/exchange?scope=octo-org/demo&identity=ci"
    token = stack.token(DEMO_SUBJECT, workflow_ref=DEMO_WORKFLOW)
    reply = httpx.get(
        url, headers={"authorization": f"Bearer {token}"}, verify=stack.client_tls(), timeout=10
    )
    shown = reply.json()
    for key in ("token", "access_token"):
        if isinstance(shown.get(key), str):
            shown[key] = shown[key][:8] + "…"  # enough to see it worked, not to use it
    print(f"\nA real exchange through Envoy -> HTTP {reply.status_code}:")
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    print("\nTry it yourself:\n")
    print(f"  TOKEN=$({token_cmd})")
    print(
        f'  curl --cacert {shlex.quote(str(stack.ca_cert))} -H "Authorization: Bearer $TOKEN" '
        f'"{url}"'
    )
    print(
        f'\ngRPC: grpcurl -cacert {stack.ca_cert} -H "authorization: Bearer $TOKEN" '
        f'-d \'{{"scope":"octo-org/demo","identity":"ci"}}\' localhost:{stack.ports.gateway} '
        "octosts.v1.SecurityTokenService/Exchange"
    )
    egress_ok = egress_demo(stack, token, token_cmd)
    print(
        f"\nLogs: {stack.workdir / 'logs'}   Metrics: http://127.0.0.1:{stack.ports.metrics[0]}/metrics"
        f" (Envoy: http://127.0.0.1:{stack.ports.envoy_metrics}/metrics)"
    )
    return 0 if reply.status_code == 200 and egress_ok else 1


def egress_demo(stack: DevStack, token: str, token_cmd: str) -> bool:
    """A GitHub API call through the egress gateway (docs/egress.md): the workload holds no
    GitHub token, only its OIDC token."""
    base = f"{stack.gateway_url}/github"
    path = "/repos/octo-org/demo/contents"
    ask = {"x-octo-sts-scope": "octo-org/demo", "x-octo-sts-identity": "ci"}
    reply = httpx.get(
        base + path,
        headers={"authorization": f"Bearer {token}", **ask},
        verify=stack.client_tls(),
        timeout=10,
    )
    print(f"\nThe GitHub egress gateway: GET {base}{path} -> HTTP {reply.status_code}:")
    print(reply.text[:300])
    ca = shlex.quote(str(stack.ca_cert))
    headers = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in ask.items())
    print("\nYour workload calls GitHub with its OIDC token (never a GitHub token):\n")
    print(f"  TOKEN=$({token_cmd})")
    print(f'  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" {headers} \\')
    print(f"    {base}{path}")
    print(
        f'  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" {headers} \\\n'
        f'    -d \'{{"title": "hello from egress"}}\' {base}/repos/octo-org/demo/issues'
    )
    print(
        f"\n  gh: GH_HOST=localhost:{stack.ports.gateway} GH_ENTERPRISE_TOKEN=$TOKEN "
        f"SSL_CERT_FILE={ca} gh api {headers} repos/octo-org/demo/contents"
    )
    print(f"  Octokit: new Octokit({{ baseUrl: '{base}', auth: TOKEN, headers: {{...}} }})")
    return reply.status_code == 200


def _run(args: argparse.Namespace) -> int:
    if args.env_file is not None and args.apps != 1:
        print("octo-sts dev stack: --env-file names one App, not --apps N", file=sys.stderr)
        return 2
    try:
        app = read_env_file(args.env_file) if args.env_file is not None else {}
        app.pop("OCTOSTS_WEBHOOK_ADDR", None)  # the stack gives each replica its own
        ports = StackPorts.fixed(args.replicas, args.port_offset)
    except (ValueError, InputError) as exc:
        print(f"octo-sts dev stack: {exc}", file=sys.stderr)
        return 2
    stack = DevStack(
        workdir=args.workdir.resolve(),
        ports=ports,
        apps=args.apps,
        github=app.get("GITHUB_BASE_URL"),
        extra_env=app,
        edge_jwt=args.edge_jwt,
    )
    github = f"GitHub at {stack.github}" if stack.github else "GitHub emulator"
    print(f"starting dev issuer, {github}, STS replicas and Envoy ...", flush=True)
    try:
        stack.start()
    except (StackError, OSError) as exc:
        print(f"octo-sts dev stack: {exc}", file=sys.stderr)
        return 1
    try:
        code = _demo(stack)
        if args.no_wait:
            return code
        print("\nStack running. Ctrl-C stops everything.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            wait_for(stop)
        return 0
    finally:
        # A second Ctrl-C (impatient user, or a supervisor signalling the whole group) must
        # not interrupt the shutdown half-way and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping ...", file=sys.stderr)
        stack.stop()
