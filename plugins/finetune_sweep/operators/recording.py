"""Recording a pod attempt from the Airflow side: its ``finetune_pod_attempts`` row, written best effort.

The operator records an attempt it classified (or one the task itself ended); the trigger records
the attempt it watches when a user kills the deferred task. Either way a lost record is logged and
never changes what the task reports: the pod's outcome is the task's, the record only its history.
Written with :mod:`finetune_sweep.db.attempts` (psycopg only): a worker never needs the pod package.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from finetune_sweep.db.attempts import record_attempt
from finetune_sweep.db.dsn import dsn_from_connection, redact

if TYPE_CHECKING:
    from finetune_sweep.pods.termination import PodTermination
    from finetune_sweep.sizing.profiles import PodProfile

__all__ = ["attempt_row", "record_quietly"]


def attempt_row(
    termination: PodTermination,
    *,
    run_id: str,
    factor: str | None,
    airflow_run_id: str,
    attempt: int,
    profile: PodProfile,
    limit: int,
    workers: int | None = None,
) -> dict[str, Any]:
    """The ``finetune_pod_attempts`` row of an ended attempt (:func:`finetune_sweep.db.attempts.record_attempt`).

    :param termination: how the attempt ended.
    :param run_id: the finetune run id (what the pod writes under).
    :param factor: the factor.
    :param airflow_run_id: the Airflow run of the attempt.
    :param attempt: the try number the attempt is recorded under.
    :param profile: the profile it ran on.
    :param limit: its memory limit in bytes.
    :param workers: the worker processes it was told to run (None: not known).
    """
    return {
        "run_id": run_id,
        "factor": factor,
        "airflow_run_id": airflow_run_id,
        "attempt": attempt,
        "profile": profile.name,
        "memory_limit_bytes": limit,
        "peak_memory_bytes": termination.peak_memory_bytes,
        "exit_reason": termination.recorded_reason,
        "duration_seconds": termination.seconds,
        "workers": workers,
    }


def record_quietly(
    conn_id: str,
    row: Mapping[str, Any],
    *,
    factor_failed: bool,
    what: str,
    log: logging.Logger | logging.LoggerAdapter,
) -> bool:
    """Record the attempt (``finetune_pod_attempts`` and the manifest); log any error, never raise.

    :param conn_id: the Airflow connection of the finetune database.
    :param row: the attempt (:func:`attempt_row`).
    :param factor_failed: the factor failed with this attempt (else it is left to its next try).
    :param what: the attempt as the error message names it (``attempt 2 of factor f (OOMKilled)``).
    :param log: where a lost record is reported (without the DSN's password).
    :returns: whether the attempt was recorded.
    """
    dsn: str | None = None
    try:
        dsn = dsn_from_connection(conn_id)
        record_attempt(dsn, row, factor_failed=factor_failed)
    except Exception as exc:  # noqa: BLE001 - a lost record is logged; the attempt's outcome stands
        log.error("could not record %s: %s", what, redact(f"{type(exc).__name__}: {exc}", [dsn]))
        return False
    return True
