"""Tests of finetune_sweep.sweep.params: the params' schema, at the trigger form and at run time."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_rows import INJECTION, make_context, make_params
from finetune_sweep import tasks
from finetune_sweep.settings import get_settings
from finetune_sweep.sizing.profiles import SIZING_MAP
from finetune_sweep.sweep.params import (
    PARAM_NAMES,
    PlanError,
    build_params,
    default_params,
    form_factors,
    validate_params,
)


def test_defaults_validate_and_are_normalised() -> None:
    valid = validate_params(make_params(cost_bps=[10.0, 15], n_folds=2.0))

    assert valid["factors"] == list(SIZING_MAP)
    assert valid["cryptos"] == ["BTC", "ETH", "SOL"]
    assert valid["cost_bps"] == [10, 15] and all(type(v) is int for v in valid["cost_bps"])
    assert valid["n_folds"] == 2 and type(valid["n_folds"]) is int
    assert validate_params({}) == validate_params(default_params()), "missing keys take their defaults"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param(
            {"factors": ["eth_features"]}, r"param 'factors'\[0\].*eth_features.*base_features", id="unknown-factor"
        ),
        pytest.param({"factors": []}, r"param 'factors'.*allowed: a non-empty list", id="empty-factors"),
        pytest.param({"factors": ["base_features", "base_features"]}, r"param 'factors'", id="duplicate-factor"),
        pytest.param({"cost_bps": [10, -5]}, r"param 'cost_bps'\[1\].*-5.*0 to 1000", id="negative-cost"),
        pytest.param({"slippage_bps": []}, r"param 'slippage_bps'", id="empty-slippage"),
        pytest.param(
            {"cryptos": ["btc"]}, r"param 'cryptos'\[0\].*2 to 10 upper-case letters or digits", id="lowercase-symbol"
        ),
        pytest.param({"cryptos": ["BTC\n"]}, r"param 'cryptos'\[0\]: 'BTC\\n' does not match", id="symbol-newline"),
        pytest.param({"image": "0.1.0\n"}, r"param 'image': '0.1.0\\n' does not match", id="tag-newline"),
        pytest.param({"image": "latest"}, r"param 'image'.*not latest", id="latest"),
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
        pytest.param(
            {"drop_tables": True}, r"unknown param\(s\) 'drop_tables'.*allowed params: factors", id="unknown-key"
        ),
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
        validate_params(make_params(**overrides))


def test_build_params_form_and_trigger_validation() -> None:
    from airflow.sdk.definitions.param import ParamsDict

    params = build_params(image_tag="1.2.3")

    assert set(params) == set(PARAM_NAMES)
    factors = params["factors"].schema
    assert factors["examples"] == list(SIZING_MAP) and factors["items"]["enum"] == list(SIZING_MAP)
    assert params["image"].value == "1.2.3"
    ParamsDict(params).validate()
    with pytest.raises(Exception, match="cost_bps"):
        bad = ParamsDict(build_params())
        bad["cost_bps"] = [-1]
        bad.validate()


def test_fdr_q_is_validated_and_left_out_of_the_run_id() -> None:
    def run_id(**overrides: Any) -> str:
        return tasks.sweep_run_id(make_context(params=make_params(**overrides)), data_uri=get_settings().data_uri)

    assert validate_params({})["fdr_q"] == 0.1
    assert validate_params(make_params(fdr_q=0.05))["fdr_q"] == 0.05
    # The findings step only reads stored rows: another FDR is the same sweep (same rows, the
    # findings replaced), and the ids of param sets from before fdr_q existed are unchanged
    # (these two were computed by main before the param was added).
    assert run_id(fdr_q=0.01) == run_id() == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
    assert run_id(factors=["btc_features"], cost_bps=[0], fdr_q=0.2).endswith("__3b270b54")


@pytest.mark.parametrize(
    ("tag_pattern", "tag", "admitted"),
    [
        pytest.param(r"[0-9]+\.[0-9]+\.[0-9]+", "0.2.0", True, id="release"),
        pytest.param(r"[0-9]+\.[0-9]+\.[0-9]+", "0.2.0-rc1", False, id="pre-release"),
        pytest.param(r"[0-9]+\.[0-9]+\.[0-9]+", "x0.2.0", False, id="anchored-at-the-start"),
        pytest.param(r"[0-9]+\.[0-9]+\.[0-9]+(-rc[0-9]+)?", "0.2.0-rc1", True, id="widened-by-the-setting"),
        pytest.param(r".*", "latest", False, id="latest-whatever-the-pattern"),
        pytest.param(None, "dev-branch", True, id="no-restriction"),
    ],
)
def test_the_image_tag_pattern_restricts_the_tags_a_run_may_use(
    tag_pattern: str | None, tag: str, admitted: bool
) -> None:
    params = make_params(image=tag)

    if admitted:
        assert validate_params(params, tag_pattern=tag_pattern)["image"] == tag
    else:
        with pytest.raises(PlanError, match=r"^param 'image': .*; allowed: an image tag"):
            validate_params(params, tag_pattern=tag_pattern)


def test_the_form_offers_finetune_sizings_factors_and_finetune_models() -> None:
    factors = form_factors('{"range_features": "STANDARD"}')
    assert factors == (*SIZING_MAP, "range_features")
    assert form_factors("{not json") == tuple(SIZING_MAP), "a bad override fails plan, not the DAG's parse"
    params = build_params(known_factors=factors, known_models=("ridge_long_flat", "team_logit"))
    assert params["factors"].schema["items"]["enum"][-1] == "range_features"
    assert params["model"].value == "ridge_long_flat"
    assert params["model"].schema["enum"] == ["ridge_long_flat", "team_logit"]
    params["model"].resolve("team_logit")
    with pytest.raises(Exception, match="team_gbm"):
        params["model"].resolve("team_gbm")
    # without the built-in among the models, the first one is the default
    assert build_params(known_models=("team_logit",))["model"].value == "team_logit"
    assert default_params()["model"] == "ridge_long_flat"
