"""One ``DevStack`` in its own process, from whichever ``octosts`` is first on ``PYTHONPATH``.

``bench/perf.py`` runs this twice: with the tree under test and with a git worktree of the
baseline commit, so each stack (its replicas, its Envoy config) is that tree's own. Prints
one JSON line (ports, PIDs, URLs, workdir) once the stack serves, then waits for stdin to
close and stops it.

    PYTHONPATH=<tree>/service python bench/_stack.py WORKDIR [--replicas N] [--env K=V ...]
        [--edge-jwt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from octosts.dev.stack import DevStack, StackPorts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="K=V for the replicas")
    parser.add_argument("--edge-jwt", action="store_true", help="edge JWT verification on")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    stack = DevStack(
        workdir=args.workdir,
        ports=StackPorts.free(args.replicas),
        # Every exchange mints a token: lift the emulator's hourly budget for the run.
        github_args=("--rate-limit", "10000000"),
        extra_env={"OCTOSTS_LOG_LEVEL": "warning", **extra},
        **({"edge_jwt": True} if args.edge_jwt else {}),  # a baseline tree has no such field
    )
    stack.start()
    try:
        pids = stack.pids()
        print(
            json.dumps(
                {
                    "gateway": stack.ports.gateway,
                    "grpc": list(stack.ports.grpc),
                    "metrics": list(stack.ports.metrics),
                    "issuer_url": stack.issuer_url,
                    "github_url": stack.github_url,
                    "domain": stack.domain,
                    "ca": str(stack.ca_cert),
                    "cert": str(stack.certs.cert) if stack.certs else "",
                    "key": str(stack.certs.key) if stack.certs else "",
                    "envoy_pid": pids.get("envoy"),
                    "replica_pids": [pid for name, pid in pids.items() if name.startswith("sts-")],
                    "module": sys.modules["octosts"].__file__,
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
