"""FactorPodOperator: dict resources, the OOM ladder, failure classification and recording.

Pods run for real on the local backend (real processes in real memory cgroups, or the watchdog)
against a real migrated PostgreSQL database; the Kubernetes side is exercised through the pod
status objects the API server returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jinja2
import psycopg
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from finetune_sweep import pods
from finetune_sweep.operator import (
    ladder_steps,
    FactorPodOperator,
    PodTermination,
    attempt_profile,
    kubernetes_termination,
)
from finetune_sweep.settings import Settings
from finetune_sweep.sizing import PROFILES, load_profiles

RUN_ID = "manual__2026-06-07T00:00:00+00:00"
MI = 2**20
# Small profiles so that a real process can outgrow them in a test.
SMALL_PROFILES = json.dumps(
    {"STANDARD": {"memory": "64Mi"}, "MEDIUM": {"memory": "160Mi"}, "HEAVY": {"memory": "192Mi"}}
)
ALLOCATE_100MI = "import time; x = b'x' * (100 * 2**20); time.sleep(0.2)"
ALLOCATE_256MI = "import time; x = b'x' * (256 * 2**20); time.sleep(2)"


@dataclass
class _TaskInstance:
    """What the KubernetesPodOperator reads from ``context["ti"]`` (labels, XCom)."""

    try_number: int = 1
    dag_id: str = "finetune_sweep"
    task_id: str = "run_factor"
    map_index: int = 0
    run_id: str = RUN_ID
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _make_context(*, try_number: int = 1) -> dict[str, Any]:
    ti = _TaskInstance(try_number=try_number)
    return {"ti": ti, "task_instance": ti, "run_id": RUN_ID, "dag": SimpleNamespace(dag_id=ti.dag_id)}


def _make_operator(
    *, factor: str = "base_features", profile: str = "STANDARD", code: str | None = None, **overrides: Any
) -> FactorPodOperator:
    """A run_factor operator as the DAG builds it (common kwargs + one expand_kwargs entry)."""
    settings = Settings.from_env({})
    entry = pods.factor_pod_kwargs(
        factor=factor,
        profile=load_profiles(None)[profile],
        run_id=RUN_ID,
        run_args={"cryptos": ["BTC"], "cost_bps": [10], "n_folds": 1},
    )
    # through XCom the entry is JSON: container_resources arrives as a plain dict
    entry = json.loads(json.dumps(entry))
    kwargs = {**pods.common_pod_kwargs(image=settings.image, settings=settings), **entry}
    if code is not None:
        # `python -c CODE run --run-id R ...`: the pod's arguments land in sys.argv, unused
        kwargs["cmds"] = ["python", "-c", code]
    kwargs.update(overrides)
    return FactorPodOperator(task_id="run_factor", **kwargs)


def _env(pod: k8s.V1Pod) -> dict[str, Any]:
    return {var.name: var.value for var in pod.spec.containers[0].env}


@pytest.fixture
def local_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "local")
    monkeypatch.setenv("FINETUNE_PROFILES", SMALL_PROFILES)
    # the pod asks for the database Secret; tests that write use `registered_db` instead
    monkeypatch.setenv(
        "AIRFLOW_CONN_FINETUNE_DB", json.dumps({"conn_type": "postgres", "host": "unused.invalid", "schema": "x"})
    )


@pytest.fixture
def registered_db(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database holding the run and its planned factors, as ``register`` leaves it,
    reachable as the Airflow connection ``finetune_db``."""
    parts = urlsplit(migrated_db)
    connection = {
        "conn_type": "postgres",
        "host": parts.hostname,
        "port": parts.port,
        "login": parts.username,
        "password": parts.password,
        "schema": parts.path.lstrip("/"),
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", json.dumps(connection))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) VALUES (%s, %s, %s, %s, %s)",
            (RUN_ID, "finetune_sweep", "ridge_long_flat", "2026-06-07T00:00:00Z", "{}"),
        )
        for factor, profile in (("base_features", "STANDARD"), ("btc_features", "HEAVY")):
            conn.execute(
                "INSERT INTO finetune_run_factors (run_id, factor, profile) VALUES (%s, %s, %s)",
                (RUN_ID, factor, profile),
            )
    return migrated_db


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


# --------------------------------------------------------------------------- building the pod


def test_dict_container_resources_become_resource_requirements() -> None:
    op = _make_operator()

    assert isinstance(op.container_resources, k8s.V1ResourceRequirements)
    pod = op.build_pod_request_obj(_make_context(), dry_run=True)
    resources = pod.spec.containers[0].resources
    assert resources.limits == {"memory": "8Gi"}
    assert resources.requests == {"memory": "8Gi", "cpu": "2"}


def test_native_rendered_cpu_becomes_a_quantity_string() -> None:
    op = _make_operator(container_resources={"requests": {"memory": "1Gi", "cpu": 1}, "limits": {"memory": "1Gi"}})

    assert op.container_resources.requests == {"memory": "1Gi", "cpu": "1"}


@pytest.mark.parametrize(
    ("planned", "try_number", "expected"),
    [
        pytest.param("STANDARD", 1, "STANDARD", id="standard-try1"),
        pytest.param("STANDARD", 2, "MEDIUM", id="standard-try2"),
        pytest.param("STANDARD", 3, "HEAVY", id="standard-try3"),
        pytest.param("STANDARD", 4, "HEAVY", id="capped-at-top"),
        pytest.param("MEDIUM", 2, "HEAVY", id="medium-try2"),
        pytest.param("HEAVY", 1, "HEAVY", id="heavy-try1"),
    ],
)
def test_attempt_profile(planned: str, try_number: int, expected: str) -> None:
    assert attempt_profile(planned, try_number=try_number, profiles=PROFILES).name == expected


@pytest.mark.parametrize(
    ("try_number", "max_tries", "expected"),
    [
        pytest.param(1, 2, 0, id="first-try"),
        pytest.param(2, 2, 1, id="after-one-oom"),
        pytest.param(3, 2, 2, id="after-two-ooms"),
        # Cleared after try 3 failed: Airflow sets max_tries = 3 + retries; try 4 starts a round.
        pytest.param(4, 5, 0, id="cleared-starts-on-the-planned-profile"),
        pytest.param(5, 5, 1, id="cleared-then-one-oom"),
        pytest.param(3, None, 2, id="no-round-information"),
    ],
)
def test_ladder_steps_count_the_ooms_of_the_current_round(try_number: int, max_tries: int | None, expected: int) -> None:
    assert ladder_steps(try_number=try_number, max_tries=max_tries, retries=2) == expected


def test_a_cleared_factor_is_not_moved_up() -> None:
    op = _make_operator(retries=2)
    context = _make_context(try_number=4)
    context["ti"].max_tries = 5  # what clearing after try 3 leaves

    assert op._apply_attempt_profile(context).name == "STANDARD"


def test_attempt_profile_unknown_profile_fails() -> None:
    with pytest.raises(AirflowFailException, match="unknown profile 'HUGE'; known profiles: STANDARD"):
        attempt_profile("HUGE", try_number=1, profiles=PROFILES)


@pytest.mark.parametrize(
    ("try_number", "profiles_json", "name", "memory", "pool"),
    [
        pytest.param(1, None, "STANDARD", "8Gi", "standard", id="try1"),
        pytest.param(2, None, "MEDIUM", "16Gi", "medium", id="try2"),
        pytest.param(3, None, "HEAVY", "24Gi", "heavy", id="try3"),
        pytest.param(1, '{"STANDARD": {"memory": "256Mi"}}', "STANDARD", "256Mi", "standard", id="override-try1"),
        pytest.param(
            2,
            '{"STANDARD": {"memory": "256Mi"}, "MEDIUM": {"memory": "512Mi"}}',
            "MEDIUM",
            "512Mi",
            "medium",
            id="override-try2",
        ),
    ],
)
def test_pod_is_sized_for_the_attempt(
    try_number: int,
    profiles_json: str | None,
    name: str,
    memory: str,
    pool: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if profiles_json is None:
        monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_PROFILES", profiles_json)
    op = _make_operator()
    context = _make_context(try_number=try_number)

    profile = op._apply_attempt_profile(context)
    pod = op.build_pod_request_obj(context, dry_run=True)

    assert profile.name == name
    container = pod.spec.containers[0]
    assert container.resources.limits == {"memory": memory}
    assert container.resources.requests["memory"] == memory
    assert pod.metadata.labels[pods.LABEL_PROFILE] == name.lower()
    assert pod.metadata.labels[pods.LABEL_FACTOR] == "base_features"
    assert pod.spec.node_selector == {"finetune/pool": pool}
    env = _env(pod)
    assert env["FINETUNE_PROFILE"] == name
    assert env["FINETUNE_ATTEMPT"] == str(try_number)
    # the pod's own view of its limit still comes from the downward API
    assert "FINETUNE_MEMORY_LIMIT_BYTES" in env


def test_resized_pod_is_a_valid_kubernetes_pod() -> None:
    import kubernetes_validate
    from kubernetes.client import ApiClient

    op = _make_operator()
    context = _make_context(try_number=2)
    op._apply_attempt_profile(context)
    manifest = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))

    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == {"memory": "16Gi"}


def test_profile_env_is_replaced_not_duplicated() -> None:
    op = _make_operator()
    op._apply_attempt_profile(_make_context(try_number=1))
    op._apply_attempt_profile(_make_context(try_number=2))

    names = [var.name for var in op.env_vars]
    assert names.count("FINETUNE_PROFILE") == 1
    assert names.count("FINETUNE_ATTEMPT") == 1


def test_map_index_template_names_the_factor() -> None:
    op = _make_operator(factor="btc_features", profile="HEAVY")
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string("{{ task.factor }}")

    assert template.render(task=op) == "btc_features"


# --------------------------------------------------------------------------- local backend


def test_local_success_returns_and_sets_factor_in_context(local_backend: None) -> None:
    op = _make_operator(code="print('fine')")
    context = _make_context()

    assert op.execute(context) is None
    assert context["factor"] == "base_features"
    assert op.pod_request_obj is not None
    assert op.pod_request_obj.spec.containers[0].resources.limits == {"memory": "64Mi"}


def test_local_oom_below_top_is_retryable_and_recorded(local_backend: None, registered_db: str) -> None:
    op = _make_operator(code=ALLOCATE_100MI)

    with pytest.raises(AirflowException) as raised:
        op.execute(_make_context(try_number=1))

    assert not isinstance(raised.value, AirflowFailException), "an OOM below the top must be retried"
    message = str(raised.value)
    assert message.startswith("factor base_features OOMKilled on profile STANDARD (limit 64.00Mi, peak ")
    assert "retrying on MEDIUM (160.00Mi)" in message
    (manifest,) = _rows(
        registered_db,
        "SELECT profile, status, exit_reason, attempt, memory_limit_bytes, peak_memory_bytes "
        "FROM finetune_run_factors WHERE factor = 'base_features'",
    )
    assert manifest[:5] == ("STANDARD", "failed", "OOMKilled", 1, 64 * MI)
    assert manifest[5] >= 0.95 * 64 * MI
    (attempt,) = _rows(
        registered_db,
        "SELECT attempt, profile, memory_limit_bytes, exit_reason, duration_seconds "
        "FROM finetune_pod_attempts WHERE factor = 'base_features'",
    )
    assert attempt[:4] == (1, "STANDARD", 64 * MI, "OOMKilled")
    assert attempt[4] > 0

    # the retry runs one profile up, where the same allocation fits
    retry = _make_operator(code=ALLOCATE_100MI)
    assert retry.execute(_make_context(try_number=2)) is None
    assert retry.pod_request_obj.spec.containers[0].resources.limits == {"memory": "160Mi"}
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"


def test_local_oom_at_the_top_fails_without_retry(local_backend: None, registered_db: str) -> None:
    op = _make_operator(factor="btc_features", profile="HEAVY", code=ALLOCATE_256MI)

    with pytest.raises(AirflowFailException, match="already at the largest profile HEAVY") as raised:
        op.execute(_make_context(try_number=1))

    assert str(raised.value).startswith("factor btc_features OOMKilled on profile HEAVY (limit 192.00Mi, peak ")
    assert _rows(registered_db, "SELECT status, exit_reason FROM finetune_run_factors WHERE factor = 'btc_features'") == [
        ("failed", "OOMKilled")
    ]


def test_local_other_failure_fails_fast_and_is_recorded(local_backend: None, registered_db: str) -> None:
    op = _make_operator(code="import sys; sys.exit(3)")

    with pytest.raises(AirflowFailException, match=r"factor base_features failed on profile MEDIUM \(attempt 2\): Error: exit 3; not retried"):
        op.execute(_make_context(try_number=2))

    assert _rows(
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
    op = _make_operator(code=f"import sys; print({event!r}); sys.exit(1)")

    with pytest.raises(AirflowFailException, match=rf"Error: exit 1 \({reason}\); not retried"):
        op.execute(_make_context())

    (manifest,) = _rows(
        registered_db, "SELECT status, exit_reason, peak_memory_bytes FROM finetune_run_factors WHERE factor = 'base_features'"
    )
    assert manifest[:2] == ("failed", reason)
    assert manifest[2] >= 5 * MI
    assert _rows(
        registered_db, "SELECT exit_reason, duration_seconds FROM finetune_pod_attempts WHERE factor = 'base_features'"
    ) == [(reason, 0.5)]


def test_local_backend_error_fails_fast(local_backend: None, registered_db: str) -> None:
    from airflow.providers.cncf.kubernetes.secret import Secret

    op = _make_operator(code="print('never runs')")
    op.secrets.append(Secret("env", "API_TOKEN", "exchange", "token"))

    with pytest.raises(AirflowFailException, match=r"attempt 1\): secretKeyRef exchange/token: .*not retried"):
        op.execute(_make_context())


def test_bad_backend_setting_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "docker")

    with pytest.raises(AirflowFailException, match="FINETUNE_POD_BACKEND='docker'"):
        _make_operator().execute(_make_context())


def test_migrate_without_ladder_just_propagates(local_backend: None) -> None:
    settings = Settings.from_env({})
    op = FactorPodOperator(
        task_id="migrate",
        ladder=False,
        **{**pods.common_pod_kwargs(image=settings.image, settings=settings), "cmds": ["python", "-c", "raise SystemExit(4)"]},
    )

    with pytest.raises(AirflowException, match="Error: exit 4") as raised:
        op.execute(_make_context())

    assert not isinstance(raised.value, AirflowFailException)


# --------------------------------------------------------------------------- kubernetes backend


def _pod_with_status(
    *, reason: str | None, exit_code: int | None, memory: str = "8Gi", last_state: bool = False
) -> k8s.V1Pod:
    terminated = (
        None if exit_code is None else k8s.V1ContainerStateTerminated(reason=reason, exit_code=exit_code)
    )
    state = k8s.V1ContainerState(terminated=terminated)
    status = k8s.V1ContainerStatus(
        name="base",
        image="img",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState() if last_state else state,
        last_state=state if last_state else None,
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="finetune-base-features-x", namespace="finetune"),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base", resources=k8s.V1ResourceRequirements(limits={"memory": memory})
                )
            ]
        ),
        status=k8s.V1PodStatus(
            phase="Failed" if exit_code else "Pending",
            reason=None if exit_code is not None else "Unschedulable",
            container_statuses=[status] if exit_code is not None else None,
        ),
    )


@pytest.mark.parametrize(
    ("pod_kwargs", "peak", "oom", "exit_reason", "expected_peak"),
    [
        pytest.param({"reason": "OOMKilled", "exit_code": 137}, None, True, "OOMKilled", 8 * 2**30, id="oomkilled"),
        pytest.param(
            {"reason": "OOMKilled", "exit_code": 137, "last_state": True}, None, True, "OOMKilled", 8 * 2**30, id="last-state"
        ),
        pytest.param({"reason": "Error", "exit_code": 137}, 8 * 2**30 - MI, True, "OOMKilled", 8 * 2**30 - MI, id="137-near-limit"),
        pytest.param({"reason": "Error", "exit_code": 137}, None, False, "Error: exit 137", None, id="137-peak-unknown"),
        pytest.param({"reason": "Error", "exit_code": 137}, 2**30, False, "Error: exit 137", 2**30, id="137-far-below"),
        pytest.param({"reason": "Error", "exit_code": 1}, None, False, "Error: exit 1", None, id="error"),
        pytest.param({"reason": None, "exit_code": None}, None, False, "Unschedulable", None, id="never-ran"),
    ],
)
def test_kubernetes_termination(
    pod_kwargs: dict[str, Any], peak: int | None, oom: bool, exit_reason: str, expected_peak: int | None
) -> None:
    termination = kubernetes_termination(_pod_with_status(**pod_kwargs), peak_memory_bytes=peak)

    assert termination.oom_killed is oom
    assert termination.exit_reason == exit_reason
    assert termination.peak_memory_bytes == expected_peak
    assert termination.memory_limit_bytes == 8 * 2**30


def test_kubernetes_termination_of_a_pod_never_created() -> None:
    assert kubernetes_termination(None) == PodTermination("PodNotCreated", None, False, None, None)


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> list[k8s.V1Pod]:
    """Stands in for the cluster: KubernetesPodOperator.execute ends with the given pod's status,
    raising as the operator does for a failed pod (``cleanup``)."""
    outcomes: list[k8s.V1Pod] = []

    def execute(self: KubernetesPodOperator, context: Any) -> None:
        self.pod_request_obj = self.build_pod_request_obj(context, dry_run=True)
        remote = outcomes.pop(0)
        remote.spec = self.pod_request_obj.spec
        self.pod = self.remote_pod = remote
        if remote.status.phase != "Succeeded":
            raise AirflowException(f"Pod {remote.metadata.name} returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "kubernetes")
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    return outcomes


def test_kubernetes_oom_is_retryable_and_recorded(fake_cluster: list[k8s.V1Pod], registered_db: str) -> None:
    fake_cluster.append(_pod_with_status(reason="OOMKilled", exit_code=137))
    op = _make_operator()

    with pytest.raises(AirflowException, match=r"OOMKilled on profile STANDARD \(limit 8.00Gi, peak 8.00Gi\); retrying on MEDIUM") as raised:
        op.execute(_make_context())

    assert not isinstance(raised.value, AirflowFailException)
    assert _rows(registered_db, "SELECT status, exit_reason, memory_limit_bytes FROM finetune_run_factors WHERE factor = 'base_features'") == [
        ("failed", "OOMKilled", 8 * 2**30)
    ]


def test_kubernetes_oom_at_the_top_fails(fake_cluster: list[k8s.V1Pod], registered_db: str) -> None:
    fake_cluster.append(_pod_with_status(reason="OOMKilled", exit_code=137, memory="24Gi"))
    op = _make_operator(factor="btc_features", profile="HEAVY")

    with pytest.raises(AirflowFailException, match="already at the largest profile HEAVY"):
        op.execute(_make_context())


def test_kubernetes_other_failure_fails_fast(fake_cluster: list[k8s.V1Pod], registered_db: str) -> None:
    fake_cluster.append(_pod_with_status(reason="Error", exit_code=2))
    op = _make_operator()

    with pytest.raises(AirflowFailException, match=r"failed on profile STANDARD \(attempt 1\): Error: exit 2"):
        op.execute(_make_context())


# --------------------------------------------------------------------------- under Airflow itself

_PROBE_DAG = '''
import json
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from finetune_sweep import pods
from finetune_sweep.operator import FactorPodOperator
from finetune_sweep.settings import Settings
from finetune_sweep.sizing import load_profiles

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
'''

_PROBE_RUNNER = '''
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
    }))
'''


@pytest.mark.e2e
def test_mapped_factors_climb_the_ladder_under_airflow(tmp_path: Any) -> None:
    """``dag.test()`` of a mapped FactorPodOperator on the local backend: the OOM retry runs one
    profile up, and each mapped instance is named by its factor (``{{ task.factor }}``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe_dag.py").write_text(_PROBE_DAG)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "PYTHONPATH": os.pathsep.join(str(repo / p) for p in ("plugins", "images/finetune")),
        "FINETUNE_POD_BACKEND": "local",
        "FINETUNE_PROFILES": SMALL_PROFILES,
        # recording the OOM fails fast against this host and is logged; the ladder does not wait on it
        "AIRFLOW_CONN_FINETUNE_DB": json.dumps({"conn_type": "postgres", "host": "unused.invalid", "schema": "x"}),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE_RUNNER, str(dags)], env=env, capture_output=True, text=True, timeout=300
    )

    result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert result_lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(result_lines[-1].removeprefix("RESULT "))
    assert result["tis"] == [[0, "base_features", "success", 2], [1, "l2_features", "success", 1]]
    assert result["state"] == "success"
    assert "factor base_features OOMKilled on profile STANDARD (limit 64.00Mi, peak " in done.stdout
    assert "retrying on MEDIUM (160.00Mi)" in done.stdout


# --------------------------------------------------------------------------- the pod's deadline


def test_local_hung_pod_is_stopped_by_its_deadline_in_one_line(local_backend: None, registered_db: str) -> None:
    # a pod that hangs (a lock never released looks the same from outside): activeDeadlineSeconds
    # ends it, SIGTERM first, SIGKILL after the grace period
    op = _make_operator(
        code="import time; print('waiting on the database', flush=True); time.sleep(600)",
        active_deadline_seconds=1,
        termination_grace_period=1,
    )

    with pytest.raises(AirflowFailException) as raised:
        op.execute(_make_context(try_number=1))

    assert str(raised.value) == (
        "factor base_features failed on profile STANDARD (attempt 1): DeadlineExceeded (Pod was active on the node "
        "longer than the specified deadline (activeDeadlineSeconds 1)); not retried (only an OOM moves a factor up)"
    )
    assert _rows(
        registered_db, "SELECT status, exit_reason FROM finetune_run_factors WHERE factor = 'base_features'"
    ) == [("failed", "DeadlineExceeded")]
    assert _rows(
        registered_db, "SELECT exit_reason FROM finetune_pod_attempts WHERE factor = 'base_features'"
    ) == [("DeadlineExceeded",)]


def test_kubernetes_deadline_exceeded_is_the_pods_reason_not_an_oom() -> None:
    # what the kubelet writes: phase Failed, reason DeadlineExceeded; the container shows the kill
    pod = _pod_with_status(reason="Error", exit_code=137)
    pod.status.reason = "DeadlineExceeded"
    pod.status.message = "Pod was active on the node longer than the specified deadline"

    termination = kubernetes_termination(pod, peak_memory_bytes=8 * 2**30 - MI)

    assert (termination.reason, termination.exit_reason, termination.oom_killed) == (
        "DeadlineExceeded", "DeadlineExceeded", False
    )
    assert termination.detail == "Pod was active on the node longer than the specified deadline"
