"""The Helm chart (deploy/helm/octo-sts), rendered by the real Helm and checked offline.

Helm is built from source by ``scripts/install-helm.sh`` (``go install``, cached in
``.tools/bin``; ``make test`` runs it first). Every object every values file in
``deploy/helm/octo-sts/ci/`` renders is validated against the Kubernetes schemas that
``kubernetes-validate`` ships (strict: unknown fields are errors), for the oldest Kubernetes
the chart supports and the newest the package knows. Then what security rests on is asserted
on the rendered objects: non-root read-only containers without capabilities, no secret value
in any manifest, and the STS pods reachable only from the gateway (they trust the
``x-octo-sts-*`` headers ext_authz sets). The gateway's Envoy config is the repo's template
rendered by ``scripts/render_envoy_helm.py``: checked fresh, passed through ``envoy --mode
validate``, and compared with the compose config's filters and routes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts import settings as settings_module
from octosts.cli import build_parser
from octosts.dev.certs import ensure_dev_certs
from octosts.dev.envoy import Upstream, render_config, validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "octo-sts"
CI_VALUES = CHART / "ci"
VALUES = sorted(p.stem.removesuffix("-values") for p in CI_VALUES.glob("*-values.yaml"))
DESCRIPTORS = ROOT / "build" / "octosts.pb"
NAMESPACE = "octo"
RELEASE = "rel"
# The chart's kubeVersion floor (Chart.yaml), and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# Custom resources: no schema in kubernetes-validate; their structure is asserted below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

pytestmark = pytest.mark.timeout(900)  # the first test may build Helm (~2.5 min cold)


@functools.cache
def helm() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-helm.sh")],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    if done.returncode != 0:
        message = f"scripts/install-helm.sh failed:\n{done.stderr[-3000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return done.stdout.strip().splitlines()[-1]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False)


def template(*values: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.33.0"]
    for name in values:
        args += ["-f", str(CI_VALUES / f"{name}-values.yaml")]
    for item in sets:
        args += ["--set", item]
    return run_helm(*args)


@functools.cache
def rendered(name: str, sets: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    done = template(name, sets=sets)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def ratelimit_variant_shipped() -> bool:
    return (CHART / "files" / "envoy-ratelimit.yaml").exists()


def objects(name: str) -> tuple[dict[str, Any], ...]:
    """A values file's objects; the fleet's without ratelimit until the chart ships its
    Envoy variant (test_fleet_ratelimit_... covers both states)."""
    if name == "fleet" and not ratelimit_variant_shipped():
        return rendered(name, ("ratelimit.enabled=false",))
    return rendered(name)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def sts_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", f"{RELEASE}-octo-sts-sts")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def envoy_config(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    configmap = one(docs, "ConfigMap", f"{RELEASE}-octo-sts-envoy")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["envoy.yaml"])
    return config


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


# -- Helm itself -------------------------------------------------------------------------------


def test_values_files_cover_the_deployments_the_docs_describe() -> None:
    assert {"default", "fleet", "kms", "apps"} <= set(VALUES)


@pytest.mark.parametrize("name", VALUES)
def test_helm_lint(name: str) -> None:
    done = run_helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES / f"{name}-values.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", VALUES)
def test_every_rendered_object_matches_the_kubernetes_schemas(name: str) -> None:
    docs = objects(name)
    assert len(docs) >= 10
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} ({version}): {exc}")


def test_service_monitors_select_the_metrics_services() -> None:
    docs = objects("fleet")
    monitors = by_kind(docs, "ServiceMonitor")
    assert len(monitors) == 2
    services = by_kind(docs, "Service")
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        [endpoint] = monitor["spec"]["endpoints"]
        scraped = [
            s
            for s in services
            if selector.items() <= s["metadata"]["labels"].items()
            and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
        ]
        assert len(scraped) == 1, monitor["metadata"]["name"]
        assert monitor["metadata"]["labels"]["release"] == "prometheus"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("sts.domain=",), "sts.domain is required"),
        (("envoy.tlsSecret=",), "envoy.tlsSecret is required"),
        (("github.apps[0].id=1", "github.apps[0].key=a.pem"), "are exclusive"),
        (("github.app.existingSecret=",), "github.app.existingSecret is required"),
        (("github.app.signer=gcp-kms",), "github.app.kmsKey is required"),
        (("webhook.enabled=true",), "webhook.existingSecret is required"),
        (("ratelimit.enabled=true",), "ratelimit.enabled needs redis.enabled"),
        (("prober.enabled=true",), "prober.enabled needs prober.audience"),
    ],
)
def test_a_release_that_cannot_work_is_refused_with_the_reason(
    sets: tuple[str, ...], message: str
) -> None:
    done = template("default", sets=sets)
    assert done.returncode != 0
    assert message in done.stderr


def test_fleet_ratelimit_uses_the_ratelimit_envoy_variant_or_says_it_is_missing() -> None:
    done = template("fleet")
    if not ratelimit_variant_shipped():
        # The per-tenant rate-limit filter comes from the service's Envoy rendering: until it
        # is there the chart refuses, naming the script, rather than deploy unenforced limits.
        assert done.returncode != 0
        assert "envoy-webhook-ratelimit.yaml is not in this chart" in done.stderr
        assert "render_envoy_helm.py" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d)
    config = envoy_config(docs)
    names = [f["name"] for f in http_filters(config)]
    assert "envoy.filters.http.ratelimit" in names
    [endpoint] = cluster(config, "ratelimit")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] == f"{RELEASE}-octo-sts-ratelimit.{NAMESPACE}.svc.cluster.local"
    service = one(docs, "Service", f"{RELEASE}-octo-sts-ratelimit")
    assert service["spec"]["clusterIP"] == "None"
    assert address["port_value"] == service["spec"]["ports"][0]["port"]
    limits = one(docs, "ConfigMap", f"{RELEASE}-octo-sts-ratelimit")["data"]["octo-sts.yaml"]
    assert yaml.safe_load(limits)["domain"] == "octo-sts"


# -- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_every_container_is_non_root_read_only_without_capabilities(name: str) -> None:
    specs = list(pod_specs(objects(name)))
    assert specs
    for pod_name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, pod_name
        assert pod["runAsUser"] != 0, pod_name
        assert spec["automountServiceAccountToken"] is False, pod_name
        assert not spec.get("hostNetwork"), pod_name
        assert not spec.get("hostPID"), pod_name
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            context = container["securityContext"]
            where = f"{pod_name}/{container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged") is not True, where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where


@pytest.mark.parametrize("name", VALUES)
def test_the_images_uids_and_writable_tmp_follow_the_image_contract(name: str) -> None:
    # docs/containers.md: sts runs as 10001, envoy as 10002; nothing writable but /tmp.
    docs = objects(name)
    for component, uid in (("sts", 10001), ("envoy", 10002)):
        deployment = one(docs, "Deployment", f"{RELEASE}-octo-sts-{component}")
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == uid
        volumes = {v["name"]: v for v in spec["volumes"]}
        [container] = spec["containers"]
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]
        assert "emptyDir" in volumes[writable[0]["name"]]


@pytest.mark.parametrize("name", VALUES)
def test_no_secret_value_is_in_any_manifest(name: str) -> None:
    docs = objects(name)
    assert not by_kind(docs, "Secret")  # the chart names Secrets, it never makes one
    text = yaml.safe_dump_all(docs)
    assert "PRIVATE KEY" not in text
    secret_names = {s.env for s in settings_module.specs().values() if s.secret}
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if env["name"] not in secret_names:
                    continue
                if env["name"] == "OCTOSTS_REDIS_URL" and "value" in env:
                    # The release's own Redis: a password-less in-cluster URL (NetworkPolicy).
                    assert "@" not in env["value"], env
                    continue
                if env["name"] == "GITHUB_APPS" and "value" in env:
                    # Where each key is (a mounted file, a KMS key), never a key itself.
                    for app in yaml.safe_load(env["value"]):
                        assert "private_key" not in app, app
                    continue
                assert "value" not in env, env["name"]
                assert env["valueFrom"]["secretKeyRef"]["name"], env["name"]


@pytest.mark.parametrize("name", VALUES)
def test_sts_ingress_is_only_from_the_gateway(name: str) -> None:
    docs = objects(name)
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-octo-sts-sts")
    sts_pods = one(docs, "Deployment", f"{RELEASE}-octo-sts-sts")["spec"]["template"]
    envoy_pods = one(docs, "Deployment", f"{RELEASE}-octo-sts-envoy")["spec"]["template"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= sts_pods["metadata"]["labels"].items()
    assert not selected.items() <= envoy_pods["metadata"]["labels"].items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    container = sts_container(docs)
    service_ports = {p["containerPort"] for p in container["ports"]} - {9464}
    admitted: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        sources = rule["from"]
        assert sources, "an ingress rule without `from` admits everyone"
        if ports == {9464}:
            assert all(set(s) == {"namespaceSelector"} for s in sources)  # Prometheus
            continue
        admitted |= ports
        for source in sources:
            # Pods of this namespace only (no namespaceSelector, no ipBlock), and only Envoy's.
            assert set(source) == {"podSelector"}, source
            labels = source["podSelector"]["matchLabels"]
            assert labels.items() <= envoy_pods["metadata"]["labels"].items()
            assert not labels.items() <= sts_pods["metadata"]["labels"].items()
    assert admitted == service_ports  # gRPC (and the webhook listener when enabled)


def test_redis_and_ratelimit_ingress_is_only_from_their_clients() -> None:
    docs = objects("fleet")
    redis = one(docs, "NetworkPolicy", f"{RELEASE}-octo-sts-redis")
    [rule] = redis["spec"]["ingress"]
    components = {
        s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in rule["from"]
    }
    expected = {"sts", "ratelimit"} if ratelimit_variant_shipped() else {"sts"}
    assert components == expected
    assert [p["port"] for p in rule["ports"]] == [6379]


# -- the service: probes, settings, keys -------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_sts_probes_are_grpc_health_on_the_grpc_port(name: str) -> None:
    container = sts_container(objects(name))
    [grpc_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}, probe
    # Liveness outlasts the NOT_SERVING hold after a local fault (10 s by default).
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > 10


def _private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _container_environment(docs: tuple[dict[str, Any], ...], tmp_path: Path) -> dict[str, str]:
    """The STS container's environment as the kubelet would give it: Secret keys filled with
    plausible values, files under the Secret mounts written (with a real key) to tmp_path."""
    container = sts_container(docs)
    pem = _private_key_pem()
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
    secret_values = {
        "OCTOSTS_WEBHOOK_SECRETS": "a-webhook-secret-of-32-characters",
        "OCTOSTS_REDIS_URL": "redis://redis.example:6379/0",
        "OCTOSTS_REDIS_HMAC_KEY": "k" * 32,
    }
    env: dict[str, str] = {}
    for item in container["env"]:
        value = item["value"] if "value" in item else secret_values[item["name"]]
        for mount in mounts:
            local = str(tmp_path / mount.strip("/"))
            for path in re.findall(re.escape(mount) + r"[\w./-]*", value):
                target = Path(path.replace(mount, local, 1))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(pem)
            value = value.replace(mount, local)
        env[item["name"]] = value
    return env


@pytest.mark.parametrize("name", VALUES)
def test_the_service_accepts_the_environment_the_chart_gives_it(name: str, tmp_path: Path) -> None:
    # The chart and the service name every setting the same way (settings.py is their home).
    env = _container_environment(objects(name), tmp_path)
    assert set(env) <= set(settings_module.variables()), set(env) - set(settings_module.variables())
    loaded = settings_module.load(env)
    assert loaded.sts_domain == "sts.example.com"
    assert len(loaded.apps()) == (3 if name == "apps" else 1)


def test_several_apps_keep_their_key_sources_and_the_checks_app() -> None:
    env = {e["name"]: e for e in sts_container(objects("apps"))["env"]}
    apps = yaml.safe_load(env["GITHUB_APPS"]["value"])
    assert apps == [
        {"id": 1234, "private_key_file": "/run/secrets/github-apps/app-1234.pem", "checks": True},
        {"id": 5678, "private_key_file": "/run/secrets/github-apps/app-5678.pem"},
        {
            "id": 9012,
            "signer": "gcp-kms",
            "kms_key": "projects/octo-sts-prod/locations/global/keyRings/octo-sts"
            "/cryptoKeys/app-9012/cryptoKeyVersions/1",
        },
    ]
    assert "GITHUB_APP_ID" not in env


def test_a_kms_signed_app_mounts_no_key() -> None:
    docs = objects("kms")
    container = sts_container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GITHUB_APP_SIGNER"] == "aws-kms"
    assert "GITHUB_APP_PRIVATE_KEY_FILE" not in env
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    account = one(docs, "ServiceAccount", f"{RELEASE}-octo-sts")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


# -- the gateway's Envoy config ----------------------------------------------------------------


def test_chart_envoy_configs_are_rendered_from_the_current_template() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_envoy_helm.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = connection_manager(config)["http_filters"]
    return filters


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    [gateway] = [
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["address"]["socket_address"]["port_value"] == 8443
    ]
    manager: dict[str, Any] = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


@pytest.mark.parametrize("name", ["default", "fleet"])
def test_chart_envoy_keeps_the_repos_filters_and_routes(name: str) -> None:
    # The same template as envoy/ (docker-compose's config, make run's): same filters in the
    # same order, same routes; only addresses and sizes differ.
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_envoy_compose  # noqa: PLC0415 - a script, not a package
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    params = render_envoy_compose.compose_params()
    # The webhook listener as each values file has it (off by default, on in the fleet).
    webhook = [Upstream("sts", 8090)] if name == "fleet" else []
    params = dataclasses.replace(params, webhook_upstreams=webhook)
    if name == "fleet" and ratelimit_variant_shipped():  # and the ratelimit service
        limits = importlib.import_module("octosts.dev.tenant_limits").TenantLimits(
            ROOT / "envoy" / "ratelimits.yaml", service=Upstream("ratelimit", 8081)
        )
        params = dataclasses.replace(params, tenant_limits=limits)
    repo = connection_manager(yaml.safe_load(render_config(params)))
    chart = connection_manager(envoy_config(objects(name)))
    assert [f["name"] for f in chart["http_filters"]] == [f["name"] for f in repo["http_filters"]]
    for part in ("http_filters", "route_config", "local_reply_config"):
        assert chart[part] == repo[part], part


@pytest.mark.parametrize(("name", "replicas"), [("default", 2), ("fleet", 12), ("apps", 2)])
def test_envoy_discovers_every_sts_pod_through_the_headless_service(
    name: str, replicas: int
) -> None:
    docs = objects(name)
    service = one(docs, "Service", f"{RELEASE}-octo-sts-sts-headless")
    assert service["spec"]["clusterIP"] == "None"
    pods = one(docs, "Deployment", f"{RELEASE}-octo-sts-sts")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pods["labels"].items()
    sts = cluster(envoy_config(docs), "sts")
    assert sts["type"] == "STRICT_DNS"
    [endpoint] = sts["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    host = f"{RELEASE}-octo-sts-sts-headless.{NAMESPACE}.svc.cluster.local"
    assert address == {"address": host, "port_value": 8080}
    assert {"name": "grpc", "port": 8080, "targetPort": "grpc", "protocol": "TCP"} in service[
        "spec"
    ]["ports"]
    # Circuit breakers admit what the most replicas the Deployment can reach take at once.
    env = {e["name"]: e.get("value") for e in sts_container(docs)["env"]}
    capacity = int(env["OCTOSTS_WORKERS"]) * int(env["OCTOSTS_MAX_CONCURRENT_RPCS"]) * replicas
    [limits] = sts["circuit_breakers"]["thresholds"]
    assert limits["max_requests"] == limits["max_pending_requests"] == capacity
    assert limits["max_retries"] == max(64, capacity // 4)


def test_the_webhook_route_goes_to_the_sts_webhook_port() -> None:
    docs = objects("fleet")
    webhook = cluster(envoy_config(docs), "sts_webhook")
    [endpoint] = webhook["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 8090
    env = {e["name"]: e.get("value") for e in sts_container(docs)["env"]}
    assert env["OCTOSTS_WEBHOOK_ADDR"] == "0.0.0.0:8090"
    assert "sts_webhook" not in {
        c["name"] for c in envoy_config(objects("default"))["static_resources"]["clusters"]
    }


@pytest.mark.parametrize("name", ["default", "fleet"])
def test_chart_envoy_config_passes_envoy_validate(name: str, tmp_path: Path) -> None:
    if not DESCRIPTORS.exists():
        pytest.skip("build/octosts.pb missing: run `make proto`")
    docs = objects(name)
    text = one(docs, "ConfigMap", f"{RELEASE}-octo-sts-envoy")["data"]["envoy.yaml"]
    certs = ensure_dev_certs(tmp_path / "certs")
    local = (
        text.replace("/etc/envoy/certs/server.pem", str(certs.cert))
        .replace("/etc/envoy/certs/server-key.pem", str(certs.key))
        .replace("/etc/envoy/octosts.pb", str(DESCRIPTORS))
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(local)
    validate(path)
    # And the Deployment mounts it, the certificates and the descriptor where they are read.
    envoy = one(docs, "Deployment", f"{RELEASE}-octo-sts-envoy")["spec"]["template"]["spec"]
    [container] = envoy["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/envoy/envoy.yaml"]["subPath"] == "envoy.yaml"
    volumes = {v["name"]: v for v in envoy["volumes"]}
    items = volumes[mounts["/etc/envoy/certs"]["name"]]["secret"]["items"]
    assert {i["path"] for i in items} == {"server.pem", "server-key.pem"}
    annotations = one(docs, "Deployment", f"{RELEASE}-octo-sts-envoy")["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])


# -- scaling, disruption, the prober -----------------------------------------------------------


def test_fleet_scales_both_tiers_and_bounds_disruption() -> None:
    docs = objects("fleet")
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]
        for h in by_kind(docs, "HorizontalPodAutoscaler")
    }
    assert hpas[f"{RELEASE}-octo-sts-sts"]["maxReplicas"] == 12
    assert hpas[f"{RELEASE}-octo-sts-envoy"]["minReplicas"] == 2
    for component in ("sts", "envoy"):
        deployment = one(docs, "Deployment", f"{RELEASE}-octo-sts-{component}")
        assert "replicas" not in deployment["spec"]  # the HPA owns it
        pdb = one(docs, "PodDisruptionBudget", f"{RELEASE}-octo-sts-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1
    assert not by_kind(objects("default"), "HorizontalPodAutoscaler")


def test_prober_runs_octo_sts_probe_with_its_own_projected_token() -> None:
    docs = objects("fleet")
    [cron] = by_kind(docs, "CronJob")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    args = container["args"]
    assert args[0] == "probe"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--endpoint"] == "https://sts.example.com:443"
    assert flags["--scope"] == "octo-org/prober"
    assert flags["--identity"] == "k8s-prober"
    assert flags["--expect"] == "contents=read"
    assert flags["--negative-identity"] == "k8s-prober-denied"
    token_dir = next(m for m in container["volumeMounts"] if m["name"] == "token")["mountPath"]
    assert flags["--token-source"] == f"file:{token_dir}/token"
    [source] = next(v for v in spec["volumes"] if v["name"] == "token")["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == flags["--audience"] == "sts.example.com"
    assert spec["serviceAccountName"] == f"{RELEASE}-octo-sts-prober"
    assert one(docs, "ServiceAccount", f"{RELEASE}-octo-sts-prober")
    # The command line is one the real CLI takes.
    parsed = build_parser().parse_args(args)
    assert parsed.token_source == flags["--token-source"]
    assert parsed.negative_identity == "k8s-prober-denied"
    assert parsed.attempts == 2  # one retry on UNAVAILABLE, as deploy/prober/cronjob.yaml


# -- other Kubernetes YAML in the repository ---------------------------------------------------


def _repo_kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    """Kubernetes objects in committed YAML files and in docs' ```yaml blocks (the chart's
    templates are Helm templates, checked rendered above)."""
    listed = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    found: list[tuple[str, dict[str, Any]]] = []
    for name in listed:
        path = ROOT / name
        if name.startswith("deploy/helm/") or not path.exists():
            continue
        text = path.read_text()
        if name.endswith(".md"):
            blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
        else:
            blocks = [text]
        for block in blocks:
            if not re.search(r"^kind: ", block, flags=re.MULTILINE):
                continue
            try:
                docs = list(yaml.safe_load_all(block))
            except yaml.YAMLError:
                continue  # a fragment, not a manifest
            found += [
                (name, doc)
                for doc in docs
                if isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys()
            ]
    return found


def test_the_repositorys_other_kubernetes_yaml_matches_the_schemas() -> None:
    documents = _repo_kubernetes_documents()
    # docs/deploy.md shows the Secrets a release names; examples may add more.
    assert any(name == "docs/deploy.md" for name, _ in documents)
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}: {exc}")
