"""The plugin's queries on a real, migrated database (rows written with tests/plugins/finetune_rows.py)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from finetune_rows import RUN_ID, seed_complete_run
from finetune_sweep.ui import queries


def _execute(dsn: str, sql: str, *params: object) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(sql, params)


def test_the_link_row_wins_then_the_run_id_then_the_candidates_of_the_dag(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    _execute(
        migrated_db,
        "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
        "VALUES ('other', 'other_dag', 's', now(), '{}')",
    )
    _execute(
        migrated_db,
        "INSERT INTO finetune_airflow_runs (dag_id, airflow_run_id, run_id) "
        "VALUES ('finetune_sweep', 'scheduled__x', %s)",
        RUN_ID,
    )

    with queries.connect(migrated_db) as conn:

        def resolve(airflow_run_id: str, *candidates: str) -> str | None:
            return queries.resolve_run_id(
                conn, dag_id="finetune_sweep", airflow_run_id=airflow_run_id, candidates=candidates
            )

        assert resolve("scheduled__x", "other") == RUN_ID
        assert resolve(RUN_ID) == RUN_ID
        assert resolve("manual__y", "nope", RUN_ID) == RUN_ID
        assert resolve("manual__y", "other") is None  # a run of another DAG is not this DAG's
        assert resolve("'; SELECT 1; --") is None


def test_a_baseline_on_another_window_is_not_joined(migrated_db: str) -> None:
    seed_complete_run(migrated_db, skip_baseline={("base_features", "BTC", 1, 10, 0, "random")})
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "INSERT INTO finetune_baselines (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps,"
            " slippage_bps, test_start, test_end, n_bars, net_return, n_trades) SELECT run_id, factor, strategy,"
            " 'random', crypto, fold_id, cost_bps, slippage_bps, test_start + %s, test_end, n_bars - 1, 0.9, 1"
            " FROM finetune_results WHERE factor = 'base_features' AND crypto = 'BTC' AND fold_id = 1"
            " AND cost_bps = 10",
            (timedelta(hours=1),),
        )

    with queries.connect(migrated_db) as conn:
        group = next(
            g
            for g in queries.fetch_groups(conn, RUN_ID)
            if (g["factor"], g["crypto"], g["cost_bps"]) == ("base_features", "BTC", 10)
        )
        folds = queries.fetch_folds(conn, RUN_ID, factor="base_features", crypto="BTC", cost_bps=10, limit=100)

    assert group["missing_baselines"] == 1 and group["folds"] == 2
    assert group["random"] == pytest.approx(0.005)  # fold 0 only: the off-window 0.9 is not averaged in
    assert [f["random"] for f in folds] == [pytest.approx(0.005), None]
    assert [f["won"] for f in folds] == [True, None]


def test_history_lists_the_latest_runs_oldest_first(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    for day in (1, 2, 3):
        _execute(
            migrated_db,
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) VALUES "
            "(%s, 'finetune_sweep', 's', %s::timestamptz, '{}')",
            f"r{day}",
            f"2026-01-0{day}",
        )
        _execute(
            migrated_db, "INSERT INTO finetune_run_factors (run_id, factor) VALUES (%s, 'base_features')", f"r{day}"
        )

    with queries.connect(migrated_db) as conn:
        history = queries.fetch_history(conn, "finetune_sweep", limit=3)

    assert [(row["run_id"], row["factor"]) for row in history] == [
        ("r2", "base_features"),
        ("r3", "base_features"),
        (RUN_ID, "base_features"),
        (RUN_ID, "l2_features"),
    ]
    assert history[0]["keys"] is None and history[2]["keys"] == 8
    assert history[2]["edge_vs_buy_and_hold"] == pytest.approx(0.005)


def _record_verdict(dsn: str, *, ok: bool, problems: list[str], airflow_run_id: str = "scheduled__x") -> None:
    from finetune_sweep.gate import RECORD_VERDICT_SQL

    with psycopg.connect(dsn) as conn:
        checked_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute(
            RECORD_VERDICT_SQL,
            {
                "run_id": RUN_ID,
                "ok": ok,
                "n_problems": len(problems),
                "problems": problems,
                "dag_id": "finetune_sweep",
                "airflow_run_id": airflow_run_id,
                "checked_at": checked_at,
            },
        )


def test_the_run_page_shows_the_kept_verdict_while_it_holds_else_the_gate_computed_now(migrated_db: str) -> None:
    seed_complete_run(migrated_db, skip_baseline={("base_features", "BTC", 1, 10, 0, "naive")})
    # A verdict that disagrees with the rows on purpose: the page must show which one it used.
    _record_verdict(migrated_db, ok=True, problems=[])

    kept = queries.fetch_run_page(migrated_db, RUN_ID).verdict

    assert (kept["ok"], kept["airflow_run_id"]) == (True, "scheduled__x") and kept["checked_at"] is not None
    assert kept["checked_at"].utcoffset() == timedelta(0)  # the pages print UTC

    # A baseline written after the check: the kept verdict no longer holds, the gate runs now.
    _execute(
        migrated_db,
        "UPDATE finetune_baselines SET updated_at = now() WHERE id = (SELECT max(id) FROM finetune_baselines)",
    )
    live = queries.fetch_run_page(migrated_db, RUN_ID).verdict

    assert live["ok"] is False and live["checked_at"] is None
    assert live["problems"] == [
        "missing baseline naive: base_features BTC fold 1 cost 10 slippage 0 bps, window "
        "2026-05-08T00:00Z..2026-05-14T23:00Z (168 bars)"
    ]


def test_the_run_page_computes_the_verdict_on_a_database_from_before_verdicts_were_kept(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    _execute(migrated_db, "DROP TABLE finetune_gate_verdicts")

    verdict = queries.fetch_run_page(migrated_db, RUN_ID).verdict

    assert (verdict["ok"], verdict["checked_at"]) == (True, None)


def test_downloads_stream_and_fold_pages_leave_the_session_settings_alone(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    with queries.connect(migrated_db) as conn:
        all_folds = list(queries.stream_rows(conn, "folds", RUN_ID, cap=1000, batch=3))
        capped = list(queries.stream_rows(conn, "folds", RUN_ID, cap=5))
        groups = list(queries.stream_rows(conn, "rows", RUN_ID, cap=1000))
        one_group = queries.fetch_folds(
            conn, RUN_ID, factor="base_features", crypto="BTC", cost_bps=10, slippage_bps=0, limit=100
        )
        second_page = queries.fetch_folds(conn, RUN_ID, factor="base_features", crypto="BTC", limit=3, offset=3)
        # The hash-join preference is local to the statement's transaction, never the session's.
        assert conn.execute("SHOW enable_nestloop").fetchone()["enable_nestloop"] == "on"
        assert queries.count_rows(conn, "folds", RUN_ID) == 16 and queries.count_rows(conn, "rows", RUN_ID) == 8

    assert len(all_folds) == 16 and len(groups) == 8
    assert capped == all_folds[:5], "the cap keeps the first rows in the table's order"
    assert [row["fold_id"] for row in one_group] == [0, 1]
    # base_features BTC: 2 costs x 2 folds; the second page of 3 holds the fourth
    assert [(row["cost_bps"], row["fold_id"]) for row in second_page] == [(all_folds[3]["cost_bps"], 1)]


def test_a_pooled_connection_comes_back_with_the_sessions_settings(migrated_db: str) -> None:
    with queries.connect(migrated_db) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")
        first = conn.info.backend_pid
    with queries.connect(migrated_db) as conn:
        assert conn.info.backend_pid == first, "the pool reuses its connection"
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone()["max_parallel_workers_per_gather"] != "0"
        # the session the pool opened: read-only, UTC, no JIT, the settings' bounds
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[name] for name in ("jit", "TimeZone", "lock_timeout")}
        assert shown == {"jit": "off", "TimeZone": "UTC", "lock_timeout": "45s"}
        assert conn.execute("SHOW default_transaction_read_only").fetchone()["default_transaction_read_only"] == "on"
