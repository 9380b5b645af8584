"""Tests of finetune_sweep.sweep.identity: the as-of and the finetune run id of a DAG run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from finetune_rows import make_context, make_params
from finetune_sweep import tasks
from finetune_sweep.settings import get_settings
from finetune_sweep.sweep.identity import as_of_from_context
from finetune_sweep.sweep.params import PlanError


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
    assert as_of_from_context(make_context(**overrides)) == expected


def test_as_of_without_any_run_time_is_an_error() -> None:
    with pytest.raises(PlanError, match="as_of"):
        as_of_from_context(make_context(data_interval_end=None, logical_date=None, dag_run=None))


def test_finetune_run_id_is_stable_per_sweep() -> None:
    def run_id(**overrides: Any) -> str:
        return tasks.sweep_run_id(make_context(**overrides), data_uri=get_settings().data_uri)

    first = run_id()
    # The same sweep, whatever the Airflow run id (dags test embeds the wall clock in it).
    assert run_id(run_id="manual__2026-11-25T22:17:56.537790+00:00") == first
    assert run_id(params={}) == first, "omitted params are their defaults"
    assert run_id(params=make_params(cost_bps=[10.0, 15, 30])) == first, "normalised first"
    assert run_id(params=make_params(cryptos=["BTC"])) != first
    assert run_id(data_interval_end=datetime(2026, 6, 14, tzinfo=UTC)) != first


def test_the_data_the_pods_read_is_part_of_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:

    def run_id(data_uri: str | None) -> str:
        if data_uri is None:
            monkeypatch.delenv("FINETUNE_DATA_URI", raising=False)
        else:
            monkeypatch.setenv("FINETUNE_DATA_URI", data_uri)
        get_settings.cache_clear()
        try:
            return tasks.sweep_run_id(make_context(), data_uri=get_settings().data_uri)
        finally:
            get_settings.cache_clear()

    # unset (the built-in synthetic market): the id from before the data counted
    assert run_id(None) == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
    ids = {run_id(uri) for uri in (None, "file:///data/hourly", "s3://bucket/hourly", "synthetic://random-walk")}
    assert len(ids) == 4, "the same params on other data never upsert over each other's rows"
    assert run_id("s3://bucket/hourly") == run_id("s3://bucket/hourly")


def test_n_shifts_at_its_default_keeps_the_id_and_any_other_value_is_another_sweep() -> None:
    from finetune_sweep.sweep.identity import finetune_run_id
    from finetune_sweep.sweep.params import validate_params

    def run_id(**params: object) -> str:
        return finetune_run_id(dag_id="finetune_sweep", as_of="2026-06-07T00:00:00Z", params=validate_params(params))

    assert run_id() == run_id(n_shifts=999) == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
    assert run_id(n_shifts=500) != run_id()


def test_the_model_is_part_of_the_sweep_but_the_default_keeps_the_old_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_MODELS", "ridge_long_flat,team_logit")
    monkeypatch.setenv("FINETUNE_SIZING", '{"range_features": "STANDARD"}')
    monkeypatch.delenv("FINETUNE_DATA_URI", raising=False)
    get_settings.cache_clear()
    try:

        def run_id(**params: Any) -> str:
            return tasks.sweep_run_id(make_context(params=make_params(**params)), data_uri=None)

        # the id of a default sweep from before the param existed (test above)
        assert run_id(model="ridge_long_flat") == "finetune_sweep__2026-06-07T00:00:00Z__06710d57"
        assert run_id(model="team_logit") != run_id()
        assert run_id(factors=["range_features"], model="team_logit") != run_id(model="team_logit")
    finally:
        get_settings.cache_clear()
