"""Tests of finetune_sweep.operators.trigger: the deferred pod's trigger survives the triggerer's
serialize/import round trip, and a user's kill deletes the pod and records the attempt ``Killed``
on real PostgreSQL (the operator's deferral is tested in test_factor_pod.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from typing import Any

import psycopg
import pytest
from kubernetes.client import models as k8s

from fake_kube import set_running, set_waiting
from finetune_rows import RUN_ID, seed_complete_run
from finetune_sweep.db.dsn import connection_json_from_dsn
from finetune_sweep.operators.trigger import FactorPodTrigger

KILLED = {
    "run_id": RUN_ID,
    "factor": "l2_features",
    "airflow_run_id": "manual__x",
    "attempt": 2,
    "profile": "MEDIUM",
    "memory_limit_bytes": 16 * 2**30,
    "peak_memory_bytes": None,
    "exit_reason": "Killed",
    "duration_seconds": None,
}


class _Hook:
    """The async Kubernetes hook, as far as the trigger uses it: the pod (as its kubelet reports
    it), its events, and delete_pod, remembered."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []
        self.kubelet: Any = set_running
        self.reads = 0

    async def get_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        self.reads += 1
        pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))
        self.kubelet(pod)
        return pod

    async def get_pod_events(self, name: str, namespace: str, resource_version: Any = None) -> Any:
        return k8s.CoreV1EventList(items=[], metadata=k8s.V1ListMeta())

    async def delete_pod(self, *, name: str, namespace: str, grace_period_seconds: Any = None) -> None:
        self.deleted.append((namespace, name))


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> _Hook:
    fake = _Hook()
    monkeypatch.setattr(FactorPodTrigger, "hook", property(lambda self: fake))
    return fake


def _trigger(**overrides: Any) -> FactorPodTrigger:
    return FactorPodTrigger(
        **{
            "pod_name": "finetune-l2-features-abc",
            "pod_namespace": "finetune",
            "base_container_name": "base",
            "trigger_start_time": dt.datetime(2026, 6, 7, tzinfo=dt.UTC),
            "killed_attempt": dict(KILLED),
            "finetune_conn_id": "finetune_db",
            "config_error_grace_seconds": 30,
            "startup_check_interval": 0,
            **overrides,
        }
    )


def test_it_survives_the_triggerers_round_trip() -> None:
    trigger = _trigger()

    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)

    assert classpath == "finetune_sweep.operators.trigger.FactorPodTrigger"
    assert again.serialize() == (classpath, kwargs)
    assert (again.killed_attempt, again.finetune_conn_id, again.pod_name) == (
        KILLED,
        "finetune_db",
        "finetune-l2-features-abc",
    )
    assert again.config_error_grace_seconds == 30 and again.pod_manager.config_errors.grace_seconds == 30


def _first_event(trigger: FactorPodTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(first(), timeout=60))


def test_a_start_stuck_on_a_missing_secret_ends_after_the_grace_with_the_kubelets_message(hook: _Hook) -> None:
    message = 'secret "finetune-db" not found'
    hook.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message=message)

    event = _first_event(_trigger(config_error_grace_seconds=0.3, startup_timeout=600))

    assert event["status"] == "error"
    assert event["message"] == f"CreateContainerConfigError for 0.3 s: {message}"
    assert hook.reads > 1, "the kubelet's retries were waited for"


def test_without_a_grace_the_trigger_waits_as_the_providers_does(hook: _Hook) -> None:
    hook.kubelet = lambda pod: set_waiting(pod, reason="CreateContainerConfigError", message="x")

    event = _first_event(_trigger(config_error_grace_seconds=None, startup_timeout=1))

    assert event["status"] == "timeout"


def test_a_users_kill_deletes_the_pod_and_records_the_attempt_killed(
    migrated_db: str, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_complete_run(migrated_db, statuses={"l2_features": "running"})
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))

    asyncio.run(_trigger().on_kill())

    assert hook.deleted == [("finetune", "finetune-l2-features-abc")]
    with psycopg.connect(migrated_db) as conn:
        attempts = conn.execute(
            "SELECT factor, airflow_run_id, attempt, profile, exit_reason FROM finetune_pod_attempts"
        ).fetchall()
        manifest = conn.execute(
            "SELECT status, exit_reason, attempt FROM finetune_run_factors WHERE factor = 'l2_features'"
        ).fetchone()
    assert attempts == [("l2_features", "manual__x", 2, "MEDIUM", "Killed")]
    # not a pod failure: the factor is left to its next try, told why this attempt ended
    assert manifest == ("running", "Killed", 2)


def test_a_pod_that_ended_first_is_left_to_the_resumed_task(
    migrated_db: str, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_complete_run(migrated_db)
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    trigger = _trigger()
    trigger._fired_event = True  # the trigger already reported the pod's end

    asyncio.run(trigger.on_kill())

    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_pod_attempts").fetchone()[0] == 0


def test_a_lost_record_is_logged_without_the_password(
    hook: _Hook, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn("postgresql://finetune:s3cr3t-pw@127.0.0.1:1/nowhere")
    )

    asyncio.run(_trigger().on_kill())  # never raises: the kill stands

    logged = "".join(capfd.readouterr())
    assert "could not record the killed attempt of factor l2_features" in logged
    assert "s3cr3t-pw" not in logged
    assert hook.deleted, "the pod is deleted all the same"
