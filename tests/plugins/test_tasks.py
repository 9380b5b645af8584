"""Tests of finetune_sweep.tasks: the plan, register, findings and report task bodies."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from finetune_rows import (
    GI,
    INJECTION,
    RUN_ID,
    make_context,
    make_params,
    record_attempt,
    set_p_values,
)
from finetune_sweep import tasks
from finetune_sweep.settings import get_settings
from finetune_sweep.sizing.profiles import SIZING_MAP


def test_plan_from_context_fails_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.delenv("FINETUNE_SIZING", raising=False)

    with pytest.raises(AirflowFailException, match="cryptos"):
        tasks.plan(make_context(params=make_params(cryptos=[INJECTION])))

    monkeypatch.setenv("FINETUNE_SIZING", "not json")
    with pytest.raises(AirflowFailException, match="FINETUNE_SIZING"):
        tasks.plan(make_context())


@pytest.mark.parametrize(
    ("data_uri", "message"),
    [
        pytest.param(
            "ftp://host/data",
            "FINETUNE_DATA_URI='ftp://host/data' is not a data location; allowed: "
            "synthetic://, file:///absolute/dir, s3://bucket/prefix, gs://bucket/prefix",
            id="scheme",
        ),
        pytest.param(
            "file://data/hourly", "FINETUNE_DATA_URI='file://data/hourly' is not a data location", id="relative-file"
        ),
        pytest.param("s3:///prefix", "FINETUNE_DATA_URI='s3:///prefix' is not a data location", id="no-bucket"),
        pytest.param(
            "s3://key:s3cret@bucket/x", "FINETUNE_DATA_URI='s3://bucket/x' holds credentials", id="credentials"
        ),
    ],
)
def test_plan_refuses_a_data_uri_no_pod_could_read(
    monkeypatch: pytest.MonkeyPatch, data_uri: str, message: str
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("FINETUNE_DATA_URI", data_uri)
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException) as refused:
            tasks.plan(make_context(params=make_params(factors=["base_features"])))
    finally:
        get_settings.cache_clear()

    assert str(refused.value).startswith(f"invalid sweep: {message}")
    assert "s3cret" not in str(refused.value)


def test_plan_from_context_reads_overrides_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PROFILES", '{"STANDARD": {"memory": "256Mi"}}')
    monkeypatch.delenv("FINETUNE_SIZING", raising=False)

    entries = tasks.plan(make_context(params=make_params(factors=["base_features"])))

    run_id = entries[0]["arguments"][2]
    assert entries[0]["container_resources"]["limits"]["memory"] == "256Mi"
    assert run_id == tasks.sweep_run_id(
        make_context(params=make_params(factors=["base_features"])), data_uri=get_settings().data_uri
    )
    assert run_id.startswith("finetune_sweep__2026-06-07T00:00:00Z__")
    assert entries[0]["labels"]["finetune/run-id"] != run_id, "sanitised for labels (':' is not allowed)"


class _RecordingTaskInstance:
    """The TaskInstance methods the tasks use: XComs pushed are recorded, and pulled back."""

    def __init__(self, pushed: dict[str, Any] | None = None) -> None:
        self.pushed: dict[str, Any] = dict(pushed or {})

    def xcom_push(self, *, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, *, task_ids: str, key: str) -> Any:
        return self.pushed.get(key)


@pytest.fixture
def finetune_db(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database as the ``finetune_db`` connection, the map saying STANDARD for every factor."""
    from finetune_sweep.db.dsn import connection_json_from_dsn

    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    monkeypatch.setenv("FINETUNE_SIZING", json.dumps({factor: "STANDARD" for factor in SIZING_MAP}))
    for name in (
        "FINETUNE_CONN_ID",
        "FINETUNE_PROFILES",
        "FINETUNE_SIZING_MODE",
        "FINETUNE_SIZING_HISTORY_RUNS",
        "FINETUNE_SIZING_HISTORY_DAYS",
        "FINETUNE_DATA_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield migrated_db
    get_settings.cache_clear()


def _register(
    factors: list[str], **context_overrides: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], _RecordingTaskInstance]:
    ti = _RecordingTaskInstance()
    context = make_context(params=make_params(factors=factors), ti=ti, **context_overrides)
    entries = tasks.plan(context)
    return tasks.register(entries, context), context, ti


def _manifest(dsn: str, context: dict[str, Any]) -> dict[str, tuple]:
    rows = _query(
        dsn,
        "SELECT factor, map_profile, profile, profile_reason, memory_limit_bytes, status "
        "FROM finetune_run_factors WHERE run_id = %s ORDER BY factor",
        tasks.sweep_run_id(context, data_uri=get_settings().data_uri),
    )
    return {row[0]: row[1:] for row in rows}


def _query(dsn: str, sql: str, *params: Any) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def _record_the_incident(dsn: str) -> None:
    """btc_features at 95 % of STANDARD, n_features OOMKilled on STANDARD last week, base_features far below."""
    record_attempt(
        dsn,
        run_id="last-week",
        factor="btc_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=int(0.95 * 8 * GI),
        days_ago=7,
    )
    record_attempt(
        dsn,
        run_id="last-week",
        factor="n_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=int(7.9 * GI),
        exit_reason="OOMKilled",
        days_ago=7,
    )
    record_attempt(
        dsn,
        run_id="last-week",
        factor="n_features",
        attempt=2,
        profile="MEDIUM",
        memory_limit_bytes=16 * GI,
        peak_memory_bytes=int(8.5 * GI),
        days_ago=7,
    )
    record_attempt(
        dsn,
        run_id="last-week",
        factor="base_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=int(1.5 * GI),
        days_ago=7,
    )


INCIDENT_FACTORS = ["base_features", "btc_features", "n_features"]


def test_history_decides_the_starting_profile_at_register(finetune_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _record_the_incident(finetune_db)

    started, context, ti = _register(INCIDENT_FACTORS)

    by_factor = {entry["factor"]: entry for entry in started}
    assert [entry["factor"] for entry in started] == INCIDENT_FACTORS, "plan order kept"
    assert {f: e["profile"] for f, e in by_factor.items()} == {
        "base_features": "STANDARD",
        "btc_features": "MEDIUM",
        "n_features": "MEDIUM",
    }
    btc = by_factor["btc_features"]
    assert btc["container_resources"] == {"requests": {"memory": "16Gi", "cpu": "4"}, "limits": {"memory": "16Gi"}}
    assert btc["node_selector"] == {"finetune/pool": "medium"}
    assert btc["labels"]["finetune/profile"] == "medium"
    planned = {entry["factor"]: entry for entry in tasks.plan(context)}
    assert by_factor["base_features"] == planned["base_features"], "a factor on its map profile is passed unchanged"
    assert btc["arguments"] == planned["btc_features"]["arguments"] and btc["name"] == planned["btc_features"]["name"]
    assert json.loads(json.dumps(started)) == started, "JSON for XCom"

    assert _manifest(finetune_db, context) == {
        "base_features": ("STANDARD", "STANDARD", "map", 8 * GI, "planned"),
        "btc_features": (
            "STANDARD",
            "MEDIUM",
            "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM",
            16 * GI,
            "planned",
        ),
        "n_features": (
            "STANDARD",
            "MEDIUM",
            "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM",
            16 * GI,
            "planned",
        ),
    }
    run_id = tasks.sweep_run_id(context, data_uri=get_settings().data_uri)
    assert ti.pushed == {"run_id": run_id}
    assert _query(finetune_db, "SELECT dag_id, airflow_run_id, run_id FROM finetune_airflow_runs") == [
        ("finetune_sweep", RUN_ID, run_id)
    ]
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sizing ")]
    assert log == [
        "sizing base_features: starts on STANDARD (memory 8Gi, map STANDARD): map",
        "sizing btc_features: starts on MEDIUM (memory 16Gi, map STANDARD): "
        "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM",
        "sizing n_features: starts on MEDIUM (memory 16Gi, map STANDARD): "
        "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM",
    ]


def test_static_mode_pins_the_map(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _record_the_incident(finetune_db)
    monkeypatch.setenv("FINETUNE_SIZING_MODE", "static")

    started, context, _ = _register(INCIDENT_FACTORS)

    assert [entry["profile"] for entry in started] == ["STANDARD"] * 3
    assert {row[2] for row in _manifest(finetune_db, context).values()} == {"map"}


def test_history_older_than_the_window_no_longer_raises_a_factor(
    finetune_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record_the_incident(finetune_db)
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "6")

    started, _, _ = _register(INCIDENT_FACTORS)

    assert [entry["profile"] for entry in started] == ["STANDARD"] * 3


def test_no_history_at_all_starts_on_the_map(finetune_db: str) -> None:
    started, context, _ = _register(["base_features", "n_features"])

    assert [entry["profile"] for entry in started] == ["STANDARD", "STANDARD"]
    assert {row[2] for row in _manifest(finetune_db, context).values()} == {"map"}


def test_registering_again_and_from_another_airflow_run_is_idempotent(finetune_db: str) -> None:
    _record_the_incident(finetune_db)
    first, context, _ = _register(["btc_features"])
    again, _, _ = _register(["btc_features"])
    rerun, _, _ = _register(["btc_features"], run_id="manual__2026-11-28T09:00:00+00:00")

    assert first == again == rerun
    run_id = tasks.sweep_run_id(context, data_uri=get_settings().data_uri)
    assert _query(finetune_db, "SELECT airflow_run_id, run_id FROM finetune_airflow_runs ORDER BY airflow_run_id") == [
        (RUN_ID, run_id),
        ("manual__2026-11-28T09:00:00+00:00", run_id),
    ]
    assert _query(finetune_db, "SELECT count(*) FROM finetune_run_factors WHERE run_id = %s", run_id) == [(1,)]


def test_register_records_which_data_the_run_reads(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> None:

    _, synthetic_context, _ = _register(["btc_features"])
    monkeypatch.setenv("FINETUNE_DATA_URI", "synthetic://random-walk")
    get_settings.cache_clear()
    _, walk_context, _ = _register(["btc_features"])

    stored = dict(_query(finetune_db, "SELECT run_id, params ->> 'data_uri' FROM finetune_runs"))
    assert stored == {
        tasks.sweep_run_id(walk_context, data_uri=get_settings().data_uri): "synthetic://random-walk",
        synthetic_context["ti"].pushed["run_id"]: None,
    }


def test_register_uses_the_ladder_the_plan_resolved(finetune_db: str) -> None:
    # An entry may carry the plan-time ladder (name -> memory, cpu, node_selector, ...): register
    # then sizes from it, not from FINETUNE_PROFILES read again.
    record_attempt(
        finetune_db, run_id="r", factor="btc_features", memory_limit_bytes=8 * GI, peak_memory_bytes=int(7.6 * GI)
    )
    context = make_context(params=make_params(factors=["btc_features"]), ti=_RecordingTaskInstance())
    ladder = {
        "STANDARD": {"memory": "8Gi", "cpu": "2", "node_selector": {}, "tolerations": []},
        "MEDIUM": {"memory": "12Gi", "cpu": "3", "node_selector": {"pool": "m"}, "tolerations": []},
        "HEAVY": {"memory": "24Gi", "cpu": "6", "node_selector": {}, "tolerations": []},
    }
    entries = [{**entry, "profiles": ladder} for entry in tasks.plan(context)]

    (started,) = tasks.register(entries, context)

    assert started["profile"] == "MEDIUM" and started["profiles"] == ladder
    assert started["container_resources"]["limits"] == {"memory": "12Gi"}
    assert started["node_selector"] == {"pool": "m"}


def test_a_bad_sizing_mode_fails_plan_before_any_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_SIZING_MODE", "adaptive")

    with pytest.raises(AirflowFailException, match="FINETUNE_SIZING_MODE='adaptive' is not one of history, static"):
        tasks.plan(make_context())


def test_a_bad_history_window_fails_register_before_it_writes(
    finetune_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_context(params=make_params(factors=["base_features"]), ti=_RecordingTaskInstance())
    entries = tasks.plan(context)
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "0")

    with pytest.raises(
        AirflowFailException, match="FINETUNE_SIZING_HISTORY_DAYS='0' must be an integer from 1 to 3650"
    ):
        tasks.register(entries, context)

    assert _query(
        finetune_db, "SELECT (SELECT count(*) FROM finetune_runs) + (SELECT count(*) FROM finetune_airflow_runs)"
    ) == [(0,)]


def test_plan_fails_on_a_widening_pod_template(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:

    template = tmp_path / "pod.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  hostPID: true\n  containers: [{name: base}]\n")
    monkeypatch.setenv("FINETUNE_POD_TEMPLATE_FILE", str(template))
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException, match=r"^invalid sweep: FINETUNE_POD_TEMPLATE_FILE=.* spec\.hostPID"):
            tasks.plan(make_context())
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------- findings


def test_findings_task_reads_fdr_q_from_the_params(
    migrated_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    from finetune_rows import PLAN, seed_complete_run
    from finetune_sweep.db.dsn import connection_json_from_dsn

    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    monkeypatch.delenv("FINETUNE_CONN_ID", raising=False)
    get_settings.cache_clear()
    context = {
        "params": {**PLAN, "fdr_q": 0.2},
        "dag": SimpleNamespace(dag_id="finetune_sweep"),
        "data_interval_end": datetime(2026, 6, 7, tzinfo=UTC),
    }
    run_id = tasks.sweep_run_id(context, data_uri=None)
    # the run id comes from register's XCom, never recomputed
    context["ti"] = _RecordingTaskInstance(pushed={"run_id": run_id})
    seed_complete_run(migrated_db, run_id=run_id)
    set_p_values(migrated_db, {"BTC": (0.001, 0.004), "ETH": (0.3, 0.9)})

    summary = tasks.findings(context)

    assert summary == {
        "run_id": run_id,
        "fdr_q": 0.2,
        "combine_method": "fisher",
        "n_groups": 8,
        "n_discovered": 4,
        "n_untested": 0,
    }
    assert capsys.readouterr().out.startswith("4 of 8 groups are findings at FDR 0.2")
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT DISTINCT run_id, fdr_q FROM finetune_findings").fetchall() == [(run_id, 0.2)]


def test_findings_task_refuses_a_bad_fdr_q_before_any_write(migrated_db: str) -> None:
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    context = {
        "params": {"fdr_q": 2},
        "dag": SimpleNamespace(dag_id="finetune_sweep"),
        "data_interval_end": datetime(2026, 6, 7, tzinfo=UTC),
    }

    with pytest.raises(AirflowFailException, match=r"invalid sweep: param 'fdr_q': 2 is greater than or equal to"):
        tasks.findings(context)


def _entry(factor: str, *arguments: Any) -> dict[str, Any]:
    return {"factor": factor, "arguments": ["run", *arguments, "--factor", factor]}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param([_entry("base_features", "--run-id", RUN_ID)], RUN_ID, id="one-entry"),
        pytest.param(
            [_entry("base_features", "--run-id", RUN_ID), _entry("l2_features", f"--run-id={RUN_ID}")],
            RUN_ID,
            id="both-flag-forms-one-id",
        ),
        pytest.param([_entry("a", "--run-id", 7), _entry("b", "--run-id", "7")], "7", id="non-string-arguments"),
    ],
)
def test_planned_run_id(entries: list[dict[str, Any]], expected: str) -> None:
    assert tasks.planned_run_id(entries) == expected


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        pytest.param(
            [_entry("base_features", "--run-id", "run-a"), _entry("l2_features", "--run-id", "run-b")],
            "['run-a', 'run-b']",
            id="two-runs",
        ),
        pytest.param(
            [_entry("base_features", "--run-id", "run-a"), _entry("l2_features")],
            "['None', 'run-a']",
            id="one-entry-without-run-id",
        ),
        pytest.param([_entry("base_features")], "['None']", id="no-run-id"),
        pytest.param([{"factor": "base_features"}], "['None']", id="no-arguments"),
        pytest.param(
            [{"factor": "base_features", "arguments": ["run", "--factor", "base_features", "--run-id"]}],
            "['None']",
            id="flag-last-without-value",
        ),
        pytest.param([], "[]", id="no-entries"),
    ],
)
def test_planned_run_id_refuses_entries_of_no_single_run(entries: list[dict[str, Any]], named: str) -> None:
    with pytest.raises(AirflowFailException) as raised:
        tasks.planned_run_id(entries)

    assert str(raised.value) == f"the plan's entries name no single run id ({named})"


# --------------------------------------------------------------------------- a database that hangs


class _ReportTaskInstance(_RecordingTaskInstance):
    """What ``report`` asks of its TaskInstance beyond XComs: the states of the verdict tasks."""

    dag_id = "finetune_sweep"
    run_id = "scheduled__2026-06-07T00:00:00+00:00"

    def get_task_states(self, *, dag_id: str, run_ids: list[str], task_ids: list[str]) -> dict[str, dict[str, str]]:
        return {self.run_id: dict.fromkeys(task_ids, "success")}


@pytest.fixture
def held_lock(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Lock a table of the finetune database for the test's length, with a 1 s lock timeout in force."""
    monkeypatch.setenv("FINETUNE_DB_LOCK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()

    def hold(table: str) -> psycopg.Connection:
        holder = psycopg.connect(finetune_db)
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # until the holder closes
        holders.append(holder)
        return holder

    holders: list[psycopg.Connection] = []
    yield hold
    for holder in holders:
        holder.close()


def test_register_fails_in_one_line_at_the_lock_timeout_when_the_database_hangs(held_lock: Any) -> None:
    ti = _RecordingTaskInstance()
    context = make_context(params=make_params(factors=["base_features"]), ti=ti)
    entries = tasks.plan(context)
    held_lock("finetune_runs")
    started = time.monotonic()

    with pytest.raises(AirflowException) as failed:
        tasks.register(entries, context)

    assert time.monotonic() - started < 10
    assert str(failed.value) == (
        "register: the finetune database did not answer: lock_timeout of 1 s exceeded "
        "(FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout"
    )
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert ti.pushed == {}, "nothing registered"


def test_report_fails_in_one_line_at_the_lock_timeout_when_the_database_hangs(
    finetune_db: str, held_lock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from finetune_rows import seed_complete_run
    from finetune_sweep.gate import RUN_ID_XCOM

    seed_complete_run(finetune_db)
    ti = _ReportTaskInstance({RUN_ID_XCOM: RUN_ID})
    held_lock("finetune_results")
    started = time.monotonic()

    with pytest.raises(AirflowException) as failed:
        tasks.report(make_context(ti=ti))

    assert time.monotonic() - started < 10
    assert str(failed.value) == (
        "report: the finetune database did not answer: lock_timeout of 1 s exceeded "
        "(FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout"
    )
    assert "no report" not in capsys.readouterr().out, "a hung database is no empty report"
