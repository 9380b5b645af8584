"""Chart specs of the plugin's pages: hand-worked means, the seed band only when quantiles exist."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from finetune_sweep.ui.charts import cost_curves, history_charts


def _group(**overrides: object) -> dict[str, object]:
    row = {
        "factor": "base_features",
        "crypto": "BTC",
        "cost_bps": 10,
        "slippage_bps": 0,
        "folds": 2,
        "model": 0.02,
        "buy_and_hold": 0.01,
        "random": 0.0,
        "random_p05": -0.04,
        "random_p95": 0.04,
        "naive": 0.0,
    }
    row.update(overrides)
    return row


def _trace(figure: dict, name: str) -> dict:
    return next(trace for trace in figure["figure"]["data"] if trace["name"] == name)


def test_a_cost_curve_averages_cryptos_weighted_by_folds_per_total_cost() -> None:
    groups = [
        _group(crypto="BTC", folds=1, model=0.03),
        _group(crypto="ETH", folds=3, model=-0.01),  # (0.03 * 1 - 0.01 * 3) / 4 = 0.0
        _group(cost_bps=25, slippage_bps=5, model=-0.02, buy_and_hold=-0.005),  # x = 30 bps per side
        _group(factor="l2_features", model=0.5),
    ]

    figures = cost_curves(groups)

    assert [f["id"] for f in figures] == ["cost-curve-base_features", "cost-curve-l2_features"]
    model = _trace(figures[0], "model")
    assert model["x"] == [10, 30]
    assert model["y"] == pytest.approx([0.0, -0.02])
    assert _trace(figures[0], "buy & hold")["y"] == pytest.approx([0.01, -0.005])
    band = _trace(figures[0], "random p05-p95")
    assert band["fill"] == "tonexty" and band["y"] == pytest.approx([0.04, 0.04])


def test_without_seed_quantiles_there_is_no_band_and_missing_means_are_gaps() -> None:
    figures = cost_curves([_group(random_p05=None, random_p95=None, buy_and_hold=None)])

    names = [trace["name"] for trace in figures[0]["figure"]["data"]]
    assert names == ["random (mean)", "buy & hold", "model"]
    assert _trace(figures[0], "buy & hold")["y"] == [None]


def test_history_charts_plot_each_factor_over_the_runs() -> None:
    as_of = [datetime(2026, 6, d, tzinfo=UTC) for d in (7, 14)]
    history = [
        {
            "run_id": f"r{i}",
            "as_of": when,
            "factor": "base_features",
            "edge_vs_buy_and_hold": 0.01 * i,
            "percentile": 0.5,
            "peak_memory_bytes": 600 + 100 * i,
            "memory_limit_bytes": 1000,
        }
        for i, when in enumerate(as_of)
    ]

    edge, percentile, memory = history_charts(history)

    assert edge["figure"]["data"][0]["x"] == ["2026-06-07T00:00:00+00:00", "2026-06-14T00:00:00+00:00"]
    assert edge["figure"]["data"][0]["y"] == [0.0, 0.01]
    assert percentile["figure"]["data"][0]["y"] == [0.5, 0.5]
    assert memory["figure"]["data"][0]["y"] == pytest.approx([0.6, 0.7])
    assert memory["figure"]["layout"]["shapes"][0]["y0"] == 0.8
