"""The /metrics server, multi-process aggregation, a real Prometheus, and deploy/ files."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry

from octosts.observability.metrics import (
    MULTIPROC_ENV,
    Metrics,
    MetricsServer,
    exposition_registry,
    mark_worker_dead,
    start_metrics_server,
)
from octosts.observability.stages import TelemetryObserver
from tests.polling import eventually_blocking

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str) -> str:
    """Path of a Debian-packaged tool; skipped when missing, except in CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (Debian package 'prometheus')")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(CollectorRegistry())
    srv = start_metrics_server(metrics.registry, "127.0.0.1", 0)
    try:
        yield metrics, srv
    finally:
        srv.close()


def drive_one_exchange(metrics: Metrics) -> None:
    observer = TelemetryObserver(metrics, NoOpTracer())
    for stage in ("token_parse", "discovery", "jwks", "signature_verify", "policy_match"):
        with observer.stage(stage) as s:
            s.annotate("cache", "hit")
    metrics.exchange("ok", "ok")


def test_metrics_server_serves_the_registry(server: tuple[Metrics, MetricsServer]) -> None:
    metrics, srv = server
    drive_one_exchange(metrics)
    response = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
    assert response.status_code == 200
    assert 'octo_sts_exchanges_total{reason="ok",result="ok"} 1.0' in response.text
    assert 'octo_sts_stage_duration_seconds_count{outcome="ok",stage="jwks"} 1.0' in response.text
    assert 'octo_sts_cache_requests_total{cache="jwks",result="hit"} 1.0' in response.text


WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from octosts.observability.metrics import Metrics
    m = Metrics(CollectorRegistry())
    m.exchange("ok", "ok")
    m.stage("jwks", "ok", 0.001)
    m.rate_limit_remaining(7, float(sys.argv[1]))
    """
)


def test_worker_processes_are_aggregated(tmp_path: Path) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for remaining in ("100", "90"):
        done = subprocess.run(  # noqa: PLW1510 -- checked below, with output on failure
            [sys.executable, "-c", WORKER, remaining],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
    registry = exposition_registry(tmp_path)
    assert (
        registry.get_sample_value("octo_sts_exchanges_total", {"result": "ok", "reason": "ok"})
        == 2.0
    )
    assert (
        registry.get_sample_value(
            "octo_sts_stage_duration_seconds_count", {"stage": "jwks", "outcome": "ok"}
        )
        == 2.0
    )
    # Gauges keep the most recent value written by any worker.
    assert (
        registry.get_sample_value("octo_sts_github_rate_limit_remaining", {"installation": "7"})
        == 90.0
    )
    mark_worker_dead(123456, tmp_path)  # unknown pid: harmless
    srv = start_metrics_server(registry, "127.0.0.1", 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).text
    finally:
        srv.close()
    assert 'octo_sts_exchanges_total{reason="ok",result="ok"} 2.0' in text


@contextmanager
def real_prometheus(tmp_path: Path, target: str, *, rules: Path | None = None) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every 200 ms; yields its URL, stopped by PID."""
    binary = tool("prometheus")
    rule_files = f"rule_files: [{rules}]" if rules is not None else ""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global:
              scrape_interval: 200ms
              scrape_timeout: 200ms
              evaluation_interval: 200ms
            {rule_files}
            scrape_configs:
              - job_name: octo-sts
                static_configs:
                  - targets: ["{target}"]
            """
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, "prometheus exited"
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually_blocking(ready, "prometheus to be ready", timeout=20)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def prometheus(server: tuple[Metrics, MetricsServer], tmp_path: Path) -> Iterator[str]:
    _, srv = server
    rules = DEPLOY / "prometheus" / "alerts.yml"
    with real_prometheus(tmp_path, f"127.0.0.1:{srv.port}", rules=rules) as url:
        yield url


def query(url: str, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{url}/api/v1/query", params={"query": expr}, timeout=5
    ).json()
    return body


def test_real_prometheus_scrapes_stage_histogram_and_exchange_counter(
    server: tuple[Metrics, MetricsServer], prometheus: str
) -> None:
    metrics, _ = server
    drive_one_exchange(metrics)

    def scraped() -> list[Any]:
        result: list[Any] = query(prometheus, 'octo_sts_exchanges_total{result="ok"}')["data"][
            "result"
        ]
        return result

    (sample,) = eventually_blocking(scraped, "the exchange counter to be scraped", timeout=20)
    assert sample["metric"]["reason"] == "ok"
    assert sample["value"][1] == "1"
    stages = query(prometheus, "sum by (stage) (octo_sts_stage_duration_seconds_count)")
    assert {r["metric"]["stage"] for r in stages["data"]["result"]} == {
        "token_parse",
        "discovery",
        "jwks",
        "signature_verify",
        "policy_match",
    }
    # Every dashboard query and alert expression is valid PromQL for this Prometheus.
    for expr in dashboard_exprs() + alert_exprs():
        answer = query(prometheus, expr.replace("$__rate_interval", "1m"))
        assert answer["status"] == "success", (expr, answer)
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()
    assert {g["name"] for g in rules["data"]["groups"]} == {"octo-sts"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "octo-sts.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    # Exprs are either one line or a `|` block indented under `expr:`.
    exprs = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)expr:\s*(.*)", line)
        if not m:
            continue
        if m.group(2) != "|":
            exprs.append(m.group(2))
            continue
        block = []
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                break
            block.append(nxt.strip())
        exprs.append(" ".join(block))
    return exprs


def test_dashboard_covers_the_issue_and_uses_only_our_metrics() -> None:
    exprs = dashboard_exprs()
    known = {m.name for m in Metrics(CollectorRegistry()).registry.collect()}
    used = {
        name for expr in exprs for name in re.findall(r"\b((?:octo_sts|grpc_server)_[a-z_]+)", expr)
    }
    for name in used:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in known, name
    for needed in (
        "octo_sts_exchanges_total",
        "octo_sts_stage_duration_seconds_bucket",
        "octo_sts_cache_requests_total",
        "octo_sts_github_rate_limit_remaining",
        "octo_sts_ext_authz_decisions_total",
    ):
        assert needed in used
    assert len(alert_exprs()) == 10  # 2 on the prober's metrics (docs/probers.md)


def test_promtool_checks_rules_alert_tests_and_config() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        ["test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ):
        done = subprocess.run(  # noqa: PLW1510 -- checked below, with output on failure
            [promtool, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
