"""The Helm chart (deploy/helm/voucherstream), checked offline: `helm lint`, `helm template`, every
rendered manifest against the Kubernetes schemas (kubernetes-validate) and each custom resource
against its project's own CRD (KEDA, prometheus-operator), and what the chart promises — a
ScaledObject per consumer group of the topic registry, never more replicas than partitions, no
rendering without the keys. `make test` builds helm and fetches the CRDs first (cached)."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.helm import consumers as chart_files
from shared import topics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "voucherstream"
SERVICES = ("consent", "segmentation", "issuance", "analytics")
# The oldest Kubernetes still supported by the managed offerings, and the newest the schemas know.
KUBERNETES = ("1.31.0", kubernetes_validate.utils.latest_version())
CUSTOM = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}

SECRETS = {
    "dataKey": "d" * 44, "postgresDsn": "postgresql://owner:pw@pg.example:5432/voucherstream?sslmode=require",
    "consentPseudonymKey": "c" * 44, "segmentationPseudonymKey": "s" * 44, "issuanceCodeHashKey": "h" * 44,
    "issuanceCodeSealKey": "e" * 44, "issuancePseudonymKey": "p" * 44, "kafkaAdminPassword": "a" * 24,
    "kafkaPasswords": {s: s[0] * 24 for s in SERVICES},
}
FULL = {
    "kafka": {"bootstrap": "my-cluster-kafka-bootstrap.kafka:9093", "caSecret": "my-cluster-cluster-ca-cert",
              "manageAcls": True},
    "secrets": SECRETS,
    "monitoring": {"serviceMonitor": True, "prometheusRule": True, "grafanaDashboards": True,
                   "labels": {"release": "kube-prometheus-stack"}},
    "campaigns": yaml.safe_load((ROOT / "deploy/campaigns/reference.yaml").read_text())["campaigns"],
}


# Strimzi: each KafkaUser's password stays in the Secret the operator made (key `password`).
STRIMZI = {"kafka": {"passwordSecrets": {p: {"name": f"{p}-user", "key": "password"} for p in (*SERVICES, "admin")}},
           "secrets": {"kafkaAdminPassword": "", "kafkaPasswords": {s: "" for s in SERVICES}}}


def helm_binary() -> str:
    exe = os.environ.get("VOUCHERSTREAM_HELM", "")
    assert exe and Path(exe).exists(), "helm is built by `make test` (make helm-check); VOUCHERSTREAM_HELM names it"
    return exe


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)


def render(tmp_path: Path, values: dict) -> list[dict]:
    done = template(tmp_path, values)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def template(tmp_path: Path, values: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm("template", "shop", str(CHART), "--namespace", "vouchers", "-f", str(path))


def merged(*overrides: dict) -> dict:
    out = copy.deepcopy(FULL)
    for o in overrides:
        _merge(out, o)
    return out


def _merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema of that CRD version."""
    folder = Path(os.environ.get("VOUCHERSTREAM_CRDS", ""))
    assert folder.is_dir(), "the CRDs are fetched by `make test` (make helm-check); VOUCHERSTREAM_CRDS names them"
    out = {}
    for path in folder.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return out


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def registry_groups() -> dict[str, list[str]]:
    """Each service's consumer group and the topics it reads, straight from the registry."""
    groups: dict[str, list[str]] = {}
    for t in topics.TOPICS:
        for service in t.consumers:
            if service not in topics.EXTERNAL:
                groups.setdefault(service, []).append(t.name)
    return groups


# ---------------------------------------------------------------------------------------------


def test_helm_lint_passes_strict(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(FULL))
    done = helm("lint", "--strict", str(CHART), "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("variant", [
    {},
    {"autoscaling": {"keda": False}},
    {"kafka": {"securityProtocol": "PLAINTEXT", "caSecret": ""}},
    {"kafka": {"securityProtocol": "SSL"}, "secrets": {"existingSecret": "shop-keys"}},
    STRIMZI,
], ids=["sasl-ssl", "without-keda", "plaintext", "tls-existing-secret", "strimzi-user-secrets"])
def test_every_rendered_manifest_matches_its_schema(tmp_path, variant):
    docs = render(tmp_path, merged(variant))
    schemas = crd_schemas()
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in CUSTOM:
            schema = schemas.get((doc["apiVersion"], doc["kind"]))
            assert schema, f"{where}: no CRD schema for {doc['apiVersion']}"
            # Draft 7 is OpenAPI v3's JSON Schema; the CRDs' patterns are Go regular expressions,
            # so the schema itself is not checked as Python regex (the documents are).
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
            continue
        for version in KUBERNETES:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is not valid Kubernetes {version}: {exc.message} at {list(exc.path)}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    assert ("ScaledObject" in kinds) == variant.get("autoscaling", {}).get("keda", True)


def test_each_consumer_group_of_the_registry_scales_on_its_own_lag(tmp_path):
    docs = render(tmp_path, merged({"kafka": {"topicPrefix": "shop1."}}))
    scaled = by_kind(docs, "ScaledObject")
    groups = registry_groups()
    assert set(groups) == set(SERVICES)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for service, wanted in groups.items():
        so = scaled[f"shop-voucherstream-{service}"]
        assert so["spec"]["scaleTargetRef"]["name"] == f"shop-voucherstream-{service}"
        kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
        assert sorted(t["metadata"]["topic"] for t in kafka) == sorted("shop1." + name for name in wanted)
        for t in kafka:
            assert t["metadata"]["consumerGroup"] == "shop1." + service
            assert t["metadata"]["lagThreshold"] == str(values["services"][service]["lagThreshold"])
            assert t["metadata"]["sasl"] == "scram_sha512" and t["metadata"]["tls"] == "enable"
            assert t["authenticationRef"]["name"] == f"shop-voucherstream-{service}-kafka"
    cpu = [t for t in scaled["shop-voucherstream-issuance"]["spec"]["triggers"] if t["type"] == "cpu"]
    assert cpu and cpu[0]["metadata"]["value"] == "70", "issuance's checkout API scales on CPU too"
    auth = by_kind(docs, "TriggerAuthentication")["shop-voucherstream-issuance-kafka"]
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert params["password"] == ("shop-voucherstream-secrets", "ISSUANCE_KAFKA_PASSWORD")
    assert params["ca"] == ("my-cluster-cluster-ca-cert", "ca.crt")


def test_no_scaled_object_outgrows_its_partitions(tmp_path):
    wide = {s: {"maxReplicas": 50} for s in SERVICES}
    for customer_partitions in (6, 12):
        docs = render(tmp_path, merged({"services": wide, "kafka": {"customerPartitions": customer_partitions}}))
        for service, names in registry_groups().items():
            so = by_kind(docs, "ScaledObject")[f"shop-voucherstream-{service}"]
            partitions = min(customer_partitions if topics.topic(n).key != "campaign_id" else topics.topic(n).partitions
                             for n in names)
            assert so["spec"]["maxReplicaCount"] == partitions, (service, customer_partitions)


def test_pods_outlive_their_drain_and_are_probed(tmp_path):
    docs = render(tmp_path, FULL)
    deployments = by_kind(docs, "Deployment")
    assert len(deployments) == 4
    for d in deployments.values():
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert spec["terminationGracePeriodSeconds"] > 30 + int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "replicas" not in d["spec"], "KEDA owns the replica count"
        env = {e["name"] for e in c["env"]}
        assert "VOUCHERSTREAM_DATA_KEY" in env and c["resources"]["requests"]["cpu"]
    issuance_env = {e["name"] for e in deployments["shop-voucherstream-issuance"]["spec"]["template"]["spec"]
                    ["containers"][0]["env"]}
    assert "ISSUANCE_CODE_HASH_KEY" in issuance_env and "CONSENT_PSEUDONYM_KEY" not in issuance_env
    settings = by_kind(docs, "ConfigMap")["shop-voucherstream-settings"]["data"]
    assert settings["VOUCHERSTREAM_KAFKA_SSL_CAFILE"] == "/etc/voucherstream/kafka/ca.crt"
    assert settings["VOUCHERSTREAM_KAFKA_REPLICATION_FACTOR"] == "3"
    assert settings["SEGMENTATION_KAFKA_USERNAME"] == "segmentation"


def test_hooks_migrate_and_make_topics_before_the_services_and_load_campaigns_after(tmp_path):
    jobs = by_kind(render(tmp_path, FULL), "Job")
    hooks = {name.removeprefix("shop-voucherstream-"): (j["metadata"]["annotations"]["helm.sh/hook"],
                                                       j["spec"]["template"]["spec"]["containers"][0]["command"])
             for name, j in jobs.items()}
    assert hooks["migrate"] == ("pre-install,pre-upgrade", ["voucherstream", "db", "migrate"])
    assert hooks["topics"] == ("pre-install,pre-upgrade", ["python", "-m", "shared.topics"])
    assert hooks["acls"][1] == ["voucherstream", "acls"]
    assert hooks["campaigns"][0] == "post-install,post-upgrade" and "campaigns load" in hooks["campaigns"][1][-1]


def test_alerts_and_dashboards_are_the_repositorys_own(tmp_path):
    docs = render(tmp_path, FULL)
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    dashboards = {k: v for cm in by_kind(docs, "ConfigMap").values() if "grafana_dashboard" in cm["metadata"]["labels"]
                  for k, v in cm["data"].items()}
    files = {p.name: p.read_text() for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    assert dashboards.keys() == files.keys() and all(dashboards[k].strip() == files[k].strip() for k in files)


@pytest.mark.parametrize("missing", ["dataKey", "postgresDsn", "consentPseudonymKey", "segmentationPseudonymKey",
                                     "issuanceCodeHashKey", "issuanceCodeSealKey", "issuancePseudonymKey",
                                     "kafkaAdminPassword", "kafkaPasswords.analytics"])
def test_rendering_fails_without_a_key(tmp_path, missing):
    values = merged()
    holder, _, name = missing.rpartition(".")
    (values["secrets"][holder] if holder else values["secrets"])[name] = ""
    done = template(tmp_path, values)
    assert done.returncode != 0
    assert f"secrets.{missing} is required" in done.stderr


def test_rendering_fails_without_the_brokers(tmp_path):
    done = template(tmp_path, merged({"kafka": {"bootstrap": ""}}))
    assert done.returncode != 0 and "kafka.bootstrap is required" in done.stderr


def test_an_existing_secret_replaces_the_keys(tmp_path):
    docs = render(tmp_path, merged({"secrets": {k: "" for k in SECRETS} | {"existingSecret": "shop-keys",
                                                                          "kafkaPasswords": {}}}))
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-secrets")]
    env = by_kind(docs, "Deployment")["shop-voucherstream-consent"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "CONSENT_PSEUDONYM_KEY",
            "valueFrom": {"secretKeyRef": {"name": "shop-keys", "key": "CONSENT_PSEUDONYM_KEY"}}} in env


def test_the_consumer_groups_file_is_generated_from_the_registry():
    assert chart_files.main(["--check"]) == 0, "run `make helm-files`"


def test_strimzi_user_secrets_hold_the_kafka_passwords(tmp_path):
    docs = render(tmp_path, merged(STRIMZI))
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "shop-voucherstream-secrets"]
    assert not [k for k in secret["stringData"] if "KAFKA" in k], "no Kafka password of ours when Strimzi holds them"
    env = by_kind(docs, "Deployment")["shop-voucherstream-analytics"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ANALYTICS_KAFKA_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "analytics-user", "key": "password"}}} in env
    job = by_kind(docs, "Job")["shop-voucherstream-topics"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "VOUCHERSTREAM_KAFKA_SASL_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "admin-user", "key": "password"}}} in job
    auth = by_kind(docs, "TriggerAuthentication")["shop-voucherstream-segmentation-kafka"]["spec"]["secretTargetRef"]
    assert {"parameter": "password", "name": "segmentation-user", "key": "password"} in auth
