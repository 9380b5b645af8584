"""Plotly figure specs (plain JSON) for the plugin's pages; plotly.js draws them in the browser.

The specs are built here as dicts, not with plotly's Python graph objects: the page needs only
the JSON, and the Python side of plotly would add its import and validation to every request.
plotly.js itself is served by the plugin from the plotly wheel (no CDN: Airflow often runs
air-gapped).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# One colour per series on every chart, so that "model" looks the same everywhere.
COLOURS = {"model": "#1f77b4", "buy_and_hold": "#ff7f0e", "random": "#7f7f7f", "naive": "#2ca02c"}
_LAYOUT = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
    "height": 320,
    "legend": {"orientation": "h", "y": -0.25},
    "hovermode": "x unified",
}


def _weighted_mean(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    """Mean of the values weighted by their fold counts, ignoring missing values."""
    total = weight = 0.0
    for value, folds in pairs:
        if value is None or value != value:  # NaN
            continue
        total += value * folds
        weight += folds
    return total / weight if weight else None


def cost_curves(groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One figure per factor: net return against cost per side (cost + slippage, bps).

    Each point is the mean over the factor's cryptos and folds at that cost (weighted by folds),
    for the model, buy-and-hold and the random baseline with its p05-p95 band (the mean of the
    folds' seed quantiles), so the cost at which the model's edge disappears is visible.

    :param groups: rows of ``queries.GROUPS_SQL``.
    """
    by_factor: dict[str, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in groups:
        by_factor[row["factor"]][int(row["cost_bps"]) + int(row["slippage_bps"])].append(row)

    figures = []
    for factor in sorted(by_factor):
        costs = sorted(by_factor[factor])

        def series(column: str, _costs: list[int] = costs, _factor: str = factor) -> list[float | None]:
            return [_weighted_mean((row[column], row["folds"]) for row in by_factor[_factor][cost]) for cost in _costs]

        p05, p95 = series("random_p05"), series("random_p95")
        data: list[dict[str, Any]] = []
        if any(v is not None for v in p05) and any(v is not None for v in p95):
            data += [
                {
                    "x": costs,
                    "y": p05,
                    "name": "random p05",
                    "mode": "lines",
                    "showlegend": False,
                    "line": {"width": 0, "color": COLOURS["random"]},
                    "hoverinfo": "skip",
                },
                {
                    "x": costs,
                    "y": p95,
                    "name": "random p05-p95",
                    "mode": "lines",
                    "fill": "tonexty",
                    "fillcolor": "rgba(127,127,127,0.2)",
                    "line": {"width": 0, "color": COLOURS["random"]},
                },
            ]
        data += [
            {
                "x": costs,
                "y": series("random"),
                "name": "random (mean)",
                "mode": "lines+markers",
                "line": {"dash": "dot", "color": COLOURS["random"]},
            },
            {
                "x": costs,
                "y": series("buy_and_hold"),
                "name": "buy & hold",
                "mode": "lines+markers",
                "line": {"color": COLOURS["buy_and_hold"]},
            },
            {
                "x": costs,
                "y": series("model"),
                "name": "model",
                "mode": "lines+markers",
                "line": {"width": 3, "color": COLOURS["model"]},
            },
        ]
        figures.append(
            {
                "id": f"cost-curve-{factor}",
                "title": factor,
                "figure": {
                    "data": data,
                    "layout": {
                        **_LAYOUT,
                        "title": {"text": f"{factor}: net return vs cost"},
                        "xaxis": {"title": {"text": "cost + slippage per side (bps)"}, "type": "linear"},
                        "yaxis": {
                            "title": {"text": "net return (mean over cryptos and folds)"},
                            "tickformat": ".1%",
                            "zeroline": True,
                        },
                    },
                },
            }
        )
    return figures


def history_charts(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The DAG tab's figures: edge over buy-and-hold, percentile, and peak/limit per factor over runs.

    :param history: rows of ``queries.HISTORY_SQL`` (oldest run first).
    """
    by_factor: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in history:
        by_factor[row["factor"]].append(row)

    def lines(column: str, scale: Any = None) -> list[dict[str, Any]]:
        traces = []
        for factor in sorted(by_factor):
            rows = by_factor[factor]
            traces.append(
                {
                    "x": [row["as_of"].isoformat() for row in rows],
                    "y": [scale(row) if scale else row[column] for row in rows],
                    "text": [row["run_id"] for row in rows],
                    "name": factor,
                    "mode": "lines+markers",
                }
            )
        return traces

    def usage(row: Mapping[str, Any]) -> float | None:
        peak, limit = row["peak_memory_bytes"], row["memory_limit_bytes"]
        return peak / limit if peak is not None and limit else None

    time_axis = {"title": {"text": "as-of of the run"}, "type": "date"}
    return [
        {
            "id": "history-edge",
            "title": "edge over buy-and-hold",
            "figure": {
                "data": lines("edge_vs_buy_and_hold"),
                "layout": {
                    **_LAYOUT,
                    "title": {"text": "Mean edge over buy-and-hold (model - b&h net return)"},
                    "xaxis": time_axis,
                    "yaxis": {"tickformat": ".1%", "zeroline": True},
                },
            },
        },
        {
            "id": "history-percentile",
            "title": "percentile among random seeds",
            "figure": {
                "data": lines("percentile"),
                "layout": {
                    **_LAYOUT,
                    "title": {"text": "Mean percentile of the model among the random seeds"},
                    "xaxis": time_axis,
                    "yaxis": {"tickformat": ".0%", "range": [0, 1]},
                },
            },
        },
        {
            "id": "history-memory",
            "title": "peak memory / limit",
            "figure": {
                "data": lines("", usage),
                "layout": {
                    **_LAYOUT,
                    "title": {"text": "Pod peak memory as a share of its limit (flag above 80 %)"},
                    "xaxis": time_axis,
                    "yaxis": {"tickformat": ".0%", "rangemode": "tozero"},
                    "shapes": [
                        {
                            "type": "line",
                            "xref": "paper",
                            "x0": 0,
                            "x1": 1,
                            "y0": 0.8,
                            "y1": 0.8,
                            "line": {"dash": "dash", "color": "#d62728"},
                        }
                    ],
                },
            },
        },
    ]
