"""Tests of finetune_sweep.operators.gate_sensor on real PostgreSQL: check_baselines keeps the verdict it decided,
the UI's read of it holds only while no row of the run changed, and bookkeeping never changes the gate."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from airflow.providers.common.sql.sensors.sql import SqlSensor

from finetune_rows import RUN_ID, seed_complete_run
from finetune_sweep import gate
from finetune_sweep.db.dsn import connection_json_from_dsn
from finetune_sweep.operators.gate_sensor import BaselineGateSensor

AIRFLOW_RUN_ID = "manual__2026-06-07T00:00:00+00:00:a+b"


@pytest.fixture
def dsn(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    return migrated_db


def _sensor() -> BaselineGateSensor:
    return BaselineGateSensor(
        task_id="check_baselines",
        **{**gate.gate_sensor_kwargs(conn_id="finetune_db"), "parameters": {"run_id": RUN_ID}},
    )


def _context() -> dict[str, Any]:
    return {"run_id": AIRFLOW_RUN_ID, "dag_run": SimpleNamespace(dag_id="finetune_sweep", run_id=AIRFLOW_RUN_ID)}


def _recorded(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM finetune_gate_verdicts").fetchall()


def _fresh(dsn: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(gate.RECORDED_VERDICT_SQL, {"run_id": RUN_ID}).fetchone()


def test_it_is_still_the_strict_sql_sensor() -> None:
    sensor = _sensor()

    assert isinstance(sensor, SqlSensor)
    assert sensor.sql == gate.GATE_SQL and sensor.retries == 0 and sensor.trigger_rule == "all_done"


def test_a_passed_verdict_is_kept_and_holds_until_a_row_of_the_run_changes(dsn: str) -> None:
    seed_complete_run(dsn)

    assert _sensor().poke(_context()) is True

    [row] = _recorded(dsn)
    assert (row["run_id"], row["ok"], row["n_problems"], row["problems"]) == (RUN_ID, True, 0, [])
    assert (row["dag_id"], row["airflow_run_id"]) == ("finetune_sweep", AIRFLOW_RUN_ID)
    assert _fresh(dsn)["ok"] is True

    # A pod rewriting one baseline afterwards (every write sets updated_at) makes it stale.
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE finetune_baselines SET net_return = 0.5, updated_at = now() "
            "WHERE id = (SELECT min(id) FROM finetune_baselines)"
        )
    assert _fresh(dsn) is None


@pytest.mark.parametrize("table", ["finetune_results", "finetune_run_factors"])
def test_a_newer_model_row_or_factor_makes_the_kept_verdict_stale(dsn: str, table: str) -> None:
    seed_complete_run(dsn)
    assert _sensor().poke(_context()) is True
    assert _fresh(dsn) is not None

    with psycopg.connect(dsn) as conn:
        conn.execute(f"UPDATE {table} SET updated_at = now() WHERE run_id = %s", (RUN_ID,))

    assert _fresh(dsn) is None


def test_a_failed_verdict_is_kept_with_its_problems_and_the_gate_still_fails(dsn: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    seed_complete_run(dsn, statuses={"l2_features": "failed"})

    with pytest.raises(AirflowException, match="Failure criteria met"):
        _sensor().poke(_context())

    [row] = _recorded(dsn)
    assert row["ok"] is False and row["n_problems"] >= 1
    assert any(problem.startswith("factor l2_features is failed, not done") for problem in row["problems"])


def test_an_older_check_never_replaces_a_newer_verdict(dsn: str) -> None:
    seed_complete_run(dsn)
    assert _sensor().poke(_context()) is True
    [kept] = _recorded(dsn)

    with psycopg.connect(dsn) as conn:
        conn.execute(
            gate.RECORD_VERDICT_SQL,
            {
                "run_id": RUN_ID,
                "ok": False,
                "n_problems": 1,
                "problems": ["stale"],
                "dag_id": "finetune_sweep",
                "airflow_run_id": "older",
                "checked_at": kept["checked_at"] - timedelta(minutes=5),
            },
        )

    assert _recorded(dsn) == [kept]


def test_an_unregistered_run_keeps_nothing_and_still_fails(dsn: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="is not registered"):
        _sensor().poke(_context())

    assert _recorded(dsn) == []


def test_a_failure_to_keep_the_verdict_is_logged_and_changes_nothing(
    dsn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    seed_complete_run(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE finetune_gate_verdicts")

    assert _sensor().poke(_context()) is True

    # Airflow's task logger writes through structlog, to the process's stream.
    logged = "".join(capfd.readouterr())
    assert "could not record the verdict (UndefinedTable" in logged


def test_a_locked_verdicts_table_delays_the_gate_by_the_lock_timeout_only(
    dsn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    import time

    from finetune_sweep.operators.gate_sensor import RECORD_TIMEOUT_MS

    seed_complete_run(dsn)
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE finetune_gate_verdicts IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        started = time.monotonic()

        assert _sensor().poke(_context()) is True

        waited = time.monotonic() - started
    assert RECORD_TIMEOUT_MS / 1000 <= waited < RECORD_TIMEOUT_MS / 1000 + 20
    assert "could not record the verdict (LockNotAvailable" in "".join(capfd.readouterr())
    assert _recorded(dsn) == []


def test_a_locked_table_fails_the_gate_after_the_lock_timeout(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from finetune_sweep.settings import get_settings

    seed_complete_run(dsn)
    monkeypatch.setenv("FINETUNE_DB_LOCK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()

    def cancel_waiting_queries() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )

    # Without the bound the poke would wait forever: cancel it after 30 s so the test fails, not hangs.
    cancel = threading.Timer(30, cancel_waiting_queries)
    try:
        with psycopg.connect(dsn) as holder:
            holder.execute("LOCK TABLE finetune_baselines IN ACCESS EXCLUSIVE MODE")  # held until the block ends
            cancel.start()
            with pytest.raises(Exception, match="lock timeout"):
                _sensor().poke(_context())
    finally:
        cancel.cancel()
        get_settings.cache_clear()
