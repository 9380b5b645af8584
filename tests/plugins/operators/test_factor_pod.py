"""FactorPodOperator: dict resources, failure classification and recording, on either backend.

Pods run for real on the local backend (real processes in real memory cgroups, or the watchdog)
against a real migrated PostgreSQL database; the Kubernetes side runs the provider's real code
against a fake CoreV1Api (``fake_kube``). The ladder as the operator applies it is tested in
``test_ladder.py``, reattachment in ``test_reattach.py``, ``dag.test()`` runs in
``test_factor_pod_under_airflow.py``; reading a pod's end from its status in
``tests/plugins/pods/test_termination.py``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import jinja2
import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from factor_pods import (
    MI,
    RUN_ID,
    TaskStateStore,
    db_rows,
    make_context,
    make_k8s_operator,
    make_operator,
    oom_kill,
    recorded_attempts,
    recorded_manifest,
    store_with_ooms,
)
from fake_kube import FakeCoreV1Api, set_running, set_terminated, set_waiting
from finetune_sweep.operators.factor_pod import FactorPodOperator, PodDisrupted, PodFailed, PodOOMKilled
from finetune_sweep.operators.ladder import LADDER_STATE_KEY
from finetune_sweep.pods import spec as pods
from finetune_sweep.pods.termination import PodTermination
from finetune_sweep.settings import Settings

ALLOCATE_100MI = "import time; x = b'x' * (100 * 2**20); time.sleep(0.2)"
ALLOCATE_256MI = "import time; x = b'x' * (256 * 2**20); time.sleep(2)"


# --------------------------------------------------------------------------- building the pod


def test_dict_container_resources_become_resource_requirements() -> None:
    op = make_operator()

    assert isinstance(op.container_resources, k8s.V1ResourceRequirements)
    pod = op.build_pod_request_obj(make_context(), dry_run=True)
    resources = pod.spec.containers[0].resources
    assert resources.limits == {"memory": "8Gi"}
    assert resources.requests == {"memory": "8Gi", "cpu": "2"}


def test_native_rendered_cpu_becomes_a_quantity_string() -> None:
    op = make_operator(container_resources={"requests": {"memory": "1Gi", "cpu": 1}, "limits": {"memory": "1Gi"}})

    assert op.container_resources.requests == {"memory": "1Gi", "cpu": "1"}


def test_map_index_template_names_the_factor() -> None:
    op = make_operator(factor="btc_features", profile="HEAVY")
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string("{{ task.factor }}")

    assert template.render(task=op) == "btc_features"


# --------------------------------------------------------------------------- local backend


def test_local_success_returns_and_sets_factor_in_context(local_backend: None) -> None:
    op = make_operator(code="print('fine')")
    context = make_context()

    assert op.execute(context) is None
    assert context["factor"] == "base_features"
    assert op.pod_request_obj is not None
    assert op.pod_request_obj.spec.containers[0].resources.limits == {"memory": "64Mi"}


def test_local_oom_below_top_is_retryable_and_recorded(local_backend: None, registered_db: str) -> None:
    op = make_operator(code=ALLOCATE_100MI)
    store = TaskStateStore()

    with pytest.raises(AirflowException) as raised:
        op.execute(make_context(try_number=1, store=store))

    assert not isinstance(raised.value, AirflowFailException), "an OOM below the top must be retried"
    message = str(raised.value)
    assert message.startswith("factor base_features OOMKilled on profile STANDARD (limit 64.00Mi, peak ")
    assert "retrying on MEDIUM (160.00Mi)" in message
    (manifest,) = db_rows(
        registered_db,
        "SELECT profile, status, exit_reason, attempt, memory_limit_bytes, peak_memory_bytes "
        "FROM finetune_run_factors WHERE factor = 'base_features'",
    )
    assert manifest[:5] == ("STANDARD", "failed", "OOMKilled", 1, 64 * MI)
    assert manifest[5] >= 0.95 * 64 * MI
    (attempt,) = db_rows(
        registered_db,
        "SELECT attempt, profile, memory_limit_bytes, exit_reason, duration_seconds "
        "FROM finetune_pod_attempts WHERE factor = 'base_features'",
    )
    assert attempt[:4] == (1, "STANDARD", 64 * MI, "OOMKilled")
    assert attempt[4] > 0

    # the retry runs one profile up, where the same allocation fits
    retry = make_operator(code=ALLOCATE_100MI)
    assert retry.execute(make_context(try_number=2, store=store)) is None
    assert retry.pod_request_obj.spec.containers[0].resources.limits == {"memory": "160Mi"}
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"


def test_local_oom_at_the_top_fails_without_retry(local_backend: None, registered_db: str) -> None:
    op = make_operator(factor="btc_features", profile="HEAVY", code=ALLOCATE_256MI)

    with pytest.raises(AirflowFailException, match="already at the largest profile HEAVY") as raised:
        op.execute(make_context(try_number=1))

    assert str(raised.value).startswith("factor btc_features OOMKilled on profile HEAVY (limit 192.00Mi, peak ")
    assert db_rows(
        registered_db, "SELECT status, exit_reason FROM finetune_run_factors WHERE factor = 'btc_features'"
    ) == [("failed", "OOMKilled")]


def test_local_other_failure_fails_fast_and_is_recorded(local_backend: None, registered_db: str) -> None:
    op = make_operator(code="import sys; sys.exit(3)")

    with pytest.raises(
        AirflowFailException,
        match=r"factor base_features failed on profile MEDIUM \(attempt 2\): Error: exit 3; not retried",
    ):
        op.execute(make_context(try_number=2, store=store_with_ooms(1)))

    assert db_rows(
        registered_db, "SELECT attempt, profile, exit_reason FROM finetune_pod_attempts WHERE factor = 'base_features'"
    ) == [(2, "MEDIUM", "Error: exit 3")]


def test_the_pods_own_failure_record_is_kept(local_backend: None, registered_db: str) -> None:
    reason = "baselines_incomplete: 1 of 2 keys missing"
    with psycopg.connect(registered_db, autocommit=True) as conn:
        # what the runner records before it exits 1
        conn.execute(
            "UPDATE finetune_run_factors SET status = 'failed', attempt = 1, exit_reason = %s, "
            "peak_memory_bytes = %s WHERE factor = 'base_features'",
            (reason, 5 * MI),
        )
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, "
            "peak_memory_bytes, exit_reason, duration_seconds) "
            "VALUES (%s, 'base_features', %s, 1, 'STANDARD', %s, %s, %s, 0.5)",
            (RUN_ID, RUN_ID, 64 * MI, 5 * MI, reason),
        )
    event = json.dumps({"event": "run_finished", "status": "failed", "exit_code": 1, "exit_reason": reason})
    op = make_operator(code=f"import sys; print({event!r}); sys.exit(1)")

    with pytest.raises(AirflowFailException, match=rf"Error: exit 1 \({reason}\); not retried"):
        op.execute(make_context())

    (manifest,) = db_rows(
        registered_db,
        "SELECT status, exit_reason, peak_memory_bytes FROM finetune_run_factors WHERE factor = 'base_features'",
    )
    assert manifest[:2] == ("failed", reason)
    assert manifest[2] >= 5 * MI
    assert db_rows(
        registered_db, "SELECT exit_reason, duration_seconds FROM finetune_pod_attempts WHERE factor = 'base_features'"
    ) == [(reason, 0.5)]


def test_local_exit_2_line_is_the_recorded_exit_reason(local_backend: None, registered_db: str) -> None:
    line = "finetune: error: 24 folds of 8760 test bars need 210240 bars; the data has 43800"
    op = make_operator(code=f"import sys; print({line!r}, file=sys.stderr); sys.exit(2)")

    with pytest.raises(PodFailed, match=r"Error: exit 2 \(finetune: error: 24 folds"):
        op.execute(make_context())

    assert recorded_manifest(registered_db) == ("failed", "STANDARD", f"Error: exit 2: {line}")


def test_local_killed_task_is_recorded_as_killed(local_backend: None, registered_db: str) -> None:
    import threading

    op = make_operator(code="import time; time.sleep(60)")
    killer = threading.Timer(1.0, op.on_kill)
    killer.start()
    try:
        with pytest.raises(AirflowException, match="the task was killed") as raised:
            op.execute(make_context())
    finally:
        killer.cancel()
        # Airflow runs on_kill in the task's own thread (a signal handler) before execute goes on;
        # here it ran on a timer thread: wait for its record
        killer.join()

    assert not isinstance(raised.value, AirflowFailException)
    assert recorded_manifest(registered_db) == ("planned", "STANDARD", "Killed")


def test_local_backend_error_fails_fast(local_backend: None, registered_db: str) -> None:
    from airflow.providers.cncf.kubernetes.secret import Secret

    op = make_operator(code="print('never runs')")
    op.secrets.append(Secret("env", "API_TOKEN", "exchange", "token"))

    with pytest.raises(AirflowFailException, match=r"attempt 1\): secretKeyRef exchange/token: .*not retried"):
        op.execute(make_context())


def test_bad_backend_setting_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "docker")

    with pytest.raises(AirflowFailException, match="FINETUNE_POD_BACKEND='docker'"):
        make_operator().execute(make_context())


def test_migrate_without_ladder_just_propagates(local_backend: None) -> None:
    settings = Settings.from_env({})
    op = FactorPodOperator(
        task_id="migrate",
        ladder=False,
        **{
            **pods.common_pod_kwargs(image=settings.image, settings=settings),
            "cmds": ["python", "-c", "raise SystemExit(4)"],
        },
    )

    with pytest.raises(AirflowException, match="Error: exit 4") as raised:
        op.execute(make_context())

    assert not isinstance(raised.value, AirflowFailException)


# --------------------------------------------------------------------------- kubernetes backend: the provider's real code, fake API


def _defer_running_pod(kube: FakeCoreV1Api, store: TaskStateStore) -> Any:
    """Try 1 in deferrable mode: the pod runs, the task defers; returns the trigger."""
    from airflow.sdk.exceptions import TaskDeferred

    kube.kubelet = set_running
    with pytest.raises(TaskDeferred) as deferred:
        make_k8s_operator(deferrable=True).execute(make_context(store=store))
    return deferred.value.trigger


def test_a_deferred_pods_trigger_records_a_users_kill_of_this_attempt(kube: FakeCoreV1Api, registered_db: str) -> None:
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

    from finetune_sweep.operators.trigger import FactorPodTrigger

    trigger = _defer_running_pod(kube, TaskStateStore())

    assert isinstance(trigger, FactorPodTrigger) and isinstance(trigger, KubernetesPodTrigger)
    assert trigger.pod_name == kube.only_pod().metadata.name
    assert trigger.killed_attempt == {
        "run_id": RUN_ID,
        "factor": "base_features",
        "airflow_run_id": RUN_ID,
        "attempt": 1,
        "profile": "STANDARD",
        "memory_limit_bytes": 8 * 2**30,
        "peak_memory_bytes": None,
        "exit_reason": "Killed",
        "duration_seconds": None,
        "workers": 1,  # one crypto: one worker
    }
    assert trigger.finetune_conn_id == "finetune_db" and trigger.config_error_grace_seconds == 30


def test_a_deferred_start_ended_by_a_missing_secret_fails_naming_it(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    message = 'secret "finetune-db" not found'
    kube.update(trigger.pod_name, lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message))

    # the event FactorPodTrigger yields once the config error has lasted the grace
    event = {
        "status": "error",
        "namespace": trigger.pod_namespace,
        "name": trigger.pod_name,
        "message": f"CreateContainerConfigError for 30 s: {message}",
    }
    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        make_k8s_operator(deferrable=True).trigger_reentry(make_context(store=store), event)

    assert recorded_manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")
    assert kube.pods == {}


def test_oom_deferred_is_classified_in_a_fresh_instance(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    kube.update(trigger.pod_name, oom_kill)

    # Airflow resumes the task in a new operator instance: nothing of the first one survives
    resumed = make_k8s_operator(deferrable=True)
    event = {
        "status": "failed",
        "namespace": trigger.pod_namespace,
        "name": trigger.pod_name,
        "message": "Container failed",
    }
    with pytest.raises(PodOOMKilled, match=r"OOMKilled on profile STANDARD \(limit 8.00Gi.*retrying on MEDIUM"):
        resumed.trigger_reentry(make_context(store=store), event)

    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    assert kube.pods == {}


def test_terminal_before_deferral_is_classified_once(kube: FakeCoreV1Api, registered_db: str) -> None:
    kube.kubelet = oom_kill  # ends before the operator gets to defer
    store = TaskStateStore()

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        make_k8s_operator(deferrable=True).execute(make_context(store=store))

    # classified once: one OOM counted (twice would skip MEDIUM), one record, the OOM kept
    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


def test_a_pod_template_widened_after_plan_is_refused_before_any_pod(
    kube: FakeCoreV1Api, registered_db: str, tmp_path: Any
) -> None:
    template = tmp_path / "pod.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: base}]\n")
    op = make_k8s_operator(pod_template_file=str(template))
    # plan checked the file when the run started; then someone edits it
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  hostNetwork: true\n  containers: [{name: base}]\n")

    with pytest.raises(AirflowFailException, match=r"FINETUNE_POD_TEMPLATE_FILE=.*is refused.*spec\.hostNetwork"):
        op.execute(make_context())

    assert kube.calls.created == []


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept-for-debugging"])
def test_a_failed_migrate_pod_is_deleted_unless_kept(
    kube: FakeCoreV1Api, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    if keep:
        monkeypatch.setenv("FINETUNE_KEEP_FAILED_PODS", "true")
    kube.kubelet = lambda pod: set_terminated(pod, reason="Error", exit_code=1)
    settings = Settings.from_env({})
    migrate = FactorPodOperator(
        task_id="migrate",
        ladder=False,
        startup_check_interval_seconds=0,
        poll_interval=0,
        **{**pods.common_pod_kwargs(image=settings.image, settings=settings), "arguments": ["migrate"]},
    )

    with pytest.raises(AirflowException):
        migrate.execute(make_context())

    assert len(kube.calls.created) == 1
    assert (len(kube.pods) == 1) is keep


@pytest.mark.parametrize("failure", ["kubernetes-api", "database"])
def test_errors_while_classifying_do_not_change_the_outcome(
    kube: FakeCoreV1Api,
    registered_db: str,
    failure: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tenacity
    from airflow.providers.cncf.kubernetes.utils.pod_manager import KubernetesApiException, PodManager

    # the provider retries API errors with backoff (1 s, 2 s, ...): same tries, no waiting here
    monkeypatch.setattr(PodManager.read_pod.retry, "wait", tenacity.wait_none())
    kube.kubelet = oom_kill
    if failure == "kubernetes-api":
        kube.read_error_after_events = KubernetesApiException("There was an error reading the kubernetes API: reset")
    else:
        parts = urlsplit(registered_db)
        monkeypatch.setenv(
            "AIRFLOW_CONN_FINETUNE_DB",
            json.dumps(
                {
                    "conn_type": "postgres",
                    "host": parts.hostname,
                    "port": parts.port,
                    "login": "postgres",
                    "schema": "no_such_database_here",
                }
            ),
        )
    store = TaskStateStore()

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        make_k8s_operator().execute(make_context(store=store))

    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    if failure == "kubernetes-api":
        # the last status seen before the API failed still names the OOM
        assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    else:
        assert "could not record attempt 1 of factor base_features (OOMKilled)" in capsys.readouterr().out


def test_a_pod_the_api_server_refuses_fails_fast(kube: FakeCoreV1Api, registered_db: str) -> None:
    from kubernetes.client.exceptions import ApiException

    refused = ApiException(status=403, reason="Forbidden")
    refused.body = json.dumps({"kind": "Status", "message": 'pods "x" is forbidden: exceeded quota: finetune-memory'})
    kube.create_error = refused

    with pytest.raises(
        PodFailed, match=r"PodNotCreated \(HTTP 403 Forbidden: pods .* exceeded quota: finetune-memory\); not retried"
    ):
        make_k8s_operator().execute(make_context())

    assert recorded_attempts(registered_db)[0][4].startswith("PodNotCreated: ")


def test_a_pod_deleted_while_deferred_is_a_disruption(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    kube.delete_namespaced_pod(trigger.pod_name, trigger.pod_namespace)  # e.g. a node drain, outside the task

    event = {"status": "error", "namespace": trigger.pod_namespace, "name": trigger.pod_name, "message": "gone"}
    with pytest.raises(PodDisrupted, match="PodDeleted"):
        make_k8s_operator(deferrable=True).trigger_reentry(make_context(store=store), event)

    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 0, "disruptions": 1}


def test_a_classifier_bug_still_fails_fast_and_is_recorded(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import finetune_sweep.operators.factor_pod as operator_module

    def broken(*args: Any, **kwargs: Any) -> PodTermination:
        raise AttributeError("'NoneType' object has no attribute 'containers'")

    monkeypatch.setattr(operator_module, "kubernetes_termination", broken)
    kube.kubelet = oom_kill

    with pytest.raises(PodFailed, match="Unclassified"):
        make_k8s_operator().execute(make_context())

    assert recorded_attempts(registered_db)[0][4].startswith("Unclassified: Pod ")


def test_a_killed_task_is_recorded_as_killed(kube: FakeCoreV1Api, registered_db: str) -> None:
    import threading

    kube.kubelet = set_running
    op = make_k8s_operator()
    context = make_context()
    killer = threading.Timer(1.0, op.on_kill)  # a worker shutdown / "mark success" while it runs
    killer.start()
    try:
        with pytest.raises(Exception) as raised:
            op.execute(context)
    finally:
        killer.cancel()
        # Airflow runs on_kill in the task's own thread (a signal handler) before execute goes on;
        # here it ran on a timer thread: wait for its record
        killer.join()

    assert not isinstance(raised.value, PodFailed)
    assert kube.pods == {}
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "Killed")]
    # the manifest is not marked failed by a kill
    assert recorded_manifest(registered_db) == ("planned", "STANDARD", "Killed")


def test_a_missing_secret_fails_fast_naming_it(kube: FakeCoreV1Api, registered_db: str) -> None:
    message = 'secret "finetune-db" not found'
    kube.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message)

    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        make_k8s_operator(startup_timeout_seconds=1).execute(make_context())

    assert kube.pods == {}, "a pod that can never start is not left pending"
    assert recorded_manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")


def test_a_missing_secret_fails_after_the_grace_not_the_startup_timeout(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    message = "couldn't find key url in Secret default/finetune-db"
    kube.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message)
    monkeypatch.setenv("FINETUNE_CONFIG_ERROR_GRACE_SECONDS", "1")
    started = time.monotonic()

    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        make_k8s_operator(startup_timeout_seconds=600).execute(make_context())

    assert time.monotonic() - started < 60, "waited for the startup timeout, not the grace"
    assert kube.pods == {}
    assert recorded_manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")


def test_a_secret_created_within_the_grace_lets_the_pod_start(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube.kubelet = lambda pod: set_waiting(
        pod, reason="CreateContainerConfigError", message='secret "finetune-db" not found'
    )
    reads = []
    read = kube.read_namespaced_pod

    def read_then_secret_appears(name: str, namespace: str, **kwargs: Any) -> Any:
        reads.append(name)
        if len(reads) == 3:  # the Secret is created: the kubelet's next retry starts the container
            kube.update(name, lambda pod: set_terminated(pod, reason="Completed", exit_code=0))
        return read(name, namespace, **kwargs)

    monkeypatch.setattr(kube, "read_namespaced_pod", read_then_secret_appears)
    monkeypatch.setenv("FINETUNE_CONFIG_ERROR_GRACE_SECONDS", "30")

    make_k8s_operator(startup_timeout_seconds=600).execute(make_context())

    assert len(reads) >= 3


def test_the_pods_exit_2_line_becomes_the_factors_exit_reason(kube: FakeCoreV1Api, registered_db: str) -> None:
    line = "finetune: error: fold 23 needs 8760 test bars but the data has 2000 bars"
    kube.kubelet = lambda pod: set_terminated(pod, reason="Error", exit_code=2)
    kube.default_log = ['{"event": "run_started"}', line]

    with pytest.raises(PodFailed, match=rf"Error: exit 2 \({line}\); not retried"):
        make_k8s_operator().execute(make_context())

    assert recorded_manifest(registered_db) == ("failed", "STANDARD", f"Error: exit 2: {line}")


def test_the_reported_peak_feeds_the_oom_heuristic_and_is_recorded(kube: FakeCoreV1Api, registered_db: str) -> None:
    peak = int(0.97 * 8 * 2**30)
    kube.kubelet = lambda pod: set_terminated(pod, reason="Error", exit_code=137)
    kube.default_log = [json.dumps({"event": "pod_usage", "peak_memory_bytes": peak, "memory_limit_bytes": 8 * 2**30})]

    with pytest.raises(PodOOMKilled):
        make_k8s_operator().execute(make_context())

    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, peak, "OOMKilled")]


_NO_POD_PACKAGE = r"""
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "finetune" or name.startswith("finetune."):
            raise ImportError(f"{name} is not installed on this worker")
        return None

sys.meta_path.insert(0, Refuse())
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.pods.termination import PodTermination
from finetune_sweep.sizing.profiles import PROFILES

op = FactorPodOperator(task_id="run_factor", factor="base_features", profile="STANDARD", image="x",
                       arguments=["run", "--run-id", sys.argv[1]])
op._settings = None
ti = type("TI", (), {"try_number": 1})()
op._record({"run_id": sys.argv[1], "ti": ti}, PodTermination("OOMKilled", 137, True, 8 * 2**30, None),
           attempt=1, profile=PROFILES["STANDARD"], limit=8 * 2**30, factor_failed=True)
print("LOADED " + json.dumps(sorted(m for m in sys.modules if m == "finetune" or m.startswith("finetune."))))
"""


def test_the_airflow_side_records_without_the_pod_package(registered_db: str, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo / "plugins")}
    done = subprocess.run(
        [sys.executable, "-c", _NO_POD_PACKAGE, RUN_ID], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED []" in done.stdout
    assert "could not record" not in done.stdout + done.stderr
    assert recorded_attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


# --------------------------------------------------------------------------- the pod's deadline


def test_local_hung_pod_is_stopped_by_its_deadline_in_one_line(local_backend: None, registered_db: str) -> None:
    # a pod that hangs (a lock never released looks the same from outside): activeDeadlineSeconds
    # ends it, SIGTERM first, SIGKILL after the grace period
    op = make_operator(
        code="import time; print('waiting on the database', flush=True); time.sleep(600)",
        active_deadline_seconds=1,
        termination_grace_period=1,
    )

    with pytest.raises(AirflowFailException) as raised:
        op.execute(make_context(try_number=1))

    assert str(raised.value) == (
        "factor base_features failed on profile STANDARD (attempt 1): DeadlineExceeded (Pod was active on the node "
        "longer than the specified deadline (activeDeadlineSeconds 1)); not retried (only an OOM moves a factor up)"
    )
    recorded = (
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline (activeDeadlineSeconds 1)"
    )
    assert db_rows(
        registered_db, "SELECT status, exit_reason FROM finetune_run_factors WHERE factor = 'base_features'"
    ) == [("failed", recorded)]
    assert db_rows(registered_db, "SELECT exit_reason FROM finetune_pod_attempts WHERE factor = 'base_features'") == [
        (recorded,)
    ]
