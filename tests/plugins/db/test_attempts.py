"""Tests of finetune_sweep.db.attempts: the recorded attempt history, windowed, on real PostgreSQL."""

from __future__ import annotations

from finetune_rows import GI, record_attempt
from finetune_sweep.db.attempts import fetch_history


def test_fetch_history_falls_back_to_the_manifest(migrated_db: str) -> None:
    import psycopg

    with psycopg.connect(migrated_db) as conn:
        conn.execute("DROP TABLE finetune_pod_attempts")
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('r1', 'finetune_sweep', 'ridge_long_flat', '2026-06-07T00:00:00Z', '{}')"
        )
        conn.execute(
            "INSERT INTO finetune_run_factors (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes) "
            "VALUES ('r1', 'l2_features', 'STANDARD', 'done', %s, %s)",
            (8 * GI, 2 * GI),
        )

    (row,) = fetch_history(migrated_db)

    assert (row["factor"], row["peak_memory_bytes"], row["duration_seconds"]) == ("l2_features", 2 * GI, None)


def test_fetch_history_before_v007_has_no_airflow_run(migrated_db: str) -> None:
    import psycopg

    record_attempt(
        migrated_db,
        run_id="r1",
        factor="l2_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=2 * GI,
        airflow_run_id="manual__x",
    )
    with psycopg.connect(migrated_db) as conn:
        conn.execute("ALTER TABLE finetune_pod_attempts DROP COLUMN airflow_run_id")

    (row,) = fetch_history(migrated_db, history_runs=8, history_days=90)

    assert (row["run_id"], row["airflow_run_id"], row["peak_memory_bytes"]) == ("r1", "", 2 * GI)


def test_an_attempt_recorded_by_the_operator_carries_its_workers(migrated_db: str) -> None:
    from finetune_sweep.db.attempts import record_attempt as record

    record_attempt(migrated_db, run_id="r1", factor="n_features", memory_limit_bytes=8 * GI, peak_memory_bytes=GI)
    row = {
        "run_id": "r1",
        "factor": "n_features",
        "airflow_run_id": "manual__x",
        "attempt": 2,
        "profile": "STANDARD",
        "memory_limit_bytes": 8 * GI,
        "peak_memory_bytes": None,
        "exit_reason": "OOMKilled",
        "duration_seconds": 12.0,
        "workers": 2,
    }
    record(migrated_db, row, factor_failed=True)

    history = fetch_history(migrated_db)

    # the first row was written as a pod before workers would have: NULL, read as one process
    assert [(r["attempt"], r["workers"]) for r in history] == [(1, None), (2, 2)]


def test_fetch_history_before_v009_has_no_workers(migrated_db: str) -> None:
    import psycopg

    record_attempt(migrated_db, run_id="r1", factor="l2_features", memory_limit_bytes=8 * GI, peak_memory_bytes=GI)
    with psycopg.connect(migrated_db) as conn:
        conn.execute("ALTER TABLE finetune_pod_attempts DROP COLUMN workers")

    (row,) = fetch_history(migrated_db)

    assert (row["run_id"], row["workers"], row["peak_memory_bytes"]) == ("r1", None, GI)
