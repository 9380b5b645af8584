"""FactorPodOperator under Airflow itself: ``dag.test()`` of a mapped ``run_factor`` in a fresh
Airflow home, on the local backend and on the kubernetes backend with a fake API (``fake_kube``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from factor_pods import SMALL_PROFILES

_PROBE_DAG = """
import json
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from finetune_sweep.pods import spec as pods
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import load_profiles

settings = Settings.from_env({})
common = pods.common_pod_kwargs(image=settings.image, settings=settings)
# base_features needs 100Mi: OOM on STANDARD (64Mi), fits on MEDIUM (160Mi); l2_features needs 8Mi
common["cmds"] = ["python", "-c", "import sys; x = b'x' * ((100 if 'base_features' in sys.argv else 8) * 2**20)"]
entries = [
    json.loads(json.dumps(pods.factor_pod_kwargs(
        factor=factor, profile=load_profiles(None)["STANDARD"], run_id="r1", run_args={"cryptos": ["BTC"]}
    )))
    for factor in ("base_features", "l2_features")
]
with DAG("ft_operator_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    FactorPodOperator.partial(
        task_id="run_factor", retries=2, retry_delay=timedelta(0), map_index_template="{{ task.factor }}", **common
    ).expand_kwargs(entries)
"""

_PROBE_RUNNER = """
import json, sys
from airflow.utils import db
from airflow.dag_processing.dagbag import DagBag
from airflow.models import TaskInstance
from airflow.utils.session import create_session

db.initdb()
dag = DagBag(sys.argv[1]).get_dag("ft_operator_probe")
run = dag.test()
with create_session() as session:
    tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
    print("RESULT " + json.dumps({
        "state": str(run.state),
        "tis": sorted([ti.map_index, ti.rendered_map_index, str(ti.state), ti.try_number] for ti in tis),
        # what a setup prepended to this script adds (see _K8S_PROBE_SETUP)
        **globals().get("probe_extra", dict)(),
    }))
"""


def _run_probe(tmp_path: Any, *, dag_text: str, runner: str, env_extra: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run ``runner`` (a script around ``dag.test()``) on a DAG folder holding ``dag_text``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe_dag.py").write_text(dag_text)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "PYTHONPATH": os.pathsep.join(str(repo / p) for p in ("plugins", "images/finetune", "tests/plugins")),
        # recording the OOM fails fast against this host and is logged; the ladder does not wait on it
        "AIRFLOW_CONN_FINETUNE_DB": json.dumps({"conn_type": "postgres", "host": "unused.invalid", "schema": "x"}),
        **env_extra,
    }
    done = subprocess.run(
        [sys.executable, "-c", runner, str(dags)], env=env, capture_output=True, text=True, timeout=300
    )
    result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert result_lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(result_lines[-1].removeprefix("RESULT ")), done.stdout


@pytest.mark.e2e
def test_mapped_factors_climb_the_ladder_under_airflow(tmp_path: Any) -> None:
    """``dag.test()`` of a mapped FactorPodOperator on the local backend: the OOM retry runs one
    profile up, and each mapped instance is named by its factor (``{{ task.factor }}``)."""
    result, stdout = _run_probe(
        tmp_path,
        dag_text=_PROBE_DAG,
        runner=_PROBE_RUNNER,
        env_extra={"FINETUNE_POD_BACKEND": "local", "FINETUNE_PROFILES": SMALL_PROFILES},
    )

    assert result["tis"] == [[0, "base_features", "success", 2], [1, "l2_features", "success", 1]]
    assert result["state"] == "success"
    assert "factor base_features OOMKilled on profile STANDARD (limit 64.00Mi, peak " in stdout
    assert "retrying on MEDIUM (160.00Mi)" in stdout


_K8S_PROBE_DAG = """
import json
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from finetune_sweep.pods import spec as pods
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import load_profiles

settings = Settings.from_env({})
common = pods.common_pod_kwargs(image=settings.image, settings=settings)
ladder = load_profiles(None)
entries = [
    json.loads(json.dumps(pods.factor_pod_kwargs(
        factor=factor, profile=ladder["STANDARD"], run_id="r1", run_args={"cryptos": ["BTC"]}, profiles=ladder
    )))
    for factor in ("base_features", "l2_features")
]
with DAG("ft_operator_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    FactorPodOperator.partial(
        task_id="run_factor", retries=4, retry_delay=timedelta(0), map_index_template="{{ task.factor }}",
        startup_check_interval_seconds=0, **common
    ).expand_kwargs(entries)
"""

# The provider's real code under Airflow's own task runner and task state store; only the
# Kubernetes API is the fake. base_features: disrupted once on STANDARD, then OOMKilled on STANDARD,
# then fine on MEDIUM; l2_features: fine at once.
_K8S_PROBE_SETUP = """
import json, sys
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from fake_kube import FakeCoreV1Api, set_disrupted, set_terminated

outcomes = {"base_features": ["disrupted", "oom"]}
profiles_seen = []

def kubelet(pod):
    labels = pod.metadata.labels
    profiles_seen.append([labels["finetune/factor"], labels["finetune/profile"], labels["try_number"]])
    pending = outcomes.get(labels["finetune/factor"]) or []
    outcome = pending.pop(0) if pending else "ok"
    if outcome == "disrupted":
        set_disrupted(pod, condition_reason="PreemptionByScheduler")
    elif outcome == "oom":
        set_terminated(pod, reason="OOMKilled", exit_code=137)
    else:
        set_terminated(pod, reason="Completed", exit_code=0)

fake = FakeCoreV1Api(kubelet=kubelet)
KubernetesHook.core_v1_client = property(lambda self: fake)
KubernetesHook.is_in_cluster = property(lambda self: False)

def probe_extra():
    return {"profiles": sorted(profiles_seen), "left": sorted(name for _, name in fake.pods)}
"""


@pytest.mark.e2e
def test_kubernetes_ladder_under_airflow_with_a_fake_api(tmp_path: Any) -> None:
    """``dag.test()`` on the kubernetes backend: Airflow's task runner, retries and task state
    store with the provider's real execute; a disruption keeps the profile, an OOM moves it up."""
    result, stdout = _run_probe(
        tmp_path,
        dag_text=_K8S_PROBE_DAG,
        runner=_K8S_PROBE_SETUP + _PROBE_RUNNER,
        env_extra={
            "FINETUNE_POD_BACKEND": "kubernetes",
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps({"conn_type": "kubernetes"}),
        },
    )

    assert result["state"] == "success", stdout[-3000:]
    assert result["tis"] == [[0, "base_features", "success", 3], [1, "l2_features", "success", 1]]
    assert result["profiles"] == [
        ["base_features", "medium", "3"],
        ["base_features", "standard", "1"],
        ["base_features", "standard", "2"],
        ["l2_features", "standard", "1"],
    ]
    assert result["left"] == [], "failed pods are cleaned up, succeeded ones deleted"
    assert "PreemptionByScheduler; retrying on the same profile" in stdout
    assert "OOMKilled on profile STANDARD (limit 8.00Gi, peak -); retrying on MEDIUM" in stdout
