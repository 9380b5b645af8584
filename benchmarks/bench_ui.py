"""Server-side time of the UI plugin's two tabs on a big sweep, through Airflow's own app.

    .venv/bin/python benchmarks/bench_ui.py [--repeats 5] [--runs 50]

Seeds a scratch database (on ``FINETUNE_BENCH_ADMIN_URL``, default the test server
``postgresql://postgres@127.0.0.1:5432/test``; dropped afterwards) with SQL ``generate_series``:

* one run of 60,000 keys (4 factors x 50 cryptos x 30 folds x 10 cost levels), each model row
  with its three baselines (240,000 rows), percentiles and seed quantiles filled;
* ``--runs - 1`` further runs of the DAG with 1,200 keys each, so the DAG tab spans ``--runs`` runs.

Then Airflow's ``create_app()`` (simple auth manager, a viewer's JWT, a throw-away SQLite
metadata database) serves the run tab and the DAG tab through FastAPI's ``TestClient``: the time
is the whole server side (auth, run resolution, queries, rendering), without a network or a
browser. Goal: each <= 1 s. The run tab is timed twice: before the big run's verdict is kept
(the tab runs the gate's query, as while a sweep is still running) and after (as
``check_baselines`` keeps it). The queries are also timed alone.

Bounded pages: before anything else, the big run's fold page (one factor and crypto: 300 rows)
and its four downloads (``rows``/``folds`` x ``csv``/``json``, streamed and read chunk by chunk)
are fetched while a thread samples the process's resident memory (``VmRSS``) every 5 ms; the
figure is the peak above the resident memory before the first of them (the api-server and the
client are one process here, so it bounds the server's growth). Goal: <= 50 MB; the fold page
<= 1 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "plugins"), str(REPO_ROOT / "images" / "finetune"), str(REPO_ROOT / "scripts")]

ADMIN_URL = os.environ.get("FINETUNE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
DAG_ID = "finetune_sweep"
BIG_RUN = "bench__big"
FACTORS = ["base_features", "n_features", "btc_features", "l2_features"]

SEED_RUN_SQL = """
INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params)
VALUES (%(run_id)s, %(dag_id)s, 'ridge_long_flat', %(as_of)s, %(params)s);

INSERT INTO finetune_run_factors (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes, attempt)
SELECT %(run_id)s, f, 'STANDARD', 'done', 8589934592, 4294967296 + (ord * 500000000)::bigint, 1
FROM unnest(%(factors)s::text[]) WITH ORDINALITY AS t(f, ord);

INSERT INTO finetune_results (run_id, factor, strategy, variant, crypto, fold_id, cost_bps, slippage_bps,
    test_start, test_end, n_bars, model_hyperparams, feature_hash, net_return, n_trades,
    random_percentile, exposure)
SELECT %(run_id)s, f, 'ridge_long_flat', 'cost' || c || '_slip0', cr, fold, c, 0,
       %(as_of)s - make_interval(days => 7 * (%(n_folds)s - fold)),
       %(as_of)s - make_interval(days => 7 * (%(n_folds)s - fold)) + interval '167 hours', 168,
       '{}'::jsonb, 'bench', 0.02 * sin(fold + c + length(cr) + length(f)) - c / 10000.0, 4,
       0.5 + 0.49 * sin(fold * 3 + c), 0.4
FROM unnest(%(factors)s::text[]) AS f, unnest(%(cryptos)s::text[]) AS cr,
     generate_series(0, %(n_folds)s - 1) AS fold, unnest(%(costs)s::int[]) AS c;

INSERT INTO finetune_baselines (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps, slippage_bps,
    test_start, test_end, n_bars, net_return, n_trades, n_seeds, hold_bars, return_std, seed_p05, seed_p50, seed_p95)
SELECT m.run_id, m.factor, m.strategy, bt, m.crypto, m.fold_id, m.cost_bps, m.slippage_bps,
       m.test_start, m.test_end, m.n_bars,
       CASE bt WHEN 'naive' THEN 0 WHEN 'buy_and_hold' THEN 0.01 * cos(m.fold_id) ELSE -m.cost_bps / 5000.0 END,
       CASE bt WHEN 'naive' THEN 0 ELSE 1 END,
       CASE bt WHEN 'random' THEN 100 END, CASE bt WHEN 'random' THEN 24 END, CASE bt WHEN 'random' THEN 0.02 END,
       CASE bt WHEN 'random' THEN -0.03 END, CASE bt WHEN 'random' THEN 0 END, CASE bt WHEN 'random' THEN 0.03 END
FROM finetune_results AS m
CROSS JOIN unnest(ARRAY['buy_and_hold', 'random', 'naive']) AS bt
WHERE m.run_id = %(run_id)s;
"""


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def _dsn_for(database: str) -> str:
    base, _, query = ADMIN_URL.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + (f"?{query}" if query else "")


def seed(dsn: str, *, runs: int) -> dict[str, int]:
    """The big run plus ``runs - 1`` small ones; returns the row counts."""
    from datetime import datetime, timedelta

    import psycopg
    from psycopg.types.json import Jsonb

    def one(
        conn: psycopg.Connection, run_id: str, as_of: datetime, cryptos: list[str], n_folds: int, costs: list[int]
    ) -> None:
        params = {"factors": FACTORS, "cryptos": cryptos, "cost_bps": costs, "slippage_bps": [0], "n_folds": n_folds}
        values = {
            "run_id": run_id,
            "dag_id": DAG_ID,
            "as_of": as_of,
            "params": Jsonb(params),
            "factors": FACTORS,
            "cryptos": cryptos,
            "n_folds": n_folds,
            "costs": costs,
        }
        with conn.cursor() as cur:
            for statement in filter(str.strip, SEED_RUN_SQL.split(";\n")):
                cur.execute(statement, values)

    start = datetime(2026, 1, 4, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:
        one(
            conn,
            BIG_RUN,
            start + timedelta(weeks=runs),
            [f"C{i:02d}" for i in range(50)],
            30,
            [5 * (i + 1) for i in range(10)],
        )
        for week in range(runs - 1):
            one(
                conn,
                f"bench__small_{week:02d}",
                start + timedelta(weeks=week),
                [f"C{i:02d}" for i in range(10)],
                3,
                [5 * (i + 1) for i in range(10)],
            )
        conn.execute("ANALYZE")
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("finetune_runs", "finetune_results", "finetune_baselines")
        }


def record_verdict(dsn: str, run_id: str) -> None:
    """Keep the gate's verdict on the run, as ``check_baselines`` does when it decides."""
    import psycopg

    from finetune_sweep.gate import GATE_SQL, RECORD_VERDICT_SQL

    with psycopg.connect(dsn) as conn:
        checked_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        ok, n_problems, problems = conn.execute(GATE_SQL, {"run_id": run_id}).fetchone()
        conn.execute(
            RECORD_VERDICT_SQL,
            {
                "run_id": run_id,
                "ok": ok,
                "n_problems": n_problems,
                "problems": problems,
                "dag_id": DAG_ID,
                "airflow_run_id": "",
                "checked_at": checked_at,
            },
        )


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_growth(fn) -> tuple[int, object]:
    """The peak of resident memory above its level before ``fn``, sampled every 5 ms, and fn's result."""
    import threading

    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_bytes()) - baseline, result


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up: first-request imports, plans, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "max_s": max(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50, help="runs of the DAG tab (default 50)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-ui-home-"))
    from local_airflow import local_airflow_env

    os.environ.update(local_airflow_env(home))
    os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(64)
    # One viewer with a password file of our own: the simple auth manager then generates (and
    # prints) no admin password.
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"bench": secrets.token_urlsafe(16)}))
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "bench:viewer"
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
    database = f"bench_ui_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{database}"')
    try:
        dsn = _dsn_for(database)
        from finetune.migrate import apply_migrations
        from finetune_sweep.db.dsn import connection_json_from_dsn

        apply_migrations(dsn)
        started = time.perf_counter()
        counts = seed(dsn, runs=args.runs)
        print(f"seeded in {time.perf_counter() - started:.1f} s: {json.dumps(counts)}", flush=True)
        os.environ["AIRFLOW_CONN_FINETUNE_DB"] = connection_json_from_dsn(dsn)

        import logging

        from airflow.utils import db

        db.initdb()
        # the plugin serves only DAGs this Airflow knows: put the DAG in its metadata database
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

        DagBundlesManager().sync_bundles_to_db()
        sync_bag_to_db(DagBag(str(REPO_ROOT / "dags")), "dags-folder", None)
        logging.disable(logging.INFO)  # the access log would print one line per request
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        from finetune_sweep.gate import GATE_SQL
        from finetune_sweep.ui import queries

        app = create_app()
        # One access-log line per request would bury the figures (structlog, not the logging module).
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bench", role="viewer"))
        client = TestClient(app, headers={"Authorization": f"Bearer {jwt}"})

        def get(path: str) -> None:
            response = client.get(path)
            if response.status_code != 200:
                raise SystemExit(f"GET {path}: {response.status_code} {response.text[:500]}")

        run_tab = f"/finetune/dags/{DAG_ID}/runs/{BIG_RUN}"
        get(f"/finetune/dags/{DAG_ID}/runs/bench__small_00/rows.csv")  # warm-up: first-request imports

        def bounded_pages() -> dict[str, int]:
            sizes = {}
            fold_page = client.get(f"{run_tab}/folds?factor=base_features&crypto=C07")
            if fold_page.status_code != 200:
                raise SystemExit(f"fold page: {fold_page.status_code} {fold_page.text[:500]}")
            sizes["fold page (base_features, C07)"] = len(fold_page.content)
            for name in ("rows.csv", "rows.json", "folds.csv", "folds.json"):
                with client.stream("GET", f"{run_tab}/{name}") as response:
                    if response.status_code != 200:
                        raise SystemExit(f"{name}: {response.status_code}")
                    # read and drop: the client must not hold the body the server streams
                    sizes[f"{name} ({response.headers['x-finetune-rows']} rows)"] = sum(
                        len(chunk) for chunk in response.iter_bytes()
                    )
            return sizes

        growth, sizes = peak_growth(bounded_pages)
        print(f"bounded pages of the 60,000-key run: peak memory growth {growth / 2**20:.1f} MiB (goal <= 50 MB)")
        for name, size in sizes.items():
            print(f"  {name:42} {size / 1e6:8.2f} MB")
        # Before check_baselines has run (or after rows changed): the tab runs the gate's query.
        results = {"run tab (60,000 keys), gate computed now": _timed(lambda: get(run_tab), args.repeats)}
        record_verdict(dsn, BIG_RUN)
        results["run tab (60,000 keys), verdict kept"] = _timed(lambda: get(run_tab), args.repeats)
        results[f"DAG tab ({args.runs} runs)"] = _timed(lambda: get(f"/finetune/dags/{DAG_ID}"), args.repeats)
        with queries.connect(dsn) as conn:
            results["  gate query alone"] = _timed(
                lambda: conn.execute(GATE_SQL, {"run_id": BIG_RUN}).fetchall(), args.repeats
            )
            results["  kept verdict's check alone"] = _timed(
                lambda: queries.fetch_recorded_verdict(conn, BIG_RUN), args.repeats
            )
            results["  table query alone"] = _timed(lambda: queries.fetch_groups(conn, BIG_RUN), args.repeats)
            results["  history query alone"] = _timed(lambda: queries.fetch_history(conn, DAG_ID), args.repeats)
        size = len(client.get(f"/finetune/dags/{DAG_ID}/runs/{BIG_RUN}").content)
        print(f"{'what':42} {'median':>8} {'max':>8}   (goal: each tab <= 1 s; run tab page {size / 1e6:.2f} MB)")
        for name, figures in results.items():
            print(f"{name:42} {figures['median_s']:7.3f}s {figures['max_s']:7.3f}s")
        return 0
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
