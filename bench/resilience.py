"""Fault and overload bench ([resilience]): what callers see when GitHub, an issuer, a replica or
the load misbehaves.

Real processes on loopback (``DevStack``: dev issuer, GitHub emulator, ``octo-sts serve``
replicas, Envoy over TLS). Faults come from the emulator's fault rules (``/_emulator/faults``,
docs/github-emulator.md) and from signals to the replicas.

Fault scenarios (two replicas behind Envoy, an open-loop mix of HTTP/JSON exchanges at
``--rate``: 70 % warm (one token, cached), 10 % cold (a fresh token each), 10 % denied (no such
policy: 403), 10 % expired (401)). Each runs ``--before`` s clean, ``--fault`` s with the fault,
``--after`` s clean again. Per scenario it prints:

- the caller-visible HTTP statuses of the whole run and of requests started during the fault;
- the warm success rate during the fault (warm requests are the ones that should succeed);
- GitHub calls per second during the fault, and token mints per second (the emulator's call log);
- recovery: seconds from the end of the fault until warm exchanges succeed again for good;
- orphan tokens: live in the emulator's ledger, minted during the scenario, held by no caller.

GitHub slow on one replica (the [resilience] issue's defect 3): mints take 3 s, warm exchanges
through Envoy to a single replica at 25 and 45 rps with the default pool and admission limit,
and at 45 rps with both sized for it: the share answered 200, how fast and with what the rest
were refused (status, reason, ``Retry-After``), GitHub mints per second.

Overload: one replica, an open-loop ramp with h2load (warm exchanges through Envoy), once with
admission control (``OCTOSTS_MAX_CONCURRENT_RPCS``, default) and once without (the limit at
10,000, Envoy's breakers as wide), the two stacks taking turns at each rate: achieved rate,
latency of successes and of refusals, calls in flight, Envoy's counters, where the knee is.
Workers: kill -9 of a supervisor with ``OCTOSTS_WORKERS=2``, workers left running.

    .venv/bin/python bench/resilience.py [--rate 50] [--before 3] [--fault 10] [--after 8] \
        [--only NAME ...] [--no-faults] [--no-slow] [--no-overload]

Writes the ``"resilience"`` key of bench/results.json; the parts and scenarios not run keep
their stored figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, percentile, save, table

from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
EXCHANGE = "/sts/exchange"
QUERY = {"scope": "octo-org/demo", "identity": "ci"}
MINT_PREFIX = "/app/installations/"
MIX = (("warm", 70), ("cold", 10), ("denied", 10), ("expired", 10))
EXPECTED = {"warm": 200, "cold": 200, "denied": 403, "expired": 401}
_REASON = re.compile(r"reason: ([a-z_]+)|\(([a-z_]+)\)\s*$")


@dataclass
class Shot:
    """One request the load generator sent."""

    kind: str
    start: float  # wall clock, seconds (comparable with the emulator's log)
    end: float
    status: int  # 0: no HTTP answer (connection error, client timeout)
    reason: str = ""
    retry_after: str = ""
    token_sha256: str = ""


@dataclass
class Scenario:
    name: str
    what: str
    start: Callable[[DevStack], None]
    stop: Callable[[DevStack], None]
    shots: list[Shot] = field(default_factory=list)


# -- load ----------------------------------------------------------------------------------------


class Tokens:
    """Bearer tokens for each kind of request, signed by the stack's dev issuer."""

    def __init__(self, stack: DevStack) -> None:
        self._stack = stack
        self.warm = stack.token(SUB, workflow_ref=WORKFLOW, ttl=3600)
        self._expired = stack.token(SUB, workflow_ref=WORKFLOW, ttl=-300)

    def for_kind(self, kind: str) -> tuple[str, dict[str, str]]:
        """(token, query) of one request of ``kind``."""
        if kind == "cold":
            fresh = self._stack.token(SUB, workflow_ref=WORKFLOW, jti=uuid.uuid4().hex)
            return fresh, QUERY
        if kind == "denied":
            return self.warm, {**QUERY, "identity": "no-such-policy"}
        if kind == "expired":
            return self._expired, QUERY
        return self.warm, QUERY


def _ms(samples: list[float], p: float) -> float | None:
    """The ``p``th percentile in milliseconds, None without samples (JSON has no NaN)."""
    return round(percentile(samples, p) * 1000, 1) if samples else None


def _show(value: object) -> str:
    return "-" if value is None else str(value)


def _reason(text: str) -> str:
    try:
        message = str(json.loads(text).get("message", ""))
    except ValueError:
        return ""
    found = _REASON.search(message)
    return (found.group(1) or found.group(2)) if found else ""


async def drive(
    stack: DevStack,
    rate: float,
    seconds: float,
    events: list[tuple[float, Callable[[], Awaitable[None]]]],
    mix: tuple[tuple[str, int], ...] = MIX,
) -> list[Shot]:
    """Open-loop load at ``rate``/s for ``seconds``; ``events`` run at their offsets."""
    tokens = Tokens(stack)
    kinds = [kind for kind, weight in mix for _ in range(weight)]
    shots: list[Shot] = []
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, verify=stack.client_tls(), timeout=30.0, limits=limits
    ) as client:

        async def one(kind: str) -> None:
            token, query = tokens.for_kind(kind)
            start = time.time()
            shot = Shot(kind, start, start, 0)
            try:
                resp = await client.get(
                    EXCHANGE, params=query, headers={"authorization": f"Bearer {token}"}
                )
            except httpx.HTTPError:
                shot.end = time.time()
            else:
                shot.end, shot.status = time.time(), resp.status_code
                if resp.status_code == 200:
                    issued = resp.json()["token"]
                    shot.token_sha256 = hashlib.sha256(issued.encode()).hexdigest()
                else:
                    shot.reason = _reason(resp.text)
                    shot.retry_after = resp.headers.get("retry-after", "")
            shots.append(shot)

        started = time.monotonic()
        pending = sorted(events, key=lambda item: item[0])
        for i in range(int(rate * seconds)):
            due = started + i / rate
            while pending and pending[0][0] <= due - started:
                _, action = pending.pop(0)
                task = asyncio.ensure_future(action())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.ensure_future(one(kinds[i % len(kinds)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for _, action in pending:
            await action()
        while tasks:
            await asyncio.gather(*list(tasks))
    return shots


# -- what the emulator saw ---------------------------------------------------------------------


def github_calls(stack: DevStack, since: float, until: float) -> tuple[int, int]:
    """(all GitHub calls, token mints) answered in [since, until]."""
    calls = httpx.get(f"{stack.github_url}/_emulator/calls", params={"since": since}).json()
    window = [c for c in calls if c["at"] <= until]
    mints = [c for c in window if c["method"] == "POST" and c["path"].startswith(MINT_PREFIX)]
    return len(window), len(mints)


# The service's own token for reading policy files (cached and held by it, not a caller's).
_POLICY_READER = {"contents": "read"}


def orphans(stack: DevStack, since: float, held: set[str]) -> int:
    """Live tokens minted since ``since`` that no caller received."""
    ledger = httpx.get(f"{stack.github_url}/_emulator/tokens", params={"state": "live"}).json()
    return sum(
        1
        for t in ledger["tokens"]
        if t["created_at"] >= since
        and t["token_sha256"] not in held
        and not (t["permissions"] == _POLICY_READER and t["repositories"] is None)
    )


def envoy_counters(stack: DevStack, pattern: str) -> dict[str, int]:
    """Envoy's counters whose names match ``pattern`` (a regex, Envoy's ``/stats?filter=``)."""
    assert stack.envoy is not None
    stats = httpx.get(f"{stack.envoy.admin_url}/stats", params={"filter": pattern})
    found: dict[str, int] = {}
    for line in stats.text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            found[name] = int(value)
    return found


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved, by their last name part (``error``, ``upstream_rq_retry``)."""
    return {
        name.rpartition(".")[2]: after[name] - before.get(name, 0)
        for name in sorted(after)
        if after[name] != before.get(name, 0)
    }


def envoy_retries(stack: DevStack) -> int:
    """Envoy's ``cluster.sts.upstream_rq_retry`` (Check and Exchange retries on another replica)."""
    return envoy_counters(stack, "^cluster.sts.upstream_rq_retry$").get(
        "cluster.sts.upstream_rq_retry", 0
    )


# Where a refusal in a ramp came from: Envoy's breakers (UO), ext_authz failing (its Check
# shed or timed out: 503 authz_unavailable), the replica's own overload answer (429).
_SHED_COUNTERS = (
    "^(cluster.sts.upstream_rq_(pending|active)_overflow|cluster.sts.upstream_rq_retry"
    "|cluster.sts.upstream_rq_timeout|http.sts_ingress.ext_authz.error)$"
)


def add_fault(stack: DevStack, rule: dict[str, Any]) -> None:
    httpx.post(f"{stack.github_url}/_emulator/faults", json=rule).raise_for_status()


def clear_faults(stack: DevStack) -> None:
    httpx.delete(f"{stack.github_url}/_emulator/faults").raise_for_status()


# -- the scenarios -------------------------------------------------------------------------------


def fault_scenarios(fault_s: float) -> list[Scenario]:
    seconds = int(fault_s)

    def rule(**spec: Any) -> Callable[[DevStack], None]:
        return lambda stack: add_fault(stack, {**spec, "seconds": seconds})

    def nothing(_stack: DevStack) -> None:
        pass

    def kill_replica(stack: DevStack) -> None:
        stack.stop_server(1, kill=True)

    def restart_replica(stack: DevStack) -> None:
        stack.start_server(1)

    def drain_replica(stack: DevStack) -> None:
        # The next 20 mints are slower than the 2 s grace period: calls in flight when
        # SIGTERM comes must be cut by the drain (and retried by Envoy), not lost.
        slow = {"kind": "latency", "latency_ms": 4000, "path_prefix": MINT_PREFIX, "times": 20}
        add_fault(stack, slow)
        time.sleep(0.5)  # let slow calls reach both replicas before the signal
        stack.stop_server(1)

    def end_drain(stack: DevStack) -> None:
        clear_faults(stack)
        stack.start_server(1)

    def issuer_down(stack: DevStack) -> None:
        # Replica 0 restarts without the issuer's keys, then the issuer goes away: only
        # replica 1 can verify (cold tokens included: the key is the same).
        stack.stop_server(0)
        stack.start_server(0)
        stack.stop_issuer()

    return [
        Scenario("baseline", "no fault", nothing, nothing),
        Scenario(
            "github_5xx",
            "GitHub answers 502 to 20 % of calls",
            rule(kind="error", status=502, rate=0.2),
            clear_faults,
        ),
        Scenario(
            "github_slow",
            "token mints take 3 s",
            rule(kind="latency", latency_ms=3000, path_prefix=MINT_PREFIX),
            clear_faults,
        ),
        Scenario(
            "github_secondary_limit",
            "mints: 429 secondary limit, retry-after 10",
            rule(kind="secondary_rate_limit", status=429, retry_after=10, path_prefix=MINT_PREFIX),
            clear_faults,
        ),
        Scenario(
            "github_primary_limit",
            f"mints: primary limit spent, reset in {seconds} s",
            lambda stack: add_fault(
                stack,
                {"kind": "primary_rate_limit", "reset_in": seconds, "path_prefix": MINT_PREFIX},
            ),
            clear_faults,
        ),
        Scenario(
            "replica_kill", "kill -9 of replica 1, restarted after", kill_replica, restart_replica
        ),
        Scenario(
            "replica_drain",
            "SIGTERM of replica 1 (grace 2 s) with 4 s mints in flight",
            drain_replica,
            end_drain,
        ),
        Scenario(
            "issuer_down_one_cold",
            "issuer down, replica 0 restarted without its keys",
            issuer_down,
            lambda stack: stack.start_issuer(),
        ),
    ]


async def run_scenario(
    stack: DevStack, scenario: Scenario, *, rate: float, before: float, fault: float, after: float
) -> dict[str, Any]:
    clear_faults(stack)
    began = time.time()
    retries_before = envoy_retries(stack)
    marks: dict[str, float] = {}

    # The fault is on from when its action returns (a loaded emulator may take seconds to
    # take a rule) until its removal starts; recovery counts from when the removal is done.
    async def start() -> None:
        await asyncio.to_thread(scenario.start, stack)
        marks["start"] = time.time()

    async def stop() -> None:
        marks["stop"] = time.time()
        await asyncio.to_thread(scenario.stop, stack)
        marks["stopped"] = time.time()

    shots = await drive(
        stack, rate, before + fault + after, [(before, start), (before + fault, stop)]
    )
    scenario.shots = shots
    fault_start, fault_end = marks["start"], marks["stop"]
    calls, mints = github_calls(stack, fault_start, fault_end)
    await asyncio.sleep(3.0)  # background revocations of orphaned mints settle
    held = {s.token_sha256 for s in shots if s.token_sha256}
    during = [s for s in shots if fault_start <= s.start < fault_end]
    warm = [s for s in during if s.kind == "warm"]
    warm_ok = sum(1 for s in warm if s.status == 200)
    failed_warm = [s for s in shots if s.kind == "warm" and s.status != 200]
    recovery = max((s.end - marks["stopped"] for s in failed_warm), default=0.0)
    unexpected = Counter(
        f"{s.status} {s.reason}".strip() for s in shots if s.status != EXPECTED[s.kind]
    )
    return {
        "what": scenario.what,
        "requests": len(shots),
        "statuses": dict(sorted(Counter(str(s.status) for s in shots).items())),
        "statuses_during_fault": dict(sorted(Counter(str(s.status) for s in during).items())),
        "unexpected": dict(unexpected.most_common(6)),
        "warm_success_during_fault": round(warm_ok / len(warm), 3) if warm else None,
        "github_calls_per_s": round(calls / max(fault_end - fault_start, 1e-9), 1),
        "github_mints_per_s": round(mints / max(fault_end - fault_start, 1e-9), 1),
        "recovery_s": round(max(recovery, 0.0), 1),
        "orphan_tokens": orphans(stack, began, held),
        "envoy_retries": envoy_retries(stack) - retries_before,
        "warm_p50_ms_during_fault": _ms([s.end - s.start for s in warm], 50),
    }


# -- GitHub slow, one replica (defect 3's figure) -----------------------------------------------

# (label, offered rps, extra settings): the target's 45 rps against 25 rps in the same run, and
# 45 rps with the pool and the admission limit sized for it (45/s x 3 s = 135 calls at once).
SLOW_CASES: tuple[tuple[str, int, dict[str, str]], ...] = (
    ("25 rps", 25, {}),
    ("45 rps", 45, {}),
    (
        "45 rps, pool 150",
        45,
        {"OCTOSTS_GITHUB_MAX_CONNECTIONS": "150", "OCTOSTS_MAX_CONCURRENT_RPCS": "200"},
    ),
)


def warm_up(stack: DevStack) -> str:
    """One exchange (issuer keys, installation, policy cached); returns the warm token."""
    token = stack.token(SUB, workflow_ref=WORKFLOW, ttl=3600)
    httpx.get(
        f"{stack.gateway_url}{EXCHANGE}",
        params=QUERY,
        headers={"authorization": f"Bearer {token}"},
        verify=stack.client_tls(),
    ).raise_for_status()
    return token


def slow_github(workdir: Path, *, latency_ms: int, seconds: float) -> dict[str, dict[str, Any]]:
    """Warm exchanges through Envoy to ONE replica while GitHub takes ``latency_ms`` per mint."""
    results: dict[str, dict[str, Any]] = {}
    for i, (label, rate, extra) in enumerate(SLOW_CASES):
        stack = DevStack(
            workdir=workdir / f"slow-{i}",
            ports=StackPorts.free(1),
            base_id=(os.getpid() % 40_000) * 100 + 80 + i,
            github_args=("--rate-limit", "100000000"),
            extra_env={"OCTOSTS_LOG_LEVEL": "warning", **extra},
        )
        with stack:
            warm_up(stack)  # the policy reader's token minted before GitHub turns slow
            fault = {"kind": "latency", "latency_ms": latency_ms, "path_prefix": MINT_PREFIX}
            add_fault(stack, fault)
            began = time.time()
            before = envoy_counters(stack, _SHED_COUNTERS)
            shots = asyncio.run(drive(stack, rate, seconds, [], mix=(("warm", 1),)))
            _, mints = github_calls(stack, began, began + seconds)
            envoy = _delta(before, envoy_counters(stack, _SHED_COUNTERS))
        ok = [s.end - s.start for s in shots if s.status == 200]
        refused = [s for s in shots if s.status != 200]
        results[label] = {
            "offered_rps": rate,
            "settings": extra,
            "requests": len(shots),
            "ok_share": round(len(ok) / len(shots), 3),
            "ok_p50_ms": _ms(ok, 50),
            "refused": len(refused),
            "refused_p50_ms": _ms([s.end - s.start for s in refused], 50),
            "refused_p99_ms": _ms([s.end - s.start for s in refused], 99),
            "refused_with_retry_after": sum(1 for s in refused if s.retry_after),
            "answers": dict(
                Counter(f"{s.status} {s.reason}".strip() for s in shots).most_common(6)
            ),
            "github_mints_per_s": round(mints / seconds, 1),
            "envoy": envoy,
        }
    return results


def print_slow(results: dict[str, dict[str, Any]], latency_ms: int) -> None:
    print(f"\nGitHub mints at {latency_ms} ms, warm exchanges through Envoy to one replica")
    head = (
        "case",
        "ok",
        "ok p50 ms",
        "refused p50 ms",
        "refused p99 ms",
        "with Retry-After",
        "mints/s",
        "answers",
        "Envoy",
    )
    body = [
        (
            label,
            f"{r['ok_share']:.0%}",
            _show(r["ok_p50_ms"]),
            _show(r["refused_p50_ms"]),
            _show(r["refused_p99_ms"]),
            f"{r['refused_with_retry_after']}/{r['refused']}",
            str(r["github_mints_per_s"]),
            " ".join(f"{k}:{v}" for k, v in r["answers"].items()),
            " ".join(f"{k}:{v}" for k, v in r["envoy"].items()) or "-",
        )
        for label, r in results.items()
    ]
    print(table([head, *body]))


# -- overload ramp (h2load) --------------------------------------------------------------------


def h2load_at(
    stack: DevStack, token: str, rate: int, seconds: int, workdir: Path
) -> dict[str, Any]:
    clients = 32
    log = workdir / f"ramp-{rate}-{time.monotonic_ns()}.log"
    cmd = [
        "h2load",
        f"--clients={clients}",
        f"--rps={rate / clients}",
        f"--duration={seconds}",
        # Open loop: requests go out at the rate whatever is still in flight (up to 2,048).
        "--max-concurrent-streams=64",
        f"--header=authorization: Bearer {token}",
        f"--log-file={log}",
        f"{stack.gateway_url}{EXCHANGE}?scope=octo-org/demo&identity=ci",
    ]
    before = envoy_counters(stack, _SHED_COUNTERS)
    subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    after = envoy_counters(stack, _SHED_COUNTERS)
    ok: list[float] = []
    refused: list[float] = []
    statuses: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        _start, status, duration_us = line.split("\t")
        statuses[status] += 1
        (ok if status == "200" else refused).append(int(duration_us) / 1e6)
    log.unlink()
    return {
        "offered_rps": rate,
        "ok_rps": round(len(ok) / seconds, 1),
        "ok_p50_ms": _ms(ok, 50),
        "ok_p99_ms": _ms(ok, 99),
        # Little's law: requests in flight at the edge = rate x mean time in the system.
        "in_flight": round((sum(ok) + sum(refused)) / seconds, 1),
        "refused": sum(statuses.values()) - statuses["200"],
        "refused_p50_ms": _ms(refused, 50),
        "refused_p99_ms": _ms(refused, 99),
        "statuses": dict(sorted(statuses.items())),
        "envoy": _delta(before, after),
    }


def ramp(
    workdir: Path, *, rates: list[int], seconds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (with admission control, without), each rate run on both stacks in turn.

    Both stacks stay up and the two runs of each rate follow each other, so a neighbour's
    load on the shared machine falls on both sides of a comparison, not on one ramp.
    """
    stacks = [
        DevStack(
            workdir=workdir / name,
            ports=StackPorts.free(1),
            base_id=(os.getpid() % 40_000) * 100 + 91 + i,
            github_args=("--rate-limit", "100000000"),
            extra_env={"OCTOSTS_LOG_LEVEL": "warning", **extra},
        )
        for i, (name, extra) in enumerate(
            (("limited", {}), ("unlimited", {"OCTOSTS_MAX_CONCURRENT_RPCS": "10000"}))
        )
    ]
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    with contextlib.ExitStack() as running:
        tokens = []
        for stack in stacks:
            running.enter_context(stack)
            tokens.append(warm_up(stack))
        for rate in rates:
            for stack, token, out in zip(stacks, tokens, rows, strict=True):
                out.append(h2load_at(stack, token, rate, seconds, workdir))
    return rows


def knee(rows: list[dict[str, Any]]) -> int:
    """The highest offered rate still served (>= 95 % of it answered 200)."""
    served = [r["offered_rps"] for r in rows if r["ok_rps"] >= 0.95 * r["offered_rps"]]
    return max(served, default=0)


# -- workers outliving their supervisor ----------------------------------------------------------


def supervisor_kill(workdir: Path) -> dict[str, Any]:
    stack = DevStack(
        workdir=workdir,
        ports=StackPorts.free(1),
        base_id=(os.getpid() % 40_000) * 100 + 95,
        extra_env={"OCTOSTS_WORKERS": "2"},
    )
    with stack:
        supervisor = stack._servers[0].popen  # noqa: SLF001
        out = subprocess.run(
            ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False
        )
        workers = [int(p) for p in out.stdout.split() if _is_worker(int(p))]
        killed = time.monotonic()
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        deadline = killed + 20
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in workers if _alive(p)]
        gone_after = time.monotonic() - killed
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return {
        "workers": len(workers),
        "left_running": len(left),
        "all_gone_after_s": round(gone_after, 2),
    }


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# -- main ----------------------------------------------------------------------------------------


def print_faults(results: dict[str, dict[str, Any]]) -> None:
    rows: list[tuple[str, ...]] = [
        (
            "scenario",
            "statuses (all)",
            "during fault",
            "warm ok",
            "GH calls/s",
            "mints/s",
            "recovery s",
            "orphans",
            "Envoy retries",
        )
    ]
    for name, r in results.items():
        rows.append(
            (
                name,
                " ".join(f"{k}:{v}" for k, v in r["statuses"].items()),
                " ".join(f"{k}:{v}" for k, v in r["statuses_during_fault"].items()),
                "-"
                if r["warm_success_during_fault"] is None
                else f"{r['warm_success_during_fault']:.0%}",
                str(r["github_calls_per_s"]),
                str(r["github_mints_per_s"]),
                str(r["recovery_s"]),
                str(r["orphan_tokens"]),
                str(r["envoy_retries"]),
            )
        )
    print(table(rows))
    print("\nunexpected answers (status reason: count), warm p50 during the fault:")
    for name, r in results.items():
        warm_p50 = _show(r["warm_p50_ms_during_fault"])
        print(f"  {name:24} {r['unexpected'] or '-'}  warm p50 {warm_p50} ms")


def print_ramp(label: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{label} (knee: {knee(rows)} rps offered)")
    head = (
        "offered rps",
        "ok rps",
        "ok p50 ms",
        "ok p99 ms",
        "in flight",
        "refused",
        "refused p50 ms",
        "refused p99 ms",
        "statuses",
        "Envoy",
    )
    body = [
        (
            str(r["offered_rps"]),
            str(r["ok_rps"]),
            _show(r["ok_p50_ms"]),
            _show(r["ok_p99_ms"]),
            str(r["in_flight"]),
            str(r["refused"]),
            _show(r["refused_p50_ms"]),
            _show(r["refused_p99_ms"]),
            " ".join(f"{k}:{v}" for k, v in r["statuses"].items()),
            " ".join(f"{k}:{v}" for k, v in r["envoy"].items()) or "-",
        )
        for r in rows
    ]
    print(table([head, *body]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="offered exchanges per second")
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--fault", type=float, default=10.0)
    parser.add_argument("--after", type=float, default=8.0)
    parser.add_argument("--only", nargs="*", default=None, help="fault scenarios to run")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault scenarios")
    parser.add_argument("--no-overload", action="store_true", help="skip the ramps and workers")
    parser.add_argument("--ramp", default="100,200,300,400,600,800", help="offered rps steps")
    parser.add_argument("--ramp-seconds", type=int, default=5)
    parser.add_argument("--no-slow", action="store_true", help="skip GitHub-slow on one replica")
    parser.add_argument("--slow-seconds", type=float, default=12.0)
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C in make) unwinds the stacks: no process is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="octosts-resilience-") as tmp:
        work = Path(tmp)
        stack = DevStack(
            workdir=work / "faults",
            ports=StackPorts.free(2),
            base_id=(os.getpid() % 40_000) * 100 + 90,
            github_args=("--rate-limit", "100000000"),
            extra_env={"OCTOSTS_LOG_LEVEL": "warning"},
        )
        faults: dict[str, dict[str, Any]] = {}
        scenarios = [
            s
            for s in fault_scenarios(args.fault)
            if not args.no_faults and (not args.only or s.name in args.only)
        ]
        with stack if scenarios else contextlib.nullcontext(stack):
            for scenario in scenarios:
                print(f"-- {scenario.name}: {scenario.what}", flush=True)
                faults[scenario.name] = asyncio.run(
                    run_scenario(
                        stack,
                        scenario,
                        rate=args.rate,
                        before=args.before,
                        fault=args.fault,
                        after=args.after,
                    )
                )
        if faults:
            results.update(faults=faults, rate=args.rate, fault_s=args.fault)
            print(
                f"\nFault scenarios: {args.rate:g} exchanges/s through Envoy, 2 replicas, mix "
                + ", ".join(f"{k} {w} %" for k, w in MIX)
                + f"; fault {args.fault:g} s\n"
            )
            print_faults(faults)
        if not args.no_slow:
            print("\n-- GitHub slow, one replica", flush=True)
            results["github_slow_one_replica"] = slow_github(
                work / "slow", latency_ms=3000, seconds=args.slow_seconds
            )
            print_slow(results["github_slow_one_replica"], 3000)
        if not args.no_overload:
            rates = [int(r) for r in args.ramp.split(",")]
            print("\n-- overload ramp, one replica, with and without admission control", flush=True)
            shed, queued = ramp(work / "ramp", rates=rates, seconds=args.ramp_seconds)
            results["overload"] = {"admission_control": shed, "no_admission_control": queued}
            results["knee_rps"] = {
                "admission_control": knee(shed),
                "no_admission_control": knee(queued),
            }
            print_ramp("with admission control (OCTOSTS_MAX_CONCURRENT_RPCS=100)", shed)
            print_ramp("without (limit 10000, Envoy breakers as wide)", queued)
            results["supervisor_kill"] = supervisor_kill(work / "workers")
            s = results["supervisor_kill"]
            print(
                f"\nkill -9 of a supervisor with {s['workers']} workers: {s['left_running']} left "
                f"running, all gone after {s['all_gone_after_s']} s"
            )
    save("resilience", _keep_unrun(results))
    return 0


def _keep_unrun(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` over the stored figures: the parts and scenarios not run keep theirs."""
    try:
        stored = json.loads(RESULTS.read_text()).get("resilience", {})
    except (OSError, ValueError):
        stored = {}
    faults = {**stored.get("faults", {}), **results.get("faults", {})}
    return {**stored, **results, "faults": faults}


if __name__ == "__main__":
    raise SystemExit(main())
