"""Tests of finetune_sweep.pods.render through ``python -m finetune_sweep render`` (DESIGN 4.5), and its older spelling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.dag_processing.dagbag import DagBag

from finetune_sweep import cli
from finetune_sweep.settings import get_settings

K8S_VERSION = kubernetes_validate.latest_version()
RUN_ID = "manual__2026-06-07T00:00:00+00:00"
DAGS = Path(__file__).resolve().parents[3] / "dags"
# A registry with a port and a tag other than the package default: both must reach the pod.
PINNED_IMAGE = "registry.local:5000/team/finetune:2.3.4"


@pytest.fixture
def pinned_image(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """FINETUNE_IMAGE set to :data:`PINNED_IMAGE`, the settings re-read (and again afterwards)."""
    monkeypatch.setenv("FINETUNE_IMAGE", PINNED_IMAGE)
    get_settings.cache_clear()
    yield PINNED_IMAGE
    get_settings.cache_clear()


def _rendered_image(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert cli.main(["render", "--factor", "base_features", "--output", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["spec"]["containers"][0]["image"]


def test_render_cli_prints_the_camelcase_manifest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_PROFILES", '{"HEAVY": {"memory": "30Gi"}}')

    assert cli.main(["render", "--factor", "n_features", "--run-id", RUN_ID, "--output", "json"]) == 0

    manifest = json.loads(capsys.readouterr().out)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = manifest["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "30Gi"
    assert "securityContext" in container and "readOnlyRootFilesystem" in container["securityContext"]
    assert container["image"].endswith(":0.1.0")
    # the sweep's bound on the pod: 600 s startup + 3 cryptos x 4 folds x 3 costs x 1 slippage x 60 s
    assert manifest["spec"]["activeDeadlineSeconds"] == 600 + 36 * 60


def test_render_cli_refuses_an_unknown_factor(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--factor", "eth_features"]) == 2
    assert "eth_features" in capsys.readouterr().err


def test_python_m_pods_render_still_works_and_pods_does_not_import_planning() -> None:
    # DESIGN 4.5's command, as a user types it (a fresh interpreter: no test's imports help)
    done = subprocess.run(
        [sys.executable, "-m", "finetune_sweep.pods", "render", "--factor", "base_features", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "Pod"

    # the import graph is one-way: planning -> pods, never back
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, finetune_sweep.pods.spec; print('finetune_sweep.sweep.plan' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.stdout.strip() == "False", probe.stderr


@pytest.mark.parametrize(
    ("spec_yaml", "named"),
    [
        pytest.param("hostNetwork: true\n  containers: [{name: base}]", "spec.hostNetwork", id="hostNetwork"),
        pytest.param(
            "shareProcessNamespace: true\n  containers: [{name: base}, {name: sidecar, image: busybox}]",
            "spec.shareProcessNamespace; spec.containers[1] (sidecar)",
            id="sidecar",
        ),
        pytest.param(
            "containers: [{name: base, lifecycle: {postStart: {exec: {command: [env]}}}}]",
            "spec.containers[0] (base).lifecycle",
            id="lifecycle",
        ),
    ],
)
def test_render_refuses_a_widening_pod_template(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, spec_yaml: str, named: str
) -> None:
    from finetune_sweep.settings import get_settings

    template = tmp_path / "pod.yaml"
    template.write_text(f"apiVersion: v1\nkind: Pod\nspec:\n  {spec_yaml}\n")
    monkeypatch.setenv("FINETUNE_POD_TEMPLATE_FILE", str(template))
    get_settings.cache_clear()
    try:
        assert cli.main(["render", "--factor", "base_features"]) == 2
    finally:
        get_settings.cache_clear()

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"error: FINETUNE_POD_TEMPLATE_FILE={template} is refused, it sets fields a template may not: {named} "
        "(a template may set only metadata.annotations, metadata.labels, spec.tolerations, spec.affinity, "
        "spec.nodeSelector, spec.imagePullSecrets, spec.priorityClassName, and spec.containers with the base "
        "container alone (name, env, envFrom; no FINETUNE_* or PG* names))"
    )


def test_render_prints_the_image_the_dag_runs(pinned_image: str, capsys: pytest.CaptureFixture[str]) -> None:
    rendered = _rendered_image(capsys)  # first: the DagBag below logs to stdout
    # The DAG's own operator, parsed under the same FINETUNE_IMAGE, its templates rendered with
    # the DAG's default params (what a trigger without conf runs), builds the pod's image.
    dag = DagBag(dag_folder=str(DAGS)).dags["finetune_sweep"]
    migrate = dag.get_task("migrate")
    migrate.render_template_fields({"params": dag.params.dump()})
    built = migrate.build_pod_request_obj(None, dry_run=True).spec.containers[0].image

    assert built == pinned_image
    assert rendered == built


def test_render_image_tag_overrides_the_pinned_tag(pinned_image: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _rendered_image(capsys, "--image-tag", "2.4.0") == "registry.local:5000/team/finetune:2.4.0"


def test_render_of_a_template_without_containers_is_one_line_without_a_traceback(tmp_path) -> None:
    template = tmp_path / "pod.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  tolerations: []\n")

    done = subprocess.run(
        [sys.executable, "-m", "finetune_sweep", "render", "--factor", "base_features"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FINETUNE_POD_TEMPLATE_FILE": str(template)},
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: FINETUNE_POD_TEMPLATE_FILE={template} has no spec.containers; "
        "a template needs spec.containers: [{name: base}]\n"
    )


def test_render_merges_a_benign_template(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_sweep.settings import get_settings

    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {annotations: {team: quant}}\nspec:\n"
        "  tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]\n"
        "  imagePullSecrets: [{name: registry-creds}]\n  nodeSelector: {pool: batch}\n"
        "  containers: [{name: base}]\n"
    )
    monkeypatch.setenv("FINETUNE_POD_TEMPLATE_FILE", str(template))
    get_settings.cache_clear()
    try:
        assert cli.main(["render", "--factor", "base_features", "--output", "json"]) == 0
    finally:
        get_settings.cache_clear()

    manifest = json.loads(capsys.readouterr().out)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert manifest["metadata"]["annotations"]["team"] == "quant"
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in manifest["spec"]["tolerations"]
    assert manifest["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    # the profile's node selector is the operator's own field: it wins over the template's
    assert manifest["spec"]["nodeSelector"] == {"finetune/pool": "standard"}
