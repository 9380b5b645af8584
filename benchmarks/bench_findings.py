"""The findings step over a 60,000-key run, timed once (goal: <= 2 s).

    .venv/bin/python benchmarks/bench_findings.py [--admin-url postgresql://postgres@127.0.0.1:5432/test]
        [--factors 4] [--cryptos 10] [--folds 15] [--costs 100]

Creates a scratch database on the server of ``--admin-url`` (default: ``FINETUNE_TEST_ADMIN_URL``
or the machine's PostgreSQL), applies the migrations, seeds one registered run with
factors x cryptos x folds x cost bases model rows (default 4 x 10 x 15 x 100 = 60,000 keys, 4,000
groups, 2,400 distinct models with their 168-bar positions), each with both tests' p-values, the bar
moments and its three same-basis baselines (180,000 rows), by
COPY. Then it times ``finetune_sweep.findings.run_findings`` once -- read, combine, BH, replace --
on the freshly written tables (no ANALYZE: the step runs right after the pods wrote), and once
more (a rerun: replaces the rows), and drops the database. The one-off import of scipy.stats
(paid once per task process, and far slower with a cold disk cache) is timed on its own first;
the machine's load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from scratch_database import scratch_database

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "plugins"), str(REPO_ROOT / "images" / "finetune")]

from finetune.migrate import apply_migrations  # noqa: E402
from finetune_sweep.findings import run_findings  # noqa: E402

RUN_ID = "bench_findings"
STRATEGY = "ridge_long_flat"
START = datetime(2024, 1, 1, tzinfo=UTC)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--factors", type=int, default=4)
    parser.add_argument("--cryptos", type=int, default=10)
    parser.add_argument("--folds", type=int, default=15)
    parser.add_argument("--costs", type=int, default=100, help="cost bases: 10 costs x (costs / 10) slippages")
    return parser.parse_args()


def seed(dsn: str, *, factors: int, cryptos: int, folds: int, costs: int) -> int:
    """Register the run and COPY its model rows and baselines; returns the number of keys."""
    factor_names = [f"factor_{i}" for i in range(factors)]
    crypto_names = [f"C{i:02d}" for i in range(cryptos)]
    bases = [(10 * (i % 10), i // 10) for i in range(costs)]
    rng = np.random.default_rng(0)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES (%s, 'finetune_sweep', %s, %s, '{}')",
            (RUN_ID, STRATEGY, START),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES (%s, %s, 'STANDARD', 'done')",
                [(RUN_ID, factor) for factor in factor_names],
            )
        keys = list(itertools.product(factor_names, crypto_names, range(folds), bases))
        p_values = rng.uniform(0.001, 1.0, size=len(keys))
        profit = rng.uniform(0.001, 1.0, size=(len(keys), 2))
        moments = np.column_stack(
            (rng.normal(0, 0.05, len(keys)), rng.normal(0, 0.5, len(keys)), 3 + rng.gamma(2, size=len(keys)))
        )
        returns = rng.normal(0.0, 0.02, size=(len(keys), 3))
        # one model per (factor, crypto, fold): its positions (168 bars) on every cost row
        positions = {key[:3]: "{" + ",".join(map(str, (rng.random(168) < 0.5).astype(int))) + "}" for key in keys}
        with conn.cursor() as cur:
            with cur.copy(
                "COPY finetune_results (run_id, factor, strategy, variant, crypto, fold_id, cost_bps, slippage_bps, "
                "test_start, test_end, n_bars, model_hyperparams, feature_hash, net_return, n_trades, perm_p_value, "
                "perm_n_shifts, random_percentile, positions, profit_p_value, profit_vs_buy_and_hold_p_value, "
                "profit_n_resamples, matched_percentile, bar_sharpe, bar_skewness, bar_kurtosis) FROM STDIN"
            ) as copy:
                rows = zip(keys, p_values, profit, moments, returns, strict=True)
                for (factor, crypto, fold, (cost, slip)), p, (profit_p, vs_hold), (sharpe, skew, kurt), r in rows:
                    start = START + timedelta(days=7 * fold)
                    copy.write_row(
                        (
                            RUN_ID,
                            factor,
                            STRATEGY,
                            "default",
                            crypto,
                            fold,
                            cost,
                            slip,
                            start,
                            start + timedelta(hours=167),
                            168,
                            '{"alpha": 1}',
                            "hash",
                            r[0],
                            3,
                            p,
                            999,
                            0.5,
                            positions[factor, crypto, fold],
                            profit_p,
                            vs_hold,
                            999,
                            0.5,
                            sharpe,
                            skew,
                            kurt,
                        )
                    )
            with cur.copy(
                "COPY finetune_baselines (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps, "
                "slippage_bps, test_start, test_end, n_bars, net_return, n_trades) FROM STDIN"
            ) as copy:
                for (factor, crypto, fold, (cost, slip)), r in zip(keys, returns, strict=True):
                    start = START + timedelta(days=7 * fold)
                    for baseline_type, value in (("buy_and_hold", r[1]), ("random", r[2]), ("naive", 0.0)):
                        copy.write_row(
                            (
                                RUN_ID,
                                factor,
                                STRATEGY,
                                baseline_type,
                                crypto,
                                fold,
                                cost,
                                slip,
                                start,
                                start + timedelta(hours=167),
                                168,
                                value,
                                1.0,
                            )
                        )
    return len(keys)


def main() -> int:
    args = _arguments()
    with scratch_database("ft_bench_findings", admin_url=args.admin_url) as dsn:
        apply_migrations(dsn)
        started = time.perf_counter()
        n_keys = seed(dsn, factors=args.factors, cryptos=args.cryptos, folds=args.folds, costs=args.costs)
        print(f"seeded {n_keys:,} keys ({3 * n_keys:,} baselines) in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        import scipy.stats  # noqa: F401

        print(f"import scipy.stats: {time.perf_counter() - started:.2f} s; load average {os.getloadavg()[0]:.1f}")
        for label in ("first", "rerun"):
            started = time.perf_counter()
            result = run_findings(dsn, run_id=RUN_ID, fdr_q=0.1)
            seconds = time.perf_counter() - started
            print(
                f"findings step ({label}): {result.n_groups:,} groups, {result.n_discovered} findings, "
                f"{seconds:.2f} s (goal <= 2 s: {'ok' if seconds <= 2 else 'SLOW'})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
