"""The ``run_factor`` operator as the DAG builds it, the context Airflow gives its tries, and reads
of what its attempts recorded: shared by the tests of ``finetune_sweep.operators``.

The fixtures that put a backend, a database or a fake cluster in place are in
``tests/plugins/operators/conftest.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psycopg
from kubernetes.client import models as k8s

from fake_kube import set_terminated
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.operators.ladder import LADDER_STATE_KEY
from finetune_sweep.pods import spec as pods
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import load_profiles

RUN_ID = "manual__2026-06-07T00:00:00+00:00"
MI = 2**20
# Small profiles so that a real process can outgrow them in a test.
SMALL_PROFILES = json.dumps(
    {"STANDARD": {"memory": "64Mi"}, "MEDIUM": {"memory": "160Mi"}, "HEAVY": {"memory": "192Mi"}}
)


@dataclass
class TaskInstance:
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


def make_context(
    *, try_number: int = 1, store: TaskStateStore | None = None, max_tries: int | None = None
) -> dict[str, Any]:
    ti = TaskInstance(try_number=try_number, max_tries=max_tries)
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": RUN_ID,
        "dag": SimpleNamespace(dag_id=ti.dag_id),
        "task_state_store": store if store is not None else TaskStateStore(),
    }


def store_with_ooms(ooms: int, *, disruptions: int = 0) -> TaskStateStore:
    store = TaskStateStore()
    store.set(LADDER_STATE_KEY, {"round": 1, "ooms": ooms, "disruptions": disruptions})
    return store


def make_operator(
    *, factor: str = "base_features", profile: str = "STANDARD", code: str | None = None, **overrides: Any
) -> FactorPodOperator:
    """A run_factor operator as the DAG builds it (common kwargs + one expand_kwargs entry)."""
    settings = Settings.from_env({})
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


def make_k8s_operator(**overrides: Any) -> FactorPodOperator:
    """:func:`make_operator` for the fake cluster of the ``kube`` fixture."""
    # short polls: the fake cluster answers at once
    return make_operator(startup_check_interval_seconds=0, poll_interval=0, **overrides)


def container_env(pod: k8s.V1Pod) -> dict[str, Any]:
    return {var.name: var.value for var in pod.spec.containers[0].env}


def oom_kill(pod: k8s.V1Pod) -> None:
    """A kubelet: the base container is OOM-killed."""
    set_terminated(pod, reason="OOMKilled", exit_code=137)


def complete(pod: k8s.V1Pod) -> None:
    """A kubelet: the base container completes."""
    set_terminated(pod, reason="Completed", exit_code=0)


def db_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def recorded_attempts(dsn: str) -> list[tuple[Any, ...]]:
    """``base_features``'s recorded attempts: (attempt, profile, limit, peak, exit_reason)."""
    return db_rows(
        dsn,
        "SELECT attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason FROM finetune_pod_attempts "
        "WHERE factor = 'base_features' ORDER BY attempt",
    )


def recorded_manifest(dsn: str) -> tuple[Any, ...]:
    """``base_features``'s manifest row: (status, profile, exit_reason)."""
    (row,) = db_rows(
        dsn, "SELECT status, profile, exit_reason FROM finetune_run_factors WHERE factor = 'base_features'"
    )
    return row
