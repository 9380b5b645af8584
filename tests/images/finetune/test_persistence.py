"""finetune.persistence on real PostgreSQL: upserts, one transaction per key, faults mid-write.

Connection-level behaviour (backoff, classification, timeouts) is tested in test_connection.py;
here the store's use of it: a key's transaction redone after an outage, a timeout that names
itself and leaves the key absent, the keys the store knows it committed.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from databases import DatabaseOutage

from finetune.baselines import BaselineResult
from finetune.connection import DatabaseSettings, RetryNotice
from finetune.persistence import (
    DatabaseTimeout,
    DatabaseUnavailable,
    ModelRow,
    ResultKey,
    Store,
    Window,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)
WINDOW = Window(test_start=T0, test_end=T0 + timedelta(hours=23), n_bars=24)
STRATEGY = "ridge_long_flat"


def _make_model(**overrides: object) -> ModelRow:
    fields: dict[str, object] = {
        "variant": "default",
        "model_hyperparams": {"alpha": 1.0},
        "feature_hash": "f" * 16,
        "net_return": 0.02,
        "sharpe": 1.1,
        "max_drawdown": -0.05,
        "n_trades": 3,
    }
    fields.update(overrides)
    return ModelRow(**fields)  # type: ignore[arg-type]


BASELINES = (
    BaselineResult("buy_and_hold", 0.01, 1.0),
    BaselineResult("random", -0.002, 2.5, n_seeds=10, hold_bars=4, return_std=0.01),
    BaselineResult("naive", 0.0, 0.0),
)


def _open_store(dsn: str, **kwargs: object) -> Store:
    store = Store(dsn, run_id="r1", factor="base_features", **kwargs)  # type: ignore[arg-type]
    store.register_run(strategy=STRATEGY, as_of=T0, params={"n_folds": 2}, dag_id=None)
    store.mark_running(attempt=1, profile="STANDARD", memory_limit_bytes=1 << 30)
    return store


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_persist_key_is_an_idempotent_upsert(migrated_db: str) -> None:
    key = ResultKey("BTC", 0, 10, 0)
    with _open_store(migrated_db) as store:
        store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
        store.persist_key(
            strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(net_return=0.5), baselines=BASELINES
        )
        assert (
            store.incomplete_keys(strategy=STRATEGY, variant="default", planned={key: WINDOW}, n_baseline_types=3) == []
        )
    assert _count(migrated_db, "finetune_results") == 1
    assert _count(migrated_db, "finetune_baselines") == 3
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT net_return, model_hyperparams FROM finetune_results").fetchone() == (
            0.5,
            {"alpha": 1.0},
        )


def test_significance_columns_round_trip_and_are_upserted(migrated_db: str) -> None:
    key = ResultKey("SOL", 2, 0, 0)
    positions = [0, 1, 1, 0] * 6
    significant = _make_model(
        exposure=11 / 23, positions=positions, random_percentile=0.975, perm_p_value=3 / 101, perm_n_shifts=100
    )
    random_row = BaselineResult(
        "random",
        -0.002,
        2.5,
        n_seeds=10,
        hold_bars=4,
        return_std=0.01,
        exposure=10 / 23,
        seed_p05=-0.03,
        seed_p50=-0.001,
        seed_p95=0.02,
    )
    baselines = (
        BaselineResult("buy_and_hold", 0.01, 1.0, exposure=1.0),
        random_row,
        BaselineResult("naive", 0.0, 0.0, exposure=0.0),
    )
    select_model = "SELECT exposure, positions, random_percentile, perm_p_value, perm_n_shifts FROM finetune_results"
    select_baselines = "SELECT baseline_type, exposure, seed_p05, seed_p50, seed_p95 FROM finetune_baselines ORDER BY 1"
    with _open_store(migrated_db) as store:
        store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
        with psycopg.connect(migrated_db) as conn:
            assert conn.execute(select_model).fetchone() == (None, None, None, None, None)
        store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=significant, baselines=baselines)
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute(select_model).fetchone() == (11 / 23, positions, 0.975, 3 / 101, 100)
        assert conn.execute("SELECT pg_typeof(positions)::text FROM finetune_results").fetchone() == ("smallint[]",)
        assert conn.execute(select_baselines).fetchall() == [
            ("buy_and_hold", 1.0, None, None, None),
            ("naive", 0.0, None, None, None),
            ("random", 10 / 23, -0.03, -0.001, 0.02),
        ]


def test_an_out_of_range_percentile_is_refused_with_its_key(migrated_db: str) -> None:
    key = ResultKey("ETH", 0, 10, 0)
    with _open_store(migrated_db) as store:
        with pytest.raises(psycopg.errors.CheckViolation, match="random_percentile"):
            store.persist_key(
                strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(random_percentile=1.5), baselines=BASELINES
            )
    assert _count(migrated_db, "finetune_results") == 0
    assert _count(migrated_db, "finetune_baselines") == 0


def test_a_failing_baseline_leaves_the_key_absent(migrated_db: str) -> None:
    key = ResultKey("ETH", 1, 15, 0)
    with _open_store(migrated_db) as store:
        bad = BASELINES[:2] + (BaselineResult("momentum", 0.0, 0.0),)
        with pytest.raises(psycopg.errors.CheckViolation):
            store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=bad)
        assert store.incomplete_keys(
            strategy=STRATEGY, variant="default", planned={key: WINDOW}, n_baseline_types=3
        ) == [key]
        # The store still works after the failed transaction.
        store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
    assert _count(migrated_db, "finetune_results") == 1
    assert _count(migrated_db, "finetune_baselines") == 3


def test_incomplete_keys_checks_the_window_and_the_three_types(migrated_db: str) -> None:
    complete, partial, shifted, absent = (ResultKey("BTC", f, 10, 0) for f in range(4))
    with _open_store(migrated_db) as store:
        store.persist_key(strategy=STRATEGY, key=complete, window=WINDOW, model=_make_model(), baselines=BASELINES)
        store.persist_key(strategy=STRATEGY, key=partial, window=WINDOW, model=_make_model(), baselines=BASELINES[:2])
        store.persist_key(strategy=STRATEGY, key=shifted, window=WINDOW, model=_make_model(), baselines=BASELINES)
        planned = {
            complete: WINDOW,
            partial: WINDOW,
            shifted: Window(WINDOW.test_start, WINDOW.test_end + timedelta(hours=1), 25),
            absent: WINDOW,
        }
        missing = store.incomplete_keys(strategy=STRATEGY, variant="default", planned=planned, n_baseline_types=3)
    assert missing == [partial, shifted, absent]


def test_finish_updates_manifest_and_attempt_history(migrated_db: str) -> None:
    with _open_store(migrated_db) as store:
        for attempt in (1, 1, 2):
            store.finish(
                status="done",
                attempt=attempt,
                profile="STANDARD",
                memory_limit_bytes=1 << 30,
                peak_memory_bytes=123,
                exit_reason="completed",
                duration_seconds=1.5,
            )
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute(
            "SELECT status, peak_memory_bytes, exit_reason, memory_limit_bytes FROM finetune_run_factors"
        ).fetchone() == ("done", 123, "completed", 1 << 30)
        assert conn.execute("SELECT array_agg(attempt ORDER BY attempt) FROM finetune_pod_attempts").fetchone()[0] == [
            1,
            2,
        ]


def test_register_run_keeps_the_dag_row(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('r1', 'finetune_sweep', %s, %s, '{\"from\": \"dag\"}')",
            (STRATEGY, T0),
        )
    with _open_store(migrated_db):
        pass
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT dag_id, params FROM finetune_runs").fetchone() == (
            "finetune_sweep",
            {"from": "dag"},
        )


def test_a_connection_killed_by_the_server_is_reconnected_and_the_key_persists(migrated_db: str) -> None:
    # Injected fault: the server terminates the pod's session between two keys (as a failover or
    # an idle-session reaper would); the next write reconnects within its retries.
    first, second = ResultKey("BTC", 0, 10, 0), ResultKey("BTC", 0, 30, 0)
    with _open_store(migrated_db) as store:
        store.persist_key(strategy=STRATEGY, key=first, window=WINDOW, model=_make_model(), baselines=BASELINES)
        backend_pid = store._conn.info.backend_pid
        with psycopg.connect(migrated_db, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,)).fetchone()[0]

        store.persist_key(strategy=STRATEGY, key=second, window=WINDOW, model=_make_model(), baselines=BASELINES)

        assert store._conn.info.backend_pid != backend_pid
    assert _count(migrated_db, "finetune_results") == 2
    assert _count(migrated_db, "finetune_baselines") == 6


def test_an_outage_mid_run_is_ridden_out_and_only_the_current_key_redone(
    migrated_db: str, database_outage: DatabaseOutage
) -> None:
    first, second = ResultKey("BTC", 0, 10, 0), ResultKey("BTC", 1, 10, 0)
    notices: list[RetryNotice] = []
    settings = DatabaseSettings(retry_seconds=30)
    with _open_store(migrated_db, settings=settings, on_retry=notices.append) as store:
        store.persist_key(strategy=STRATEGY, key=first, window=WINDOW, model=_make_model(), baselines=BASELINES)
        assert database_outage.start() == 1  # the store's session
        # New connections are refused for 2 s (longer than the first few waits of the backoff).
        threading.Timer(2.0, database_outage.end).start()

        store.persist_key(strategy=STRATEGY, key=second, window=WINDOW, model=_make_model(), baselines=BASELINES)

        assert store.persisted_keys == {first, second}
    assert len(notices) >= 2 and "not currently accepting connections" in str(notices[-1].error)
    assert _count(migrated_db, "finetune_results") == 2 and _count(migrated_db, "finetune_baselines") == 6


def test_an_outage_beyond_the_budget_raises_database_unavailable(
    migrated_db: str, database_outage: DatabaseOutage
) -> None:
    key = ResultKey("ETH", 0, 10, 0)
    with _open_store(migrated_db, settings=DatabaseSettings(retry_seconds=1)) as store:
        database_outage.start()
        with pytest.raises(DatabaseUnavailable) as error:
            store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
        assert store.persisted_keys == set()
    message = str(error.value)
    assert message.startswith("database unreachable (") and "\n" not in message
    assert "not currently accepting connections" in message


def test_a_lock_timeout_names_itself_leaves_the_key_absent_and_the_store_usable(migrated_db: str) -> None:
    key = ResultKey("SOL", 0, 10, 0)
    settings = DatabaseSettings(statement_timeout_seconds=5, lock_timeout_seconds=0.3, retry_seconds=30)
    with _open_store(migrated_db, settings=settings) as store:
        with psycopg.connect(migrated_db) as holder:
            holder.execute("LOCK TABLE finetune_baselines IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseTimeout) as error:
                store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
        assert str(error.value) == (
            "database lock_timeout of 0.3 s exceeded (FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout"
        )
        assert store.persisted_keys == set()
        assert _count(migrated_db, "finetune_results") == 0  # the model row rolled back with it
        store.persist_key(strategy=STRATEGY, key=key, window=WINDOW, model=_make_model(), baselines=BASELINES)
        assert store.persisted_keys == {key}


def test_a_bounded_finish_uses_a_fresh_connection_with_tighter_timeouts(migrated_db: str) -> None:
    with _open_store(migrated_db) as store:
        before = store._conn.info.backend_pid
        store.finish(
            status="failed",
            attempt=1,
            profile="STANDARD",
            memory_limit_bytes=None,
            peak_memory_bytes=1,
            exit_reason="terminated: received SIGTERM",
            duration_seconds=0.5,
            within_seconds=3,
        )
        assert store._conn.info.backend_pid != before
        assert store._conn.execute("SHOW lock_timeout").fetchone()[0] == "3s"
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT status, exit_reason FROM finetune_run_factors").fetchone() == (
            "failed",
            "terminated: received SIGTERM",
        )
