"""deploy/prober's Kubernetes recipes (docs/probers.md): valid against the Kubernetes API schemas
(kubernetes-validate, offline, strict: an unknown field is an error), and what they run is a
probe command line `octo-sts probe` accepts, whose token audience is the endpoint's host."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from octosts.cli import build_parser
from octosts.dev.stack import REPO_ROOT

RECIPES = REPO_ROOT / "deploy" / "prober"
KUBERNETES = "1.33"  # a version kubernetes-validate ships schemas for


def documents(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((RECIPES / name).read_text()) if d is not None]
    assert docs
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        spec: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    assert doc["kind"] == "Deployment"
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", ["cronjob.yaml", "deployment.yaml"])
def test_valid_kubernetes_objects(name: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_an_invalid_object_is_caught() -> None:
    """The check above can fail: a misspelt field in the same CronJob is refused."""
    cronjob = next(d for d in documents("cronjob.yaml") if d["kind"] == "CronJob")
    cronjob["spec"]["jobTemplate"]["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", ["cronjob.yaml", "deployment.yaml"])
def test_the_probe_command_is_one_octo_sts_accepts(name: str) -> None:
    workloads = [d for d in documents(name) if d["kind"] in {"CronJob", "Deployment"}]
    (workload,) = workloads
    spec = pod_spec(workload)
    (container,) = spec["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "probe"
    assert args.identity
    assert args.negative_identity
    assert args.expect
    # The projected token is the prober's OIDC token, for the service's audience.
    (volume,) = spec["volumes"]
    (source,) = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert args.token_source == f"file:{mount}/{token['path']}"
    assert token["audience"] == urlsplit(args.endpoint).hostname
    assert spec["serviceAccountName"] == "octo-sts-prober"
    # Hardened as the service's own containers: no root, no writes, nothing extra.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    if name == "deployment.yaml":
        assert args.interval
        assert args.metrics_addr.endswith(f":{container['ports'][0]['containerPort']}")
