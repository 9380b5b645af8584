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

from finetune_sweep.pods import spec as pods
from finetune_sweep.operators.factor_pod import (
    LADDER_STATE_KEY,
    FactorPodOperator,
    PodDisrupted,
    PodFailed,
    PodOOMKilled,
    PodTermination,
    attempt_profile,
    disruption_reason,
    kubernetes_termination,
    round_start,
)
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import PROFILES, load_profiles

from fake_kube import FakeCoreV1Api, set_disrupted, set_running, set_terminated, set_waiting

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
    max_tries: int | None = None
    dag_id: str = "finetune_sweep"
    task_id: str = "run_factor"
    map_index: int = 0
    run_id: str = RUN_ID
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class TaskStateStore:
    """Airflow's task state store as the operator sees it (``get``/``set``), shared by the tries
    of one task instance, JSON values only (what the execution API stores)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.values[key] = json.dumps(value)


def _make_context(
    *, try_number: int = 1, store: TaskStateStore | None = None, max_tries: int | None = None
) -> dict[str, Any]:
    ti = _TaskInstance(try_number=try_number, max_tries=max_tries)
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": RUN_ID,
        "dag": SimpleNamespace(dag_id=ti.dag_id),
        "task_state_store": store if store is not None else TaskStateStore(),
    }


def _store_with_ooms(ooms: int, *, disruptions: int = 0) -> TaskStateStore:
    store = TaskStateStore()
    store.set(LADDER_STATE_KEY, {"round": 1, "ooms": ooms, "disruptions": disruptions})
    return store


def _make_operator(
    *, factor: str = "base_features", profile: str = "STANDARD", code: str | None = None, **overrides: Any
) -> FactorPodOperator:
    """A run_factor operator as the DAG builds it (common kwargs + one expand_kwargs entry)."""
    settings = Settings.from_env({})
    import os

    ladder = load_profiles(os.environ.get("FINETUNE_PROFILES"))
    entry = pods.factor_pod_kwargs(
        factor=factor,
        profile=ladder[profile],
        run_id=RUN_ID,
        run_args={"cryptos": ["BTC"], "cost_bps": [10], "n_folds": 1},
        profiles=ladder,
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
    ("max_tries", "expected"),
    [
        pytest.param(2, 1, id="first-round"),
        # Cleared after try 3 failed: Airflow sets max_tries = 3 + retries; try 4 starts a round.
        pytest.param(5, 4, id="cleared"),
        pytest.param(None, 1, id="unknown"),
    ],
)
def test_round_start(max_tries: int | None, expected: int) -> None:
    assert round_start(max_tries=max_tries, retries=2) == expected


def test_profile_follows_the_stored_oom_count_not_the_try_number() -> None:
    # try 3 after a zombie and one OOM: one step up, not two
    context = _make_context(try_number=3, store=_store_with_ooms(1), max_tries=2)

    assert _make_operator(retries=2)._apply_attempt_profile(context).name == "MEDIUM"
    # a retry that followed no OOM (heartbeat timeout, zombie) stays on the planned profile
    assert _make_operator(retries=2)._apply_attempt_profile(_make_context(try_number=2, max_tries=2)).name == "STANDARD"


def test_a_cleared_factor_is_not_moved_up() -> None:
    op = _make_operator(retries=2)
    # two OOMs in the first round; clearing after try 3 leaves max_tries = 5: a new round
    context = _make_context(try_number=4, store=_store_with_ooms(2), max_tries=5)

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
    context = _make_context(try_number=try_number, store=_store_with_ooms(try_number - 1))

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
    context = _make_context(try_number=2, store=_store_with_ooms(1))
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
    store = TaskStateStore()

    with pytest.raises(AirflowException) as raised:
        op.execute(_make_context(try_number=1, store=store))

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
    assert retry.execute(_make_context(try_number=2, store=store)) is None
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
        op.execute(_make_context(try_number=2, store=_store_with_ooms(1)))

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


def test_local_exit_2_line_is_the_recorded_exit_reason(local_backend: None, registered_db: str) -> None:
    line = "finetune: error: 24 folds of 8760 test bars need 210240 bars; the data has 43800"
    op = _make_operator(code=f"import sys; print({line!r}, file=sys.stderr); sys.exit(2)")

    with pytest.raises(PodFailed, match=r"Error: exit 2 \(finetune: error: 24 folds"):
        op.execute(_make_context())

    assert _manifest(registered_db) == ("failed", "STANDARD", f"Error: exit 2: {line}")


def test_local_killed_task_is_recorded_as_killed(local_backend: None, registered_db: str) -> None:
    import threading

    op = _make_operator(code="import time; time.sleep(60)")
    killer = threading.Timer(1.0, op.on_kill)
    killer.start()
    try:
        with pytest.raises(AirflowException, match="the task was killed") as raised:
            op.execute(_make_context())
    finally:
        killer.cancel()
        # Airflow runs on_kill in the task's own thread (a signal handler) before execute goes on;
        # here it ran on a timer thread: wait for its record
        killer.join()

    assert not isinstance(raised.value, AirflowFailException)
    assert _manifest(registered_db) == ("planned", "STANDARD", "Killed")


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
        # the peak is unknown unless the pod reported one: never replaced by the limit
        pytest.param({"reason": "OOMKilled", "exit_code": 137}, None, True, "OOMKilled", None, id="oomkilled"),
        pytest.param(
            {"reason": "OOMKilled", "exit_code": 137, "last_state": True}, None, True, "OOMKilled", None, id="last-state"
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


@pytest.mark.parametrize(
    ("condition_reason", "status_reason", "expected"),
    [
        pytest.param("EvictionByEvictionAPI", None, "EvictionByEvictionAPI", id="eviction-api-drain"),
        pytest.param("PreemptionByScheduler", None, "PreemptionByScheduler", id="preempted"),
        pytest.param("TerminationByKubelet", "Evicted", "TerminationByKubelet", id="kubelet-node-pressure"),
        pytest.param("TerminationByKubelet", "Terminated", "TerminationByKubelet", id="node-shutdown"),
        pytest.param("DeletionByTaintManager", None, "DeletionByTaintManager", id="noexecute-taint"),
        pytest.param(None, "Evicted", "Evicted", id="old-kubelet-evicted"),
    ],
)
def test_disrupted_pods_are_recognised(condition_reason: str | None, status_reason: str | None, expected: str) -> None:
    pod = _pod_with_status(reason="Error", exit_code=137)
    set_disrupted(pod, condition_reason=condition_reason, status_reason=status_reason)

    termination = kubernetes_termination(pod)

    assert disruption_reason(pod) == expected
    assert termination.disrupted and not termination.oom_killed
    assert termination.exit_reason == f"Disrupted: {expected}"


def test_an_oom_kill_is_never_a_disruption_and_a_plain_error_is_neither() -> None:
    oom = _pod_with_status(reason="OOMKilled", exit_code=137)
    oom.status.conditions = [k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="TerminationByKubelet")]
    failed = _pod_with_status(reason="Error", exit_code=1)
    # a condition that is not (or no longer) true does not count
    failed.status.conditions = [k8s.V1PodCondition(type="DisruptionTarget", status="False", reason="PreemptionByScheduler")]

    assert kubernetes_termination(oom).oom_killed and not kubernetes_termination(oom).disrupted
    assert disruption_reason(failed) is None and not kubernetes_termination(failed).disrupted


# --------------------------------------------------------------------------- the provider's real code, fake API


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeCoreV1Api:
    """A fake CoreV1Api where the provider gets its client (``KubernetesHook.core_v1_client``)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    fake = FakeCoreV1Api()
    monkeypatch.setattr(KubernetesHook, "core_v1_client", property(lambda self: fake))
    monkeypatch.setattr(KubernetesHook, "is_in_cluster", property(lambda self: False))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes"}))
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "kubernetes")
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    return fake


def _k8s_operator(**overrides: Any) -> FactorPodOperator:
    # short polls: the fake cluster answers at once
    return _make_operator(startup_check_interval_seconds=0, poll_interval=0, **overrides)


def _attempts(dsn: str) -> list[tuple[Any, ...]]:
    return _rows(
        dsn,
        "SELECT attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason FROM finetune_pod_attempts "
        "WHERE factor = 'base_features' ORDER BY attempt",
    )


def _manifest(dsn: str) -> tuple[Any, ...]:
    (row,) = _rows(dsn, "SELECT status, profile, exit_reason FROM finetune_run_factors WHERE factor = 'base_features'")
    return row


def _oom(pod: k8s.V1Pod) -> None:
    set_terminated(pod, reason="OOMKilled", exit_code=137)


def _succeed(pod: k8s.V1Pod) -> None:
    set_terminated(pod, reason="Completed", exit_code=0)


def test_oom_sync_is_retried_one_profile_up_by_the_stored_count(kube: FakeCoreV1Api, registered_db: str) -> None:
    kube.kubelet = _oom
    store = TaskStateStore()

    with pytest.raises(PodOOMKilled, match=r"OOMKilled on profile STANDARD \(limit 8.00Gi, peak -\); retrying on MEDIUM"):
        _k8s_operator().execute(_make_context(store=store))

    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 1, "disruptions": 0}
    # the peak stays unknown: the limit is not a measurement
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    assert _manifest(registered_db) == ("failed", "STANDARD", "OOMKilled")
    assert kube.pods == {}, "the failed pod is deleted once its status and logs were read"

    kube.kubelet = _succeed
    retry = _k8s_operator()
    assert retry.execute(_make_context(try_number=2, store=store)) is None
    (created,) = kube.calls.created[1:]
    assert retry.pod.metadata.name == created
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"
    assert retry.pod_request_obj.spec.containers[0].resources.limits == {"memory": "16Gi"}


def _defer_running_pod(kube: FakeCoreV1Api, store: TaskStateStore) -> Any:
    """Try 1 in deferrable mode: the pod runs, the task defers; returns the trigger."""
    from airflow.sdk.exceptions import TaskDeferred

    kube.kubelet = set_running
    with pytest.raises(TaskDeferred) as deferred:
        _k8s_operator(deferrable=True).execute(_make_context(store=store))
    return deferred.value.trigger


def test_a_deferred_pods_trigger_records_a_users_kill_of_this_attempt(kube: FakeCoreV1Api, registered_db: str) -> None:
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

    from finetune_sweep.operators.trigger import FactorPodTrigger

    trigger = _defer_running_pod(kube, TaskStateStore())

    assert isinstance(trigger, FactorPodTrigger) and isinstance(trigger, KubernetesPodTrigger)
    assert trigger.pod_name == kube.only_pod().metadata.name
    assert trigger.killed_attempt == {
        "run_id": RUN_ID, "factor": "base_features", "airflow_run_id": RUN_ID, "attempt": 1, "profile": "STANDARD",
        "memory_limit_bytes": 8 * 2**30, "peak_memory_bytes": None, "exit_reason": "Killed", "duration_seconds": None,
    }
    assert trigger.finetune_conn_id == "finetune_db" and trigger.config_error_grace_seconds == 30


def test_a_deferred_start_ended_by_a_missing_secret_fails_naming_it(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    message = 'secret "finetune-db" not found'
    kube.update(trigger.pod_name, lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message))

    # the event FactorPodTrigger yields once the config error has lasted the grace
    event = {"status": "error", "namespace": trigger.pod_namespace, "name": trigger.pod_name,
             "message": f"CreateContainerConfigError for 30 s: {message}"}
    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        _k8s_operator(deferrable=True).trigger_reentry(_make_context(store=store), event)

    assert _manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")
    assert kube.pods == {}


def test_oom_deferred_is_classified_in_a_fresh_instance(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    kube.update(trigger.pod_name, _oom)

    # Airflow resumes the task in a new operator instance: nothing of the first one survives
    resumed = _k8s_operator(deferrable=True)
    event = {"status": "failed", "namespace": trigger.pod_namespace, "name": trigger.pod_name, "message": "Container failed"}
    with pytest.raises(PodOOMKilled, match=r"OOMKilled on profile STANDARD \(limit 8.00Gi.*retrying on MEDIUM"):
        resumed.trigger_reentry(_make_context(store=store), event)

    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    assert kube.pods == {}


def test_terminal_before_deferral_is_classified_once(kube: FakeCoreV1Api, registered_db: str) -> None:
    kube.kubelet = _oom  # ends before the operator gets to defer
    store = TaskStateStore()

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        _k8s_operator(deferrable=True).execute(_make_context(store=store))

    # classified once: one OOM counted (twice would skip MEDIUM), one record, the OOM kept
    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


def _leftover(kube: FakeCoreV1Api, *, profile: str, store: TaskStateStore, status: Any) -> k8s.V1Pod:
    """A pod an earlier try of this task instance created (its identity in the store)."""
    earlier = _make_operator(profile=profile)
    context = _make_context(store=TaskStateStore())
    earlier._apply_attempt_profile(context)
    pod = earlier.build_pod_request_obj(context, dry_run=True)
    status(pod)
    kube.add_pod(pod)
    store.set("pod_identifier", {"name": pod.metadata.name, "namespace": pod.metadata.namespace})
    return pod


def test_worker_crash_mid_try_then_retry_reattaches_to_the_running_pod(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    running = _leftover(kube, profile="STANDARD", store=store, status=set_running)
    kube.on_log_read[running.metadata.name] = _succeed

    # try 2 after a zombie: no OOM was classified, so the same profile, and the same pod
    op = _k8s_operator()
    assert op.execute(_make_context(try_number=2, store=store)) is None

    assert kube.calls.created == []
    assert op.pod.metadata.name == running.metadata.name
    assert _attempts(registered_db) == []


def test_a_reattached_pod_is_recorded_under_the_attempt_that_created_it(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    running = _leftover(kube, profile="STANDARD", store=store, status=set_running)
    kube.on_log_read[running.metadata.name] = _oom

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        _k8s_operator().execute(_make_context(try_number=2, store=store))

    # the pod of try 1 ran (and would write its own rows as attempt 1): one attempt, not two
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


@pytest.mark.parametrize(
    ("status", "profile"),
    [
        pytest.param(_oom, "STANDARD", id="failed-pod-of-the-oom-try"),
        pytest.param(set_running, "STANDARD", id="running-pod-of-another-profile"),
        pytest.param(lambda pod: set_disrupted(pod, condition_reason="PreemptionByScheduler"), "MEDIUM", id="disrupted"),
    ],
)
def test_a_leftover_pod_is_deleted_unless_it_runs_on_this_profile(
    kube: FakeCoreV1Api, registered_db: str, status: Any, profile: str
) -> None:
    store = _store_with_ooms(1)
    old = _leftover(kube, profile=profile, store=store, status=status)
    kube.kubelet = _succeed

    op = _k8s_operator()
    assert op.execute(_make_context(try_number=2, store=store)) is None

    assert old.metadata.name in kube.calls.deleted
    assert len(kube.calls.created) == 1
    assert op.pod_request_obj.spec.containers[0].resources.limits == {"memory": "16Gi"}


def test_a_pod_template_widened_after_plan_is_refused_before_any_pod(
    kube: FakeCoreV1Api, registered_db: str, tmp_path: Any
) -> None:
    template = tmp_path / "pod.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: base}]\n")
    op = _k8s_operator(pod_template_file=str(template))
    # plan checked the file when the run started; then someone edits it
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  hostNetwork: true\n  containers: [{name: base}]\n")

    with pytest.raises(AirflowFailException, match=r"FINETUNE_POD_TEMPLATE_FILE=.*is refused.*spec\.hostNetwork"):
        op.execute(_make_context())

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
        task_id="migrate", ladder=False, startup_check_interval_seconds=0, poll_interval=0,
        **{**pods.common_pod_kwargs(image=settings.image, settings=settings), "arguments": ["migrate"]},
    )

    with pytest.raises(AirflowException):
        migrate.execute(_make_context())

    assert len(kube.calls.created) == 1
    assert (len(kube.pods) == 1) is keep


def test_refused_label_patch_does_not_make_the_retry_reuse_the_oomed_pod(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.client.exceptions import ApiException

    monkeypatch.setenv("FINETUNE_KEEP_FAILED_PODS", "true")  # the failed pod stays, unlabelled
    kube.patch_error = ApiException(status=403, reason="Forbidden: pods/patch")
    kube.kubelet = _oom
    store = TaskStateStore()
    with pytest.raises(PodOOMKilled):
        _k8s_operator().execute(_make_context(store=store))
    (kept,) = kube.pods.values()
    assert "already_checked" not in kept.metadata.labels

    kube.kubelet = _succeed
    retry = _k8s_operator()
    assert retry.execute(_make_context(try_number=2, store=store)) is None

    assert retry.pod.metadata.name != kept.metadata.name
    assert retry.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "medium"
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]


@pytest.mark.parametrize("failure", ["kubernetes-api", "database"])
def test_errors_while_classifying_do_not_change_the_outcome(
    kube: FakeCoreV1Api, registered_db: str, failure: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow.providers.cncf.kubernetes.utils.pod_manager import KubernetesApiException

    import tenacity
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager

    # the provider retries API errors with backoff (1 s, 2 s, ...): same tries, no waiting here
    monkeypatch.setattr(PodManager.read_pod.retry, "wait", tenacity.wait_none())
    kube.kubelet = _oom
    if failure == "kubernetes-api":
        kube.read_error_after_events = KubernetesApiException("There was an error reading the kubernetes API: reset")
    else:
        parts = urlsplit(registered_db)
        monkeypatch.setenv(
            "AIRFLOW_CONN_FINETUNE_DB",
            json.dumps({"conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": "postgres",
                        "schema": "no_such_database_here"}),
        )
    store = TaskStateStore()

    with pytest.raises(PodOOMKilled, match="retrying on MEDIUM"):
        _k8s_operator().execute(_make_context(store=store))

    assert store.get(LADDER_STATE_KEY)["ooms"] == 1
    if failure == "kubernetes-api":
        # the last status seen before the API failed still names the OOM
        assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]
    else:
        assert "could not record attempt 1 of factor base_features (OOMKilled)" in capsys.readouterr().out


def test_a_pod_the_api_server_refuses_fails_fast(kube: FakeCoreV1Api, registered_db: str) -> None:
    from kubernetes.client.exceptions import ApiException

    refused = ApiException(status=403, reason="Forbidden")
    refused.body = json.dumps({"kind": "Status", "message": 'pods "x" is forbidden: exceeded quota: finetune-memory'})
    kube.create_error = refused

    with pytest.raises(PodFailed, match=r"PodNotCreated \(HTTP 403 Forbidden: pods .* exceeded quota: finetune-memory\); not retried"):
        _k8s_operator().execute(_make_context())

    assert _attempts(registered_db)[0][4].startswith("PodNotCreated: ")


def test_a_pod_deleted_while_deferred_is_a_disruption(kube: FakeCoreV1Api, registered_db: str) -> None:
    store = TaskStateStore()
    trigger = _defer_running_pod(kube, store)
    kube.delete_namespaced_pod(trigger.pod_name, trigger.pod_namespace)  # e.g. a node drain, outside the task

    event = {"status": "error", "namespace": trigger.pod_namespace, "name": trigger.pod_name, "message": "gone"}
    with pytest.raises(PodDisrupted, match="PodDeleted"):
        _k8s_operator(deferrable=True).trigger_reentry(_make_context(store=store), event)

    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 0, "disruptions": 1}


def test_a_classifier_bug_still_fails_fast_and_is_recorded(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import finetune_sweep.operators.factor_pod as operator_module

    def broken(*args: Any, **kwargs: Any) -> PodTermination:
        raise AttributeError("'NoneType' object has no attribute 'containers'")

    monkeypatch.setattr(operator_module, "kubernetes_termination", broken)
    kube.kubelet = _oom

    with pytest.raises(PodFailed, match="Unclassified"):
        _k8s_operator().execute(_make_context())

    assert _attempts(registered_db)[0][4].startswith("Unclassified: Pod ")


def test_a_killed_task_is_recorded_as_killed(kube: FakeCoreV1Api, registered_db: str) -> None:
    import threading

    kube.kubelet = set_running
    op = _k8s_operator()
    context = _make_context()
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
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "Killed")]
    # the manifest is not marked failed by a kill
    assert _manifest(registered_db) == ("planned", "STANDARD", "Killed")


def test_a_disrupted_pod_is_retried_on_the_same_profile_a_bounded_number_of_times(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_DISRUPTION_RETRIES", "1")
    kube.kubelet = lambda pod: set_disrupted(pod, condition_reason="TerminationByKubelet", status_reason="Evicted")
    store = TaskStateStore()

    with pytest.raises(PodDisrupted, match=r"TerminationByKubelet.*retrying on the same profile \(disruption 1 of 1"):
        _k8s_operator().execute(_make_context(store=store))
    assert store.get(LADDER_STATE_KEY) == {"round": 1, "ooms": 0, "disruptions": 1}
    assert _manifest(registered_db)[0] == "planned"

    second = _k8s_operator()
    with pytest.raises(PodFailed, match="1 disruption retries used up"):
        second.execute(_make_context(try_number=2, store=store))

    assert second.pod_request_obj.metadata.labels[pods.LABEL_PROFILE] == "standard"
    attempts = _attempts(registered_db)
    assert [(a[0], a[1], a[4].split(" (")[0].split(":")[0:2]) for a in attempts] == [
        (1, "STANDARD", ["Disrupted", " TerminationByKubelet"]),
        (2, "STANDARD", ["Disrupted", " TerminationByKubelet"]),
    ]
    assert _manifest(registered_db)[0] == "failed"


def test_a_missing_secret_fails_fast_naming_it(kube: FakeCoreV1Api, registered_db: str) -> None:
    message = 'secret "finetune-db" not found'
    kube.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message)

    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        _k8s_operator(startup_timeout_seconds=1).execute(_make_context())

    assert kube.pods == {}, "a pod that can never start is not left pending"
    assert _manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")


def test_a_missing_secret_fails_after_the_grace_not_the_startup_timeout(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    message = "couldn't find key url in Secret default/finetune-db"
    kube.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message)
    monkeypatch.setenv("FINETUNE_CONFIG_ERROR_GRACE_SECONDS", "1")
    started = time.monotonic()

    with pytest.raises(PodFailed, match=rf"CreateContainerConfigError \({message}\); not retried"):
        _k8s_operator(startup_timeout_seconds=600).execute(_make_context())

    assert time.monotonic() - started < 60, "waited for the startup timeout, not the grace"
    assert kube.pods == {}
    assert _manifest(registered_db) == ("failed", "STANDARD", f"CreateContainerConfigError: {message}")


def test_a_secret_created_within_the_grace_lets_the_pod_start(
    kube: FakeCoreV1Api, registered_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError",
                                           message='secret "finetune-db" not found')
    reads = []
    read = kube.read_namespaced_pod

    def read_then_secret_appears(name: str, namespace: str, **kwargs: Any) -> Any:
        reads.append(name)
        if len(reads) == 3:  # the Secret is created: the kubelet's next retry starts the container
            kube.update(name, lambda pod: set_terminated(pod, reason="Completed", exit_code=0))
        return read(name, namespace, **kwargs)

    monkeypatch.setattr(kube, "read_namespaced_pod", read_then_secret_appears)
    monkeypatch.setenv("FINETUNE_CONFIG_ERROR_GRACE_SECONDS", "30")

    _k8s_operator(startup_timeout_seconds=600).execute(_make_context())

    assert len(reads) >= 3


def test_the_pods_exit_2_line_becomes_the_factors_exit_reason(kube: FakeCoreV1Api, registered_db: str) -> None:
    line = "finetune: error: fold 23 needs 8760 test bars but the data has 2000 bars"
    kube.kubelet = lambda pod: set_terminated(pod, reason="Error", exit_code=2)
    kube.default_log = ['{"event": "run_started"}', line]

    with pytest.raises(PodFailed, match=rf"Error: exit 2 \({line}\); not retried"):
        _k8s_operator().execute(_make_context())

    assert _manifest(registered_db) == ("failed", "STANDARD", f"Error: exit 2: {line}")


def test_the_reported_peak_feeds_the_oom_heuristic_and_is_recorded(kube: FakeCoreV1Api, registered_db: str) -> None:
    peak = int(0.97 * 8 * 2**30)
    kube.kubelet = lambda pod: set_terminated(pod, reason="Error", exit_code=137)
    kube.default_log = [json.dumps({"event": "pod_usage", "peak_memory_bytes": peak, "memory_limit_bytes": 8 * 2**30})]

    with pytest.raises(PodOOMKilled):
        _k8s_operator().execute(_make_context())

    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, peak, "OOMKilled")]


def test_profiles_travel_with_the_plan_entry_with_tolerations_and_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FINETUNE_PROFILES",
        json.dumps(
            {
                "HEAVY": {
                    "memory": "48Gi",
                    "tolerations": [{"key": "highmem", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["r6i.2xlarge"]}]}
                                ]
                            }
                        }
                    },
                }
            }
        ),
    )
    op = _make_operator()  # the plan resolves FINETUNE_PROFILES once
    monkeypatch.setenv("FINETUNE_PROFILES", json.dumps({"HEAVY": {"memory": "30Gi"}}))  # changed later: not re-read
    context = _make_context(try_number=3, store=_store_with_ooms(2))

    op._apply_attempt_profile(context)
    pod = op.build_pod_request_obj(context, dry_run=True)

    assert pod.spec.containers[0].resources.limits == {"memory": "48Gi"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("highmem", "Exists", "NoSchedule")]
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_expressions[0].values == ["r6i.2xlarge"]
    # the STANDARD try carries neither
    first = _make_operator()
    first_context = _make_context()
    first._apply_attempt_profile(first_context)
    first_pod = first.build_pod_request_obj(first_context, dry_run=True)
    assert not first_pod.spec.tolerations and not first_pod.spec.affinity


_NO_POD_PACKAGE = r"""
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "finetune" or name.startswith("finetune."):
            raise ImportError(f"{name} is not installed on this worker")
        return None

sys.meta_path.insert(0, Refuse())
from finetune_sweep.operators.factor_pod import FactorPodOperator, PodTermination
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

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "plugins")}
    done = subprocess.run(
        [sys.executable, "-c", _NO_POD_PACKAGE, RUN_ID], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED []" in done.stdout
    assert "could not record" not in done.stdout + done.stderr
    assert _attempts(registered_db) == [(1, "STANDARD", 8 * 2**30, None, "OOMKilled")]

# --------------------------------------------------------------------------- under Airflow itself

_PROBE_DAG = '''
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
        # what a setup prepended to this script adds (see _K8S_PROBE_SETUP)
        **globals().get("probe_extra", dict)(),
    }))
'''


def _run_probe(tmp_path: Any, *, dag_text: str, runner: str, env_extra: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run ``runner`` (a script around ``dag.test()``) on a DAG folder holding ``dag_text``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
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


_K8S_PROBE_DAG = '''
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
'''

# The provider's real code under Airflow's own task runner and task state store; only the
# Kubernetes API is the fake. base_features: disrupted once on STANDARD, then OOMKilled on STANDARD,
# then fine on MEDIUM; l2_features: fine at once.
_K8S_PROBE_SETUP = '''
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
'''


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
    recorded = (
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline (activeDeadlineSeconds 1)"
    )
    assert _rows(
        registered_db, "SELECT status, exit_reason FROM finetune_run_factors WHERE factor = 'base_features'"
    ) == [("failed", recorded)]
    assert _rows(registered_db, "SELECT exit_reason FROM finetune_pod_attempts WHERE factor = 'base_features'") == [
        (recorded,)
    ]


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
