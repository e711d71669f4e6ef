"""Gateway benchmark ([gateway]): HTTP/JSON through Envoy over TLS, ext_authz vs Envoy's jwt_authn.

One run measures, with real processes on loopback (``DevStack``: dev issuer, GitHub emulator,
two STS replicas, Envoy):

1. exchanges: ``GET /sts/exchange`` through Envoy (ext_authz Check + transcoded Exchange + a
   GitHub token mint at the emulator) at a fixed concurrency;
2. the ext_authz deny path alone: a token with a bad signature -> 401 from Envoy after one
   Check RPC (Exchange is never called);
3. the same validation done by Envoy's native ``jwt_authn`` filter (a second small Envoy:
   listener -> jwt_authn with the dev issuer's JWKS inline -> direct_response 200) as the
   reference: the same bad token (401) and a good one (200);
4. both deny paths again at a fixed *offered rate* (open loop), where the ext_authz p99 is
   compared with the 2 ms target.

Load generator: ``h2load`` (Debian ``nghttp2-client``): a C client, so the measurement is not
limited by a Python event loop on a 2-core machine, speaking HTTP/2 over TLS like gRPC clients;
its ``--log-file`` gives every request's latency (p50/p99), ``--rps`` an offered rate.
Request counts are bounded; everything listens on 127.0.0.1.

    .venv/bin/python bench/gateway.py [--requests N] [--concurrency C] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, save, table

from octosts.dev.envoy import EnvoyProcess, free_port
from octosts.dev.issuer import generate_key, load_state, mint_token
from octosts.dev.stack import DevStack, StackPorts

SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
EXCHANGE_PATH = "/sts/exchange?scope=octo-org/demo&identity=ci"
TARGET_P99_MS = 2.0
_T = "type.googleapis.com/envoy."


@dataclass(frozen=True, slots=True)
class Run:
    """One h2load run: latencies in ms, status counts, achieved rate."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    statuses: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "statuses": self.statuses,
        }


def h2load(
    url: str,
    token: str,
    *,
    requests: int,
    clients: int,
    workdir: Path,
    rps_per_client: float | None = None,
) -> Run:
    """Run h2load (one stream per connection) and read its per-request log."""
    log = workdir / f"h2load-{time.monotonic_ns()}.log"
    cmd = [
        "h2load",
        f"--requests={requests}",
        f"--clients={clients}",
        "--max-concurrent-streams=1",
        f"--header=authorization: Bearer {token}",
        f"--log-file={log}",
    ]
    if rps_per_client is not None:
        cmd.append(f"--rps={rps_per_client}")
    started = time.monotonic()
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-500:]}")
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    for line in log.read_text().splitlines():
        _start_us, status, duration_us = line.split("\t")
        latencies.append(int(duration_us) / 1000)
        statuses[status] = statuses.get(status, 0) + 1
    log.unlink()
    rps = len(latencies) / elapsed  # h2load's own figure (below) excludes its start-up
    for line in done.stdout.splitlines():
        if line.startswith("finished in") and "req/s" in line:
            rps = float(line.split(",")[1].split()[0])
    return Run(
        requests=len(latencies),
        rps=round(rps, 1),
        p50_ms=round(percentile(latencies, 50), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        mean_ms=round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        statuses=dict(sorted(statuses.items())),
    )


def jwt_authn_config(stack: DevStack, *, port: int, admin_port: int, jwks: str) -> dict[str, Any]:
    """listener (same TLS as the gateway) -> jwt_authn (inline JWKS) -> direct_response 200."""
    assert stack.certs is not None
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(stack.certs.cert)},
                        "private_key": {"filename": str(stack.certs.key)},
                    }
                ],
            },
        },
    }
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "jwt_ref",
        "codec_type": "AUTO",
        "route_config": {
            "name": "ref",
            "virtual_hosts": [
                {
                    "name": "ref",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {
                        "dev": {
                            "issuer": stack.issuer_url,
                            "audiences": [stack.domain],
                            "local_jwks": {"inline_string": jwks},
                        }
                    },
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "dev"}}],
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "jwt_ref",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "enable_reuse_port": False,
                    "filter_chains": [
                        {
                            "transport_socket": tls,
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ]
        },
    }


def tokens(stack: DevStack) -> tuple[str, str]:
    """(good token for the demo repo policy, same claims with a bad signature)."""
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    claims = {"sub": SUB, "aud": stack.domain, "workflow_ref": WORKFLOW}
    good = mint_token(state.key, stack.issuer_url, claims, ttl=3600)
    impostor = generate_key("rsa", kid=state.key.kid)  # same kid, other key
    bad = mint_token(impostor, stack.issuer_url, claims, ttl=3600)
    return good, bad


def expect(run: Run, status: str, what: str) -> None:
    if set(run.statuses) != {status}:
        raise RuntimeError(f"{what}: expected only HTTP {status}, got {run.statuses}")


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = DevStack(
        workdir=workdir / "stack",
        ports=StackPorts.free(2),
        # Every exchange mints a token: lift the emulator's hourly budget for the run.
        github_args=("--rate-limit", "10000000"),
        extra_env={"OCTOSTS_LOG_LEVEL": "warning"},
    )
    ref: EnvoyProcess | None = None
    try:
        stack.start()
        good, bad = tokens(stack)
        discovery = httpx.get(f"{stack.issuer_url}/.well-known/openid-configuration", timeout=5)
        jwks = httpx.get(discovery.json()["jwks_uri"], timeout=5).text
        ref_port, ref_admin = free_port(), free_port()
        config = workdir / "jwt_authn.yaml"
        config.write_text(
            json.dumps(jwt_authn_config(stack, port=ref_port, admin_port=ref_admin, jwks=jwks))
        )
        ref = EnvoyProcess(config, admin_port=ref_admin, log_path=workdir / "jwt_authn.log")
        ref.start()

        gateway = f"https://127.0.0.1:{stack.ports.gateway}"
        reference = f"https://127.0.0.1:{ref_port}/"
        n, c = args.requests, args.concurrency

        def load(url: str, token: str, requests: int, rps: float | None = None) -> Run:
            return h2load(
                url,
                token,
                requests=requests,
                clients=c,
                workdir=workdir,
                rps_per_client=rps,
            )

        # Warm-up: JWKS, installation, policy caches; TLS and HTTP/2 code paths.
        load(gateway + EXCHANGE_PATH, good, 4 * c)
        load(reference, good, 4 * c)

        exchange = load(gateway + EXCHANGE_PATH, good, args.exchanges)
        expect(exchange, "200", "exchange")
        authz_deny = load(gateway + EXCHANGE_PATH, bad, n)
        expect(authz_deny, "401", "ext_authz deny")
        jwt_deny = load(reference, bad, n)
        expect(jwt_deny, "401", "jwt_authn deny")
        jwt_allow = load(reference, good, n)
        expect(jwt_allow, "200", "jwt_authn allow")

        per_client = args.rate / c
        offered = max(c, int(args.rate * args.rate_seconds))
        authz_rate = load(gateway + EXCHANGE_PATH, bad, offered, per_client)
        expect(authz_rate, "401", "ext_authz deny at rate")
        jwt_rate = load(reference, bad, offered, per_client)
        expect(jwt_rate, "401", "jwt_authn deny at rate")
    finally:
        if ref is not None:
            ref.stop()
        stack.stop()

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("nan")

    return {
        "load_generator": "h2load (nghttp2-client), HTTP/2 over TLS, 1 stream per connection",
        "concurrency": c,
        "replicas": 2,
        "exchange_http_json": exchange.as_dict(),
        "ext_authz_deny_closed_loop": authz_deny.as_dict(),
        "jwt_authn_deny_closed_loop": jwt_deny.as_dict(),
        "jwt_authn_allow_closed_loop": jwt_allow.as_dict(),
        "offered_rate_rps": args.rate,
        "ext_authz_deny_at_rate": authz_rate.as_dict(),
        "jwt_authn_deny_at_rate": jwt_rate.as_dict(),
        "ratio_ext_authz_over_jwt_authn": {
            "p50_closed_loop": ratio(authz_deny.p50_ms, jwt_deny.p50_ms),
            "p99_closed_loop": ratio(authz_deny.p99_ms, jwt_deny.p99_ms),
            "rps_closed_loop": ratio(authz_deny.rps, jwt_deny.rps),
            "p50_at_rate": ratio(authz_rate.p50_ms, jwt_rate.p50_ms),
            "p99_at_rate": ratio(authz_rate.p99_ms, jwt_rate.p99_ms),
        },
        "target_p99_ms": TARGET_P99_MS,
        "ext_authz_p99_meets_target_at_rate": authz_rate.p99_ms < TARGET_P99_MS,
    }


def report(result: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("path", "requests", "rps", "p50 ms", "p99 ms", "statuses")]
    names = {
        "exchange_http_json": "exchange (HTTP/JSON via Envoy)",
        "ext_authz_deny_closed_loop": "ext_authz deny (bad sig)",
        "jwt_authn_deny_closed_loop": "jwt_authn deny (bad sig)",
        "jwt_authn_allow_closed_loop": "jwt_authn allow",
        "ext_authz_deny_at_rate": f"ext_authz deny @ {result['offered_rate_rps']} rps",
        "jwt_authn_deny_at_rate": f"jwt_authn deny @ {result['offered_rate_rps']} rps",
    }
    for key, name in names.items():
        run = result[key]
        rows.append(
            (
                name,
                str(run["requests"]),
                f"{run['rps']:.0f}",
                f"{run['p50_ms']:.2f}",
                f"{run['p99_ms']:.2f}",
                " ".join(f"{k}:{v}" for k, v in run["statuses"].items()),
            )
        )
    ratios = result["ratio_ext_authz_over_jwt_authn"]
    verdict = "meets" if result["ext_authz_p99_meets_target_at_rate"] else "MISSES"
    return (
        f"{table(rows)}\n\n"
        f"ext_authz / jwt_authn (deny path): p50 x{ratios['p50_closed_loop']}, "
        f"p99 x{ratios['p99_closed_loop']}, rps x{ratios['rps_closed_loop']} (closed loop, "
        f"concurrency {result['concurrency']}); at {result['offered_rate_rps']} rps: "
        f"p50 x{ratios['p50_at_rate']}, p99 x{ratios['p99_at_rate']}\n"
        f"ext_authz p99 at {result['offered_rate_rps']} rps offered: "
        f"{result['ext_authz_deny_at_rate']['p99_ms']:.2f} ms -> {verdict} the "
        f"{result['target_p99_ms']} ms target"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per deny/reference run")
    parser.add_argument("--exchanges", type=int, default=1000, help="exchanges through Envoy")
    parser.add_argument("--concurrency", type=int, default=8, help="connections (1 stream each)")
    parser.add_argument("--rate", type=float, default=400.0, help="offered rate, requests/s")
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="duration at the rate")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench/gateway.py needs h2load: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    for name in ("requests", "exchanges", "concurrency"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    with tempfile.TemporaryDirectory(prefix="octosts-bench-gateway-") as tmp:
        result = bench(args, Path(tmp))
    save("gateway", result)
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
