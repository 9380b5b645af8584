"""What the plugin's pages read from the finetune database: one function per question, bound parameters.

Every statement binds its values (``%(name)s``); nothing from a URL is ever formatted into SQL.
Columns filled by later work (significance, sizing choice, findings) may be NULL on older rows:
the pages show a dash then.

Baselines are joined on the model row's full basis (key, strategy and identical window), as the
gate and the report do, so a baseline computed on another window never lands beside a model row.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from finetune_sweep.db.connect import connect_kwargs
from finetune_sweep.findings import headline
from finetune_sweep.gate import GATE_SQL, RECORDED_VERDICT_SQL, same_basis_join
from finetune_sweep.report import MODEL_WON, SAME_BASIS_JOINS, SUMMARY_SQL, fetch_headline_arguments

# Every (factor, crypto, cost basis): means over the folds; the report's table reads the same.
GROUPS_SQL = SUMMARY_SQL

# One row per model row (fold), optionally narrowed to one group; NULL filters match everything.
FOLDS_SQL = f"""
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps, m.fold_id, m.variant,
       m.test_start, m.test_end, m.n_bars, m.n_filled_bars,
       m.net_return AS model, m.sharpe, m.max_drawdown, m.n_trades, m.exposure,
       m.matched_percentile AS percentile, m.random_percentile, m.perm_p_value, m.perm_n_shifts,
       m.profit_p_value, m.profit_vs_buy_and_hold_p_value,
       bh.net_return AS buy_and_hold,
       rnd.net_return AS random, rnd.seed_p05 AS random_p05, rnd.seed_p50 AS random_p50,
       rnd.seed_p95 AS random_p95, rnd.return_std AS random_std, rnd.n_seeds,
       nv.net_return AS naive,
       ({MODEL_WON}) AS won
FROM finetune_results AS m
{SAME_BASIS_JOINS}
WHERE m.run_id = %(run_id)s
  AND (CAST(%(factor)s AS text) IS NULL OR m.factor = %(factor)s)
  AND (CAST(%(crypto)s AS text) IS NULL OR m.crypto = %(crypto)s)
  AND (CAST(%(cost_bps)s AS integer) IS NULL OR m.cost_bps = %(cost_bps)s)
  AND (CAST(%(slippage_bps)s AS integer) IS NULL OR m.slippage_bps = %(slippage_bps)s)
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps, m.fold_id, m.variant
"""
# The fold page: one page of one (factor, crypto)'s folds (the page is bounded, see app.FOLD_PAGE_ROWS).
FOLDS_PAGE_SQL = FOLDS_SQL + "LIMIT %(limit)s OFFSET %(offset)s\n"

RUN_SQL = """
SELECT run_id, dag_id, strategy, as_of, params, created_at
FROM finetune_runs WHERE run_id = %(run_id)s
"""

# A run is shown only under the DAG that made it: the link and the run must both name the DAG.
LINKED_RUN_SQL = """
SELECT l.run_id FROM finetune_airflow_runs AS l
JOIN finetune_runs AS r ON r.run_id = l.run_id AND r.dag_id = l.dag_id
WHERE l.dag_id = %(dag_id)s AND l.airflow_run_id = %(airflow_run_id)s
"""

# The finetune run itself may be named in the URL (a notebook link, or a run registered before
# the Airflow-run link existed); it must belong to the DAG of the path. A run registered by hand
# (dag_id NULL) belongs to no DAG and is shown under none.
RUN_OF_DAG_SQL = """
SELECT run_id FROM finetune_runs
WHERE run_id = ANY(%(candidates)s) AND dag_id = %(dag_id)s
ORDER BY array_position(%(candidates)s, run_id)
LIMIT 1
"""

PODS_SQL = """
SELECT f.factor, f.profile, f.map_profile, f.profile_reason, f.status, f.memory_limit_bytes,
       f.peak_memory_bytes, f.exit_reason, f.attempt, f.updated_at,
       coalesce(a.attempts, 0)::integer AS attempts, coalesce(a.ooms, 0)::integer AS ooms,
       a.max_peak_bytes
FROM finetune_run_factors AS f
LEFT JOIN (
    SELECT factor, count(*) AS attempts, count(*) FILTER (WHERE exit_reason = 'OOMKilled') AS ooms,
           max(peak_memory_bytes) AS max_peak_bytes
    FROM finetune_pod_attempts
    WHERE run_id = %(run_id)s AND (CAST(%(airflow_run_id)s AS text) IS NULL OR airflow_run_id = %(airflow_run_id)s)
    GROUP BY factor
) AS a ON a.factor = f.factor
WHERE f.run_id = %(run_id)s
ORDER BY f.factor
"""

FINDINGS_SQL = """
SELECT factor, crypto, cost_bps, slippage_bps, n_folds, mean_model_return, mean_edge_vs_buy_and_hold,
       mean_edge_vs_random, p_value, q_value, discovered, fdr_q, combine_method,
       timing_discovered, profit_p_value, profit_q_value, profit_vs_buy_and_hold_p_value,
       mean_matched_percentile, deflated_sharpe, n_folds_profitable, same_model_as,
       coalesce(verdict, CASE WHEN discovered THEN 'timing only (before V010): profit not tested'
                              ELSE 'no timing edge (before V010): profit not tested' END) AS verdict
FROM finetune_findings
WHERE run_id = %(run_id)s
ORDER BY discovered DESC, timing_discovered DESC NULLS LAST, q_value, profit_q_value, factor, crypto, cost_bps, slippage_bps
"""

# The DAG tab: the latest runs of the DAG, then per run and factor the mean edge over
# buy-and-hold, the mean percentile and the pod's peak against its limit.
HISTORY_SQL = f"""
WITH runs AS (
    SELECT run_id, as_of, created_at FROM finetune_runs
    WHERE dag_id = %(dag_id)s
    ORDER BY as_of DESC, created_at DESC, run_id
    LIMIT %(limit)s
),
results AS (
    SELECT m.run_id, m.factor, count(*)::integer AS keys,
           avg(m.net_return) AS model,
           avg(m.net_return - bh.net_return) AS edge_vs_buy_and_hold,
           avg(m.net_return - rnd.net_return) AS edge_vs_random,
           avg(m.random_percentile) AS percentile
    FROM runs
    JOIN finetune_results AS m ON m.run_id = runs.run_id
    {same_basis_join("bh", "buy_and_hold")}
    {same_basis_join("rnd", "random")}
    GROUP BY m.run_id, m.factor
)
SELECT runs.run_id, runs.as_of, runs.created_at, f.factor, f.profile, f.status, f.memory_limit_bytes,
       f.peak_memory_bytes, f.exit_reason,
       r.keys, r.model, r.edge_vs_buy_and_hold, r.edge_vs_random, r.percentile
FROM runs
JOIN finetune_run_factors AS f ON f.run_id = runs.run_id
LEFT JOIN results AS r ON r.run_id = f.run_id AND r.factor = f.factor
ORDER BY runs.as_of, runs.created_at, runs.run_id, f.factor
"""

# For statements that run at once on the page's two connections (see fetch_run_page).
NO_PARALLEL_WORKERS = "SET max_parallel_workers_per_gather = 0"

# The DAG tab shows this many of the DAG's latest runs.
HISTORY_RUNS = 50


@dataclass
class RunPage:
    """Everything the run tab shows about one finetune run."""

    run: dict[str, Any]
    verdict: dict[str, Any]
    groups: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    findings: list[dict[str, Any]] = field(default_factory=list)
    # The report's headline of the stored findings (what was found, the floor), None without any
    findings_headline: str | None = None


# A small pool per DSN in the api-server: a run tab needs two connections at once (the gate's
# query beside the table's); more would only queue on the database's two cores anyway.
POOL_MAX_SIZE = 4
_POOLS: dict[str, ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()

# UTC: the pages print times as UTC. jit off: the joins below estimate badly on large runs, and JIT
# compilation then costs more than the query itself (~0.6 s of fixed cost, DESIGN 8).
PAGE_SESSION = {"default_transaction_read_only": "on", "TimeZone": "UTC", "jit": "off"}


def _reset(conn: psycopg.Connection) -> None:
    # back to the session the pool opened (a page's SET must not follow the connection)
    conn.execute("RESET ALL")


def pool_for(dsn: str) -> ConnectionPool:
    """The pool of ``dsn``: read-only sessions with the settings' bounds (``db.connect_kwargs``).

    A new DSN (the ``finetune_db`` connection changed) gets its own pool.

    :param dsn: libpq URI of the finetune database.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(dsn)
        if pool is None:
            kwargs = connect_kwargs(dsn, session=PAGE_SESSION)
            pool = ConnectionPool(
                dsn,
                kwargs={**kwargs, "row_factory": dict_row, "autocommit": True},
                min_size=0,
                max_size=POOL_MAX_SIZE,
                # waiting for a connection is bounded like making one; a pool of a server that is
                # down stops trying in the background after as long
                timeout=float(kwargs.get("connect_timeout", 10)) + 1,
                reconnect_timeout=float(kwargs.get("connect_timeout", 10)) + 1,
                reset=_reset,
                open=True,
                name="finetune-ui",
            )
            _POOLS[dsn] = pool
        return pool


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection]:
    """A read-only pooled connection with the settings' bounds (the page never writes).

    :param dsn: libpq URI of the finetune database.
    :raises psycopg.OperationalError: none could be had in time (``PoolTimeout`` is one).
    """
    with pool_for(dsn).connection() as conn:
        yield conn


def has_finetune_tables(conn: psycopg.Connection) -> bool:
    """Whether the database holds the finetune schema (a run can fail before ``migrate``)."""
    row = conn.execute("SELECT to_regclass('finetune_runs') IS NOT NULL AS ok").fetchone()
    return bool(row["ok"])


def resolve_run_id(
    conn: psycopg.Connection, *, dag_id: str, airflow_run_id: str, candidates: Sequence[str] = ()
) -> str | None:
    """The finetune run of an Airflow run: its link row, else a candidate id that exists.

    :param conn: from :func:`connect`.
    :param dag_id: the DAG id.
    :param airflow_run_id: Airflow's run id (or a finetune run id).
    :param candidates: further finetune run ids to try, in order (e.g. the one the run's conf
        and as-of give, for runs registered before the link table existed).
    """
    linked = conn.execute(LINKED_RUN_SQL, {"dag_id": dag_id, "airflow_run_id": airflow_run_id}).fetchone()
    if linked:
        return linked["run_id"]
    found = conn.execute(RUN_OF_DAG_SQL, {"candidates": [airflow_run_id, *candidates], "dag_id": dag_id}).fetchone()
    return found["run_id"] if found else None


def airflow_runs_of(conn: psycopg.Connection, run_id: str) -> list[str]:
    """The Airflow runs linked to a finetune run (reruns of one sweep share it)."""
    rows = conn.execute(
        "SELECT airflow_run_id FROM finetune_airflow_runs WHERE run_id = %(run_id)s ORDER BY registered_at",
        {"run_id": run_id},
    ).fetchall()
    return [row["airflow_run_id"] for row in rows]


@contextmanager
def _hash_joins(conn: psycopg.Connection) -> Iterator[None]:
    """Join a whole run's model rows to its baselines by hashing, not by one index probe per row.

    The planner underestimates a run's rows and picks a nested loop of three index probes per
    model row: 0.55 s for the table of a 60,000-key run, 0.14 s hashed (the whole-run fold
    download: 1.3 s against 0.44 s; ``benchmarks/bench_ui.py``). A reporting query can say so.
    """
    with conn.transaction():
        conn.execute("SET LOCAL enable_nestloop = off")
        yield


def fetch_verdict(conn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """The gate's verdict, computed now (``finetune_sweep.gate.GATE_SQL``).

    :returns: ``ok``, ``n_problems``, ``problems``, and ``checked_at`` None (not recorded).
    """
    return {**conn.execute(GATE_SQL, {"run_id": run_id}).fetchone(), "checked_at": None}


def fetch_recorded_verdict(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    """The verdict ``check_baselines`` recorded, if no row of the run changed since; else None.

    :returns: ``ok``, ``n_problems``, ``problems``, ``dag_id``, ``airflow_run_id`` (of the run
        whose gate decided) and ``checked_at``.
    """
    if conn.execute("SELECT to_regclass('finetune_gate_verdicts') IS NOT NULL AS ok").fetchone()["ok"] is not True:
        return None  # a database migrated before V008
    return conn.execute(RECORDED_VERDICT_SQL, {"run_id": run_id}).fetchone()


def fetch_groups(conn: psycopg.Connection, run_id: str) -> list[dict[str, Any]]:
    """Model vs baselines per factor x crypto x cost basis (means over folds)."""
    with _hash_joins(conn):
        return conn.execute(GROUPS_SQL, {"run_id": run_id}).fetchall()


def fetch_folds(
    conn: psycopg.Connection,
    run_id: str,
    *,
    factor: str,
    crypto: str,
    cost_bps: int | None = None,
    slippage_bps: int | None = None,
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """One page of one factor and crypto's folds with their three baselines (index probes: a
    few rows); the cost filters narrow it to one group.

    :param limit: rows of the page.
    :param offset: rows before it.
    """
    params = {
        "run_id": run_id,
        "factor": factor,
        "crypto": crypto,
        "cost_bps": cost_bps,
        "slippage_bps": slippage_bps,
        "limit": limit,
        "offset": offset,
    }
    return conn.execute(FOLDS_PAGE_SQL, params).fetchall()


def stream_rows(conn: psycopg.Connection, table: str, run_id: str, *, cap: int, batch: int = 2000) -> Iterator[dict]:
    """The rows of a download, at most ``cap``, from a server-side cursor ``batch`` rows at a time.

    Memory stays one batch whatever the run's size (a 60,000-key run's folds were 36 MB of JSON
    built in memory). The whole-run joins hash (:func:`_hash_joins`), in the cursor's transaction.

    :param conn: from :func:`connect` (autocommit: the transaction here holds the cursor).
    :param table: ``rows`` (groups) or ``folds``.
    :param run_id: the finetune run id.
    :param cap: the row cap the response states.
    """
    sql = GROUPS_SQL if table == "rows" else FOLDS_SQL
    params = {"run_id": run_id, "factor": None, "crypto": None, "cost_bps": None, "slippage_bps": None}
    with _hash_joins(conn), conn.cursor(name=f"finetune_download_{table}") as cursor:
        cursor.itersize = batch
        # the SQL ends with its ORDER BY: the cap keeps the first rows of the table's own order
        cursor.execute(sql.rstrip().rstrip(";") + "\nLIMIT %(cap)s", {**params, "cap": cap})
        yield from cursor


def count_rows(conn: psycopg.Connection, table: str, run_id: str) -> int:
    """How many rows a download of the run has in all (the response states it beside the cap)."""
    if table == "folds":
        row = conn.execute("SELECT count(*) AS n FROM finetune_results WHERE run_id = %(run_id)s", {"run_id": run_id})
    else:
        row = conn.execute(
            "SELECT count(*) AS n FROM (SELECT DISTINCT factor, crypto, cost_bps, slippage_bps "
            "FROM finetune_results WHERE run_id = %(run_id)s) AS g",
            {"run_id": run_id},
        )
    return int(row.fetchone()["n"])


def fetch_run_page(
    dsn: str, run_id: str, *, airflow_run_id: str | None = None, conn: psycopg.Connection | None = None
) -> RunPage | None:
    """The run tab's data, or None when the finetune run is not registered.

    The verdict is the one ``check_baselines`` recorded while it still holds (no row of the run
    written since). Otherwise (the gate has not run yet, or rows changed since) the gate's query
    runs now, on a second connection at once with the table's, so the page costs the slower of
    the two rather than their sum. Both then run without parallel workers: on two cores, workers
    competing with the other statement made the page slower (0.54 s against 0.38 s), while the
    table's query alone gains from them (0.16 s against 0.25 s).

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param airflow_run_id: count the pod attempts of this Airflow run only (None: every run).
    :param conn: the request's connection, for the table's part (None: one from the pool).
    """
    from concurrent.futures import ThreadPoolExecutor

    def verdict() -> dict[str, Any]:
        with connect(dsn) as verdict_conn:
            verdict_conn.execute(NO_PARALLEL_WORKERS)
            return fetch_verdict(verdict_conn, run_id)

    with contextlib.nullcontext(conn) if conn is not None else connect(dsn) as conn:
        run = conn.execute(RUN_SQL, {"run_id": run_id}).fetchone()
        if run is None:
            return None
        recorded = fetch_recorded_verdict(conn, run_id)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending_verdict = None
            if recorded is None:
                pending_verdict = pool.submit(verdict)
                conn.execute(NO_PARALLEL_WORKERS)
            groups = fetch_groups(conn, run_id)
            pods = conn.execute(PODS_SQL, {"run_id": run_id, "airflow_run_id": airflow_run_id}).fetchall()
            findings = conn.execute(FINDINGS_SQL, {"run_id": run_id}).fetchall()
            headline = findings_headline(conn, run_id) if findings else None
            return RunPage(
                run=run,
                verdict=recorded or pending_verdict.result(),
                groups=groups,
                pods=pods,
                findings=findings,
                findings_headline=headline,
            )


def findings_headline(conn: psycopg.Connection, run_id: str) -> str:
    """The stored findings' one-line answer, as the report prints it (counts, models, the floor)."""
    return headline(**fetch_headline_arguments(conn, run_id))


def fetch_history(conn: psycopg.Connection, dag_id: str, *, limit: int = HISTORY_RUNS) -> list[dict[str, Any]]:
    """Per run (the latest ``limit`` of the DAG, oldest first) and factor: edge, percentile, memory."""
    # Over many runs a nested loop of index probes per model row is 10x slower than hashing.
    with _hash_joins(conn):
        return conn.execute(HISTORY_SQL, {"dag_id": dag_id, "limit": limit}).fetchall()
