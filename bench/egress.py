"""Egress gateway benchmark ([egress]): a GitHub API call through the gateway vs straight to GitHub.

Real processes on loopback (``DevStack``: dev issuer, GitHub emulator with its rate limit
lifted, two STS replicas, Envoy over TLS). The same request, ``GET
/repos/octo-org/demo/contents/README.md``, two ways, in the same run:

- **direct** (the baseline): to the emulator with a GitHub installation token, as a workload
  holding a token would call GitHub (plain HTTP/1.1 on loopback: the emulator speaks no TLS);
- **egress**: to ``https://localhost:<gateway>/github/...`` with the workload's OIDC token and
  ``x-octo-sts-scope`` / ``x-octo-sts-identity``: Envoy (TLS) -> ext_authz Check (mode egress:
  token verified, the trust policy decided, a held GitHub token reused) -> the emulator.

Warm: before measuring, egress requests are sent until every replica holds a token for the
workload (each replica's ``egress_token_cache`` miss counter moved), and no mint happens while
measuring (checked in the emulator's call log and reported). Load: ``h2load`` (C, closed loop,
HTTP/1.1 on both paths so the protocol is the same, one request in flight per connection).
Rounds alternate the two paths (direct, egress, egress, direct, ...) so drift cancels; figures
are medians over rounds.

Per path: p50/p99 latency (h2load's per-request log), throughput, and the CPU the serving
processes spent per request (user + system from ``/proc``: the emulator for direct; the emulator,
Envoy and the replicas for egress; h2load itself is not counted). Reported as ratios egress /
direct. Writes the ``"egress"`` key of bench/results.json and prints a table.

    .venv/bin/python bench/egress.py [--requests 2000] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, save, table

from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
PATH = "/repos/octo-org/demo/contents/README.md"
ASK = {"x-octo-sts-scope": "octo-org/demo", "x-octo-sts-identity": "ci"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def h2load(
    url: str, headers: dict[str, str], *, requests: int, clients: int, log: Path
) -> dict[str, Any]:
    """One closed-loop HTTP/1.1 run; latencies in ms from h2load's per-request log."""
    cmd = [
        "h2load",
        "--h1",
        f"--requests={requests}",
        f"--clients={clients}",
        f"--log-file={log}",
        *(f"--header={k}: {v}" for k, v in headers.items()),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-500:]}")
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    for line in log.read_text().splitlines():
        _start, status, duration_us = line.split("\t")
        latencies.append(int(duration_us) / 1000)
        statuses[status] = statuses.get(status, 0) + 1
    log.unlink()
    rps = 0.0
    for line in done.stdout.splitlines():
        if line.startswith("finished in") and "req/s" in line:
            rps = float(line.split(",")[1].split()[0])
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": rps,
        "statuses": statuses,
        "requests": len(latencies),
    }


def replica_misses(stack: DevStack, index: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports.metrics[index]}/metrics", timeout=5).text
    pattern = r'octo_sts_cache_requests_total\{cache="egress_token_cache",result="miss"\} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def mints_since(stack: DevStack, since: float) -> int:
    calls = httpx.get(f"{stack.github_url}/_emulator/calls", params={"since": since}, timeout=5)
    return sum(
        1
        for c in calls.json()
        if c["method"] == "POST" and c["path"].startswith("/app/installations/")
    )


def warm(stack: DevStack, oidc: str) -> None:
    """Egress requests until every replica has minted (and so holds) a token for the workload."""
    headers = {"authorization": f"Bearer {oidc}", **ASK}
    with httpx.Client(verify=stack.client_tls(), timeout=10) as client:
        for _ in range(500):
            resp = client.get(f"{stack.gateway_url}/github{PATH}", headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"egress warm-up answered {resp.status_code}: {resp.text}")
            if all(replica_misses(stack, i) > 0 for i in range(len(stack.ports.metrics))):
                return
    raise RuntimeError("the egress Checks never reached every replica")


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = DevStack(
        workdir=workdir / "stack",
        ports=StackPorts.free(2),
        github_args=("--rate-limit", "100000000"),
    )
    with stack:
        oidc = stack.token(SUB, workflow_ref=WORKFLOW, ttl=3600)
        exchange = httpx.get(
            f"{stack.gateway_url}/sts/exchange",
            params={"scope": "octo-org/demo", "identity": "ci"},
            headers={"authorization": f"Bearer {oidc}"},
            verify=stack.client_tls(),
            timeout=10,
        )
        github_token = exchange.json()["token"]
        warm(stack, oidc)
        pids = stack.pids()
        replicas = [p for n, p in pids.items() if n.startswith("sts-")]
        # The processes serving each path, by part (CPU is read per part).
        serving = {
            "direct": {"github": [pids["github"]]},
            "egress": {"github": [pids["github"]], "envoy": [pids["envoy"]], "replicas": replicas},
        }
        paths = {
            "direct": (f"{stack.github_url}{PATH}", {"authorization": f"token {github_token}"}),
            "egress": (
                f"{stack.gateway_url}/github{PATH}",
                {"authorization": f"Bearer {oidc}", **ASK},
            ),
        }
        rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "egress": []}
        started = time.time()
        for r in range(args.rounds):
            order = ("direct", "egress") if r % 2 == 0 else ("egress", "direct")
            for name in order:
                url, headers = paths[name]
                parts = serving[name]
                before = {part: sum(map(cpu_seconds, ps)) for part, ps in parts.items()}
                run = h2load(
                    url,
                    headers,
                    requests=args.requests,
                    clients=args.clients,
                    log=workdir / "h2.log",
                )
                spent = {p: sum(map(cpu_seconds, ps)) - before[p] for p, ps in parts.items()}
                run["cpu_ms_per_request"] = sum(spent.values()) / run["requests"] * 1000
                for part, seconds in spent.items():
                    run[f"cpu_ms_{part}"] = seconds / run["requests"] * 1000
                if set(run["statuses"]) != {"200"}:
                    raise RuntimeError(f"{name}: non-200 answers {run['statuses']}")
                rounds[name].append(run)
        mints = mints_since(stack, started)
    return summarise(rounds, mints, args)


def summarise(
    rounds: dict[str, list[dict[str, Any]]], mints: int, args: argparse.Namespace
) -> dict[str, Any]:
    median = {
        name: {
            key: round(statistics.median(r[key] for r in runs), 3)
            for key in runs[0]
            if key.endswith("_ms") or key.startswith("cpu_ms") or key == "rps"
        }
        for name, runs in rounds.items()
    }
    direct, egress = median["direct"], median["egress"]
    return {
        "requests_per_round": args.requests,
        "clients": args.clients,
        "rounds": args.rounds,
        "direct": direct,
        "egress": egress,
        "ratio_egress_to_direct": {
            key: round(egress[key] / direct[key], 2) if direct[key] else None
            for key in ("p50_ms", "p99_ms", "cpu_ms_per_request", "rps")
        },
        "added_ms": {
            "p50": round(egress["p50_ms"] - direct["p50_ms"], 3),
            "p99": round(egress["p99_ms"] - direct["p99_ms"], 3),
        },
        "mints_while_measuring": mints,
    }


def report(result: dict[str, Any]) -> str:
    rows = [("path", "p50 ms", "p99 ms", "req/s", "CPU ms/req")]
    for name in ("direct", "egress"):
        f = result[name]
        rows.append(
            (
                name,
                f"{f['p50_ms']:.3f}",
                f"{f['p99_ms']:.3f}",
                f"{f['rps']:.0f}",
                f"{f['cpu_ms_per_request']:.3f}",
            )
        )
    parts = ", ".join(
        f"{k.removeprefix('cpu_ms_')} {v:.3f}"
        for k, v in result["egress"].items()
        if k.startswith("cpu_ms_") and k != "cpu_ms_per_request"
    )
    rows.append(("  egress CPU by part", "", "", "", parts))
    ratio = result["ratio_egress_to_direct"]
    rows.append(
        (
            "egress / direct",
            f"{ratio['p50_ms']}x",
            f"{ratio['p99_ms']}x",
            f"{ratio['rps']}x",
            f"{ratio['cpu_ms_per_request']}x",
        )
    )
    return (
        f"egress gateway vs direct ({result['rounds']} rounds x {result['requests_per_round']} "
        f"requests, {result['clients']} connections, medians)\n"
        + table(rows)
        + f"\nmints while measuring: {result['mints_while_measuring']} (0: every request reused"
        " a held token)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path per round")
    parser.add_argument(
        "--clients", type=int, default=4, help="connections (1 request in flight each)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench/egress.py needs h2load: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    for name in ("requests", "clients", "rounds"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    with tempfile.TemporaryDirectory(prefix="octosts-bench-egress-") as tmp:
        result = bench(args, Path(tmp))
    save("egress", result)
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
