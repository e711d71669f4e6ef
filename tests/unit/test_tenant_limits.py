"""The per-tenant limits file: checked at render time, and turned into Envoy's local buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from octosts.dev.envoy import Upstream
from octosts.dev.tenant_limits import (
    RATELIMIT_CLUSTER,
    Limit,
    TenantLimits,
    load_limits,
    rate_limit_cluster,
    rate_limit_filter,
)

REPO_LIMITS = Path(__file__).resolve().parents[2] / "envoy" / "ratelimits.yaml"
GOOD = """\
domain: octo-sts
descriptors:
  - key: subject
    rate_limit: {unit: minute, requests_per_unit: 60}
  - key: subject
    value: 0123456789abcdef0123456789abcdef
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: issuer
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


def test_the_shipped_file_loads() -> None:
    limits = load_limits(REPO_LIMITS)
    assert Limit("subject", None, 60, "minute") in limits
    assert {limit.key for limit in limits} == {"subject", "issuer"}


def test_local_buckets_hold_a_unit_and_refill_smoothly(tmp_path: Path) -> None:
    config = rate_limit_filter(TenantLimits(write(tmp_path, GOOD)))["typed_config"]
    buckets = [d["token_bucket"] for d in config["descriptors"]]
    # One tenant's own limit comes before its key's default (Envoy takes the first match).
    assert config["descriptors"][0]["entries"] == [
        {"key": "subject", "value": "0123456789abcdef0123456789abcdef"}
    ]
    assert buckets == [
        # 100 a second: Envoy's shortest fill interval is 50 ms, so 5 tokens per fill.
        {"max_tokens": 100, "tokens_per_fill": 5, "fill_interval": "0.050s"},
        {"max_tokens": 60, "tokens_per_fill": 1, "fill_interval": "1.000s"},
        {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "1200.000s"},
    ]
    assert config["rate_limited_as_resource_exhausted"] is True


def test_with_the_service_envoy_asks_it_and_fails_open(tmp_path: Path) -> None:
    limits = TenantLimits(write(tmp_path, GOOD), service=Upstream("ratelimit", 8081))
    config = rate_limit_filter(limits)["typed_config"]
    assert config["domain"] == "octo-sts"
    assert config["failure_mode_deny"] is False
    assert config["rate_limit_service"]["grpc_service"]["envoy_grpc"] == {
        "cluster_name": RATELIMIT_CLUSTER
    }
    cluster = rate_limit_cluster(limits, "1.000s")
    assert cluster is not None
    assert cluster["type"] == "STRICT_DNS"
    assert rate_limit_cluster(TenantLimits(write(tmp_path, GOOD)), "1.000s") is None


HEAD = "domain: octo-sts\ndescriptors:\n"
PER_MINUTE = "rate_limit: {unit: minute, requests_per_unit: 1}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("domain: other\ndescriptors: []\n", "domain: octo-sts"),
        ("domain: octo-sts\ndescriptors: []\n", "non-empty list"),
        ("[", "cannot read"),
        (HEAD + "- {key: path, " + PER_MINUTE + "}\n", "key must be one of"),
        (
            HEAD + "- {key: subject, rate_limit: {unit: fortnight, requests_per_unit: 1}}\n",
            "unit of subject",
        ),
        (
            HEAD + "- {key: subject, rate_limit: {unit: minute, requests_per_unit: 0}}\n",
            "positive integer",
        ),
        (HEAD + "- {key: subject, descriptors: [], " + PER_MINUTE + "}\n", "unsupported"),
        (HEAD + ("- {key: issuer, " + PER_MINUTE + "}\n") * 2, "twice"),
        (HEAD + "- {key: subject}\n", "rate_limit of subject"),
        (HEAD + "- {key: subject, value: '', " + PER_MINUTE + "}\n", "non-empty string"),
    ],
)
def test_a_bad_file_is_refused_before_envoy_sees_it(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        TenantLimits(write(tmp_path, text))
