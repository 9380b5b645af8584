"""The gate's and the report summary's cost on a database holding several big sweeps.

    .venv/bin/python benchmarks/bench_gate.py [--sweeps 5] [--repeats 7] [--keep] [--before REF]

Creates a scratch database on the server of ``FINETUNE_BENCH_ADMIN_URL`` (default: the machine's
PostgreSQL, ``postgresql://postgres@127.0.0.1:5432/test``), applies the migrations, and loads with
SQL ``generate_series`` (seconds, not a Python loop):

- ``--sweeps`` complete 60,000-key sweeps (4 factors x 25 cryptos x 24 folds x 5 costs x
  5 slippages; one model row and three baselines per key): 300,000 stored keys for 5 sweeps;
- one complete 960-key run (4 factors x 4 cryptos x 4 folds x 5 costs x 3 slippages).

Then times ``finetune_sweep.gate.GATE_SQL`` (bound exactly as the sensor binds it) for the
960-key run and for one 60,000-key run, and ``finetune_sweep.report.SUMMARY_SQL`` likewise:
the median of ``--repeats`` executions, each on a fresh connection (what the sensor and the
report task do), after one warm-up. Also prints whether the plan was JIT-compiled (EXPLAIN
ANALYZE). Goals (issue 7 item 7): 960 keys <= 100 ms, 60,000 keys <= 1.5 s. ``--before REF``
also times the gate as it was at git revision REF (e.g. ``5382458``), in the same run, for ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scratch_database import scratch_database

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "plugins"))

FACTORS = ("base_features", "n_features", "btc_features", "l2_features")
STRATEGY = "ridge_long_flat"
SYMBOLS = tuple(f"C{i:02d}" for i in range(50))

# One run: the manifest (all done), one model row and three baselines per key, on one window.
LOAD_RUN_SQL = """
WITH dims AS (
    SELECT f.factor, c.crypto, fold.fold_id, cost.cost_bps, slip.slippage_bps
    FROM unnest(%(factors)s::text[]) AS f(factor)
    CROSS JOIN unnest(%(cryptos)s::text[]) AS c(crypto)
    CROSS JOIN generate_series(0, %(n_folds)s - 1) AS fold(fold_id)
    CROSS JOIN unnest(%(cost_bps)s::int[]) AS cost(cost_bps)
    CROSS JOIN unnest(%(slippage_bps)s::int[]) AS slip(slippage_bps)
),
results AS (
    INSERT INTO finetune_results (run_id, factor, strategy, variant, crypto, fold_id, cost_bps, slippage_bps,
                                  test_start, test_end, n_bars, model_hyperparams, feature_hash, net_return,
                                  n_trades)
    SELECT %(run_id)s, factor, %(strategy)s, 'cost_' || cost_bps, crypto, fold_id, cost_bps, slippage_bps,
           timestamptz '2026-01-01' + fold_id * interval '30 days',
           timestamptz '2026-01-31' + fold_id * interval '30 days', 720, '{}'::jsonb, 'hash', 0.01, 3
    FROM dims
    RETURNING 1
)
INSERT INTO finetune_baselines (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps, slippage_bps,
                                test_start, test_end, n_bars, net_return, n_trades)
SELECT %(run_id)s, factor, %(strategy)s, bt.baseline_type, crypto, fold_id, cost_bps, slippage_bps,
       timestamptz '2026-01-01' + fold_id * interval '30 days',
       timestamptz '2026-01-31' + fold_id * interval '30 days', 720, 0.0, 1
FROM dims CROSS JOIN (VALUES ('buy_and_hold'), ('random'), ('naive')) AS bt(baseline_type)
"""


def _sweep(n_cryptos: int, n_folds: int, n_costs: int, n_slippages: int) -> dict:
    return {
        "factors": list(FACTORS),
        "cryptos": list(SYMBOLS[:n_cryptos]),
        "n_folds": n_folds,
        "cost_bps": [10 * (i + 1) for i in range(n_costs)],
        "slippage_bps": list(range(n_slippages)),
    }


def load_run(conn, *, run_id: str, sweep: dict) -> int:
    """Register ``run_id`` with ``sweep``'s params and store every key of it; returns the keys."""
    from psycopg.types.json import Jsonb

    params = {**sweep, "n_seeds": 100, "hold_bars": 24}
    conn.execute(
        "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
        "VALUES (%s, 'finetune_sweep', %s, '2026-06-07T00:00:00Z', %s)",
        (run_id, STRATEGY, Jsonb(params)),
    )
    conn.execute(
        "INSERT INTO finetune_run_factors (run_id, factor, profile, status) "
        "SELECT %s, f, 'STANDARD', 'done' FROM unnest(%s::text[]) AS f",
        (run_id, sweep["factors"]),
    )
    conn.execute(LOAD_RUN_SQL, {"run_id": run_id, "strategy": STRATEGY, **sweep})
    return (
        len(sweep["factors"])
        * len(sweep["cryptos"])
        * sweep["n_folds"]
        * len(sweep["cost_bps"])
        * len(sweep["slippage_bps"])
    )


def time_query(dsn: str, sql: str, run_id: str, *, repeats: int) -> tuple[float, list]:
    """Median seconds of ``sql`` for ``run_id`` over fresh connections (after one warm-up)."""
    import psycopg

    seconds = []
    rows: list = []
    for _ in range(repeats + 1):
        with psycopg.connect(dsn) as conn:
            started = time.perf_counter()
            rows = conn.execute(sql, {"run_id": run_id}).fetchall()
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:]), rows


def jit_used(dsn: str, sql: str, run_id: str) -> bool:
    import psycopg

    with psycopg.connect(dsn) as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, {"run_id": run_id}).fetchone()[0]
    return bool(plan[0].get("JIT"))


def gate_sql_at(ref: str) -> str:
    """``GATE_SQL`` as it was at git revision ``ref`` (read from git, never imported)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:plugins/finetune_sweep/gate.py"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    namespace: dict = {}
    exec(compile(source, f"gate.py@{ref}", "exec"), namespace)  # noqa: S102 - our own file at a revision
    return namespace["GATE_SQL"]


def main() -> int:
    import psycopg

    from finetune.migrate import apply_migrations
    from finetune_sweep.gate import GATE_SQL
    from finetune_sweep.report import SUMMARY_SQL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=5, help="60,000-key sweeps to store (default 5)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (its DSN is printed)")
    parser.add_argument("--before", metavar="REF", help="also time the gate of this git revision")
    args = parser.parse_args()
    queries = {"gate": GATE_SQL, "summary": SUMMARY_SQL}
    if args.before:
        queries["gate_before"] = gate_sql_at(args.before)

    with scratch_database("ft_bench_gate", keep=args.keep) as dsn:
        apply_migrations(dsn)
        started = time.perf_counter()
        stored = 0
        with psycopg.connect(dsn) as conn:
            for i in range(args.sweeps):
                stored += load_run(conn, run_id=f"big_{i}", sweep=_sweep(25, 24, 5, 5))
            stored += load_run(conn, run_id="small", sweep=_sweep(4, 4, 5, 3))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        load_seconds = time.perf_counter() - started
        figures = {"stored_keys": stored, "load_seconds": round(load_seconds, 1)}
        for label, run_id in (("960_keys", "small"), ("60000_keys", "big_0")):
            for query_name, sql in queries.items():
                median, rows = time_query(dsn, sql, run_id, repeats=args.repeats)
                if query_name.startswith("gate"):
                    assert rows == [(True, 0, [])], f"the loaded run must pass the gate: {rows[:1]}"
                figures[f"{query_name}_{label}_ms"] = round(1000 * median, 1)
                figures[f"{query_name}_{label}_jit"] = jit_used(dsn, sql, run_id)
        print(json.dumps(figures, indent=2))
        if args.keep:
            print(f"kept: {dsn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
