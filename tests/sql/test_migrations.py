"""The schema that sql/ builds, tested on real PostgreSQL: constraints, keys and V002's backfill."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from finetune.migrate import apply_migrations

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _make_manifest(conn: psycopg.Connection, run_id: str = "r1", factor: str = "base_features") -> None:
    conn.execute(
        "INSERT INTO finetune_runs (run_id, strategy, as_of, params) VALUES (%s, 'ridge_long_flat', %s, '{}')",
        (run_id, T0),
    )
    conn.execute("INSERT INTO finetune_run_factors (run_id, factor) VALUES (%s, %s)", (run_id, factor))


def _result_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "run_id": "r1",
        "factor": "base_features",
        "strategy": "ridge_long_flat",
        "variant": "default",
        "crypto": "BTC",
        "fold_id": 0,
        "cost_bps": 10,
        "test_start": T0,
        "test_end": T0 + timedelta(hours=9),
        "n_bars": 10,
        "model_hyperparams": json.dumps({"alpha": 1.0}),
        "feature_hash": "abc",
        "net_return": 0.01,
        "n_trades": 2,
    }
    row.update(overrides)
    return row


def _baseline_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "run_id": "r1",
        "factor": "base_features",
        "strategy": "ridge_long_flat",
        "baseline_type": "buy_and_hold",
        "crypto": "BTC",
        "fold_id": 0,
        "cost_bps": 10,
        "test_start": T0,
        "test_end": T0 + timedelta(hours=9),
        "n_bars": 10,
        "net_return": 0.0,
        "n_trades": 1,
    }
    row.update(overrides)
    return row


def _insert(conn: psycopg.Connection, table: str, row: dict[str, object]) -> None:
    columns = ", ".join(row)
    values = ", ".join(f"%({name})s" for name in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)


def _column(conn: psycopg.Connection, table: str, column: str) -> tuple[str, str | None]:
    return conn.execute(
        "SELECT is_nullable, column_default FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()


def _unique_columns(conn: psycopg.Connection, constraint: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_constraint c
        JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conname = %s AND c.contype = 'u' ORDER BY k.ord
        """,
        (constraint,),
    ).fetchall()
    return [name for (name,) in rows]


def test_v002_adds_slippage_safely_on_populated_tables(empty_db: str) -> None:
    assert apply_migrations(empty_db, target="V001") == ["001"]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        _make_manifest(conn)
        _insert(conn, "finetune_results", _result_row())
        _insert(conn, "finetune_results", _result_row(crypto="ETH"))
        for baseline_type in ("buy_and_hold", "random", "naive"):
            _insert(conn, "finetune_baselines", _baseline_row(baseline_type=baseline_type))

    assert apply_migrations(empty_db)[:2] == ["002", "003"]

    with psycopg.connect(empty_db, autocommit=True) as conn:
        for table in ("finetune_results", "finetune_baselines"):
            assert conn.execute(f"SELECT array_agg(DISTINCT slippage_bps) FROM {table}").fetchone()[0] == [0]
            assert _column(conn, table, "slippage_bps") == ("NO", None)
            assert _column(conn, table, "cost_bps") == ("NO", None)
        assert _unique_columns(conn, "uq_finetune_baseline") == [
            "run_id",
            "factor",
            "strategy",
            "baseline_type",
            "crypto",
            "fold_id",
            "cost_bps",
            "slippage_bps",
        ]
        assert _unique_columns(conn, "uq_finetune_result") == [
            "run_id",
            "factor",
            "variant",
            "crypto",
            "fold_id",
            "cost_bps",
            "slippage_bps",
        ]
        # A writer that omits slippage_bps fails loudly instead of storing a silent zero.
        with pytest.raises(psycopg.errors.NotNullViolation):
            _insert(conn, "finetune_baselines", _baseline_row(baseline_type="naive", crypto="SOL"))
        with pytest.raises(psycopg.errors.NotNullViolation):
            _insert(conn, "finetune_results", _result_row(crypto="SOL"))


@pytest.mark.parametrize(
    ("table", "row", "error"),
    [
        pytest.param(
            "finetune_baselines",
            _baseline_row(slippage_bps=0, cost_bps=-1),
            psycopg.errors.CheckViolation,
            id="negative-cost",
        ),
        pytest.param(
            "finetune_baselines", _baseline_row(slippage_bps=-1), psycopg.errors.CheckViolation, id="negative-slippage"
        ),
        pytest.param(
            "finetune_baselines",
            _baseline_row(slippage_bps=0, baseline_type="momentum"),
            psycopg.errors.CheckViolation,
            id="unknown-baseline-type",
        ),
        pytest.param(
            "finetune_baselines",
            {k: v for k, v in _baseline_row(slippage_bps=0).items() if k != "cost_bps"},
            psycopg.errors.NotNullViolation,
            id="baseline-without-cost",
        ),
        pytest.param(
            "finetune_results",
            {k: v for k, v in _result_row(slippage_bps=0).items() if k != "cost_bps"},
            psycopg.errors.NotNullViolation,
            id="result-without-cost",
        ),
        pytest.param(
            "finetune_results",
            _result_row(slippage_bps=0, model_hyperparams=None),
            psycopg.errors.NotNullViolation,
            id="result-without-hyperparams",
        ),
        pytest.param(
            "finetune_results",
            _result_row(slippage_bps=0, feature_hash=None),
            psycopg.errors.NotNullViolation,
            id="result-without-feature-hash",
        ),
        pytest.param(
            "finetune_results",
            _result_row(slippage_bps=0, factor="l2_features"),
            psycopg.errors.ForeignKeyViolation,
            id="result-of-unregistered-factor",
        ),
    ],
)
def test_constraints_refuse_bad_rows(migrated_db: str, table: str, row: dict[str, object], error: type) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _make_manifest(conn)
        with pytest.raises(error):
            _insert(conn, table, row)


def test_unique_keys_separate_slippage_and_refuse_duplicates(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _make_manifest(conn)
        _insert(conn, "finetune_baselines", _baseline_row(slippage_bps=0))
        _insert(conn, "finetune_baselines", _baseline_row(slippage_bps=5))
        with pytest.raises(psycopg.errors.UniqueViolation):
            _insert(conn, "finetune_baselines", _baseline_row(slippage_bps=5))


def test_run_factor_status_is_checked(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _make_manifest(conn)
        assert conn.execute("SELECT status, attempt FROM finetune_run_factors").fetchone() == ("planned", 1)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE finetune_run_factors SET status = 'oops'")


def test_pod_attempts_keep_one_row_per_attempt(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _make_manifest(conn)
        for attempt in (1, 2):
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, peak_memory_bytes) "
                "VALUES ('r1', 'base_features', %s, 'STANDARD', 100)",
                (attempt,),
            )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, attempt) VALUES ('r1', 'base_features', 2)"
            )


def test_pod_attempts_of_another_airflow_run_are_kept(migrated_db: str) -> None:
    """V007: a rerun of the same finetune run (a new DAG run, try numbers from 1 again) adds rows."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _make_manifest(conn)
        for airflow_run_id, reason in (("scheduled__2026-06-07", "OOMKilled"), ("manual__2026-06-08", "completed")):
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, exit_reason) "
                "VALUES ('r1', 'base_features', %s, 1, %s)",
                (airflow_run_id, reason),
            )
        rows = conn.execute(
            "SELECT airflow_run_id, attempt, exit_reason FROM finetune_pod_attempts ORDER BY airflow_run_id"
        ).fetchall()
        assert rows == [("manual__2026-06-08", 1, "completed"), ("scheduled__2026-06-07", 1, "OOMKilled")]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt) "
                "VALUES ('r1', 'base_features', 'manual__2026-06-08', 1)"
            )
