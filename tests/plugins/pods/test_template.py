"""Tests of finetune_sweep.pods.template: a pod template may add what the cluster needs, never widen the pod."""

from __future__ import annotations

import kubernetes_validate
import pytest

from finetune_sweep.pods.template import PodTemplateError, check_pod_template
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
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: pool, operator: In, values: [batch]}]}]
  securityContext: {runAsUser: 10001, runAsNonRoot: true}
  containers:
    - name: base
      env: [{name: EXTRA, value: "1"}]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"""


@pytest.mark.parametrize(
    ("spec_yaml", "named"),
    [
        pytest.param("hostPID: true\n  containers: [{name: base}]", "spec.hostPID", id="hostPID"),
        pytest.param("hostNetwork: true\n  containers: [{name: base}]", "spec.hostNetwork", id="hostNetwork"),
        pytest.param("hostIPC: true\n  containers: [{name: base}]", "spec.hostIPC", id="hostIPC"),
        pytest.param(
            "volumes: [{name: root, hostPath: {path: /}}]\n  containers: [{name: base}]",
            "spec.volumes[0] (root) hostPath /",
            id="hostPath",
        ),
        pytest.param(
            "containers: [{name: base, securityContext: {privileged: true}}]",
            "spec.containers[0] (base).securityContext.privileged",
            id="privileged",
        ),
        pytest.param(
            "containers: [{name: base, securityContext: {allowPrivilegeEscalation: true}}]",
            "spec.containers[0] (base).securityContext.allowPrivilegeEscalation",
            id="allowPrivilegeEscalation",
        ),
        pytest.param(
            "containers: [{name: base, securityContext: {capabilities: {add: [SYS_ADMIN]}}}]",
            "spec.containers[0] (base).securityContext.capabilities.add ['SYS_ADMIN']",
            id="capabilities-add",
        ),
        pytest.param(
            "securityContext: {runAsUser: 0}\n  containers: [{name: base}]",
            "spec.securityContext.runAsUser 0",
            id="pod-runAsUser-0",
        ),
        pytest.param(
            "containers: [{name: base, securityContext: {runAsUser: 0, runAsNonRoot: false}}]",
            "spec.containers[0] (base).securityContext.runAsUser 0; "
            "spec.containers[0] (base).securityContext.runAsNonRoot false",
            id="container-root",
        ),
        pytest.param(
            "initContainers: [{name: setup, image: busybox, securityContext: {privileged: true}}]\n"
            "  containers: [{name: base}]",
            "spec.initContainers[0] (setup).securityContext.privileged",
            id="privileged-init-container",
        ),
        pytest.param(
            "automountServiceAccountToken: true\n  containers: [{name: base}]",
            "spec.automountServiceAccountToken true",
            id="service-account-token",
        ),
        pytest.param(
            "containers: [{name: base, env: [{name: FINETUNE_DB_URL, value: 'postgresql://evil:pw@attacker/db'}]}]",
            "spec.containers[0] (base).env FINETUNE_DB_URL from a literal value (the DSN comes from Secret finetune-db)",
            id="literal-dsn",
        ),
        pytest.param(
            "containers: [{name: base, env: [{name: FINETUNE_DB_URL, valueFrom: "
            "{secretKeyRef: {name: other-db, key: dsn}}}]}]",
            "spec.containers[0] (base).env FINETUNE_DB_URL from another source (the DSN comes from Secret finetune-db)",
            id="other-secret-dsn",
        ),
    ],
)
def test_a_template_that_would_widen_the_pod_is_refused_naming_it(tmp_path, spec_yaml: str, named: str) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text(f"apiVersion: v1\nkind: Pod\nspec:\n  {spec_yaml}\n")

    with pytest.raises(PodTemplateError) as refused:
        check_pod_template(str(template), db_secret=("finetune-db", "dsn"))

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"FINETUNE_POD_TEMPLATE_FILE={template} is refused, it would widen the pod: {named} (")
    assert "attacker" not in message and ":pw@" not in message


def test_every_widening_of_one_template_is_named_at_once(tmp_path) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  hostPID: true\n  hostNetwork: true\n"
        "  volumes: [{name: docker, hostPath: {path: /var/run/docker.sock}}]\n"
        "  containers: [{name: base, env: [{name: FINETUNE_DB_URL, value: x}], securityContext: {privileged: true}}]\n"
    )

    with pytest.raises(
        PodTemplateError,
        match=r"spec\.hostPID; spec\.hostNetwork; spec\.volumes\[0\] \(docker\) "
        r"hostPath /var/run/docker\.sock; spec\.containers\[0\] \(base\)\.securityContext\.privileged; "
        r"spec\.containers\[0\] \(base\)\.env FINETUNE_DB_URL from a literal value",
    ):
        check_pod_template(str(template), db_secret=("finetune-db", "dsn"))


def test_a_template_that_only_adds_what_the_cluster_needs_passes_and_merges(tmp_path) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text(SAFE_TEMPLATE)
    # the configured Secret itself is no override
    check_pod_template(str(template), db_secret=("finetune-db", "dsn"))

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
    check_pod_template(str(template), db_secret=("finetune-db", "dsn"))

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
    ],
)
def test_an_unusable_template_is_refused_in_one_line(tmp_path, content: str | None, match: str) -> None:

    template = tmp_path / "pod.yaml"
    if content is not None:
        template.write_text(content)

    with pytest.raises(PodTemplateError, match=match) as refused:
        check_pod_template(str(template), db_secret=("finetune-db", "dsn"))
    assert "\n" not in str(refused.value)
