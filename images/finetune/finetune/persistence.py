"""PostgreSQL writes of the pod: idempotent upserts, one transaction per key, outages ridden out.

A key is ``(crypto, fold_id, cost_bps, slippage_bps)``; its model row and its three baselines are
written in one transaction on the identical window, so a key is either complete or absent. Every
write is an ``INSERT ... ON CONFLICT ... DO UPDATE``: a rerun of the same run and factor replaces
its rows instead of duplicating them, which is also what makes redoing a key's transaction after
a lost connection safe (a commit whose answer was lost may or may not have happened). Connections,
timeouts and retries are :mod:`finetune.connection`'s; the names below stay importable from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from finetune.baselines import BaselineResult
from finetune.connection import (
    DatabaseRefused,
    DatabaseSettings,
    DatabaseTimeout,
    DatabaseUnavailable,
    RetryNotice,
    abandon,
    connect,
    interruption,
    is_transient,
    open_connection,
    retry_transient,
    timeout_error,
    unavailable,
)
from finetune.redaction import dsn_password, error_line, redact_dsn, scrub

__all__ = [
    "DatabaseRefused",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "ModelRow",
    "ResultKey",
    "Store",
    "Window",
    "connect",
    "dsn_password",
    "error_line",
    "keys_as_dicts",
    "redact_dsn",
    "retry_transient",
    "scrub",
]

T = TypeVar("T")


# --- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ResultKey:
    """The cost basis of a model row and its baselines, short of the window."""

    crypto: str
    fold_id: int
    cost_bps: int
    slippage_bps: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "crypto": self.crypto,
            "fold_id": self.fold_id,
            "cost_bps": self.cost_bps,
            "slippage_bps": self.slippage_bps,
        }


@dataclass(frozen=True)
class Window:
    """The test window: first and last test bar timestamps (inclusive) and the bar count."""

    test_start: datetime
    test_end: datetime
    n_bars: int


@dataclass(frozen=True)
class ModelRow:
    """A model row; the significance fields (DESIGN 4.2, 5 "Shift test") may be None (NULL).

    ``positions`` are the model's 0/1 positions per test bar in bar order (``smallint[]``);
    ``exposure`` the share of the window's holding periods spent long; ``random_percentile`` the
    share of the random seeds below the row's net return (ties half); ``perm_p_value`` and
    ``perm_n_shifts`` the timing test's p-value and number of shifts (once per model: the same on
    every cost row); the V010 fields the matched percentile and profit after costs at the row's cost.
    """

    variant: str
    model_hyperparams: Mapping[str, Any]
    feature_hash: str
    net_return: float
    sharpe: float | None
    max_drawdown: float | None
    n_trades: int
    exposure: float | None = None
    positions: Sequence[int] | None = None
    random_percentile: float | None = None
    perm_p_value: float | None = None
    perm_n_shifts: int | None = None
    n_filled_bars: int | None = None  # test-window bars filled by --gaps fill (None: not counted)
    # V010: the matched percentile and profit after costs (DESIGN 5 "Shift test"), None: not tested
    matched_percentile: float | None = None
    profit_p_value: float | None = None
    profit_vs_buy_and_hold_p_value: float | None = None
    profit_n_resamples: int | None = None
    bar_sharpe: float | None = None
    bar_skewness: float | None = None
    bar_kurtosis: float | None = None


# The V010 columns of a model row, written as the ModelRow fields of the same names.
PROFIT_COLUMNS = (
    "matched_percentile",
    "profit_p_value",
    "profit_vs_buy_and_hold_p_value",
    "profit_n_resamples",
    "bar_sharpe",
    "bar_skewness",
    "bar_kurtosis",
)

_UPSERT_RESULT = """
INSERT INTO finetune_results (
    run_id, factor, strategy, variant, crypto, fold_id, cost_bps, slippage_bps,
    test_start, test_end, n_bars, model_hyperparams, feature_hash,
    net_return, sharpe, max_drawdown, n_trades, n_filled_bars,
    exposure, positions, random_percentile, perm_p_value, perm_n_shifts,
    matched_percentile, profit_p_value, profit_vs_buy_and_hold_p_value, profit_n_resamples,
    bar_sharpe, bar_skewness, bar_kurtosis
) VALUES (
    %(run_id)s, %(factor)s, %(strategy)s, %(variant)s, %(crypto)s, %(fold_id)s, %(cost_bps)s,
    %(slippage_bps)s, %(test_start)s, %(test_end)s, %(n_bars)s, %(model_hyperparams)s,
    %(feature_hash)s, %(net_return)s, %(sharpe)s, %(max_drawdown)s, %(n_trades)s, %(n_filled_bars)s,
    %(exposure)s, %(positions)s::smallint[], %(random_percentile)s, %(perm_p_value)s, %(perm_n_shifts)s,
    %(matched_percentile)s, %(profit_p_value)s, %(profit_vs_buy_and_hold_p_value)s, %(profit_n_resamples)s,
    %(bar_sharpe)s, %(bar_skewness)s, %(bar_kurtosis)s
)
ON CONFLICT ON CONSTRAINT uq_finetune_result DO UPDATE SET
    strategy = EXCLUDED.strategy,
    test_start = EXCLUDED.test_start,
    test_end = EXCLUDED.test_end,
    n_bars = EXCLUDED.n_bars,
    model_hyperparams = EXCLUDED.model_hyperparams,
    feature_hash = EXCLUDED.feature_hash,
    net_return = EXCLUDED.net_return,
    sharpe = EXCLUDED.sharpe,
    max_drawdown = EXCLUDED.max_drawdown,
    n_trades = EXCLUDED.n_trades,
    n_filled_bars = EXCLUDED.n_filled_bars,
    exposure = EXCLUDED.exposure,
    positions = EXCLUDED.positions,
    random_percentile = EXCLUDED.random_percentile,
    perm_p_value = EXCLUDED.perm_p_value,
    perm_n_shifts = EXCLUDED.perm_n_shifts,
    matched_percentile = EXCLUDED.matched_percentile,
    profit_p_value = EXCLUDED.profit_p_value,
    profit_vs_buy_and_hold_p_value = EXCLUDED.profit_vs_buy_and_hold_p_value,
    profit_n_resamples = EXCLUDED.profit_n_resamples,
    bar_sharpe = EXCLUDED.bar_sharpe,
    bar_skewness = EXCLUDED.bar_skewness,
    bar_kurtosis = EXCLUDED.bar_kurtosis,
    updated_at = now()
"""

_UPSERT_BASELINE = """
INSERT INTO finetune_baselines (
    run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps, slippage_bps,
    test_start, test_end, n_bars, net_return, n_trades, n_seeds, hold_bars, return_std,
    exposure, seed_p05, seed_p50, seed_p95
) VALUES (
    %(run_id)s, %(factor)s, %(strategy)s, %(baseline_type)s, %(crypto)s, %(fold_id)s,
    %(cost_bps)s, %(slippage_bps)s, %(test_start)s, %(test_end)s, %(n_bars)s, %(net_return)s,
    %(n_trades)s, %(n_seeds)s, %(hold_bars)s, %(return_std)s,
    %(exposure)s, %(seed_p05)s, %(seed_p50)s, %(seed_p95)s
)
ON CONFLICT ON CONSTRAINT uq_finetune_baseline DO UPDATE SET
    test_start = EXCLUDED.test_start,
    test_end = EXCLUDED.test_end,
    n_bars = EXCLUDED.n_bars,
    net_return = EXCLUDED.net_return,
    n_trades = EXCLUDED.n_trades,
    n_seeds = EXCLUDED.n_seeds,
    hold_bars = EXCLUDED.hold_bars,
    return_std = EXCLUDED.return_std,
    exposure = EXCLUDED.exposure,
    seed_p05 = EXCLUDED.seed_p05,
    seed_p50 = EXCLUDED.seed_p50,
    seed_p95 = EXCLUDED.seed_p95,
    updated_at = now()
"""

# The model rows of a run and factor with the number of baseline types that sit on the very same
# window: a key is complete when its model row is on the planned window with all three.
_KEY_STATE = """
SELECT r.crypto, r.fold_id, r.cost_bps, r.slippage_bps, r.test_start, r.test_end, r.n_bars,
       count(DISTINCT b.baseline_type) AS n_baselines
FROM finetune_results AS r
LEFT JOIN finetune_baselines AS b
       ON b.run_id = r.run_id AND b.factor = r.factor AND b.strategy = r.strategy
      AND b.crypto = r.crypto AND b.fold_id = r.fold_id
      AND b.cost_bps = r.cost_bps AND b.slippage_bps = r.slippage_bps
      AND b.test_start = r.test_start AND b.test_end = r.test_end AND b.n_bars = r.n_bars
WHERE r.run_id = %(run_id)s AND r.factor = %(factor)s AND r.strategy = %(strategy)s
  AND r.variant = %(variant)s
GROUP BY r.crypto, r.fold_id, r.cost_bps, r.slippage_bps, r.test_start, r.test_end, r.n_bars
"""


class Store:
    """The pod's connection to PostgreSQL and its writes, each one retried transaction.

    :param dsn: libpq URI (``FINETUNE_DB_URL``).
    :param run_id: the sweep run.
    :param factor: the factor this pod runs.
    :param settings: timeouts and retry budget (default: from the environment).
    :param on_retry: told about each retry of a transient failure (the runner emits an event).
    """

    def __init__(
        self,
        dsn: str,
        *,
        run_id: str,
        factor: str,
        settings: DatabaseSettings | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.factor = factor
        self.settings = DatabaseSettings.from_env() if settings is None else settings
        self._on_retry = on_retry
        # The keys whose transaction committed through this store: what the run knows it
        # persisted, for the crash report when the database cannot be asked.
        self.persisted_keys: set[ResultKey] = set()
        self._conn: psycopg.Connection | None = connect(dsn, settings=self.settings, on_retry=on_retry)

    def close(self) -> None:
        """Close the connection (cancelling a statement in flight); the next write opens a new one."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            abandon(conn)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _transaction(self, work: Callable[[psycopg.Connection], T], *, settings: DatabaseSettings | None = None) -> T:
        """Run ``work`` in one transaction, reconnecting and redoing it on transient failures.

        :raises DatabaseUnavailable: still failing when the retry budget ran out.
        :raises DatabaseTimeout: a statement exceeded the statement or lock timeout.
        :raises psycopg.Error: anything else (e.g. a refused write); the transaction rolled back.
        """
        settings = self.settings if settings is None else settings

        def attempt() -> T:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = None
                self._conn = open_connection(self.dsn, settings=settings)
            conn = self._conn
            try:
                result = work(conn)
                conn.commit()
            except BaseException as exc:
                self._after_failure(conn, exc)
                interrupted = interruption(exc)
                if interrupted is not None:
                    raise interrupted  # noqa: B904 - the interruption itself, as it was raised (e.g. the runner's Terminated: never retried)
                raise
            return result

        started = time.monotonic()
        try:
            return retry_transient(attempt, budget_seconds=settings.retry_seconds, on_retry=self._on_retry)
        except psycopg.Error as exc:
            if is_transient(exc):
                raise unavailable(self.dsn, exc, seconds=time.monotonic() - started) from exc
            timeout = timeout_error(exc, settings)
            if timeout is not None:
                raise timeout from exc
            raise

    def _after_failure(self, conn: psycopg.Connection, exc: BaseException) -> None:
        """Leave no half-done transaction behind ``exc``, keeping the connection when it is sound.

        A refused statement on a sound connection needs only a rollback. Anything else (a lost
        connection, a statement still running because a signal interrupted the wait, a read-only
        server after a failover) gets the connection abandoned: its statement cancelled, then
        closed; the server rolls the transaction back, and the next try connects afresh.
        """
        sound = (
            isinstance(exc, psycopg.Error)
            and not is_transient(exc)
            and not conn.broken
            and conn.info.transaction_status != TransactionStatus.ACTIVE
        )
        if sound:
            try:
                conn.rollback()
                return
            except psycopg.Error:
                pass  # the connection is not sound after all: abandoned below
        self._conn = None
        abandon(conn)

    def register_run(
        self, *, strategy: str, as_of: datetime, params: Mapping[str, Any], dag_id: str | None
    ) -> dict[str, Any]:
        """Create the run row unless the DAG's ``register`` step already did (its row wins).

        :returns: the params the run's row holds (this pod's, or those it was registered with).
        """

        def register(conn: psycopg.Connection) -> dict[str, Any]:
            conn.execute(
                "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
                (self.run_id, dag_id, strategy, as_of, json.dumps(dict(params))),
            )
            row = conn.execute("SELECT params FROM finetune_runs WHERE run_id = %s", (self.run_id,)).fetchone()
            return dict(row[0] or {}) if row else {}

        return self._transaction(register)

    def mark_running(self, *, attempt: int, profile: str | None, memory_limit_bytes: int | None) -> None:
        """The factor starts (again): clears the previous attempt's peak and exit reason."""
        self._transaction(
            lambda conn: conn.execute(
                """
                INSERT INTO finetune_run_factors
                    (run_id, factor, profile, status, memory_limit_bytes, attempt, updated_at)
                VALUES (%s, %s, %s, 'running', %s, %s, now())
                ON CONFLICT (run_id, factor) DO UPDATE SET
                    status = 'running',
                    profile = COALESCE(EXCLUDED.profile, finetune_run_factors.profile),
                    memory_limit_bytes = COALESCE(EXCLUDED.memory_limit_bytes,
                                                  finetune_run_factors.memory_limit_bytes),
                    attempt = EXCLUDED.attempt,
                    peak_memory_bytes = NULL,
                    exit_reason = NULL,
                    updated_at = now()
                """,
                (self.run_id, self.factor, profile, memory_limit_bytes, attempt),
            )
        )

    def finish(
        self,
        *,
        status: str,
        attempt: int,
        profile: str | None,
        memory_limit_bytes: int | None,
        peak_memory_bytes: int | None,
        exit_reason: str,
        duration_seconds: float,
        airflow_run_id: str = "",
        workers: int = 1,
        within_seconds: float | None = None,
    ) -> None:
        """Record the outcome on the manifest and in the per-attempt history, in one transaction.

        :param within_seconds: bound the record's timeouts and retries (after a SIGTERM the pod
            has only the kubelet's grace period); its connection is then a fresh one, so that the
            tighter timeouts apply.
        """

        def work(conn: psycopg.Connection) -> None:
            conn.execute(
                """
                UPDATE finetune_run_factors
                SET status = %s, peak_memory_bytes = %s, exit_reason = %s,
                    memory_limit_bytes = COALESCE(%s, memory_limit_bytes), updated_at = now()
                WHERE run_id = %s AND factor = %s
                """,
                (status, peak_memory_bytes, exit_reason, memory_limit_bytes, self.run_id, self.factor),
            )
            conn.execute(
                """
                INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile,
                    memory_limit_bytes, peak_memory_bytes, exit_reason, duration_seconds, workers, finished_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
                ON CONFLICT (run_id, factor, airflow_run_id, attempt) DO UPDATE SET
                    profile = EXCLUDED.profile,
                    workers = EXCLUDED.workers,
                    memory_limit_bytes = EXCLUDED.memory_limit_bytes,
                    peak_memory_bytes = EXCLUDED.peak_memory_bytes,
                    exit_reason = EXCLUDED.exit_reason,
                    duration_seconds = EXCLUDED.duration_seconds,
                    finished_at = EXCLUDED.finished_at
                """,
                (
                    self.run_id,
                    self.factor,
                    airflow_run_id,
                    attempt,
                    profile,
                    memory_limit_bytes,
                    peak_memory_bytes,
                    exit_reason,
                    duration_seconds,
                    workers,
                ),
            )

        if within_seconds is None:
            self._transaction(work)
        else:
            self.close()
            self._transaction(work, settings=self.settings.bounded(within_seconds))

    def persist_key(
        self,
        *,
        strategy: str,
        key: ResultKey,
        window: Window,
        model: ModelRow,
        baselines: Sequence[BaselineResult],
    ) -> None:
        """Upsert the key's model row and its baselines in one transaction, on one window."""
        common = {
            "run_id": self.run_id,
            "factor": self.factor,
            "strategy": strategy,
            **key.as_dict(),
            "test_start": window.test_start,
            "test_end": window.test_end,
            "n_bars": window.n_bars,
        }
        model_params = {
            **common,
            "variant": model.variant,
            "model_hyperparams": json.dumps(dict(model.model_hyperparams), sort_keys=True),
            "feature_hash": model.feature_hash,
            "net_return": model.net_return,
            "sharpe": model.sharpe,
            "max_drawdown": model.max_drawdown,
            "n_trades": model.n_trades,
            "n_filled_bars": model.n_filled_bars,
            "exposure": model.exposure,
            "positions": None if model.positions is None else [int(p) for p in model.positions],
            "random_percentile": model.random_percentile,
            "perm_p_value": model.perm_p_value,
            "perm_n_shifts": model.perm_n_shifts,
            **{name: getattr(model, name) for name in PROFIT_COLUMNS},
        }
        baseline_params = [
            {
                **common,
                "baseline_type": b.baseline_type,
                "net_return": b.net_return,
                "n_trades": b.n_trades,
                "n_seeds": b.n_seeds,
                "hold_bars": b.hold_bars,
                "return_std": b.return_std,
                "exposure": b.exposure,
                "seed_p05": b.seed_p05,
                "seed_p50": b.seed_p50,
                "seed_p95": b.seed_p95,
            }
            for b in baselines
        ]

        def work(conn: psycopg.Connection) -> None:
            conn.execute(_UPSERT_RESULT, model_params)
            with conn.cursor() as cur:
                cur.executemany(_UPSERT_BASELINE, baseline_params)

        self._transaction(work)
        self.persisted_keys.add(key)

    def incomplete_keys(
        self, *, strategy: str, variant: str, planned: Mapping[ResultKey, Window], n_baseline_types: int
    ) -> list[ResultKey]:
        """The planned keys lacking their model row or a baseline on the planned window."""
        rows = self._transaction(
            lambda conn: conn.execute(
                _KEY_STATE,
                {"run_id": self.run_id, "factor": self.factor, "strategy": strategy, "variant": variant},
            ).fetchall()
        )
        complete = {
            ResultKey(crypto, fold_id, cost_bps, slippage_bps)
            for crypto, fold_id, cost_bps, slippage_bps, start, end, n_bars, n_baselines in rows
            if n_baselines == n_baseline_types
            and planned.get(ResultKey(crypto, fold_id, cost_bps, slippage_bps)) == Window(start, end, n_bars)
        }
        return sorted(key for key in planned if key not in complete)


def keys_as_dicts(keys: Iterable[ResultKey]) -> list[dict[str, Any]]:
    """JSON-ready form of keys, for events and error lines."""
    return [key.as_dict() for key in keys]
