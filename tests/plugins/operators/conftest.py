"""Fixtures of the operator tests: the local pod backend, the registered run's database, a fake cluster."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import psycopg
import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

from factor_pods import RUN_ID, SMALL_PROFILES
from fake_kube import FakeCoreV1Api


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


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeCoreV1Api:
    """A fake CoreV1Api where the provider gets its client (``KubernetesHook.core_v1_client``)."""
    fake = FakeCoreV1Api()
    monkeypatch.setattr(KubernetesHook, "core_v1_client", property(lambda self: fake))
    monkeypatch.setattr(KubernetesHook, "is_in_cluster", property(lambda self: False))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes"}))
    monkeypatch.setenv("FINETUNE_POD_BACKEND", "kubernetes")
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    return fake
