"""Pod attempts from the Airflow side: the worker records each ended attempt
(``finetune_pod_attempts`` and the manifest ``finetune_run_factors``), the OOM ladder counts a
round's attempts, and the recommender reads the windowed history.

psycopg alone: a worker image needs the providers and psycopg, never the pod package (numpy,
pandas) that writes the pod's own rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finetune_sweep.db.connect import NotMigrated, connect
from finetune_sweep.outcomes import DISRUPTED_PREFIX, OOM_REASON

# The pod's own record of the same attempt wins (more precise), except against an OOM kill.
UPSERT_FAILED_FACTOR_SQL = """
INSERT INTO finetune_run_factors AS f
    (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes, exit_reason, attempt, updated_at)
VALUES (%(run_id)s, %(factor)s, %(profile)s, 'failed', %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(attempt)s, now())
ON CONFLICT (run_id, factor) DO UPDATE SET
    status = 'failed',
    profile = EXCLUDED.profile,
    memory_limit_bytes = EXCLUDED.memory_limit_bytes,
    exit_reason = CASE
        WHEN f.attempt = EXCLUDED.attempt AND f.exit_reason IS NOT NULL
             AND EXCLUDED.exit_reason <> %(oom_reason)s THEN f.exit_reason
        ELSE EXCLUDED.exit_reason END,
    peak_memory_bytes = CASE
        WHEN f.attempt = EXCLUDED.attempt THEN GREATEST(f.peak_memory_bytes, EXCLUDED.peak_memory_bytes)
        ELSE EXCLUDED.peak_memory_bytes END,
    attempt = EXCLUDED.attempt,
    updated_at = now()
"""

UPSERT_ATTEMPT_SQL = """
INSERT INTO finetune_pod_attempts AS a
    (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
     duration_seconds, workers, finished_at)
VALUES (%(run_id)s, %(factor)s, %(airflow_run_id)s, %(attempt)s, %(profile)s, %(memory_limit_bytes)s, %(peak_memory_bytes)s,
        %(exit_reason)s, %(duration_seconds)s, %(workers)s, now())
ON CONFLICT (run_id, factor, airflow_run_id, attempt) DO UPDATE SET
    workers = COALESCE(a.workers, EXCLUDED.workers),
    exit_reason = CASE WHEN EXCLUDED.exit_reason = %(oom_reason)s THEN EXCLUDED.exit_reason ELSE a.exit_reason END,
    peak_memory_bytes = GREATEST(a.peak_memory_bytes, EXCLUDED.peak_memory_bytes),
    memory_limit_bytes = COALESCE(a.memory_limit_bytes, EXCLUDED.memory_limit_bytes),
    duration_seconds = COALESCE(a.duration_seconds, EXCLUDED.duration_seconds)
"""

# A retried attempt (disruption, kill) leaves the factor to its next try: the manifest is not
# marked failed, only told why the attempt ended (a factor already done keeps its record).
NOTE_INTERRUPTED_FACTOR_SQL = """
UPDATE finetune_run_factors
SET exit_reason = %(exit_reason)s, attempt = %(attempt)s, updated_at = now()
WHERE run_id = %(run_id)s AND factor = %(factor)s AND status <> 'done'
"""

_ATTEMPT_FIELDS = (
    "run_id",
    "factor",
    "airflow_run_id",
    "attempt",
    "profile",
    "memory_limit_bytes",
    "peak_memory_bytes",
    "exit_reason",
    "duration_seconds",
)


def record_attempt(dsn: str, attempt: Mapping[str, Any], *, factor_failed: bool) -> None:
    """Record one ended pod attempt: its ``finetune_pod_attempts`` row and the manifest.

    One transaction. ``factor_failed`` marks the manifest ``failed`` (an OOM or a fail-fast
    error); otherwise (a disrupted or killed attempt) only its exit reason and attempt are noted.

    :param dsn: the libpq URI (never logged).
    :param attempt: the fields of :data:`_ATTEMPT_FIELDS`, and optionally ``workers``.
    :param factor_failed: whether this attempt failed the factor (for now).
    :raises psycopg.Error: the database refused or could not be reached (the caller logs it).
    """
    missing = [name for name in _ATTEMPT_FIELDS if name not in attempt]
    if missing:
        raise ValueError(f"attempt record lacks {', '.join(missing)}")
    row = {
        **{name: attempt[name] for name in _ATTEMPT_FIELDS},
        "workers": attempt.get("workers"),  # None: not known to the recorder
        "oom_reason": OOM_REASON,
    }
    # db.connect's bounds: a locked manifest row or a stuck server must not hold the task (and its
    # classification) beyond the settings' lock and statement timeouts
    with connect(dsn) as conn, conn.transaction():
        conn.execute(UPSERT_FAILED_FACTOR_SQL if factor_failed else NOTE_INTERRUPTED_FACTOR_SQL, row)
        conn.execute(UPSERT_ATTEMPT_SQL, row)


COUNT_ROUND_ATTEMPTS_SQL = """
SELECT count(*) FILTER (WHERE exit_reason = %(oom_reason)s),
       count(*) FILTER (WHERE exit_reason LIKE %(disrupted)s)
FROM finetune_pod_attempts
WHERE run_id = %(run_id)s AND factor = %(factor)s AND airflow_run_id = %(airflow_run_id)s
  AND attempt >= %(since_attempt)s
"""


def count_round_attempts(
    dsn: str, *, run_id: str, factor: str, airflow_run_id: str, since_attempt: int
) -> tuple[int, int]:
    """OOMs and disruptions recorded for a factor's tries since ``since_attempt`` (one round).

    The operator's fallback when no task state store is available: the same classified events,
    read back from the attempt history.

    :param dsn: the libpq URI.
    :param run_id: the finetune run id.
    :param factor: the factor.
    :param airflow_run_id: the Airflow run of the tries.
    :param since_attempt: the first try number of the round.
    """
    params = {
        "run_id": run_id,
        "factor": factor,
        "airflow_run_id": airflow_run_id,
        "since_attempt": since_attempt,
        "oom_reason": OOM_REASON,
        "disrupted": DISRUPTED_PREFIX + "%",
    }
    with connect(dsn) as conn:
        ooms, disruptions = conn.execute(COUNT_ROUND_ATTEMPTS_SQL, params).fetchone()
    return int(ooms), int(disruptions)


# Every pod attempt (V007 keys them by run, factor, Airflow run and attempt: reruns keep theirs).
HISTORY_SQL = """
SELECT run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
       duration_seconds, workers, finished_at
FROM finetune_pod_attempts
"""

# Before V009 every pod ran one process: NULL workers, which the recommender reads as 1.
PRE_V009_HISTORY_SQL = HISTORY_SQL.replace("workers,", "NULL::integer AS workers,")
# V003 to V006: the attempts of an Airflow rerun of the same finetune run overwrote each other.
PRE_V007_HISTORY_SQL = PRE_V009_HISTORY_SQL.replace("airflow_run_id,", "''::text AS airflow_run_id,")

# Before V003 only the latest attempt of each (run, factor) was kept: better than nothing.
FALLBACK_HISTORY_SQL = """
SELECT run_id, factor, ''::text AS airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes,
       exit_reason, NULL::double precision AS duration_seconds, NULL::integer AS workers, updated_at AS finished_at
FROM finetune_run_factors
WHERE peak_memory_bytes IS NOT NULL OR exit_reason IS NOT NULL
"""

# The window: a factor's attempts that finished within the last `days` days, in its last `runs`
# finetune runs (ranked by their latest attempt; every Airflow rerun of a run is that run). A NULL
# bound is no bound. The age is measured on the database clock, the clock that stamped
# finished_at: the run's as-of is market time, unrelated to when pods ran (a backfill of January
# runs today's code, and today's evidence about its memory is what counts).
WINDOWED_HISTORY_SQL = """
WITH history AS ({source}),
in_window AS (
    SELECT * FROM history
    WHERE (%(days)s::integer IS NULL OR finished_at >= now() - make_interval(days => %(days)s::integer))
      AND (%(factors)s::text[] IS NULL OR factor = ANY(%(factors)s::text[]))
      AND (%(dag_id)s::text IS NULL OR run_id IN (SELECT run_id FROM finetune_runs WHERE dag_id = %(dag_id)s::text))
),
recent_runs AS (
    SELECT factor, run_id,
           row_number() OVER (PARTITION BY factor ORDER BY max(finished_at) DESC, run_id DESC) AS recency
    FROM in_window
    GROUP BY factor, run_id
)
SELECT h.*
FROM in_window AS h
JOIN recent_runs AS r USING (factor, run_id)
WHERE %(runs)s::integer IS NULL OR r.recency <= %(runs)s::integer
ORDER BY h.factor, h.finished_at, h.run_id, h.airflow_run_id, h.attempt
"""


def fetch_history(
    dsn: str,
    *,
    history_runs: int | None = None,
    history_days: int | None = None,
    factors: Sequence[str] | None = None,
    dag_id: str | None = None,
) -> list[dict[str, Any]]:
    """Recorded pod attempts, oldest first per factor (see :func:`read_history`), on a connection of its own.

    :param dsn: libpq URI of the finetune database.
    :raises NotMigrated: the database has neither table.
    """
    from psycopg.rows import dict_row

    with connect(dsn, row_factory=dict_row) as conn:
        return read_history(conn, history_runs=history_runs, history_days=history_days, factors=factors, dag_id=dag_id)


def read_history(
    conn: Any,
    *,
    history_runs: int | None = None,
    history_days: int | None = None,
    factors: Sequence[str] | None = None,
    dag_id: str | None = None,
) -> list[dict[str, Any]]:
    """Recorded pod attempts, oldest first per factor, from ``finetune_pod_attempts``.

    (From ``finetune_run_factors`` on a database before V003: the latest attempt of each run.)

    :param conn: a psycopg connection with ``dict_row`` rows.
    :param history_runs: keep each factor's attempts in its last N finetune runs (None: all runs).
    :param history_days: keep attempts that finished within the last N days (None: any age).
    :param factors: only these factors (None: every factor).
    :param dag_id: only the runs of this DAG (None: every run, by-hand ones too).
    :raises NotMigrated: the database has neither table.
    """
    found = conn.execute(
        "SELECT to_regclass('finetune_pod_attempts') IS NOT NULL AS attempts, "
        "to_regclass('finetune_run_factors') IS NOT NULL AS factors, "
        "EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'finetune_pod_attempts' AND column_name = 'airflow_run_id') AS per_airflow_run, "
        "EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'finetune_pod_attempts' AND column_name = 'workers') AS with_workers"
    ).fetchone()
    if not (found["attempts"] or found["factors"]):
        raise NotMigrated(
            "no finetune tables in this database (wrong database, or not migrated yet: python -m finetune migrate)"
        )
    if not found["attempts"]:
        source = FALLBACK_HISTORY_SQL
    else:
        if not found["per_airflow_run"]:
            source = PRE_V007_HISTORY_SQL
        else:
            source = HISTORY_SQL if found["with_workers"] else PRE_V009_HISTORY_SQL
    window = {
        "runs": history_runs,
        "days": history_days,
        "factors": list(factors) if factors is not None else None,
        "dag_id": dag_id,
    }
    return list(conn.execute(WINDOWED_HISTORY_SQL.format(source=source), window).fetchall())
