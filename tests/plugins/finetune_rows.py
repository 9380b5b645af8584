"""Rows of a finetune run written straight into a migrated database (gate and report tests)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from finetune_sweep.db.runs import register_run
from finetune_sweep.gate import BASELINE_TYPES
from finetune_sweep.sweep.params import validate_params
from finetune_sweep.sweep.plan import plan_pods

GI = 2**30  # bytes in a gibibyte (Kubernetes Gi)

RUN_ID = "manual__2026-06-07T00:00:00+00:00"
AS_OF = "2026-06-07T00:00:00Z"
# A value that would break SQL or a shell if it were ever interpolated.
INJECTION = "BTC'; DROP TABLE x;--"
STRATEGY = "ridge_long_flat"
PLAN = {
    "factors": ["base_features", "l2_features"],
    "cryptos": ["BTC", "ETH"],
    "cost_bps": [10, 30],
    "slippage_bps": [0],
    "n_folds": 2,
}
WINDOW_START = datetime(2026, 5, 1, tzinfo=UTC)


def window(fold_id: int) -> dict[str, Any]:
    start = WINDOW_START + timedelta(days=7 * fold_id)
    return {"test_start": start, "test_end": start + timedelta(hours=167), "n_bars": 168}


def make_model_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "run_id": RUN_ID,
        "factor": "base_features",
        "strategy": STRATEGY,
        "crypto": "BTC",
        "fold_id": 0,
        "cost_bps": 10,
        "slippage_bps": 0,
        **window(overrides.get("fold_id", 0)),
        "net_return": 0.01,
    }
    row.update(overrides)
    row["variant"] = f"cost{row['cost_bps']}_slip{row['slippage_bps']}"
    return row


def register_sweep(
    dsn: str, params: dict[str, Any], entries: list[dict[str, Any]], *, run_id: str = RUN_ID, **overrides: Any
) -> None:
    """``register_run`` of the finetune_sweep DAG's run ``run_id`` as of :data:`AS_OF` (``overrides``: choices ...)."""
    register_run(
        dsn,
        strategy=STRATEGY,
        run_id=run_id,
        dag_id="finetune_sweep",
        as_of=AS_OF,
        params=params,
        entries=entries,
        **overrides,
    )


def make_baseline_row(baseline_type: str, model: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    row = {
        key: model[key]
        for key in (
            "run_id",
            "factor",
            "strategy",
            "crypto",
            "fold_id",
            "cost_bps",
            "slippage_bps",
            "test_start",
            "test_end",
            "n_bars",
        )
    }
    row.update(baseline_type=baseline_type, net_return={"naive": 0.0}.get(baseline_type, 0.005), n_trades=1.0)
    row.update(overrides)
    return row


def insert(conn: psycopg.Connection, table: str, row: dict[str, Any]) -> None:
    if table == "finetune_results":
        row = {
            **row,
            "model_hyperparams": psycopg.types.json.Jsonb({"alpha": 1.0}),
            "feature_hash": "abc",
            "n_trades": 2,
        }
    columns = ", ".join(row)
    values = ", ".join(f"%({key})s" for key in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)


def seed_complete_run(
    dsn: str,
    *,
    skip_model: set | None = None,
    skip_baseline: set | None = None,
    statuses: dict[str, str] | None = None,
    run_id: str = RUN_ID,
    **plan: Any,
) -> None:
    """Register the plan and write every key it expects (except the skipped ones)."""
    params = validate_params({**PLAN, **plan})
    register_sweep(dsn, params, plan_pods(params, run_id=run_id, as_of=AS_OF), run_id=run_id)
    with psycopg.connect(dsn) as conn:
        for factor in params["factors"]:
            status = (statuses or {}).get(factor, "done")
            conn.execute("UPDATE finetune_run_factors SET status = %s WHERE factor = %s", (status, factor))
        for factor, crypto, fold_id, cost, slip in itertools.product(
            params["factors"], params["cryptos"], range(params["n_folds"]), params["cost_bps"], params["slippage_bps"]
        ):
            key = (factor, crypto, fold_id, cost, slip)
            if key in (skip_model or set()):
                continue
            model = make_model_row(
                run_id=run_id, factor=factor, crypto=crypto, fold_id=fold_id, cost_bps=cost, slippage_bps=slip
            )
            insert(conn, "finetune_results", model)
            for baseline_type in BASELINE_TYPES:
                if (*key, baseline_type) not in (skip_baseline or set()):
                    insert(conn, "finetune_baselines", make_baseline_row(baseline_type, model))


def record_attempt(
    dsn: str,
    *,
    run_id: str,
    factor: str,
    memory_limit_bytes: int | None,
    peak_memory_bytes: int | None,
    profile: str = "STANDARD",
    attempt: int = 1,
    exit_reason: str | None = "completed",
    airflow_run_id: str = "",
    days_ago: float = 0.0,
) -> None:
    """Record one past pod attempt (with its run and manifest row), finished ``days_ago`` days ago."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES (%s, 'finetune_sweep', %s, %s, '{}') ON CONFLICT DO NOTHING",
            (run_id, STRATEGY, WINDOW_START),
        )
        conn.execute(
            "INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES (%s, %s, %s, 'done') "
            "ON CONFLICT DO NOTHING",
            (run_id, factor, profile),
        )
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, "
            "peak_memory_bytes, exit_reason, duration_seconds, finished_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 60, now() - make_interval(secs => %s))",
            (
                run_id,
                factor,
                airflow_run_id,
                attempt,
                profile,
                memory_limit_bytes,
                peak_memory_bytes,
                exit_reason,
                days_ago * 86400,
            ),
        )


def make_params(**overrides: Any) -> dict[str, Any]:
    """The DAG's default params with ``overrides``."""
    from finetune_sweep.sweep.params import default_params

    return {**default_params(), **overrides}


def make_context(**overrides: Any) -> dict[str, Any]:
    """A task context of the DAG run of :data:`RUN_ID` (as-of :data:`AS_OF`) with ``overrides``."""
    from types import SimpleNamespace

    context = {
        "params": make_params(),
        "run_id": RUN_ID,
        "data_interval_end": datetime(2026, 6, 7, tzinfo=UTC),
        "logical_date": datetime(2026, 6, 7, tzinfo=UTC),
        "dag_run": SimpleNamespace(run_after=datetime(2026, 6, 9, 12, tzinfo=UTC)),
        "dag": SimpleNamespace(dag_id="finetune_sweep"),
    }
    context.update(overrides)
    return context


def set_p_values(
    dsn: str, p_by_crypto: dict[str, tuple[float | None, float | None]], *, profit_p_value: float | None = 0.001
) -> None:
    """perm_p_value (timing) per (crypto, fold), the same for every factor and cost, and
    ``profit_p_value`` on those rows (a clear profit by default; None: an older image's rows)."""
    with psycopg.connect(dsn) as conn:
        for crypto, by_fold in p_by_crypto.items():
            for fold_id, p in enumerate(by_fold):
                conn.execute(
                    "UPDATE finetune_results SET perm_p_value = %s, perm_n_shifts = 999, profit_p_value = %s, "
                    "profit_vs_buy_and_hold_p_value = %s WHERE crypto = %s AND fold_id = %s",
                    (p, profit_p_value, profit_p_value, crypto, fold_id),
                )


def stored_findings(dsn: str, *, columns: str | None = None) -> list[tuple]:
    """The findings rows of :data:`RUN_ID`, in a fixed order (``columns``: other columns than the V005 ones)."""
    columns = columns or (
        "factor, crypto, cost_bps, slippage_bps, n_folds, mean_model_return, mean_edge_vs_buy_and_hold, "
        "mean_edge_vs_random, p_value, q_value, discovered, fdr_q, combine_method"
    )
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"SELECT {columns} FROM finetune_findings WHERE run_id = %s ORDER BY factor, crypto, cost_bps",
            (RUN_ID,),
        ).fetchall()
