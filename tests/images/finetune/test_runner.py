"""The runner end to end on real PostgreSQL (in-process through ``cli.main`` for speed).

A small grid (2 cryptos x 2 folds x 2 costs x 2 slippages) on the synthetic market: exact row
counts, identical windows, baselines and model rows (return, exposure, percentile, shift test)
equal to an independent per-trade recomputation, idempotent reruns, and the failure paths (a key
whose write is refused, a crash mid-run). The database faults run the pod as a real subprocess:
SIGTERM inside an INSERT blocked on a held lock, a lock never released, and a failover
(connections terminated and refused) ridden out or outlasting the budget.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg
import pytest
from databases import DatabaseOutage
from scipy import stats

import design_reference as reference
from finetune import baselines, runner
from finetune.cli import main
from finetune.data import MarketData

# The 00:00 bar closes at 01:00: as-of 01:00 keeps the windows (and the trading folds) of 00:00 stamps.
AS_OF = "2026-06-07T01:00:00Z"
CRYPTOS = ("BTC", "ETH")
COSTS = (10, 30)
SLIPPAGES = (0, 5)
N_FOLDS, N_SEEDS, HOLD_BARS, TRAIN_BARS, TEST_BARS = 2, 10, 4, 400, 60
N_KEYS = len(CRYPTOS) * N_FOLDS * len(COSTS) * len(SLIPPAGES)
TABLES = ("finetune_runs", "finetune_run_factors", "finetune_results", "finetune_baselines", "finetune_pod_attempts")


def _make_argv(**overrides: str) -> list[str]:
    args = {
        "--run-id": "run-1",
        "--factor": "base_features",
        "--cryptos": ",".join(CRYPTOS),
        "--cost-bps": ",".join(map(str, COSTS)),
        "--slippage-bps": ",".join(map(str, SLIPPAGES)),
        "--as-of": AS_OF,
        "--n-folds": str(N_FOLDS),
        "--n-seeds": str(N_SEEDS),
        "--hold-bars": str(HOLD_BARS),
        "--train-bars": str(TRAIN_BARS),
        "--test-bars": str(TEST_BARS),
    }
    args.update(overrides)
    return ["run", *(item for pair in args.items() for item in pair)]


def _run(dsn: str, capsys: pytest.CaptureFixture[str], *, env: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    code = main(_make_argv(), environ={"FINETUNE_DB_URL": dsn, **(env or {})})
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def _query(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _planned_keys(*, cryptos: tuple[str, ...] = CRYPTOS) -> list[dict]:
    """The grid's keys as ``baselines_incomplete`` names them (sorted like the runner's keys)."""
    return [
        {"crypto": crypto, "fold_id": fold, "cost_bps": cost, "slippage_bps": slip}
        for crypto in sorted(cryptos)
        for fold in range(N_FOLDS)
        for cost in COSTS
        for slip in SLIPPAGES
    ]


def _stored_keys(dsn: str, run_id: str = "run-1") -> list[dict]:
    """The keys of a run whose model row has its three baselines."""
    rows = _query(
        dsn,
        f"""
        SELECT r.crypto, r.fold_id, r.cost_bps, r.slippage_bps FROM finetune_results r
        JOIN finetune_baselines b USING (run_id, factor, strategy, crypto, fold_id, cost_bps, slippage_bps, test_start, test_end, n_bars)
        WHERE r.run_id = '{run_id}' GROUP BY 1, 2, 3, 4 HAVING count(*) = 3 ORDER BY 1, 2, 3, 4
        """,
    )
    return [{"crypto": c, "fold_id": f, "cost_bps": cost, "slippage_bps": slip} for c, f, cost, slip in rows]


@pytest.fixture
def completed_run(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[str, list[dict]]]:
    code, events = _run(
        migrated_db, capsys, env={"FINETUNE_PROFILE": "STANDARD", "FINETUNE_MEMORY_LIMIT_BYTES": str(8 << 30)}
    )
    assert code == 0, events[-3:]
    yield migrated_db, events


def test_full_run_persists_every_key_with_its_baselines(completed_run: tuple[str, list[dict]]) -> None:
    dsn, _ = completed_run
    assert _counts(dsn) == {
        "finetune_runs": 1,
        "finetune_run_factors": 1,
        "finetune_results": N_KEYS,
        "finetune_baselines": 3 * N_KEYS,
        "finetune_pod_attempts": 1,
    }
    assert _query(
        dsn, "SELECT status, profile, memory_limit_bytes, exit_reason, peak_memory_bytes > 0 FROM finetune_run_factors"
    ) == [("done", "STANDARD", 8 << 30, "completed", True)]
    ((strategy, params),) = _query(dsn, "SELECT strategy, params FROM finetune_runs")
    assert strategy == "ridge_long_flat" and params["cryptos"] == list(CRYPTOS) and params["n_seeds"] == N_SEEDS
    # Every model row has exactly its three baselines on the very same window.
    mismatched = _query(
        dsn,
        """
        SELECT r.crypto, r.fold_id, r.cost_bps, r.slippage_bps, count(b.*)
        FROM finetune_results r LEFT JOIN finetune_baselines b
          ON (b.run_id, b.factor, b.strategy, b.crypto, b.fold_id, b.cost_bps, b.slippage_bps,
              b.test_start, b.test_end, b.n_bars)
           = (r.run_id, r.factor, r.strategy, r.crypto, r.fold_id, r.cost_bps, r.slippage_bps,
              r.test_start, r.test_end, r.n_bars)
        GROUP BY 1, 2, 3, 4 HAVING count(b.*) <> 3
        """,
    )
    assert mismatched == []
    assert _query(dsn, "SELECT DISTINCT variant, n_bars FROM finetune_results") == [("default", TEST_BARS)]
    assert _query(
        dsn, "SELECT count(*) FROM finetune_results WHERE model_hyperparams = '{}'::jsonb OR feature_hash = ''"
    ) == [(0,)]


def _window_close(market: MarketData, crypto: str, start: datetime, end: datetime) -> np.ndarray:
    """The stored window's close prices, read from the market by its timestamps."""
    return market.ohlcv(crypto, as_of=pd.Timestamp(AS_OF))["close"].loc[start:end].to_numpy()


def test_baselines_equal_an_independent_recomputation(completed_run: tuple[str, list[dict]]) -> None:
    # DESIGN 5 as plain per-trade loops (design_reference), on the closes of each stored window
    dsn, _ = completed_run
    market = MarketData()
    rows = _query(
        dsn,
        "SELECT crypto, fold_id, cost_bps, slippage_bps, baseline_type, test_start, test_end, n_bars, "
        "net_return, n_trades, n_seeds, hold_bars, return_std, exposure, seed_p05, seed_p50, seed_p95 "
        "FROM finetune_baselines",
    )
    assert len(rows) == 3 * N_KEYS
    for (
        crypto,
        fold_id,
        cost,
        slip,
        kind,
        start,
        end,
        n_bars,
        net,
        n_trades,
        n_seeds,
        hold,
        std,
        held,
        p05,
        p50,
        p95,
    ) in rows:
        close = _window_close(market, crypto, start, end)
        assert len(close) == n_bars == TEST_BARS and end - start == pd.Timedelta(hours=n_bars - 1)
        rt = 2 * (cost + slip) / 10_000
        where = (crypto, fold_id, cost, slip, kind)
        if kind == "naive":
            assert (net, n_trades, held, n_seeds, hold, std, p05) == (0.0, 0.0, 0.0, None, None, None, None), where
        elif kind == "buy_and_hold":
            assert np.isclose(net, close[-1] / close[0] - 1 - rt, rtol=0, atol=1e-12), where
            assert (n_trades, held, n_seeds, p05) == (1.0, 1.0, None, None), where
        else:
            runs = reference.seed_runs(close, rt, n_seeds=N_SEEDS, hold_bars=HOLD_BARS)
            returns = [r for r, _ in runs]
            mean, ref_std, trades = reference.random_baseline(close, rt, n_seeds=N_SEEDS, hold_bars=HOLD_BARS)
            assert np.isclose(net, mean, rtol=0, atol=1e-12) and np.isclose(std, ref_std, rtol=0, atol=1e-12), where
            assert np.isclose(n_trades, trades) and (n_seeds, hold) == (N_SEEDS, HOLD_BARS), where
            assert np.isclose(held, sum(t * HOLD_BARS for _, t in runs) / N_SEEDS / (n_bars - 1)), where
            expected = [stats.scoreatpercentile(returns, q) for q in (5, 50, 95)]
            np.testing.assert_allclose([p05, p50, p95], expected, rtol=0, atol=1e-12, err_msg=str(where))
    # The newest test window ends at the last bar closed by as-of (open-stamped: stamp + 1h <= as-of).
    assert max(row[6] for row in rows) == pd.Timestamp(AS_OF) - pd.Timedelta(hours=1)


def _stored_rows_agree_with_a_recomputation(dsn: str, *, n_shifts: int) -> list[tuple]:
    """Recompute every stored model row from its positions and the market's closes (design_reference)."""
    market = MarketData()
    rows = _query(
        dsn,
        "SELECT crypto, fold_id, cost_bps, slippage_bps, test_start, test_end, n_bars, net_return, "
        "positions, exposure, random_percentile, perm_p_value, perm_n_shifts, matched_percentile, "
        "profit_p_value, profit_vs_buy_and_hold_p_value, profit_n_resamples FROM finetune_results",
    )
    for (
        crypto,
        fold_id,
        cost,
        slip,
        start,
        end,
        n_bars,
        net,
        positions,
        held,
        pct,
        p,
        shifts,
        matched,
        profit,
        vs_bh,
        n_boot,
    ) in rows:
        where = (crypto, fold_id, cost, slip)
        history = market.ohlcv(crypto, as_of=pd.Timestamp(AS_OF))["close"]
        close = history.loc[start:end].to_numpy()
        sigma = reference.ewma_volatility(history.loc[:end].to_numpy())[-n_bars:]
        rt = 2 * (cost + slip) / 10_000
        assert len(positions) == n_bars and set(positions) <= {0, 1}, where
        assert np.isclose(net, reference.positions_return(positions, close, rt), rtol=0, atol=1e-12), where
        assert held == reference.held_share(positions), where
        seeds = [r for r, _ in reference.seed_runs(close, rt, n_seeds=N_SEEDS, hold_bars=HOLD_BARS)]
        assert pct == stats.percentileofscore(seeds, net, kind="mean") / 100, where
        timing = reference.timing_test(positions, close, n_shifts=n_shifts, sigma=sigma)
        assert (p, shifts) == (pytest.approx(timing[0], abs=1e-12), timing[1]), where
        pnl = [math.log1p(r) for r in reference.equity_bar_returns(positions, close, rt)]
        bh = [math.log1p(r) for r in reference.equity_bar_returns([1] * n_bars, close, rt)]
        assert (profit, n_boot) == (reference.block_bootstrap_p(pnl, n_resamples=n_shifts, block=HOLD_BARS), n_shifts)
        excess = [a - b for a, b in zip(pnl, bh, strict=True)]
        assert vs_bh == reference.block_bootstrap_p(excess, n_resamples=n_shifts, block=HOLD_BARS), where
        # the matched percentile: the model's return among its circularly shifted copies
        circle = np.arange(1, n_bars)
        offsets = (
            circle if circle.size <= n_shifts else np.random.default_rng(0).choice(circle, n_shifts, replace=False)
        )
        shifted = [reference.positions_return(np.roll(positions, int(k)), close, rt) for k in offsets]
        assert matched == pytest.approx(stats.percentileofscore(shifted, net, kind="mean") / 100, abs=1e-12), where
    return rows


def test_model_rows_equal_a_recomputation_from_their_stored_positions(completed_run: tuple[str, list[dict]]) -> None:
    # What anyone can do with a stored row: recompute its return, exposure, percentiles and tests.
    dsn, _ = completed_run
    rows = _stored_rows_agree_with_a_recomputation(dsn, n_shifts=999)
    assert len(rows) == N_KEYS
    # the grid holds models that trade, so the checks above are not all on flat books
    assert any(0 < row[9] < 1 for row in rows)
    # the timing test draws its 999 sign flips whatever the window's length (60 bars here)
    assert {row[12] for row in rows} == {999}


def test_events_trace_the_run(completed_run: tuple[str, list[dict]]) -> None:
    _, events = completed_run
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-2:] == ["pod_usage", "run_finished"]
    progress = [(e["i"], e["n"]) for e in events if e["event"] == "fold_done"]
    assert progress == [(i, len(CRYPTOS) * N_FOLDS) for i in range(1, len(CRYPTOS) * N_FOLDS + 1)]
    assert all(e["run_id"] == "run-1" and e["factor"] == "base_features" for e in events)
    usage = events[-2]
    assert usage["peak_memory_bytes"] > 0 and usage["memory_limit_bytes"] == 8 << 30 and usage["seconds"] >= 0
    assert events[-1]["exit_code"] == 0 and events[-1]["status"] == "done"


def test_rerun_upserts_and_records_the_new_attempt(
    completed_run: tuple[str, list[dict]], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, _ = completed_run
    before = _counts(dsn)
    code, _ = _run(dsn, capsys)
    assert code == 0
    assert _counts(dsn) == before
    code, _ = _run(dsn, capsys, env={"FINETUNE_ATTEMPT": "2"})
    assert code == 0
    assert _counts(dsn) == {**before, "finetune_pod_attempts": 2}
    assert _query(dsn, "SELECT attempt, status FROM finetune_run_factors") == [(2, "done")]
    # A new DAG run of the same sweep starts again at try 1: its attempt is kept beside the first.
    code, _ = _run(dsn, capsys, env={"FINETUNE_ATTEMPT": "1", "FINETUNE_AIRFLOW_RUN_ID": "manual__2026-06-08"})
    assert code == 0
    assert _query(dsn, "SELECT airflow_run_id, attempt FROM finetune_pod_attempts ORDER BY 1, 2") == [
        ("", 1),
        ("", 2),
        ("manual__2026-06-08", 1),
    ]


def test_the_random_seeds_are_drawn_once_per_window(
    migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # one pass per (crypto, fold) nets every cost basis of the window (DESIGN 5, "Memoisation")
    calls: list[tuple[float, ...]] = []
    real = baselines.compute_window_baselines

    def counting(close: np.ndarray, rts: list[float], **kwargs: int) -> baselines.WindowBaselines:
        calls.append(tuple(rts))
        return real(close, rts, **kwargs)

    monkeypatch.setattr(baselines, "compute_window_baselines", counting)
    code, _ = _run(migrated_db, capsys)
    assert code == 0 and len(calls) == len(CRYPTOS) * N_FOLDS
    # 10+0, 10+5, 30+0, 30+5 bps: four distinct round-trip costs, each netted in the one pass
    assert all(len(rts) == len(COSTS) * len(SLIPPAGES) for rts in calls)


def test_a_refused_key_is_absent_and_reported(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_eth_fold1() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.crypto = 'ETH' AND NEW.fold_id = 1 AND NEW.cost_bps = 30 AND NEW.baseline_type = 'random' THEN
                    RAISE EXCEPTION 'injected failure for ETH fold 1';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_eth_fold1 BEFORE INSERT ON finetune_baselines
                FOR EACH ROW EXECUTE FUNCTION refuse_eth_fold1();
            """
        )
    code, events = _run(migrated_db, capsys)
    assert code == 1
    refused = [{"crypto": "ETH", "fold_id": 1, "cost_bps": 30, "slippage_bps": s} for s in SLIPPAGES]
    incomplete = [e for e in events if e["event"] == "baselines_incomplete"]
    assert len(incomplete) == 1 and incomplete[0]["missing"] == refused
    assert [e["key"] for e in events if e["event"] == "persist_failed"] == refused
    # Not half written: the model rows of the refused keys rolled back with their baselines.
    assert _counts(migrated_db)["finetune_results"] == N_KEYS - len(refused)
    assert _counts(migrated_db)["finetune_baselines"] == 3 * (N_KEYS - len(refused))
    assert _query(
        migrated_db, "SELECT count(*) FROM finetune_results WHERE crypto = 'ETH' AND fold_id = 1 AND cost_bps = 30"
    ) == [(0,)]
    ((status, reason),) = _query(migrated_db, "SELECT status, exit_reason FROM finetune_run_factors")
    assert status == "failed" and reason == f"baselines_incomplete: 2 of {N_KEYS} keys missing"
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 1


def test_a_crash_mid_run_marks_the_factor_failed(
    migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.fit_positions
    calls: list[int] = []

    def crash_on_third(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise FloatingPointError("singular matrix in fold 0")
        return real(*args, **kwargs)

    # a crash of the runner itself (a plug-in's own failure exits 2: test_plugins.py)
    monkeypatch.setattr(runner, "fit_positions", crash_on_third)
    code = main(_make_argv(), environ={"FINETUNE_DB_URL": migrated_db})
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert [e["event"] for e in events][-4:] == ["run_error", "baselines_incomplete", "pod_usage", "run_finished"]
    ((status, reason),) = _query(migrated_db, "SELECT status, exit_reason FROM finetune_run_factors")
    assert status == "failed" and reason == "error: FloatingPointError: singular matrix in fold 0"
    assert _query(migrated_db, "SELECT exit_reason FROM finetune_pod_attempts") == [(reason,)]
    assert captured.err == f"finetune: error: factor base_features failed: {reason}\n"
    # The crash came in the third fine-tune (ETH fold 0): BTC's keys persisted, ETH's never did.
    incomplete = events[-3]
    assert incomplete["checked_by"] == "run" and incomplete["n_keys"] == N_KEYS
    assert incomplete["missing"] == _planned_keys(cryptos=("ETH",))
    assert _stored_keys(migrated_db) == _planned_keys(cryptos=("BTC",))


def test_a_completed_run_whose_record_is_refused_exits_1_with_one_line(
    migrated_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected: attempts are read-only'; END $$;
            CREATE TRIGGER refuse_attempts BEFORE INSERT ON finetune_pod_attempts
                FOR EACH ROW EXECUTE FUNCTION refuse_attempts();
            """
        )
    code = main(_make_argv(), environ={"FINETUNE_DB_URL": migrated_db})
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert [e["event"] for e in events][-2:] == ["record_failed", "run_finished"]
    assert events[-1]["status"] == "failed" and events[-1]["exit_reason"] == "completed"
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith(
        "finetune: error: factor base_features completed but could not be recorded: injected: attempts are read-only"
    )
    # Every key persisted; only the outcome is missing, so the gate fails the run on 'running'.
    assert _stored_keys(migrated_db) == _planned_keys()
    assert _query(migrated_db, "SELECT status FROM finetune_run_factors") == [("running",)]


def test_sigterm_marks_the_factor_failed(
    migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.fit_positions
    calls: list[int] = []

    def terminated_on_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as the kubelet does when the pod is deleted
        return real(*args, **kwargs)

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(runner, "fit_positions", terminated_on_second)
    code, events = _run(migrated_db, capsys)
    assert code == 1
    assert events[-1]["exit_reason"] == "terminated: received SIGTERM"
    assert _query(migrated_db, "SELECT status FROM finetune_run_factors") == [("failed",)]
    assert signal.getsignal(signal.SIGTERM) is previous


# --- database faults, on the real entry point (python -m finetune run) as a subprocess ------------

SECRET = "Pa55-w0rd-never-logged"


def _with_password(dsn: str) -> str:
    """The DSN with a password (the test server trusts local logins and ignores it)."""
    return dsn.replace("postgres@", f"postgres:{SECRET}@", 1)


def _start_pod(dsn: str, *, run_id: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", *_make_argv(**{"--run-id": run_id})],
        env={**os.environ, "FINETUNE_DB_URL": _with_password(dsn), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], event: str) -> list[dict]:
    """The pod's events up to and including the first ``event`` (the pod keeps running)."""
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == event:
            return events
    raise AssertionError(f"the pod ended before {event!r}: {events[-3:]}")


def _finish_pod(proc: subprocess.Popen[str], events: list[dict] | None = None) -> tuple[list[dict], str]:
    out, err = proc.communicate(timeout=120)
    assert SECRET not in out and SECRET not in err
    return [*(events or []), *(json.loads(line) for line in out.splitlines())], err


def _pod_backends(dsn: str) -> list[tuple]:
    return _query(
        dsn,
        "SELECT pid, state, wait_event_type FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'finetune-pod'",
    )


def _wait_for_pod_blocked_on_lock(dsn: str, proc: subprocess.Popen[str]) -> None:
    for _ in range(1200):
        if any(wait == "Lock" for _, _, wait in _pod_backends(dsn)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the pod never blocked on the held lock")


@pytest.mark.parametrize(
    "locked_table",
    [
        pytest.param("finetune_results", id="blocked-in-execute"),
        pytest.param("finetune_baselines", id="blocked-in-executemany-pipeline"),
    ],
)
def test_sigterm_inside_a_blocked_insert_cancels_it_and_records_the_failure(
    migrated_db: str, locked_table: str
) -> None:
    with psycopg.connect(migrated_db) as holder:
        holder.execute(f"LOCK TABLE {locked_table} IN ACCESS EXCLUSIVE MODE")
        proc = _start_pod(migrated_db, run_id="run-1")
        _wait_for_pod_blocked_on_lock(migrated_db, proc)

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # as the kubelet does when the pod is deleted
        events, err = _finish_pod(proc)
        print(f"\nSIGTERM to exit ({locked_table}): {time.monotonic() - sent:.2f} s")

        # Still holding the lock: the pod's statement was cancelled, not left waiting behind it.
        assert _pod_backends(migrated_db) == []
        assert _query(migrated_db, "SELECT status, exit_reason FROM finetune_run_factors") == [
            ("failed", "terminated: received SIGTERM")
        ]
    assert proc.returncode == 1
    assert err == "finetune: error: factor base_features failed: terminated: received SIGTERM\n"
    names = [e["event"] for e in events]
    assert names[-4:] == ["run_error", "baselines_incomplete", "pod_usage", "run_finished"]
    # The first key blocked, so no key persisted; its model row rolled back with it.
    assert events[-3]["missing"] == _planned_keys() and events[-3]["checked_by"] == "run"
    assert _counts(migrated_db)["finetune_results"] == 0
    assert _query(migrated_db, "SELECT exit_reason FROM finetune_pod_attempts") == [("terminated: received SIGTERM",)]


def test_a_lock_never_released_fails_the_pod_by_itself_naming_the_timeout(migrated_db: str) -> None:
    env = {"FINETUNE_DB_LOCK_TIMEOUT_SECONDS": "0.5", "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS": "5"}
    with psycopg.connect(migrated_db) as holder:
        holder.execute("LOCK TABLE finetune_baselines IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        events, err = _finish_pod(_start_pod(migrated_db, run_id="run-1", env=env))
        print(f"\nlock held forever, lock_timeout 0.5 s: pod exit after {time.monotonic() - started:.2f} s")
    reason = "database lock_timeout of 0.5 s exceeded (FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout"
    assert err == f"finetune: error: factor base_features failed: {reason}\n"
    assert "database_retry" not in [e["event"] for e in events]  # the bound is not retried
    assert events[-1]["exit_code"] == 1 and events[-1]["exit_reason"] == reason
    assert _query(migrated_db, "SELECT status, exit_reason FROM finetune_run_factors") == [("failed", reason)]


def _stored_rows(dsn: str, table: str, run_id: str) -> list[tuple]:
    """Every column of a run's rows but the run id, generated ids and write stamps, in key order."""
    columns = [
        name
        for (name,) in _query(
            dsn,
            f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' "
            "AND column_name NOT IN ('run_id', 'created_at', 'updated_at') AND is_identity = 'NO' "
            "AND coalesce(column_default, '') NOT LIKE 'nextval%%' ORDER BY ordinal_position",
        )
    ]
    listed = ", ".join(columns)
    return _query(dsn, f"SELECT {listed} FROM {table} WHERE run_id = '{run_id}' ORDER BY {listed}")


def test_an_outage_mid_run_is_ridden_out_with_the_values_of_an_undisturbed_run(
    migrated_db: str, database_outage: DatabaseOutage, capsys: pytest.CaptureFixture[str]
) -> None:
    # The undisturbed run, for comparison (same grid, another run id).
    assert main(_make_argv(**{"--run-id": "calm"}), environ={"FINETUNE_DB_URL": migrated_db}) == 0
    capsys.readouterr()

    proc = _start_pod(migrated_db, run_id="failover", env={"FINETUNE_DB_RETRY_SECONDS": "60"})
    events = _read_until(proc, "fold_done")
    proc.send_signal(signal.SIGSTOP)  # hold the pod mid-run while the database goes away
    database_outage.start()
    proc.send_signal(signal.SIGCONT)
    started = time.monotonic()
    # Longer than the 3.5 s of retries the pod used to give up after.
    time.sleep(7)
    database_outage.end()
    events, err = _finish_pod(proc, events)
    print(f"\noutage of 7 s ridden; pod exit {time.monotonic() - started:.2f} s after the outage began")

    assert proc.returncode == 0, err
    retries = [e for e in events if e["event"] == "database_retry"]
    assert len(retries) >= 2 and any("not currently accepting connections" in e["error"] for e in retries)
    assert events[-1]["status"] == "done"
    for table in ("finetune_results", "finetune_baselines"):
        assert _stored_rows(migrated_db, table, "failover") == _stored_rows(migrated_db, table, "calm"), table
    assert _stored_keys(migrated_db, "failover") == _planned_keys()


def test_an_outage_beyond_the_budget_exits_non_zero_and_the_gate_decides(
    migrated_db: str, database_outage: DatabaseOutage
) -> None:
    proc = _start_pod(migrated_db, run_id="run-1", env={"FINETUNE_DB_RETRY_SECONDS": "1.5"})
    events = _read_until(proc, "fold_done")
    proc.send_signal(signal.SIGSTOP)
    database_outage.start()
    proc.send_signal(signal.SIGCONT)
    try:
        events, err = _finish_pod(proc, events)
    finally:
        database_outage.end()

    assert proc.returncode == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "finetune: error: factor base_features failed: database unreachable ("
    )
    assert "the failure could not be recorded: database unreachable" in lines[0]
    # The failure record was retried too (database_retry events), then given up.
    events = [e for e in events if e["event"] != "database_retry"]
    assert [e["event"] for e in events][-5:] == [
        "run_error",
        "baselines_incomplete",
        "pod_usage",
        "record_failed",
        "run_finished",
    ]
    # What the pod reports missing is exactly what the database lacks.
    missing = events[-4]["missing"]
    assert missing and missing == [key for key in _planned_keys() if key not in _stored_keys(migrated_db)]
    # The failure record was lost with the database: the manifest still says running, and the
    # gate fails the run for it.
    assert _query(migrated_db, "SELECT status FROM finetune_run_factors") == [("running",)]


def test_sigterm_while_riding_out_an_outage_stops_within_the_termination_bound(
    migrated_db: str, database_outage: DatabaseOutage
) -> None:
    proc = _start_pod(migrated_db, run_id="run-1", env={"FINETUNE_DB_RETRY_SECONDS": "300"})
    events = _read_until(proc, "fold_done")
    proc.send_signal(signal.SIGSTOP)
    database_outage.start()
    proc.send_signal(signal.SIGCONT)
    try:
        events += _read_until(proc, "database_retry")  # waiting for the database to come back
        proc.send_signal(signal.SIGTERM)  # the pod is deleted meanwhile (e.g. a node drain)
        events, err = _finish_pod(proc, events)
    finally:
        database_outage.end()

    assert proc.returncode == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "finetune: error: factor base_features failed: terminated: received SIGTERM; "
        "the failure could not be recorded: database unreachable ("
    )
    events = [e for e in events if e["event"] != "database_retry"]
    assert [e["event"] for e in events][-5:] == [
        "run_error",
        "baselines_incomplete",
        "pod_usage",
        "record_failed",
        "run_finished",
    ]
    assert events[-4]["missing"] == [key for key in _planned_keys() if key not in _stored_keys(migrated_db)]


def _stored_rows(dsn: str, table: str, run_id: str) -> list[str]:
    """Every row of the run in ``table`` as JSON, without what differs between two runs of it."""
    rows = _query(
        dsn,
        f"SELECT (to_jsonb(t) - 'id' - 'run_id' - 'created_at' - 'updated_at')::text FROM {table} t "
        f"WHERE run_id = '{run_id}' ORDER BY 1",
    )
    return [text for (text,) in rows]


def test_two_workers_store_the_same_rows_as_one(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    cryptos = "BTC,ETH,SOL,BNB"
    for run_id, workers in (("one-worker", "1"), ("two-workers", "2")):
        code = main(
            _make_argv(**{"--run-id": run_id, "--cryptos": cryptos}),
            environ={"FINETUNE_DB_URL": migrated_db, "FINETUNE_POD_WORKERS": workers},
        )
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert code == 0, events[-3:]
        assert events[0]["workers"] == int(workers) and events[-2]["workers"] == int(workers)

    for table in ("finetune_results", "finetune_baselines"):
        sequential = _stored_rows(migrated_db, table, "one-worker")
        assert len(sequential) == 4 * N_FOLDS * len(COSTS) * len(SLIPPAGES) * (1 if table == "finetune_results" else 3)
        assert _stored_rows(migrated_db, table, "two-workers") == sequential  # same floats, bit for bit


def test_progress_reports_the_time_left_after_each_crypto(completed_run: tuple[str, list[dict]]) -> None:
    _, events = completed_run
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["cryptos_done"] for e in progress] == list(range(1, len(CRYPTOS) + 1))
    assert [e["folds_done"] for e in progress] == [N_FOLDS * k for k in range(1, len(CRYPTOS) + 1)]
    assert progress[0]["eta_seconds"] >= 0 and progress[-1]["eta_seconds"] == 0


@pytest.mark.parametrize("workers", ["0", "two", "-1"])
def test_a_bad_worker_count_is_refused_before_any_write(
    migrated_db: str, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    code = main(_make_argv(), environ={"FINETUNE_DB_URL": migrated_db, "FINETUNE_POD_WORKERS": workers})

    assert code == 2
    assert capsys.readouterr().err.strip().endswith(f"FINETUNE_POD_WORKERS must be an integer >= 1, got {workers!r}")
    assert set(_counts(migrated_db).values()) == {0}


def test_a_run_holds_one_cryptos_features_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks keep no bars (but the leader's that others read); stores are built one by one."""
    config = runner.RunConfig(
        run_id="r",
        factor="btc_features",
        cryptos=("ETH", "SOL", "BNB"),
        cost_bps=(10,),
        slippage_bps=(0,),
        as_of=pd.Timestamp(AS_OF),
        n_folds=N_FOLDS,
        n_seeds=N_SEEDS,
        hold_bars=HOLD_BARS,
        train_bars=TRAIN_BARS,
        test_bars=TEST_BARS,
        data_uri=None,
    )
    plan = runner.prepare(config)
    assert {symbol for symbol, _ in plan.market._calendars} == {"BTC"}  # read by every alt's features

    built = []
    real_build = runner.build_feature_store
    monkeypatch.setattr(runner, "build_feature_store", lambda *a, **kw: built.append(a[1]) or real_build(*a, **kw))
    held = []
    for crypto, item in plan.prepared():
        held.append({symbol for symbol, _ in plan.market._calendars})
        assert item.store.symbol == crypto
    assert built == ["ETH", "SOL", "BNB"]
    assert held == [{"BTC", "ETH"}, {"BTC", "SOL"}, {"BTC", "BNB"}]
    assert {symbol for symbol, _ in plan.market._calendars} == {"BTC"}


def _pod_peak(dsn: str, cryptos: str, run_id: str) -> int:
    """The peak a pod reports (pod_usage) for an n_features run over ``cryptos``, in its own process."""
    env = {**os.environ, "FINETUNE_DB_URL": dsn, "FINETUNE_POD_WORKERS": "1"}
    argv = _make_argv(**{"--run-id": run_id, "--factor": "n_features", "--cryptos": cryptos, "--n-folds": "1"})
    done = subprocess.run(
        [sys.executable, "-m", "finetune", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    usage = [json.loads(line) for line in done.stdout.splitlines() if '"pod_usage"' in line]
    return usage[-1]["peak_memory_bytes"]


def test_the_pods_peak_does_not_grow_with_its_cryptos(migrated_db: str) -> None:
    # n_features holds ~300 float32 columns per bar: before one store at a time, 8 cryptos
    # peaked at 2.8x one crypto's; the bound is 1.3x.
    one = _pod_peak(migrated_db, "ETH", "one-crypto")
    eight = _pod_peak(migrated_db, "BTC,ETH,SOL,BNB,XRP,ADA,DOGE,AVAX", "eight-cryptos")
    assert eight <= 1.3 * one, (one, eight)


def test_checks_in_workers_refuse_the_first_bad_crypto_in_order_before_any_write(
    migrated_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        _make_argv(**{"--cryptos": "BTC,QQQ,ZZZ,ETH"}),
        environ={"FINETUNE_DB_URL": migrated_db, "FINETUNE_POD_WORKERS": "2"},
    )

    assert code == 2
    assert "no synthetic data for symbol QQQ" in capsys.readouterr().err
    assert set(_counts(migrated_db).values()) == {0}


def _processes_running(marker: str) -> list[int]:
    """Pids whose command line holds ``marker`` (forked workers share their parent's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue  # ended meanwhile
    return found


def test_sigterm_stops_a_pod_and_its_workers_and_records_the_failure(migrated_db: str) -> None:
    run_id = f"sigterm-workers-{os.getpid()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune",
            # n_features: building a crypto's ~300 columns takes long enough to be stopped midway
            *_make_argv(
                **{"--run-id": run_id, "--factor": "n_features", "--cryptos": "BTC,ETH,SOL,BNB,XRP,ADA,DOGE,AVAX"}
            ),
        ],
        env={**os.environ, "FINETUNE_DB_URL": migrated_db, "FINETUNE_POD_WORKERS": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _read_until(proc, "run_started")
    deadline = time.monotonic() + 30
    while len(_processes_running(run_id)) < 3 and time.monotonic() < deadline:  # the pod and 2 workers
        time.sleep(0.05)
    assert len(_processes_running(run_id)) == 3
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    finished = json.loads(out.splitlines()[-1])
    assert finished["event"] == "run_finished" and finished["exit_reason"] == "terminated: received SIGTERM"
    assert _query(migrated_db, f"SELECT status FROM finetune_run_factors WHERE run_id = '{run_id}'") == [("failed",)]
    assert _processes_running(run_id) == []  # no worker left computing for a run that has ended


@pytest.mark.parametrize(("flag", "expected"), [pytest.param(None, 999, id="default-999"), ("100", 100)])
def test_the_timing_test_draws_n_shifts_sign_flips_independent_of_the_seeds(
    migrated_db: str, capsys: pytest.CaptureFixture[str], flag: str | None, expected: int
) -> None:
    # 480 test bars: the default 999 flips (more than the window's 479 shifted copies, which the
    # matched percentile then ranks among: all of them), --n-shifts 100: 100 flips and 100 copies
    overrides = {"--test-bars": "480", "--cryptos": "ETH", "--cost-bps": "10", "--slippage-bps": "0"}
    argv = _make_argv(**overrides, **({"--n-shifts": flag} if flag else {}))
    code = main(argv, environ={"FINETUNE_DB_URL": migrated_db})
    capsys.readouterr()

    assert code == 0
    rows = _stored_rows_agree_with_a_recomputation(migrated_db, n_shifts=int(flag or 999))
    assert {row[12] for row in rows} == {expected}
    assert min(row[11] for row in rows) >= 1 / (expected + 1)  # the floor a fold's p-value can reach
    assert _query(migrated_db, "SELECT DISTINCT n_seeds FROM finetune_baselines WHERE n_seeds IS NOT NULL") == [
        (N_SEEDS,)
    ]
