"""Tests of finetune_sweep.db.runs: registering a run and its manifest (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from finetune_rows import AS_OF, RUN_ID, make_params, register_sweep
from finetune_sweep.sweep.params import validate_params
from finetune_sweep.sweep.plan import plan_pods


def _registered(dsn: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(dsn) as conn:
        runs = conn.execute("SELECT run_id, dag_id, strategy, as_of, params FROM finetune_runs").fetchall()
        factors = conn.execute(
            "SELECT factor, profile, status, memory_limit_bytes, attempt FROM finetune_run_factors ORDER BY factor"
        ).fetchall()
    return runs, factors


def test_register_run_upserts_run_and_manifest(migrated_db: str) -> None:
    params = validate_params(make_params(factors=["base_features", "n_features"]))
    entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF)

    for _ in range(2):  # a retried or cleared register must not duplicate
        register_sweep(migrated_db, params, entries)

    runs, factors = _registered(migrated_db)
    assert len(runs) == 1
    run_id, dag_id, strategy, as_of, stored = runs[0]
    assert (run_id, dag_id, strategy) == (RUN_ID, "finetune_sweep", "ridge_long_flat")
    assert as_of == datetime(2026, 6, 7, tzinfo=UTC)
    assert stored == params
    assert factors == [
        ("base_features", "STANDARD", "planned", 8 * 2**30, 1),
        ("n_features", "HEAVY", "planned", 24 * 2**30, 1),
    ]


def test_register_run_resets_a_previous_attempt(migrated_db: str) -> None:
    params = validate_params(make_params(factors=["base_features"]))
    entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF)
    register_sweep(migrated_db, params, entries)
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "UPDATE finetune_run_factors SET status = 'failed', exit_reason = 'OOMKilled', attempt = 2, profile = 'MEDIUM'"
        )

    register_sweep(migrated_db, params, entries)

    assert _registered(migrated_db)[1] == [("base_features", "STANDARD", "planned", 8 * 2**30, 1)]
