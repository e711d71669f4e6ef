"""docs/observability.md's "Stage annotations that feed metrics" table is what the code does.

Every key it lists is set by some service code and feeds a metric; every other key
the code sets is a span attribute only (a second, undocumented feed of a metric is
how the rate-limit gauge once got two).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from opentelemetry.trace import NoOpTracer
from prometheus_client import CollectorRegistry

from octosts.observability.metrics import Metrics
from octosts.observability.stages import TelemetryObserver

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "observability.md"
SERVICE = ROOT / "service" / "octosts"


def documented_keys() -> set[str]:
    section = DOCS.read_text().split("### Stage annotations that feed metrics", 1)[1]
    rows = section.split("\n#", 1)[0].split("|---|---|", 1)[1]  # below the header row
    return set(re.findall(r"^\| `([^`]+)`", rows, flags=re.MULTILINE))


def annotated_keys() -> set[str]:
    """Every literal key passed to ``.annotate(...)`` in the service's own code."""
    keys: set[str] = set()
    for path in SERVICE.rglob("*.py"):
        if "_gen" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "annotate"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                keys.add(node.args[0].value)
    return keys


def samples(metrics: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for m in metrics.registry.collect()
        for s in m.samples
        if not m.name.startswith("octo_sts_stage_duration")
    }


def test_the_table_parses_and_every_documented_key_is_set_by_the_code() -> None:
    documented = documented_keys()
    assert documented == {"cache", "cache.name"}
    assert documented <= annotated_keys(), documented - annotated_keys()


def test_the_documented_keys_feed_the_documented_metric() -> None:
    metrics = Metrics(CollectorRegistry())
    observer = TelemetryObserver(metrics, NoOpTracer())
    with observer.stage("policy_fetch") as stage:
        stage.annotate("cache", "hit")
    with observer.stage("trusted_issuers_fetch") as stage:
        stage.annotate("cache", "miss")
        stage.annotate("cache.name", "trusted_issuers")
    value = metrics.registry.get_sample_value
    assert value("octo_sts_cache_requests_total", {"cache": "policy_fetch", "result": "hit"}) == 1
    assert (
        value("octo_sts_cache_requests_total", {"cache": "trusted_issuers", "result": "miss"}) == 1
    )


@pytest.mark.parametrize("key", sorted(annotated_keys() - documented_keys()))
def test_every_other_key_the_code_sets_feeds_no_metric(key: str) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = TelemetryObserver(metrics, NoOpTracer())
    before = samples(metrics)
    for value in (200, "hit", "error"):
        with observer.stage("installation_lookup") as stage:
            stage.annotate(key, value)
    assert samples(metrics) == before
