"""What learning from the history costs `register`: the windowed history query and the choice.

    .venv/bin/python benchmarks/bench_sizing_history.py [--admin-url URL] [--runs 20000] [--repeats 5]

Creates a scratch database on the server of ``--admin-url`` (default: the local test server),
applies the migrations, records ``--runs`` weekly-ish finetune runs of the four factors (one
attempt each, an OOM and its retry in every 10th run: ~1.1 attempts per run and factor, finish
times spread over the last two years), then times, best and median of ``--repeats``:

- ``register``: ``fetch_history`` with the default window (8 runs, 90 days) for the four factors,
  plus ``choose_start_profiles``;
- ``recommend (all history)``: ``fetch_history`` without a window plus ``recommend``, the cost
  the report paid before the window.

The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from scratch_database import scratch_database

from finetune_sweep.db.attempts import fetch_history
from finetune_sweep.settings import SizingPolicy
from finetune_sweep.sizing.profiles import PROFILES, SIZING_MAP
from finetune_sweep.sizing.recommend import choose_start_profiles, recommend

FACTORS = tuple(SIZING_MAP)
GI = 2**30

_FILL_SQL = """
INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params)
SELECT 'run-' || i, 'finetune_sweep', 'ridge_long_flat', timestamptz '2020-01-05' + i * interval '1 hour', '{}'
FROM generate_series(1, %(runs)s) AS i;

INSERT INTO finetune_run_factors (run_id, factor, profile, status)
SELECT 'run-' || i, f, 'STANDARD', 'done'
FROM generate_series(1, %(runs)s) AS i, unnest(%(factors)s::text[]) AS f;

-- attempt 1 of every run (OOMKilled in every 10th), finished at a time spread over two years
INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes,
                                   peak_memory_bytes, exit_reason, duration_seconds, finished_at)
SELECT 'run-' || i, f, 'scheduled__' || i, 1, 'STANDARD', 8 * %(gi)s::bigint,
       CASE WHEN i %% 10 = 0 THEN NULL ELSE (2 + (i %% 6)) * %(gi)s::bigint END,
       CASE WHEN i %% 10 = 0 THEN 'OOMKilled' ELSE 'completed' END, 60,
       now() - (%(runs)s - i) * (interval '730 days' / %(runs)s)
FROM generate_series(1, %(runs)s) AS i, unnest(%(factors)s::text[]) AS f;

-- the retry one profile up after each OOM
INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes,
                                   peak_memory_bytes, exit_reason, duration_seconds, finished_at)
SELECT run_id, factor, airflow_run_id, 2, 'MEDIUM', 16 * %(gi)s::bigint, 9 * %(gi)s::bigint, 'completed', 60,
       finished_at + interval '5 minutes'
FROM finetune_pod_attempts WHERE exit_reason = 'OOMKilled'
"""


def _timed(repeats: int, work) -> tuple[float, float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
    return min(seconds), statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from finetune.migrate import apply_migrations

    with scratch_database("ft_bench_sizing", admin_url=args.admin_url) as dsn:
        apply_migrations(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            fill = {"runs": args.runs, "factors": list(FACTORS), "gi": GI}
            for statement in filter(str.strip, _FILL_SQL.split(";")):
                conn.execute(statement, fill if "%(" in statement else None)
            conn.execute("ANALYZE")
            (n_attempts,) = conn.execute("SELECT count(*) FROM finetune_pod_attempts").fetchone()
        policy = SizingPolicy()
        profiles = PROFILES
        map_profiles = {factor: "STANDARD" for factor in FACTORS}

        def register_choice():
            history = fetch_history(
                dsn, history_runs=policy.history_runs, history_days=policy.history_days, factors=list(FACTORS)
            )
            return choose_start_profiles(map_profiles, history, profiles=profiles), len(history)

        def all_history():
            history = fetch_history(dsn)
            return recommend(history, map_profiles, profiles), len(history)

        reg_best, reg_median, (choices, reg_rows) = _timed(args.repeats, register_choice)
        all_best, all_median, (_, all_rows) = _timed(args.repeats, all_history)
        print(f"history: {args.runs} runs x {len(FACTORS)} factors = {n_attempts} attempts")
        print(
            f"register (window 8 runs / 90 days): {reg_rows} rows, best {reg_best * 1000:.1f} ms, "
            f"median {reg_median * 1000:.1f} ms"
        )
        print(
            f"recommend (all history):            {all_rows} rows, best {all_best * 1000:.1f} ms, "
            f"median {all_median * 1000:.1f} ms"
        )
        print(f"ratio all / windowed (median): {all_median / reg_median:.1f}")
        for choice in choices.values():
            print(f"  {choice.factor}: {choice.profile} ({choice.reason})")


if __name__ == "__main__":
    main()
