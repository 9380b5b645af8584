"""Tests of finetune_sweep.sweep.plan: run-time validation, as-of, the plan payload, registration."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException
from finetune_rows import record_attempt

from finetune_sweep.sweep import plan as planning
from finetune_sweep.sweep.plan import PlanError, as_of_from_context, default_params, plan_pods, register_run, validate_params
from finetune_sweep.sizing.profiles import SIZING_MAP

RUN_ID = "manual__2026-06-07T00:00:00+00:00"
AS_OF = "2026-06-07T00:00:00Z"
INJECTION = "BTC'; DROP TABLE x;--"
GI = 2**30


def _make_params(**overrides: Any) -> dict[str, Any]:
    return {**default_params(), **overrides}


def _make_context(**overrides: Any) -> dict[str, Any]:
    context = {
        "params": _make_params(),
        "run_id": RUN_ID,
        "data_interval_end": datetime(2026, 6, 7, tzinfo=timezone.utc),
        "logical_date": datetime(2026, 6, 7, tzinfo=timezone.utc),
        "dag_run": SimpleNamespace(run_after=datetime(2026, 6, 9, 12, tzinfo=timezone.utc)),
        "dag": SimpleNamespace(dag_id="finetune_sweep"),
    }
    context.update(overrides)
    return context


def test_defaults_validate_and_are_normalised() -> None:
    valid = validate_params(_make_params(cost_bps=[10.0, 15], n_folds=2.0))

    assert valid["factors"] == list(SIZING_MAP)
    assert valid["cryptos"] == ["BTC", "ETH", "SOL"]
    assert valid["cost_bps"] == [10, 15] and all(type(v) is int for v in valid["cost_bps"])
    assert valid["n_folds"] == 2 and type(valid["n_folds"]) is int
    assert validate_params({}) == validate_params(default_params()), "missing keys take their defaults"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param({"factors": ["eth_features"]}, r"param 'factors'\[0\].*eth_features.*base_features", id="unknown-factor"),
        pytest.param({"factors": []}, r"param 'factors'.*allowed: a non-empty list", id="empty-factors"),
        pytest.param({"factors": ["base_features", "base_features"]}, r"param 'factors'", id="duplicate-factor"),
        pytest.param({"cost_bps": [10, -5]}, r"param 'cost_bps'\[1\].*-5.*0 to 1000", id="negative-cost"),
        pytest.param({"slippage_bps": []}, r"param 'slippage_bps'", id="empty-slippage"),
        pytest.param({"cryptos": ["btc"]}, r"param 'cryptos'\[0\].*\^\[A-Z0-9\]\{2,10\}\$", id="lowercase-symbol"),
        pytest.param({"cryptos": [INJECTION]}, r"param 'cryptos'\[0\]", id="injection-crypto"),
        pytest.param({"factors": [INJECTION]}, r"param 'factors'\[0\]", id="injection-factor"),
        pytest.param({"image": "0.1.0; rm -rf /"}, r"param 'image'", id="injection-image"),
        pytest.param({"image": "{{ var.value.secret }}"}, r"param 'image'", id="jinja-image"),
        pytest.param({"n_folds": "4"}, r"param 'n_folds'.*not of type 'integer'", id="string-int"),
        pytest.param({"n_folds": True}, r"param 'n_folds'", id="bool-int"),
        pytest.param({"n_folds": 0}, r"param 'n_folds'.*1 to 24", id="below-min"),
        pytest.param({"n_seeds": 10**6}, r"param 'n_seeds'", id="above-max"),
        pytest.param({"cryptos": "BTC"}, r"param 'cryptos'.*not of type 'array'", id="string-not-list"),
        pytest.param({"cost_bps": [1.5]}, r"param 'cost_bps'\[0\]", id="fractional-cost"),
        pytest.param({"drop_tables": True}, r"unknown param\(s\) 'drop_tables'.*allowed params: factors", id="unknown-key"),
        pytest.param({"fdr_q": 0}, r"param 'fdr_q'.*strictly between 0 and 1", id="fdr-zero"),
        pytest.param({"fdr_q": 1}, r"param 'fdr_q'.*strictly between 0 and 1", id="fdr-one"),
        pytest.param({"fdr_q": 1.5}, r"param 'fdr_q'.*1.5", id="fdr-above-one"),
        pytest.param({"fdr_q": -0.1}, r"param 'fdr_q'", id="fdr-negative"),
        pytest.param({"fdr_q": "0.1"}, r"param 'fdr_q'.*not of type 'number'", id="fdr-string"),
        pytest.param({"fdr_q": True}, r"param 'fdr_q'", id="fdr-bool"),
        pytest.param({"fdr_q": float("nan")}, r"param 'fdr_q'", id="fdr-nan"),
    ],
)
def test_bad_params_are_refused_naming_the_param(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        validate_params(_make_params(**overrides))


def test_build_params_form_and_trigger_validation() -> None:
    from airflow.sdk.definitions.param import ParamsDict

    params = planning.build_params(image_tag="1.2.3")

    assert set(params) == set(planning.PARAM_NAMES)
    factors = params["factors"].schema
    assert factors["examples"] == list(SIZING_MAP) and factors["items"]["enum"] == list(SIZING_MAP)
    assert params["image"].value == "1.2.3"
    ParamsDict(params).validate()
    with pytest.raises(Exception, match="cost_bps"):
        bad = ParamsDict(planning.build_params())
        bad["cost_bps"] = [-1]
        bad.validate()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, "2026-06-07T00:00:00Z", id="data-interval-end"),
        pytest.param({"data_interval_end": None}, "2026-06-07T00:00:00Z", id="logical-date"),
        pytest.param({"data_interval_end": None, "logical_date": None}, "2026-06-09T12:00:00Z", id="run-after"),
        pytest.param(
            {"data_interval_end": datetime(2026, 6, 7, 2, 30, 5, 999, tzinfo=timezone(timedelta(hours=2)))},
            "2026-06-07T00:30:05Z",
            id="to-utc-whole-seconds",
        ),
    ],
)
def test_as_of_comes_from_the_run_never_the_clock(overrides: dict[str, Any], expected: str) -> None:
    assert as_of_from_context(_make_context(**overrides)) == expected


def test_as_of_without_any_run_time_is_an_error() -> None:
    with pytest.raises(PlanError, match="as_of"):
        as_of_from_context(_make_context(data_interval_end=None, logical_date=None, dag_run=None))


def test_plan_pods_one_entry_per_factor() -> None:
    entries = plan_pods(_make_params(factors=["l2_features", "btc_features"]), run_id=RUN_ID, as_of=AS_OF, data_uri="file:///d")

    assert [e["factor"] for e in entries] == ["l2_features", "btc_features"]
    assert [e["profile"] for e in entries] == ["STANDARD", "HEAVY"]
    assert entries[0]["arguments"][-2:] == ["--data-uri", "file:///d"]
    assert "--as-of" in entries[0]["arguments"] and AS_OF in entries[0]["arguments"]
    assert json.loads(json.dumps(entries)) == entries


def test_plan_pods_applies_the_overrides() -> None:
    entries = plan_pods(
        _make_params(factors=["l2_features"]),
        run_id=RUN_ID,
        as_of=AS_OF,
        profiles_json='{"MEDIUM": {"memory": "12Gi"}}',
        sizing_json='{"l2_features": "MEDIUM"}',
    )

    assert entries[0]["profile"] == "MEDIUM"
    assert entries[0]["container_resources"]["limits"] == {"memory": "12Gi"}
    # the resolved ladder travels with the entry: workers never re-read FINETUNE_PROFILES
    assert entries[0]["profiles"]["MEDIUM"]["memory"] == "12Gi"
    assert entries[0]["profiles"]["HEAVY"]["memory"] == "24Gi"


@pytest.mark.parametrize(
    ("profiles_json", "sizing_json", "match"),
    [
        pytest.param("{oops", None, "FINETUNE_PROFILES is not valid JSON", id="bad-profiles-json"),
        pytest.param(None, '{"l2_features": "XL"}', "unknown profile 'XL'", id="bad-sizing"),
    ],
)
def test_plan_pods_refuses_bad_overrides(profiles_json: str | None, sizing_json: str | None, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan_pods(_make_params(), run_id=RUN_ID, as_of=AS_OF, profiles_json=profiles_json, sizing_json=sizing_json)


def test_plan_from_context_fails_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.delenv("FINETUNE_SIZING", raising=False)

    with pytest.raises(AirflowFailException, match="cryptos"):
        planning.plan_from_context(_make_context(params=_make_params(cryptos=[INJECTION])))

    monkeypatch.setenv("FINETUNE_SIZING", "not json")
    with pytest.raises(AirflowFailException, match="FINETUNE_SIZING"):
        planning.plan_from_context(_make_context())


@pytest.mark.parametrize(
    ("data_uri", "message"),
    [
        pytest.param("ftp://host/data", "FINETUNE_DATA_URI='ftp://host/data' is not a data location; allowed: "
                     "synthetic://, file:///absolute/dir, s3://bucket/prefix, gs://bucket/prefix", id="scheme"),
        pytest.param("file://data/hourly", "FINETUNE_DATA_URI='file://data/hourly' is not a data location",
                     id="relative-file"),
        pytest.param("s3:///prefix", "FINETUNE_DATA_URI='s3:///prefix' is not a data location", id="no-bucket"),
        pytest.param("s3://key:s3cret@bucket/x", "FINETUNE_DATA_URI='s3://bucket/x' holds credentials",
                     id="credentials"),
    ],
)
def test_plan_refuses_a_data_uri_no_pod_could_read(monkeypatch: pytest.MonkeyPatch, data_uri: str, message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from finetune_sweep.settings import get_settings

    monkeypatch.setenv("FINETUNE_DATA_URI", data_uri)
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException) as refused:
            planning.plan_from_context(_make_context(params=_make_params(factors=["base_features"])))
    finally:
        get_settings.cache_clear()

    assert str(refused.value).startswith(f"invalid sweep: {message}")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("data_uri", [None, "synthetic://random-walk?seed=3", "file:///data/hourly",
                                      "s3://bucket/hourly?endpoint_override=minio:9000&scheme=http", "gs://b/p"])
def test_every_documented_data_uri_form_passes_the_plans_check(data_uri: str | None) -> None:
    planning.check_data_uri(data_uri)


def test_plan_from_context_reads_overrides_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PROFILES", '{"STANDARD": {"memory": "256Mi"}}')
    monkeypatch.delenv("FINETUNE_SIZING", raising=False)

    entries = planning.plan_from_context(_make_context(params=_make_params(factors=["base_features"])))

    run_id = entries[0]["arguments"][2]
    assert entries[0]["container_resources"]["limits"]["memory"] == "256Mi"
    assert run_id == planning.run_id_from_context(_make_context(params=_make_params(factors=["base_features"])))
    assert run_id.startswith("finetune_sweep__2026-06-07T00:00:00Z__")
    assert entries[0]["labels"]["finetune/run-id"] != run_id, "sanitised for labels (':' is not allowed)"


def test_finetune_run_id_is_stable_per_sweep() -> None:
    def run_id(**overrides: Any) -> str:
        return planning.run_id_from_context(_make_context(**overrides))

    first = run_id()
    # The same sweep, whatever the Airflow run id (dags test embeds the wall clock in it).
    assert run_id(run_id="manual__2026-11-25T22:17:56.537790+00:00") == first
    assert run_id(params={}) == first, "omitted params are their defaults"
    assert run_id(params=_make_params(cost_bps=[10.0, 15, 30])) == first, "normalised first"
    assert run_id(params=_make_params(cryptos=["BTC"])) != first
    assert run_id(data_interval_end=datetime(2026, 6, 14, tzinfo=timezone.utc)) != first


def test_fdr_q_is_validated_and_left_out_of_the_run_id() -> None:
    def run_id(**overrides: Any) -> str:
        return planning.run_id_from_context(_make_context(params=_make_params(**overrides)))

    assert validate_params({})["fdr_q"] == 0.1
    assert validate_params(_make_params(fdr_q=0.05))["fdr_q"] == 0.05
    # The findings step only reads stored rows: another FDR is the same sweep (same rows, the
    # findings replaced), and the ids of param sets from before fdr_q existed are unchanged
    # (these two were computed by main before the param was added).
    assert run_id(fdr_q=0.01) == run_id() == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
    assert run_id(factors=["btc_features"], cost_bps=[0], fdr_q=0.2).endswith("__3b270b54")


def test_the_data_the_pods_read_is_part_of_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_sweep.settings import get_settings

    def run_id(data_uri: str | None) -> str:
        if data_uri is None:
            monkeypatch.delenv("FINETUNE_DATA_URI", raising=False)
        else:
            monkeypatch.setenv("FINETUNE_DATA_URI", data_uri)
        get_settings.cache_clear()
        try:
            return planning.run_id_from_context(_make_context())
        finally:
            get_settings.cache_clear()

    # unset (the built-in synthetic market): the id from before the data counted
    assert run_id(None) == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
    ids = {run_id(uri) for uri in (None, "file:///data/hourly", "s3://bucket/hourly", "synthetic://random-walk")}
    assert len(ids) == 4, "the same params on other data never upsert over each other's rows"
    assert run_id("s3://bucket/hourly") == run_id("s3://bucket/hourly")


def _registered(dsn: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(dsn) as conn:
        runs = conn.execute("SELECT run_id, dag_id, strategy, as_of, params FROM finetune_runs").fetchall()
        factors = conn.execute(
            "SELECT factor, profile, status, memory_limit_bytes, attempt FROM finetune_run_factors ORDER BY factor"
        ).fetchall()
    return runs, factors


def test_register_run_upserts_run_and_manifest(migrated_db: str) -> None:
    params = validate_params(_make_params(factors=["base_features", "n_features"]))
    entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF)

    for _ in range(2):  # a retried or cleared register must not duplicate
        register_run(migrated_db, run_id=RUN_ID, dag_id="finetune_sweep", as_of=AS_OF, params=params, entries=entries)

    runs, factors = _registered(migrated_db)
    assert len(runs) == 1
    run_id, dag_id, strategy, as_of, stored = runs[0]
    assert (run_id, dag_id, strategy) == (RUN_ID, "finetune_sweep", "ridge_long_flat")
    assert as_of == datetime(2026, 6, 7, tzinfo=timezone.utc)
    assert stored == params
    assert factors == [
        ("base_features", "STANDARD", "planned", 8 * 2**30, 1),
        ("n_features", "HEAVY", "planned", 24 * 2**30, 1),
    ]


def test_register_run_resets_a_previous_attempt(migrated_db: str) -> None:
    params = validate_params(_make_params(factors=["base_features"]))
    entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF)
    register_run(migrated_db, run_id=RUN_ID, dag_id="finetune_sweep", as_of=AS_OF, params=params, entries=entries)
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "UPDATE finetune_run_factors SET status = 'failed', exit_reason = 'OOMKilled', attempt = 2, profile = 'MEDIUM'"
        )

    register_run(migrated_db, run_id=RUN_ID, dag_id="finetune_sweep", as_of=AS_OF, params=params, entries=entries)

    assert _registered(migrated_db)[1] == [("base_features", "STANDARD", "planned", 8 * 2**30, 1)]


class _RecordingTaskInstance:
    """The one TaskInstance method register uses: it records what was pushed."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, *, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def finetune_db(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database as the ``finetune_db`` connection, the map saying STANDARD for every factor."""
    from finetune_sweep.db.dsn import connection_json_from_dsn
    from finetune_sweep.settings import get_settings

    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    monkeypatch.setenv("FINETUNE_SIZING", json.dumps({factor: "STANDARD" for factor in SIZING_MAP}))
    for name in ("FINETUNE_CONN_ID", "FINETUNE_PROFILES", "FINETUNE_SIZING_MODE", "FINETUNE_SIZING_HISTORY_RUNS",
                 "FINETUNE_SIZING_HISTORY_DAYS", "FINETUNE_DATA_URI"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield migrated_db
    get_settings.cache_clear()


def _register(factors: list[str], **context_overrides: Any) -> tuple[list[dict[str, Any]], dict[str, Any], _RecordingTaskInstance]:
    ti = _RecordingTaskInstance()
    context = _make_context(params=_make_params(factors=factors), ti=ti, **context_overrides)
    entries = planning.plan_from_context(context)
    return planning.register_from_context(entries, context), context, ti


def _manifest(dsn: str, context: dict[str, Any]) -> dict[str, tuple]:
    rows = _query(dsn, "SELECT factor, map_profile, profile, profile_reason, memory_limit_bytes, status "
                       "FROM finetune_run_factors WHERE run_id = %s ORDER BY factor", planning.run_id_from_context(context))
    return {row[0]: row[1:] for row in rows}


def _query(dsn: str, sql: str, *params: Any) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def _record_the_incident(dsn: str) -> None:
    """btc_features at 95 % of STANDARD, n_features OOMKilled on STANDARD last week, base_features far below."""
    record_attempt(dsn, run_id="last-week", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(0.95 * 8 * GI), days_ago=7)
    record_attempt(dsn, run_id="last-week", factor="n_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(7.9 * GI), exit_reason="OOMKilled", days_ago=7)
    record_attempt(dsn, run_id="last-week", factor="n_features", attempt=2, profile="MEDIUM",
                   memory_limit_bytes=16 * GI, peak_memory_bytes=int(8.5 * GI), days_ago=7)
    record_attempt(dsn, run_id="last-week", factor="base_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(1.5 * GI), days_ago=7)


INCIDENT_FACTORS = ["base_features", "btc_features", "n_features"]


def test_history_decides_the_starting_profile_at_register(finetune_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _record_the_incident(finetune_db)

    started, context, ti = _register(INCIDENT_FACTORS)

    by_factor = {entry["factor"]: entry for entry in started}
    assert [entry["factor"] for entry in started] == INCIDENT_FACTORS, "plan order kept"
    assert {f: e["profile"] for f, e in by_factor.items()} == {
        "base_features": "STANDARD", "btc_features": "MEDIUM", "n_features": "MEDIUM"}
    btc = by_factor["btc_features"]
    assert btc["container_resources"] == {"requests": {"memory": "16Gi", "cpu": "4"}, "limits": {"memory": "16Gi"}}
    assert btc["node_selector"] == {"finetune/pool": "medium"}
    assert btc["labels"]["finetune/profile"] == "medium"
    planned = {entry["factor"]: entry for entry in planning.plan_from_context(context)}
    assert by_factor["base_features"] == planned["base_features"], "a factor on its map profile is passed unchanged"
    assert btc["arguments"] == planned["btc_features"]["arguments"] and btc["name"] == planned["btc_features"]["name"]
    assert json.loads(json.dumps(started)) == started, "JSON for XCom"

    assert _manifest(finetune_db, context) == {
        "base_features": ("STANDARD", "STANDARD", "map", 8 * GI, "planned"),
        "btc_features": ("STANDARD", "MEDIUM", "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM",
                         16 * GI, "planned"),
        "n_features": ("STANDARD", "MEDIUM", "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM",
                       16 * GI, "planned"),
    }
    run_id = planning.run_id_from_context(context)
    assert ti.pushed == {"run_id": run_id}
    assert _query(finetune_db, "SELECT dag_id, airflow_run_id, run_id FROM finetune_airflow_runs") == [
        ("finetune_sweep", RUN_ID, run_id)]
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


def test_history_older_than_the_window_no_longer_raises_a_factor(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
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
    run_id = planning.run_id_from_context(context)
    assert _query(finetune_db, "SELECT airflow_run_id, run_id FROM finetune_airflow_runs ORDER BY airflow_run_id") == [
        (RUN_ID, run_id), ("manual__2026-11-28T09:00:00+00:00", run_id)]
    assert _query(finetune_db, "SELECT count(*) FROM finetune_run_factors WHERE run_id = %s", run_id) == [(1,)]


def test_register_records_which_data_the_run_reads(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_sweep.settings import get_settings

    _, synthetic_context, _ = _register(["btc_features"])
    monkeypatch.setenv("FINETUNE_DATA_URI", "synthetic://random-walk")
    get_settings.cache_clear()
    _, walk_context, _ = _register(["btc_features"])

    stored = dict(_query(finetune_db, "SELECT run_id, params ->> 'data_uri' FROM finetune_runs"))
    assert stored == {planning.run_id_from_context(walk_context): "synthetic://random-walk",
                      synthetic_context["ti"].pushed["run_id"]: None}


def test_register_uses_the_ladder_the_plan_resolved(finetune_db: str) -> None:
    # An entry may carry the plan-time ladder (name -> memory, cpu, node_selector, ...): register
    # then sizes from it, not from FINETUNE_PROFILES read again.
    record_attempt(finetune_db, run_id="r", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(7.6 * GI))
    context = _make_context(params=_make_params(factors=["btc_features"]), ti=_RecordingTaskInstance())
    ladder = {"STANDARD": {"memory": "8Gi", "cpu": "2", "node_selector": {}, "tolerations": []},
              "MEDIUM": {"memory": "12Gi", "cpu": "3", "node_selector": {"pool": "m"}, "tolerations": []},
              "HEAVY": {"memory": "24Gi", "cpu": "6", "node_selector": {}, "tolerations": []}}
    entries = [{**entry, "profiles": ladder} for entry in planning.plan_from_context(context)]

    (started,) = planning.register_from_context(entries, context)

    assert started["profile"] == "MEDIUM" and started["profiles"] == ladder
    assert started["container_resources"]["limits"] == {"memory": "12Gi"}
    assert started["node_selector"] == {"pool": "m"}


def test_a_bad_sizing_mode_fails_plan_before_any_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_SIZING_MODE", "adaptive")

    with pytest.raises(AirflowFailException, match="FINETUNE_SIZING_MODE='adaptive' is not one of history, static"):
        planning.plan_from_context(_make_context())


def test_a_bad_history_window_fails_register_before_it_writes(finetune_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    context = _make_context(params=_make_params(factors=["base_features"]), ti=_RecordingTaskInstance())
    entries = planning.plan_from_context(context)
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "0")

    with pytest.raises(AirflowFailException, match="FINETUNE_SIZING_HISTORY_DAYS='0' must be an integer from 1 to 3650"):
        planning.register_from_context(entries, context)

    assert _query(finetune_db, "SELECT (SELECT count(*) FROM finetune_runs) + (SELECT count(*) FROM finetune_airflow_runs)") == [(0,)]


# --------------------------------------------------------------------------- plan-time fit and bound


def test_params_that_cannot_fit_the_synthetic_market_fail_in_plan() -> None:
    # the example: 24 folds of 8,760 test bars. Hand-worked: 24 * 8760 + 4320 + 24 =
    # 214,584 bars needed; hourly bars 2021-01-01T00:00Z .. 2026-06-07T00:00Z: 1,983 days * 24 + 1
    params = _make_params(n_folds=24, test_bars=8760)

    with pytest.raises(PlanError) as refused:
        plan_pods(params, run_id=RUN_ID, as_of=AS_OF)

    assert str(refused.value) == (
        "params cannot fit the data: n_folds 24 x test_bars 8760 + train_bars 4320 + hold_bars 24 (embargo) = "
        "214584 bars, but the synthetic market has 47593 hourly bars up to as-of 2026-06-07T00:00:00Z "
        "(from 2021-01-01T00:00Z); lower n_folds, test_bars or train_bars"
    )


@pytest.mark.parametrize(
    ("train_bars", "fits"),
    [pytest.param(47593 - 24 - 8760, True, id="exactly-all-bars"), pytest.param(47593 - 24 - 8760 + 1, False, id="one-more")],
)
def test_the_fit_check_refuses_only_what_cannot_fit(train_bars: int, fits: bool) -> None:
    params = _make_params(factors=["base_features"], n_folds=1, test_bars=8760, train_bars=train_bars)

    if fits:
        assert len(plan_pods(params, run_id=RUN_ID, as_of=AS_OF)) == 1
    else:
        with pytest.raises(PlanError, match="= 47594 bars, but the synthetic market has 47593"):
            plan_pods(params, run_id=RUN_ID, as_of=AS_OF)


def test_a_crypto_outside_the_synthetic_market_fails_in_plan() -> None:
    with pytest.raises(PlanError, match=r"^param 'cryptos': PEPE not in the synthetic market; allowed: BTC, ETH"):
        plan_pods(_make_params(cryptos=["BTC", "PEPE"]), run_id=RUN_ID, as_of=AS_OF)


@pytest.mark.parametrize(
    "data_uri",
    [pytest.param("file:///data/ohlcv", id="file"), pytest.param("s3://bucket/ohlcv", id="s3")],
)
def test_with_file_or_object_store_data_the_length_is_left_to_the_pod(data_uri: str) -> None:
    params = _make_params(factors=["base_features"], cryptos=["PEPE"], n_folds=24, test_bars=8760)

    (entry,) = plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri=data_uri)

    assert entry["arguments"][-2:] == ["--data-uri", data_uri]


def test_synthetic_variants_are_checked_too() -> None:
    params = _make_params(n_folds=24, test_bars=8760)

    with pytest.raises(PlanError, match="cannot fit the data"):
        plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri="synthetic://random-walk?seed=7")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # 3 cryptos x 4 folds x 3 costs x 1 slippage = 36 keys
        pytest.param({}, 600 + 36 * 60, id="defaults"),
        pytest.param(
            {"FINETUNE_POD_DEADLINE_PER_KEY_SECONDS": "5", "FINETUNE_POD_DEADLINE_STARTUP_SECONDS": "30"},
            30 + 36 * 5,
            id="allowances",
        ),
        pytest.param({"FINETUNE_POD_DEADLINE_SECONDS": "7", "FINETUNE_POD_DEADLINE_PER_KEY_SECONDS": "5"}, 7, id="fixed"),
    ],
)
def test_every_pod_is_bounded_by_a_deadline_sized_from_its_keys(environ: dict[str, str], expected: int) -> None:
    from finetune_sweep.settings import Settings

    entries = plan_pods(_make_params(), run_id=RUN_ID, as_of=AS_OF, settings=Settings.from_env(environ))

    assert {entry["active_deadline_seconds"] for entry in entries} == {expected}


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_a_bad_deadline_setting_is_refused_naming_it(value: str) -> None:
    from finetune_sweep.settings import Settings, SettingsError

    with pytest.raises(
        SettingsError, match=rf"^FINETUNE_POD_DEADLINE_SECONDS='{re.escape(value)}' must be an integer from 1 to 2592000"
    ):
        Settings.from_env({"FINETUNE_POD_DEADLINE_SECONDS": value})


def test_plan_fails_on_a_widening_pod_template(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_sweep.settings import get_settings

    template = tmp_path / "pod.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  hostPID: true\n  containers: [{name: base}]\n")
    monkeypatch.setenv("FINETUNE_POD_TEMPLATE_FILE", str(template))
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException, match=r"^invalid sweep: FINETUNE_POD_TEMPLATE_FILE=.* spec\.hostPID"):
            planning.plan_from_context(_make_context())
    finally:
        get_settings.cache_clear()
