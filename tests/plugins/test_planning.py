"""Tests of finetune_sweep.planning: run-time validation, as-of, the plan payload, registration."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from finetune_sweep import planning
from finetune_sweep.planning import PlanError, as_of_from_context, default_params, plan_pods, register_run, validate_params
from finetune_sweep.sizing import SIZING_MAP

RUN_ID = "manual__2026-06-07T00:00:00+00:00"
AS_OF = "2026-06-07T00:00:00Z"
INJECTION = "BTC'; DROP TABLE x;--"


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


def test_register_from_context_uses_the_connection(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_sweep.db import connection_json_from_dsn
    from finetune_sweep.settings import get_settings

    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    monkeypatch.delenv("FINETUNE_CONN_ID", raising=False)
    get_settings.cache_clear()
    context = _make_context(params=_make_params(factors=["l2_features"]))
    entries = plan_pods(context["params"], run_id=RUN_ID, as_of=AS_OF)

    summary = planning.register_from_context(entries, context)

    run_id = planning.run_id_from_context(context)
    assert summary == {"run_id": run_id, "airflow_run_id": RUN_ID, "as_of": AS_OF, "factors": ["l2_features"]}
    runs, factors = _registered(migrated_db)
    assert runs[0][0] == run_id and factors[0][:3] == ("l2_features", "STANDARD", "planned")


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

    with pytest.raises(SettingsError, match=rf"^FINETUNE_POD_DEADLINE_SECONDS='{re.escape(value)}' must be a whole"):
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
