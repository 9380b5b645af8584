"""Tests of finetune_sweep.pods.spec: the pod spec pieces, validated against the Kubernetes schema."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
from kubernetes.client import models as k8s

from finetune_rows import AS_OF, RUN_ID
from finetune_sweep.pods import spec as pods
from finetune_sweep.pods.render import render_manifest
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import (
    PROFILES,
    SIZING_MAP,
    PodProfile,
    load_profiles,
)
from pod_manifests import K8S_VERSION, build_manifest, make_entry, make_settings

SECRET_DSN = "postgresql://finetune:hunter2@db.internal:5432/finetune"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize("factor", [pytest.param(f, id=f) for f in SIZING_MAP])
def test_every_factor_pod_is_a_valid_kubernetes_pod(factor: str) -> None:
    manifest = build_manifest(make_entry(factor))

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = manifest["spec"]["containers"][0]
    profile = PROFILES[SIZING_MAP[factor]]
    assert container["resources"] == {
        "requests": {"memory": profile.memory, "cpu": profile.cpu},
        "limits": {"memory": profile.memory},
    }
    assert "cpu" not in container["resources"]["limits"], "no cpu limit: throttling only slows the job"
    assert manifest["spec"]["nodeSelector"] == profile.node_selector
    labels = manifest["metadata"]["labels"]
    assert labels["finetune/factor"] == factor
    assert labels["finetune/profile"] == profile.name.lower()
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values())
    assert re.match(rf"^finetune-{factor.replace('_', '-')}-[a-z0-9]+$", manifest["metadata"]["name"])
    assert container["command"] == ["python", "-m", "finetune"]
    assert container["args"][:5] == ["run", "--run-id", RUN_ID, "--factor", factor]


def test_the_dsn_comes_from_the_secret_and_never_as_a_literal() -> None:
    manifest = build_manifest(make_entry("base_features"))

    env = {e["name"]: e for e in manifest["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_DB_URL"] == {
        "name": "FINETUNE_DB_URL",
        "valueFrom": {"secretKeyRef": {"name": "finetune-db", "key": "dsn"}},
    }
    assert "value" not in env["FINETUNE_DB_URL"]
    text = json.dumps(manifest)
    assert "postgresql://" not in text and "hunter2" not in text and SECRET_DSN not in text


def test_the_memory_limit_reaches_the_pod_through_the_downward_api() -> None:
    manifest = build_manifest(make_entry("base_features"))

    env = {e["name"]: e for e in manifest["spec"]["containers"][0]["env"]}
    assert env[pods.MEMORY_LIMIT_ENV]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"


def test_the_cpu_request_reaches_the_pod_which_sizes_its_workers_by_it() -> None:
    from finetune import workers

    manifest = build_manifest(make_entry("base_features"))

    container = manifest["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert pods.CPU_REQUEST_ENV == workers.CPU_REQUEST_ENV
    assert env[pods.CPU_REQUEST_ENV]["valueFrom"]["resourceFieldRef"] == {"resource": "requests.cpu", "divisor": "1"}
    # the downward API gives whole cpus rounded up: the STANDARD profile's "2" runs 2 workers
    assert container["resources"]["requests"]["cpu"] == "2"
    assert workers.pod_workers({pods.CPU_REQUEST_ENV: "2"}) == 2


def test_the_database_bounds_set_on_the_airflow_side_reach_the_pod() -> None:
    settings = Settings.from_env({"FINETUNE_DB_LOCK_TIMEOUT_SECONDS": "20", "FINETUNE_DB_RETRY_SECONDS": "300"})
    manifest = build_manifest(make_entry("base_features"), settings=settings)

    env = {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_DB_LOCK_TIMEOUT_SECONDS"] == "20" and env["FINETUNE_DB_RETRY_SECONDS"] == "300"
    assert "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS" not in env  # unset: the pod's default applies


def test_security_context_is_restricted() -> None:
    manifest = build_manifest(make_entry("l2_features"))

    pod_sc = manifest["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == pods.CONTAINER_UID
    assert pod_sc["fsGroup"] == pods.CONTAINER_UID
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    container = manifest["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The read-only root needs a writable /tmp.
    assert container["volumeMounts"] == [{"mountPath": "/tmp", "name": "tmp"}]
    assert manifest["spec"]["volumes"][0]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert manifest["spec"]["automountServiceAccountToken"] is False
    assert manifest["spec"]["restartPolicy"] == "Never"


def test_overridden_profiles_reach_the_pod() -> None:
    profiles = load_profiles('{"STANDARD": {"memory": "256Mi", "node_selector": {}}}')
    entry = pods.factor_pod_kwargs(
        factor="base_features", profile=profiles["STANDARD"], run_id=RUN_ID, run_args={"as_of": AS_OF}
    )

    manifest = build_manifest(entry)

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == {"memory": "256Mi"}
    assert not manifest["spec"].get("nodeSelector")


def test_common_pod_kwargs() -> None:
    kwargs = pods.common_pod_kwargs(
        image="repo/finetune:{{ params.image }}", settings=make_settings(service_account="sa")
    )

    assert kwargs["on_finish_action"] == "delete_succeeded_pod"
    assert kwargs["get_logs"] is True
    assert kwargs["namespace"] == "finetune"
    assert kwargs["image"] == "repo/finetune:{{ params.image }}"
    assert kwargs["service_account_name"] == "sa"
    assert "is_delete_operator_pod" not in kwargs
    (secret,) = kwargs["secrets"]
    assert (secret.deploy_type, secret.deploy_target, secret.secret, secret.key) == (
        "env",
        "FINETUNE_DB_URL",
        "finetune-db",
        "dsn",
    )


def test_factor_pod_kwargs_is_json_for_xcom() -> None:
    entry = make_entry("btc_features", cryptos=["BTC"], cost_bps=[10, 30], slippage_bps=[0, 5])

    assert json.loads(json.dumps(entry)) == entry
    assert set(entry) == {
        "factor",
        "profile",
        "profiles",
        "name",
        "labels",
        "container_resources",
        "node_selector",
        "arguments",
        "active_deadline_seconds",
        "workers",
    }
    assert entry["workers"] == 1  # HEAVY requests 6 cpus, but the pod has one crypto
    with_ladder = pods.factor_pod_kwargs(
        factor="btc_features", profile=PROFILES["HEAVY"], run_id=RUN_ID, run_args={"as_of": AS_OF}, profiles=PROFILES
    )
    assert json.loads(json.dumps(with_ladder)) == with_ladder
    assert with_ladder["profiles"]["HEAVY"] == {
        "memory": "24Gi",
        "cpu": "6",
        "node_selector": {"finetune/pool": "heavy"},
        "tolerations": [],
        "affinity": None,
    }
    assert entry["name"] == "finetune-btc-features"
    # 1 crypto x 4 folds x 2 costs x 2 slippages = 16 keys at 60 s, plus 600 s to start
    assert entry["active_deadline_seconds"] == 600 + 16 * 60
    assert entry["arguments"] == [
        "run",
        "--run-id",
        RUN_ID,
        "--factor",
        "btc_features",
        "--cryptos",
        "BTC",
        "--cost-bps",
        "10,30",
        "--slippage-bps",
        "0,5",
        "--as-of",
        AS_OF,
        "--n-folds",
        "4",
        "--n-seeds",
        "100",
        "--n-shifts",
        "999",
        "--hold-bars",
        "24",
        "--train-bars",
        "4320",
        "--test-bars",
        "720",
        "--model",
        "ridge_long_flat",
    ]


def test_with_profile_moves_the_entry_and_passes_other_keys_through() -> None:
    entry = {**make_entry("btc_features"), "profiles": {"HEAVY": {"memory": "24Gi"}}, "active_deadline_seconds": 60}
    medium = PodProfile("MEDIUM", "16Gi", "4", {"pool": "m"})

    moved = pods.with_profile(entry, profile=medium)

    assert moved["profile"] == "MEDIUM"
    assert moved["container_resources"] == {"requests": {"memory": "16Gi", "cpu": "4"}, "limits": {"memory": "16Gi"}}
    assert moved["node_selector"] == {"pool": "m"}
    assert moved["labels"] == {**entry["labels"], "finetune/profile": "medium"}
    unchanged = set(entry) - {"profile", "container_resources", "node_selector", "labels"}
    # the workers stay the map profile's: a larger start profile gains memory per worker
    assert unchanged == {"factor", "name", "arguments", "profiles", "active_deadline_seconds", "workers"}
    assert all(moved[key] == entry[key] for key in unchanged)
    assert entry["profile"] == "HEAVY", "the input entry is not mutated"
    assert json.loads(json.dumps(moved)) == moved


def test_run_arguments_adds_the_data_uri_and_refuses_unknown_keys() -> None:
    args = pods.run_arguments(
        run_id="r", factor="f", run_args={"as_of": AS_OF, "data_uri": "file:///d", "n_folds": None}
    )

    assert args == ["run", "--run-id", "r", "--factor", "f", "--as-of", AS_OF, "--data-uri", "file:///d"]
    with pytest.raises(ValueError, match="unknown run argument"):
        pods.run_arguments(run_id="r", factor="f", run_args={"folds": 3})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("base_features", "base_features", id="valid-kept"),
        pytest.param("STANDARD", "STANDARD", id="upper-kept"),
    ],
)
def test_label_value_keeps_valid_values(value: str, expected: str) -> None:
    assert pods.label_value(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(RUN_ID, id="airflow-run-id"),
        pytest.param("scheduled__" + "x" * 80, id="too-long"),
        pytest.param("__", id="only-invalid"),
        pytest.param("BTC'; DROP TABLE x;--", id="injection"),
    ],
)
def test_label_value_sanitises_and_stays_distinct(value: str) -> None:
    safe = pods.label_value(value)

    assert len(safe) <= 63 and LABEL_VALUE.match(safe)
    assert safe != pods.label_value(value + "1")
    assert safe == pods.label_value(value), "stable for the same run id"


def test_resources_for_and_to_resource_requirements() -> None:
    resources = pods.resources_for(PROFILES["MEDIUM"])

    assert resources == {"requests": {"memory": "16Gi", "cpu": "4"}, "limits": {"memory": "16Gi"}}
    model = pods.to_resource_requirements(resources)
    assert isinstance(model, k8s.V1ResourceRequirements)
    assert model.limits == {"memory": "16Gi"}
    assert pods.to_resource_requirements(model) is model


def test_a_cluster_pod_template_is_merged_under_the_spec_built_here(tmp_path) -> None:
    # What a cluster needs beyond this project's spec (tolerations, pull secrets, priority) comes
    # from the template; resources, image and security context stay the ones built here.
    template = tmp_path / "pod_template.yaml"
    template.write_text(
        """
apiVersion: v1
kind: Pod
metadata:
  name: placeholder
spec:
  priorityClassName: batch-low
  imagePullSecrets: [{name: registry-creds}]
  tolerations: [{key: dedicated, operator: Equal, value: finetune, effect: NoSchedule}]
  containers:
    - name: base
      image: ignored/by-the-operator:latest
      resources: {limits: {memory: 1Mi}}
"""
    )
    manifest = build_manifest(make_entry("btc_features"), settings=make_settings(pod_template_file=str(template)))

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["priorityClassName"] == "batch-low"
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert spec["tolerations"][0]["value"] == "finetune"
    (container,) = spec["containers"]
    heavy = PROFILES["HEAVY"]
    assert container["resources"]["limits"] == {"memory": heavy.memory}
    assert container["image"] == make_settings().image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_pod_template_setting_is_read_from_the_environment() -> None:
    settings = Settings.from_env({"FINETUNE_POD_TEMPLATE_FILE": "/etc/finetune/pod.yaml"})

    assert pods.common_pod_kwargs(image="x:1", settings=settings)["pod_template_file"] == "/etc/finetune/pod.yaml"
    assert "pod_template_file" not in pods.common_pod_kwargs(image="x:1", settings=Settings.from_env({}))


def test_rendered_pod_carries_the_profiles_tolerations_and_the_startup_timeouts() -> None:
    profiles = load_profiles(
        json.dumps({"HEAVY": {"tolerations": [{"key": "highmem", "operator": "Exists", "effect": "NoSchedule"}]}})
    )
    entry = pods.factor_pod_kwargs(
        factor="btc_features", profile=profiles["HEAVY"], run_id=RUN_ID, run_args={"as_of": AS_OF}, profiles=profiles
    )
    settings = make_settings()

    manifest = render_manifest(factor_kwargs=entry, image=settings.image, settings=settings)
    kwargs = pods.common_pod_kwargs(image=settings.image, settings=settings)

    assert manifest["spec"]["tolerations"] == [{"key": "highmem", "operator": "Exists", "effect": "NoSchedule"}]
    assert (kwargs["schedule_timeout_seconds"], kwargs["startup_timeout_seconds"]) == (900, 180)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(["run", "--run-id", "R", "--factor", "f"], "R", id="separate-value"),
        pytest.param(["run", "--run-id=R", "--factor", "f"], "R", id="equals-form"),
        pytest.param(["run", "--run-id=a=b"], "a=b", id="equals-in-the-value"),
        pytest.param(["run", "--run-id="], None, id="equals-empty-value"),
        pytest.param(["run", "--factor", "f"], None, id="absent"),
        pytest.param(["run", "--factor", "f", "--run-id"], None, id="last-item-without-value"),
        pytest.param(["run", "--run-idx", "R", "--run-id-extra=S"], None, id="longer-flags-are-other-flags"),
        pytest.param(["run", "--run-id", "A", "--run-id=B"], "A", id="first-wins"),
        # argparse (the pod's parser) refuses this: the next flag is never the value
        pytest.param(["run", "--run-id", "--factor", "f"], None, id="next-item-is-a-flag"),
        pytest.param([], None, id="no-arguments"),
    ],
)
def test_argument_value(arguments: list[str], expected: str | None) -> None:
    assert pods.argument_value(arguments, "--run-id") == expected


def test_argument_value_is_the_inverse_of_run_arguments() -> None:
    arguments = pods.run_arguments(run_id=RUN_ID, factor="l2_features", run_args={"as_of": AS_OF, "n_folds": 3})

    assert pods.argument_value(arguments, "--run-id") == RUN_ID
    assert pods.argument_value(arguments, "--factor") == "l2_features"
    assert pods.argument_value(arguments, "--n-folds") == "3"
    assert pods.argument_value(arguments, "--cryptos") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            {"requests": {"memory": "8Gi", "cpu": 2}, "limits": {"memory": "8Gi"}},
            k8s.V1ResourceRequirements(requests={"memory": "8Gi", "cpu": "2"}, limits={"memory": "8Gi"}),
            id="int-cpu-becomes-a-string",
        ),
        pytest.param(
            {"requests": {"cpu": 0.5, "memory": 1024}},
            k8s.V1ResourceRequirements(requests={"cpu": "0.5", "memory": "1024"}, limits=None),
            id="no-limits",
        ),
        pytest.param({}, k8s.V1ResourceRequirements(requests=None, limits=None), id="empty-dict"),
        pytest.param(None, None, id="none-passes-through"),
    ],
)
def test_as_resource_requirements(value: object, expected: k8s.V1ResourceRequirements | None) -> None:
    assert pods.as_resource_requirements(value) == expected


def test_as_resource_requirements_passes_a_model_through() -> None:
    model = k8s.V1ResourceRequirements(requests={"cpu": 2}, limits={"memory": "8Gi"})

    assert pods.as_resource_requirements(model) is model
