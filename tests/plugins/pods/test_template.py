"""Tests of finetune_sweep.pods.template: a pod template may set the allowed fields, nothing else."""

from __future__ import annotations

import kubernetes_validate
import pytest

from finetune_sweep.pods.template import PodTemplateError, check_pod_template, template_refusals
from pod_manifests import K8S_VERSION, build_manifest, make_entry, make_settings

SAFE_TEMPLATE = """
apiVersion: v1
kind: Pod
metadata:
  name: placeholder
  annotations: {cluster-autoscaler.kubernetes.io/safe-to-evict: "false"}
  labels: {team: quant}
spec:
  priorityClassName: batch-low
  imagePullSecrets: [{name: registry-creds}]
  tolerations: [{key: dedicated, operator: Equal, value: finetune, effect: NoSchedule}]
  nodeSelector: {pool: batch}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: pool, operator: In, values: [batch]}]}]
  containers:
    - name: base
      env: [{name: EXTRA, value: "1"}]
"""

BASE = "containers: [{name: base}]"


@pytest.mark.parametrize(
    ("spec_yaml", "named"),
    [
        # the widenings a security review found passing the former deny-list
        pytest.param(
            "serviceAccountName: builder\n  volumes: [{name: tok, projected: {sources: "
            "[{serviceAccountToken: {path: token}}]}}]\n  " + BASE,
            "spec.serviceAccountName; spec.volumes",
            id="projected-token",
        ),
        pytest.param(
            "containers: [{name: base, lifecycle: {postStart: {exec: {command: [sh, -c, env]}}}}]",
            "spec.containers[0] (base).lifecycle",
            id="lifecycle-on-base",
        ),
        pytest.param(
            "shareProcessNamespace: true\n  containers: [{name: base}, {name: sidecar, image: busybox}]",
            "spec.shareProcessNamespace; spec.containers[1] (sidecar)",
            id="sidecar-sharing-processes",
        ),
        pytest.param(
            "hostAliases: [{ip: 10.0.0.9, hostnames: [db.internal]}]\n  " + BASE, "spec.hostAliases", id="hostAliases"
        ),
        pytest.param("dnsConfig: {nameservers: [10.0.0.9]}\n  " + BASE, "spec.dnsConfig", id="dnsConfig"),
        pytest.param("volumes: [{name: n, nfs: {server: s, path: /}}]\n  " + BASE, "spec.volumes", id="nfs-volume"),
        pytest.param(
            "containers: [{name: base, env: [{name: PGHOST, value: attacker}, {name: PGOPTIONS, value: x}]}]",
            "spec.containers[0] (base).env PGHOST (FINETUNE_* and PG* are the project's and libpq's); "
            "spec.containers[0] (base).env PGOPTIONS",
            id="libpq-env",
        ),
        pytest.param(
            "containers: [{name: base, env: [{name: FINETUNE_DB_URL, value: 'postgresql://evil:pw@attacker/db'}]}]",
            "spec.containers[0] (base).env FINETUNE_DB_URL",
            id="literal-dsn",
        ),
        pytest.param(
            "containers: [{name: base, env: [{name: FINETUNE_DB_URL, valueFrom: "
            "{secretKeyRef: {name: finetune-db, key: dsn}}}]}]",
            "spec.containers[0] (base).env FINETUNE_DB_URL",
            id="even-the-configured-dsn",
        ),
        pytest.param(
            "containers: [{name: base, envFrom: [{prefix: PG, secretRef: {name: other}}]}]",
            "spec.containers[0] (base).envFrom[0].prefix PG",
            id="envFrom-prefix",
        ),
        # the deny-list's former cases stay refused
        pytest.param("hostPID: true\n  " + BASE, "spec.hostPID", id="hostPID"),
        pytest.param("automountServiceAccountToken: true\n  " + BASE, "spec.automountServiceAccountToken", id="token"),
        pytest.param("securityContext: {runAsUser: 0}\n  " + BASE, "spec.securityContext", id="pod-securityContext"),
        pytest.param(
            "containers: [{name: base, securityContext: {privileged: true}}]",
            "spec.containers[0] (base).securityContext",
            id="privileged",
        ),
        pytest.param(
            "initContainers: [{name: setup, image: busybox}]\n  " + BASE, "spec.initContainers", id="init-container"
        ),
        pytest.param(
            "containers: [{name: base, image: 'evil:latest', command: [sh]}]",
            "spec.containers[0] (base).image; spec.containers[0] (base).command",
            id="image-and-command",
        ),
        pytest.param("containers: [{name: sidecar}]", "spec.containers[0] (sidecar)", id="no-base-only-another"),
        # snake_case is not what the operator reads: refused rather than silently dropped
        pytest.param("node_selector: {pool: batch}\n  " + BASE, "spec.node_selector", id="misspelt-field"),
    ],
)
def test_a_template_setting_a_field_outside_the_allow_list_is_refused_naming_it(
    tmp_path, spec_yaml: str, named: str
) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text(f"apiVersion: v1\nkind: Pod\nspec:\n  {spec_yaml}\n")

    with pytest.raises(PodTemplateError) as refused:
        check_pod_template(str(template))

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"FINETUNE_POD_TEMPLATE_FILE={template} is refused, it sets fields a template may not: ")
    assert named in message
    assert message.endswith("(name, env, envFrom; no FINETUNE_* or PG* names))")
    # a value is never shown: it may be a secret
    assert "attacker" not in message and ":pw@" not in message


def test_every_refused_field_of_one_template_is_named_at_once_in_template_order() -> None:
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "status": {},
        "metadata": {"name": "x", "namespace": "kube-system"},
        "spec": {
            "hostNetwork": True,
            "containers": [{"name": "base", "env": [{"name": "PGPASSWORD", "value": "x"}], "ports": []}],
        },
    }

    assert template_refusals(raw) == [
        "status",
        "metadata.namespace",
        "spec.hostNetwork",
        "spec.containers[0] (base).ports",
        "spec.containers[0] (base).env PGPASSWORD (FINETUNE_* and PG* are the project's and libpq's)",
    ]


def test_a_template_that_only_adds_what_the_cluster_needs_passes_and_merges(tmp_path) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text(SAFE_TEMPLATE)
    check_pod_template(str(template))

    manifest = build_manifest(make_entry("base_features"), settings=make_settings(pod_template_file=str(template)))

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["priorityClassName"] == "batch-low"
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert manifest["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert manifest["metadata"]["labels"]["team"] == "quant"
    (container,) = spec["containers"]
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    db_url = [var for var in container["env"] if var["name"] == "FINETUNE_DB_URL"]
    assert db_url == [{"name": "FINETUNE_DB_URL", "valueFrom": {"secretKeyRef": {"name": "finetune-db", "key": "dsn"}}}]
    assert spec["automountServiceAccountToken"] is False


def test_object_store_credentials_come_from_a_secret_through_the_template(tmp_path) -> None:
    # Without workload identity (IRSA), static keys of an S3-compatible store reach the pods from
    # a Secret via the template's envFrom; the DSN entry still wins (env beats envFrom in Kubernetes).

    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: base\n"
        "      envFrom: [{secretRef: {name: minio-creds}}]\n"
        "      env: [{name: AWS_ENDPOINT_URL, value: 'http://minio.data:9000'}]\n"
    )
    check_pod_template(str(template))

    manifest = build_manifest(make_entry("btc_features"), settings=make_settings(pod_template_file=str(template)))

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    (container,) = manifest["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "minio-creds"}}]
    env = {var["name"]: var for var in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.data:9000"
    assert env["FINETUNE_DB_URL"]["valueFrom"] == {"secretKeyRef": {"name": "finetune-db", "key": "dsn"}}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(None, "does not exist", id="missing"),
        pytest.param("spec: [unclosed", "cannot be read", id="bad-yaml"),
        pytest.param("- just a list", "is not a pod manifest", id="not-a-mapping"),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nspec: {nodeSelector: {a: b}}\n", "has no spec.containers", id="no-containers"
        ),
        pytest.param("apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n", "has no spec.containers", id="no-spec"),
    ],
)
def test_an_unusable_template_is_refused_in_one_line(tmp_path, content: str | None, match: str) -> None:

    template = tmp_path / "pod.yaml"
    if content is not None:
        template.write_text(content)

    with pytest.raises(PodTemplateError, match=match) as refused:
        check_pod_template(str(template))
    assert "\n" not in str(refused.value)
