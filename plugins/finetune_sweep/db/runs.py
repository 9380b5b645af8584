"""Registering a run: ``finetune_runs``, its factor manifest and the Airflow run that registered it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from finetune_sweep.db.connect import connect
from finetune_sweep.sizing.quantities import parse_quantity
from finetune_sweep.sizing.recommend import MAP_REASON, StartChoice

UPSERT_RUN_SQL = """
INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params)
VALUES (%(run_id)s, %(dag_id)s, %(strategy)s, %(as_of)s, %(params)s)
ON CONFLICT (run_id) DO UPDATE
SET dag_id = EXCLUDED.dag_id, strategy = EXCLUDED.strategy, as_of = EXCLUDED.as_of, params = EXCLUDED.params
"""

# A re-registration (the run was cleared) starts the factor afresh: the manifest says "planned"
# until its pod reports again, so the gate cannot pass on a previous attempt's status.
UPSERT_FACTOR_SQL = """
INSERT INTO finetune_run_factors
    (run_id, factor, profile, status, memory_limit_bytes, attempt, map_profile, profile_reason)
VALUES (%(run_id)s, %(factor)s, %(profile)s, 'planned', %(memory_limit_bytes)s, 1, %(map_profile)s,
        %(profile_reason)s)
ON CONFLICT (run_id, factor) DO UPDATE
SET profile = EXCLUDED.profile, status = 'planned', memory_limit_bytes = EXCLUDED.memory_limit_bytes,
    attempt = 1, peak_memory_bytes = NULL, exit_reason = NULL, updated_at = now(),
    map_profile = EXCLUDED.map_profile, profile_reason = EXCLUDED.profile_reason
"""

# The UI resolves an Airflow run to its finetune run here (several Airflow runs may rerun one
# finetune run). registered_at is the latest registration: a cleared run registers again, and the
# report finds the attempts of this registration as the ones that finished after it.
UPSERT_AIRFLOW_RUN_SQL = """
INSERT INTO finetune_airflow_runs (dag_id, airflow_run_id, run_id)
VALUES (%(dag_id)s, %(airflow_run_id)s, %(run_id)s)
ON CONFLICT (dag_id, airflow_run_id) DO UPDATE
SET run_id = EXCLUDED.run_id, registered_at = now()
"""


def register_run(
    dsn: str,
    *,
    run_id: str,
    dag_id: str,
    as_of: str,
    params: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    strategy: str,
    choices: Mapping[str, StartChoice] | None = None,
    airflow_run_id: str | None = None,
) -> None:
    """Upsert the run, its manifest (one ``planned`` row per factor) and the Airflow-run link, in one transaction.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param dag_id: the DAG id.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param params: the validated params (stored as jsonb; the gate derives the expected keys).
    :param strategy: the model family the run fine-tunes (``finetune_runs.strategy``).
    :param entries: the entries the pods start from (factor, profile, container_resources).
    :param choices: factor -> the starting-profile choice (map profile and reason on the manifest);
        a factor without one started on its map profile.
    :param airflow_run_id: the Airflow run being registered (``finetune_airflow_runs``), if any.
    """
    from psycopg.types.json import Jsonb

    as_of_dt = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    choices = choices or {}
    with connect(dsn) as conn, conn.transaction():
        conn.execute(
            UPSERT_RUN_SQL,
            {
                "run_id": run_id,
                "dag_id": dag_id,
                "strategy": strategy,
                "as_of": as_of_dt,
                "params": Jsonb(dict(params)),
            },
        )
        with conn.cursor() as cur:
            cur.executemany(
                UPSERT_FACTOR_SQL,
                [
                    {
                        "run_id": run_id,
                        "factor": entry["factor"],
                        "profile": entry["profile"],
                        "memory_limit_bytes": parse_quantity(entry["container_resources"]["limits"]["memory"]),
                        "map_profile": choice.map_profile if choice else entry["profile"],
                        "profile_reason": choice.reason if choice else MAP_REASON,
                    }
                    for entry in entries
                    for choice in [choices.get(entry["factor"])]
                ],
            )
        if airflow_run_id is not None:
            conn.execute(UPSERT_AIRFLOW_RUN_SQL, {"dag_id": dag_id, "airflow_run_id": airflow_run_id, "run_id": run_id})
