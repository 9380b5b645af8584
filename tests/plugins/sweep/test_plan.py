"""Tests of finetune_sweep.sweep.plan: the plan payload, the data URI and fit checks, the pod deadline."""

from __future__ import annotations

import json
import re

import pytest

from finetune_rows import AS_OF, RUN_ID, make_params
from finetune_sweep.settings import Settings
from finetune_sweep.sweep.params import PlanError
from finetune_sweep.sweep.plan import check_data_uri, plan_pods


def test_plan_pods_one_entry_per_factor() -> None:
    entries = plan_pods(
        make_params(factors=["l2_features", "btc_features"]), run_id=RUN_ID, as_of=AS_OF, data_uri="file:///d"
    )

    assert [e["factor"] for e in entries] == ["l2_features", "btc_features"]
    assert [e["profile"] for e in entries] == ["STANDARD", "HEAVY"]
    assert entries[0]["arguments"][-2:] == ["--data-uri", "file:///d"]
    assert "--as-of" in entries[0]["arguments"] and AS_OF in entries[0]["arguments"]
    assert json.loads(json.dumps(entries)) == entries


def test_plan_pods_plans_a_team_factor_and_model() -> None:
    """A factor plug-in planned through FINETUNE_SIZING, a model through FINETUNE_MODELS."""
    settings = Settings(models=("ridge_long_flat", "team_logit"))
    entries = plan_pods(
        make_params(factors=["range_features", "base_features"], model="team_logit"),
        run_id=RUN_ID,
        as_of=AS_OF,
        sizing_json='{"range_features": "MEDIUM"}',
        settings=settings,
    )

    assert [(e["factor"], e["profile"]) for e in entries] == [
        ("range_features", "MEDIUM"),
        ("base_features", "STANDARD"),
    ]
    arguments = entries[0]["arguments"]
    assert arguments[arguments.index("--model") + 1] == "team_logit"
    assert arguments[arguments.index("--factor") + 1] == "range_features"


@pytest.mark.parametrize(
    ("params", "sizing_json", "match"),
    [
        pytest.param(
            {"model": "team_gbm"},
            None,
            r"param 'model': 'team_gbm' is not one of \['ridge_long_flat'\]; allowed: one of the models: "
            r"ridge_long_flat \(FINETUNE_MODELS\)",
            id="unknown-model",
        ),
        pytest.param(
            {"factors": ["range_features"]},
            None,
            r"param 'factors'\[0\]: 'range_features' is not one of .*allowed: .*base_features, n_features, "
            r"btc_features, l2_features",
            id="factor-not-in-the-sizing-map",
        ),
    ],
)
def test_plan_pods_refuses_what_it_does_not_know(params: dict, sizing_json: str | None, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan_pods(make_params(**params), run_id=RUN_ID, as_of=AS_OF, sizing_json=sizing_json)


def test_plan_pods_applies_the_overrides() -> None:
    entries = plan_pods(
        make_params(factors=["l2_features"]),
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
        plan_pods(make_params(), run_id=RUN_ID, as_of=AS_OF, profiles_json=profiles_json, sizing_json=sizing_json)


@pytest.mark.parametrize(
    "data_uri",
    [
        None,
        "synthetic://random-walk?seed=3",
        "file:///data/hourly",
        "s3://bucket/hourly?endpoint_override=minio:9000&scheme=http",
        "gs://b/p",
    ],
)
def test_every_documented_data_uri_form_passes_the_plans_check(data_uri: str | None) -> None:
    check_data_uri(data_uri)


def test_params_that_cannot_fit_the_synthetic_market_fail_in_plan() -> None:
    # the example: 24 folds of 8,760 test bars. Hand-worked: 24 * 8760 + 4320 + 24 =
    # 214,584 bars needed; hourly bars 2021-01-01T00:00Z .. 2026-06-07T00:00Z: 1,983 days * 24 + 1
    params = make_params(n_folds=24, test_bars=8760)

    with pytest.raises(PlanError) as refused:
        plan_pods(params, run_id=RUN_ID, as_of=AS_OF)

    assert str(refused.value) == (
        "params cannot fit the data: n_folds 24 x test_bars 8760 + train_bars 4320 + hold_bars 24 (embargo) = "
        "214584 bars, but the synthetic market has 47593 hourly bars up to as-of 2026-06-07T00:00:00Z "
        "(from 2021-01-01T00:00Z); lower n_folds, test_bars or train_bars"
    )


@pytest.mark.parametrize(
    ("train_bars", "fits"),
    [
        pytest.param(47593 - 24 - 8760, True, id="exactly-all-bars"),
        pytest.param(47593 - 24 - 8760 + 1, False, id="one-more"),
    ],
)
def test_the_fit_check_refuses_only_what_cannot_fit(train_bars: int, fits: bool) -> None:
    params = make_params(factors=["base_features"], n_folds=1, test_bars=8760, train_bars=train_bars)

    if fits:
        assert len(plan_pods(params, run_id=RUN_ID, as_of=AS_OF)) == 1
    else:
        with pytest.raises(PlanError, match="= 47594 bars, but the synthetic market has 47593"):
            plan_pods(params, run_id=RUN_ID, as_of=AS_OF)


def test_a_crypto_outside_the_synthetic_market_fails_in_plan() -> None:
    with pytest.raises(PlanError, match=r"^param 'cryptos': PEPE not in the synthetic market; allowed: BTC, ETH"):
        plan_pods(make_params(cryptos=["BTC", "PEPE"]), run_id=RUN_ID, as_of=AS_OF)


def test_a_sized_synthetic_market_admits_its_extra_symbols() -> None:
    uri = "synthetic://?symbols=50"
    assert plan_pods(make_params(cryptos=["BTC", "SYN050"]), run_id=RUN_ID, as_of=AS_OF, data_uri=uri)
    with pytest.raises(PlanError, match=r"SYN051 not in the synthetic market; allowed: BTC, .*, SYN009 to SYN050$"):
        plan_pods(make_params(cryptos=["SYN051"]), run_id=RUN_ID, as_of=AS_OF, data_uri=uri)


@pytest.mark.parametrize(
    "data_uri",
    [pytest.param("file:///data/ohlcv", id="file"), pytest.param("s3://bucket/ohlcv", id="s3")],
)
def test_with_file_or_object_store_data_the_length_is_left_to_the_pod(data_uri: str) -> None:
    params = make_params(factors=["base_features"], cryptos=["PEPE"], n_folds=24, test_bars=8760)

    (entry,) = plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri=data_uri)

    assert entry["arguments"][-2:] == ["--data-uri", data_uri]


def test_synthetic_variants_are_checked_too() -> None:
    params = make_params(n_folds=24, test_bars=8760)

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
        pytest.param(
            {"FINETUNE_POD_DEADLINE_SECONDS": "7", "FINETUNE_POD_DEADLINE_PER_KEY_SECONDS": "5"}, 7, id="fixed"
        ),
    ],
)
def test_every_pod_is_bounded_by_a_deadline_sized_from_its_keys(environ: dict[str, str], expected: int) -> None:
    from finetune_sweep.settings import Settings

    entries = plan_pods(make_params(), run_id=RUN_ID, as_of=AS_OF, settings=Settings.from_env(environ))

    assert {entry["active_deadline_seconds"] for entry in entries} == {expected}


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_a_bad_deadline_setting_is_refused_naming_it(value: str) -> None:
    from finetune_sweep.settings import Settings, SettingsError

    with pytest.raises(
        SettingsError,
        match=rf"^FINETUNE_POD_DEADLINE_SECONDS='{re.escape(value)}' must be an integer from 1 to 2592000",
    ):
        Settings.from_env({"FINETUNE_POD_DEADLINE_SECONDS": value})


def test_each_entry_runs_its_map_profiles_cpus_as_workers_capped_by_its_cryptos() -> None:
    entries = plan_pods(
        make_params(factors=["base_features", "n_features"], cryptos=["BTC", "ETH", "SOL"]), run_id=RUN_ID, as_of=AS_OF
    )
    # STANDARD requests 2 cpus, HEAVY 6 (3 cryptos: 3 workers)
    assert {e["factor"]: (e["profile"], e["workers"]) for e in entries} == {
        "base_features": ("STANDARD", 2),
        "n_features": ("HEAVY", 3),
    }


def test_a_run_over_the_work_limit_is_refused_naming_the_product_and_the_setting() -> None:
    from finetune_sweep.settings import Settings

    # the review's run: 4 pods of 120,000 keys with 10,000 seeds, each param within its own cap
    params = make_params(
        factors=["base_features", "n_features", "btc_features", "l2_features"],
        cryptos=[f"C{i:02d}" for i in range(50)],
        cost_bps=list(range(10)),
        slippage_bps=list(range(10)),
        n_folds=24,
        n_seeds=10_000,
    )

    with pytest.raises(PlanError) as refused:
        plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri="file:///d", settings=Settings.from_env({}))

    assert str(refused.value) == (
        "the run is too large: 4 factors x 50 cryptos x 24 folds x 10 costs x 10 slippages = 480,000 keys "
        "x (10000 seeds + 999 shifts) = 5,279,520,000, over FINETUNE_MAX_RUN_WORK=100,000,000; "
        "lower cryptos, folds, costs, slippages, seeds or shifts, or split the sweep into several runs"
    )


@pytest.mark.parametrize(
    ("max_run_work", "admitted"),
    # the README's production example: 4 x 50 x 15 x 10 x 2 = 60,000 keys x (100 + 999) = 65,940,000
    [pytest.param(None, True, id="default-admits-it"), pytest.param("65939999", False, id="one-below-refuses")],
)
def test_the_default_limit_admits_the_production_example(max_run_work: str | None, admitted: bool) -> None:
    from finetune_sweep.settings import Settings

    params = make_params(
        factors=["base_features", "n_features", "btc_features", "l2_features"],
        cryptos=[f"C{i:02d}" for i in range(50)],
        cost_bps=[0, 5, 10, 15, 20, 25, 30, 40, 50, 100],
        slippage_bps=[0, 5],
        n_folds=15,
        n_seeds=100,
    )
    settings = Settings.from_env({"FINETUNE_MAX_RUN_WORK": max_run_work} if max_run_work else {})

    if admitted:
        entries = plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri="file:///d", settings=settings)
        assert len(entries) == 4
    else:
        with pytest.raises(PlanError, match=r"= 65,940,000, over FINETUNE_MAX_RUN_WORK=65,939,999;"):
            plan_pods(params, run_id=RUN_ID, as_of=AS_OF, data_uri="file:///d", settings=settings)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # 3 cryptos x 4 folds x 3 costs = 36 keys x 3,000 s = 108,600 s sized: the 24 h ceiling holds
        pytest.param({"FINETUNE_POD_DEADLINE_PER_KEY_SECONDS": "3000"}, 86400, id="default-ceiling"),
        pytest.param(
            {"FINETUNE_POD_DEADLINE_PER_KEY_SECONDS": "3000", "FINETUNE_POD_DEADLINE_MAX_SECONDS": "3600"},
            3600,
            id="lower-ceiling",
        ),
        pytest.param({"FINETUNE_POD_DEADLINE_MAX_SECONDS": "100000"}, 600 + 36 * 60, id="under-the-ceiling"),
    ],
)
def test_the_pod_deadline_has_a_ceiling(environ: dict[str, str], expected: int) -> None:
    from finetune_sweep.settings import Settings

    entries = plan_pods(make_params(), run_id=RUN_ID, as_of=AS_OF, settings=Settings.from_env(environ))

    assert {entry["active_deadline_seconds"] for entry in entries} == {expected}


def test_a_fixed_deadline_above_the_ceiling_is_refused_naming_both() -> None:
    from finetune_sweep.settings import Settings, SettingsError

    with pytest.raises(
        SettingsError,
        match=r"^FINETUNE_POD_DEADLINE_SECONDS=7200 is above FINETUNE_POD_DEADLINE_MAX_SECONDS=3600; "
        r"lower it or raise the ceiling$",
    ):
        Settings.from_env({"FINETUNE_POD_DEADLINE_SECONDS": "7200", "FINETUNE_POD_DEADLINE_MAX_SECONDS": "3600"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"n_shifts": 10, "n_folds": 2},
            "no finding would be possible: 2 fold(s) at 10 shifts reach a p-value of 0.0479 at best, and "
            "Benjamini-Hochberg at fdr_q 0.1 over this sweep's 12 timing models needs 0.00833 for a lone edge; "
            "use n_shifts >= 30",
            id="too-few-shifts",
        ),
        pytest.param(
            {"n_shifts": 29, "n_folds": 1, "test_bars": 30},
            "no finding would be possible: 1 fold(s) at 29 shifts reach a p-value of 0.0333 at best, and "
            "Benjamini-Hochberg at fdr_q 0.1 over this sweep's 12 timing models needs 0.00833 for a lone edge; "
            "use n_shifts >= 119",
            id="one-fold",
        ),
    ],
)
def test_a_sweep_whose_floor_hides_every_edge_is_refused_saying_what_it_needs(overrides, message) -> None:
    # the defaults: 4 factors x 3 cryptos = 12 timing models; two folds at 30 shifts reach
    # P (1 - ln P) = 0.00819 <= 0.1 / 12 with P = 1/31^2, at 29 shifts 0.00867 does not
    params = make_params(**overrides)
    assert len(params["factors"]) * len(params["cryptos"]) == 12

    with pytest.raises(PlanError) as refused:
        plan_pods(params, run_id=RUN_ID, as_of=AS_OF)

    assert str(refused.value) == message


def test_the_shifts_reach_the_pod_and_enough_of_them_plan() -> None:
    # 36 profit groups (12 models x 3 costs) need 57 shifts over two folds; the timing models 30
    entries = plan_pods(make_params(n_shifts=57, n_folds=2), run_id=RUN_ID, as_of=AS_OF)
    arguments = entries[0]["arguments"]
    assert arguments[arguments.index("--n-shifts") + 1] == "57"
    with pytest.raises(PlanError, match="36 profit groups .* use n_shifts >= 57"):
        plan_pods(make_params(n_shifts=56, n_folds=2), run_id=RUN_ID, as_of=AS_OF)
