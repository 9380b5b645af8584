"""Recording a pod attempt from the Airflow side: the ``finetune_pod_attempts`` row of an ended
attempt, written best effort on a real database (a lost record is logged, never raised)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from factor_pods import RUN_ID, recorded_attempts, recorded_manifest
from finetune_sweep.operators.recording import attempt_row, record_quietly
from finetune_sweep.pods.termination import PodTermination
from finetune_sweep.sizing.profiles import PROFILES

GI = 2**30
AIRFLOW_RUN_ID = "scheduled__2026-06-07T00:00:00+00:00"
LOG = logging.getLogger("tests.recording")


def _termination(**overrides: Any) -> PodTermination:
    fields: dict[str, Any] = {
        "reason": "OOMKilled",
        "exit_code": 137,
        "oom_killed": True,
        "memory_limit_bytes": 8 * GI,
        "peak_memory_bytes": 7 * GI,
        "seconds": 42.5,
    }
    fields.update(overrides)
    return PodTermination(**fields)


def _row(termination: PodTermination, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "factor": "base_features",
        "airflow_run_id": AIRFLOW_RUN_ID,
        "attempt": 2,
        "profile": PROFILES["MEDIUM"],
        "limit": 16 * GI,
        "workers": 2,
    }
    fields.update(overrides)
    return attempt_row(termination, **fields)


@pytest.mark.parametrize(
    ("termination", "exit_reason"),
    [
        # an OOM records the bare reason: the recommender matches it as text
        pytest.param(_termination(detail="allocating"), "OOMKilled", id="oom"),
        pytest.param(
            _termination(reason="Error", exit_code=1, oom_killed=False, detail="finetune: error: bad crypto"),
            "Error: exit 1: finetune: error: bad crypto",
            id="error-with-what-the-pod-said",
        ),
        pytest.param(
            _termination(reason="Evicted", exit_code=137, oom_killed=False, disrupted=True),
            "Disrupted: Evicted",
            id="disrupted",
        ),
        pytest.param(
            _termination(reason="DeadlineExceeded", exit_code=143, oom_killed=False, detail="active too long"),
            "DeadlineExceeded: active too long",
            id="deadline",
        ),
    ],
)
def test_attempt_row(termination: PodTermination, exit_reason: str) -> None:
    assert _row(termination) == {
        "run_id": RUN_ID,
        "factor": "base_features",
        "airflow_run_id": AIRFLOW_RUN_ID,
        "attempt": 2,
        "profile": "MEDIUM",
        # the limit the pod ran with, as passed (not the termination's own reading)
        "memory_limit_bytes": 16 * GI,
        "peak_memory_bytes": 7 * GI,
        "exit_reason": exit_reason,
        "duration_seconds": 42.5,
        "workers": 2,
    }


def test_attempt_row_keeps_unknowns_unknown() -> None:
    row = _row(_termination(peak_memory_bytes=None, seconds=None), factor=None)

    assert (row["factor"], row["peak_memory_bytes"], row["duration_seconds"]) == (None, None, None)


@pytest.mark.parametrize(
    ("termination", "factor_failed", "manifest"),
    [
        pytest.param(_termination(), True, ("failed", "MEDIUM", "OOMKilled"), id="oom-fails-the-factor"),
        pytest.param(
            _termination(reason="Evicted", oom_killed=False, disrupted=True),
            False,
            # left to its next try: still planned, on its planned profile, told why the attempt ended
            ("planned", "STANDARD", "Disrupted: Evicted"),
            id="disruption-leaves-it-planned",
        ),
    ],
)
def test_record_quietly_writes_the_attempt(
    registered_db: str,
    termination: PodTermination,
    factor_failed: bool,
    manifest: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    row = _row(termination)

    recorded = record_quietly("finetune_db", row, factor_failed=factor_failed, what="attempt 2", log=LOG)

    assert recorded is True
    assert recorded_attempts(registered_db) == [(2, "MEDIUM", 16 * GI, 7 * GI, row["exit_reason"])]
    assert recorded_manifest(registered_db) == manifest
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_record_quietly_twice_keeps_one_row(registered_db: str) -> None:
    row = _row(_termination())

    assert record_quietly("finetune_db", row, factor_failed=True, what="attempt 2", log=LOG)
    assert record_quietly("finetune_db", row, factor_failed=True, what="attempt 2", log=LOG)

    assert recorded_attempts(registered_db) == [(2, "MEDIUM", 16 * GI, 7 * GI, "OOMKilled")]


def test_record_quietly_logs_an_unreachable_database_without_its_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FINETUNE_UNREACHABLE",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 1,
                "login": "ft",
                "password": "s3cret-pw",
                "schema": "x",
            }
        ),
    )
    what = "attempt 2 of factor base_features (OOMKilled)"

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        recorded = record_quietly("finetune_unreachable", _row(_termination()), factor_failed=True, what=what, log=LOG)

    assert recorded is False
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(f"could not record {what}: OperationalError: ")
    assert "s3cret-pw" not in caplog.text


def test_record_quietly_logs_a_row_that_lacks_a_field(registered_db: str, caplog: pytest.LogCaptureFixture) -> None:
    row = _row(_termination())
    del row["airflow_run_id"]

    with caplog.at_level(logging.ERROR, logger=LOG.name):
        recorded = record_quietly("finetune_db", row, factor_failed=True, what="attempt 2", log=LOG)

    assert recorded is False
    assert "could not record attempt 2: ValueError: attempt record lacks airflow_run_id" in caplog.text
    assert recorded_attempts(registered_db) == []
    assert recorded_manifest(registered_db) == ("planned", "STANDARD", None)
