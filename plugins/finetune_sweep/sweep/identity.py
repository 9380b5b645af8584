"""Which sweep a DAG run is: its as-of and its finetune run id.

The finetune ``run_id`` is ``<dag_id>__<as_of>__<hash of the validated params>``, e.g.
``finetune_sweep__2026-06-07T00:00:00Z__1a2b3c4d``. It is stable across task retries and clears,
and a rerun of the same sweep (same as-of, same params: a cleared run, or a second ``airflow dags
test`` at the same logical date, whose Airflow run id embeds the wall clock) is the same finetune
run, so its writes upsert instead of piling up. Different params (or other data) give a different
run. ``plan`` computes it once and every later task takes it from there. ``as_of`` is the run's
data interval end (DESIGN 5: never the wall clock).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from finetune_sweep.findings import DEFAULT_N_SHIFTS
from finetune_sweep.settings import DEFAULT_MODEL
from finetune_sweep.sweep.params import PlanError


def format_as_of(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (whole seconds: bars are far coarser).

    :param moment: an aware datetime.
    """
    if moment.tzinfo is None:
        raise PlanError(f"as_of must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_of_from_context(context: Mapping[str, Any]) -> str:
    """The run's as-of: its data interval end, else its logical date, else its ``run_after``.

    Never the wall clock: a scheduled run ends its interval at the schedule tick, ``dags test``
    at the logical date it is given, and a manual trigger at its recorded trigger time, so every
    task of a run (and any re-run of it) sees the same as-of.

    :param context: the task context.
    """
    dag_run = context.get("dag_run")
    for moment in (
        context.get("data_interval_end"),
        context.get("logical_date"),
        getattr(dag_run, "run_after", None),
    ):
        if moment is not None:
            return format_as_of(moment)
    raise PlanError("the dag run has no data interval end, logical date or run_after to take as_of from")


def finetune_run_id(*, dag_id: str, as_of: str, params: Mapping[str, Any], data_uri: str | None = None) -> str:
    """The finetune run id of a sweep: DAG, as-of and a hash of its validated params and data.

    :param dag_id: the DAG id.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param params: the validated params (:func:`validate_params`; defaults filled, so an omitted
        param and its default give the same id). :data:`NOT_IN_RUN_IDENTITY` are left out, and
        :data:`LEFT_OUT_AT_DEFAULT` when they hold their default.
    :param data_uri: the data the pods read (``FINETUNE_DATA_URI``), as given: the same params on
        other data are another sweep, never an upsert over its rows. None (the built-in synthetic
        market) leaves it out, so the ids of such sweeps are those from before it counted.

    The ``model`` is part of the sweep (another model is another run), except the built-in
    ``ridge_long_flat``: left out, so that a default sweep keeps the id it had before the param.
    """
    identity = {
        key: value
        for key, value in params.items()
        if key not in NOT_IN_RUN_IDENTITY and not (key in LEFT_OUT_AT_DEFAULT and value == LEFT_OUT_AT_DEFAULT[key])
    }
    if data_uri is not None:
        identity["data_uri"] = data_uri
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return f"{dag_id}__{as_of}__{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


# Params that only read the stored rows afterwards (the findings step), never what a pod computes:
# left out of the run id, so a sweep keeps the id it had before the param existed, and asking
# for another FDR reruns onto the same rows (the findings step replaces the run's findings).
NOT_IN_RUN_IDENTITY = ("fdr_q",)

# Params added after sweeps already had ids: at their default they are left out, so a sweep keeps
# the id it had before the param existed (a rerun upserts every key, recomputed by today's pod);
# any other value is another sweep. n_shifts: before it, the pod shifted n_seeds times.
LEFT_OUT_AT_DEFAULT = {"n_shifts": DEFAULT_N_SHIFTS, "model": DEFAULT_MODEL}
