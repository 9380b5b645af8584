"""The model being fine-tuned: ridge regression, long/flat, per (crypto, fold) (DESIGN 5, "Model").

``fine_tune`` fits a ridge regression on standardised features (mean and scale from the rows it is
fitted on, never the rows it scores) to the forward ``hold_bars`` log return
``y[t] = log(close[t + h] / close[t])``, and goes long while the prediction exceeds an entry
threshold. Two hyperparameters are chosen on the tail of the training window:

- the ridge penalty ``lambda`` from :data:`RIDGE_LAMBDAS` (per training row, on standardised
  features: ``w = (Z'Z + lambda * n * I)^-1 Z'(y - mean(y))``);
- the entry threshold from :data:`THRESHOLD_MULTIPLES` times :data:`SELECTION_ROUND_TRIP_COST`
  (a trade is worth entering only if its predicted return pays for the round trip).

The training window is split into a head and a tail (the last :data:`SELECTION_FRACTION`); the
head's labels stop ``hold_bars`` bars before the tail (the same embargo as between train and
test). Each candidate is fitted on the head and scored by :func:`evaluate`'s compounded net return
of its long/flat positions on the tail at a fixed 10 bp per side cost: the model is one per
(crypto, fold), shared by every cost basis, so selection must not see the key's cost; 10 bp is
the typical taker fee, and a cost-aware utility keeps the churn of a cost-free choice out.
Ties keep the first candidate in grid order, from the most conservative (largest lambda and
threshold) down. The chosen pair is refitted on the whole training window, whose last label reads
``close[train_end - 1 + hold_bars] = close[test_start - 1]`` at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from finetune.baselines import validate_close
from finetune.costs import compound, round_trip_cost, trade_returns
from finetune.factors import FeatureStore
from finetune.folds import Fold

STRATEGY = "ridge_long_flat"
RIDGE_LAMBDAS = (10.0, 1.0, 0.1, 0.01)
THRESHOLD_MULTIPLES = (2.0, 1.0, 0.5, 0.0)
SELECTION_ROUND_TRIP_COST = round_trip_cost(10)
SELECTION_FRACTION = 0.2
BARS_PER_YEAR = 24 * 365  # hourly bars (the default): crypto trades around the clock


@dataclass(frozen=True)
class Ridge:
    """A fitted ridge regression on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, lambdas: tuple[float, ...]) -> list[Ridge]:
        """One fit per penalty; the standardisation and ``Z'Z`` are shared by all of them."""
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale[scale == 0] = 1.0  # a constant column standardises to 0 and drops out
        z = features - mean
        z /= scale
        gram = z.T @ z
        y_mean = float(labels.mean())
        zty = z.T @ (labels - y_mean)
        fits = []
        for lam in lambdas:
            penalised = gram.copy()
            penalised[np.diag_indices_from(penalised)] += lam * len(labels)
            fits.append(cls(mean, scale, np.linalg.solve(penalised, zty), y_mean))
        return fits

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``((x - mean) / scale) @ coef + intercept``, folded into one product (no copy of x)."""
        weights = self.coef / self.scale
        return features @ weights + (self.intercept - float(self.mean @ weights))


@dataclass
class FittedModel:
    """The chosen ridge and threshold of one (crypto, fold); ``hyperparams`` is stored per row."""

    hyperparams: dict
    ridge: Ridge = field(repr=False)
    entry_threshold: float

    def positions(self, features_test: np.ndarray) -> np.ndarray:
        """1.0 (long) where the predicted forward return exceeds the threshold, else 0.0 (flat)."""
        return (self.ridge.predict(features_test) > self.entry_threshold).astype(np.float64)


@dataclass
class ModelMetrics:
    net_return: float
    sharpe: float
    max_drawdown: float
    n_trades: int


def forward_log_returns(close: np.ndarray, start: int, end: int, hold_bars: int) -> np.ndarray:
    """Labels ``log(close[t + h] / close[t])`` for ``t`` in ``[start, end)``.

    Reads ``close[start : end + h]`` and nothing else, so the caller bounds the look-ahead.
    """
    if end + hold_bars > len(close) or start < 0 or end <= start:
        raise ValueError(
            f"labels for rows [{start}, {end}) need close up to row {end - 1 + hold_bars}, have {len(close)}"
        )
    window = close[start : end + hold_bars]
    return np.log(window[hold_bars:] / window[: end - start])


def _long_flat(ridge: Ridge, threshold: float, features: np.ndarray, close: np.ndarray) -> float:
    """Tail utility: compounded net return of the long/flat positions at the selection cost."""
    positions = (ridge.predict(features) > threshold).astype(np.float64)
    return evaluate(positions, close, SELECTION_ROUND_TRIP_COST).net_return


class RidgeLongFlat:
    """The built-in model plug-in ``ridge_long_flat`` (entry point group ``finetune.models``).

    ``fit`` selects lambda and the threshold on the tail of the training rows it is given and
    refits on all of them (see the module docstring); the runner passes ``close`` (the training
    rows' closes) and ``hold_bars`` because its ``fit`` declares them.
    """

    def fit(self, features: np.ndarray, labels: np.ndarray, *, close: np.ndarray, hold_bars: int) -> FittedModel:
        """:param features: the training rows; :param labels: their forward ``hold_bars`` log
        returns (the last one reads the close just before the test window)."""
        if hold_bars < 1:
            raise ValueError(f"hold_bars must be >= 1, got {hold_bars!r}")
        n = len(labels)
        n_tail = max(int(n * SELECTION_FRACTION), 2)
        split = n - n_tail
        head_end = split - hold_bars  # head labels read close[split - 1] at most
        if head_end < 2:
            raise ValueError(
                f"{n} training bars are too few to select on a tail of {n_tail} with a {hold_bars}-bar embargo"
            )
        head_fits = Ridge.fit(features[:head_end], labels[:head_end], RIDGE_LAMBDAS)
        best = None
        for lam, ridge in zip(RIDGE_LAMBDAS, head_fits, strict=True):
            for multiple in THRESHOLD_MULTIPLES:
                threshold = multiple * SELECTION_ROUND_TRIP_COST
                utility = _long_flat(ridge, threshold, features[split:n], close[split:n])
                if best is None or utility > best[0]:
                    best = (utility, lam, threshold)
        utility, lam, threshold = best
        (ridge,) = Ridge.fit(features[:n], labels, (lam,))
        hyperparams = {
            "model": STRATEGY,
            "ridge_lambda": lam,
            "entry_threshold": threshold,
            "hold_bars": hold_bars,
            "train_bars": n,
            "selection_bars": n_tail,
            "selection_round_trip_cost": SELECTION_ROUND_TRIP_COST,
            "selection_net_return": utility,
            "n_features": int(features.shape[1]),
        }
        return FittedModel(hyperparams=hyperparams, ridge=ridge, entry_threshold=threshold)


def training_rows(store: FeatureStore, fold: Fold, *, hold_bars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, close) of the fold's training rows; the labels look ``hold_bars``
    ahead and the embargo keeps the last one before the test window (DESIGN 5, "Folds")."""
    if hold_bars < 1:
        raise ValueError(f"hold_bars must be >= 1, got {hold_bars!r}")
    if fold.train_end + hold_bars > fold.test_start:
        raise ValueError(f"fold {fold.fold_id}: labels of its train window would read its test window")
    start, end = fold.train_start, fold.train_end
    labels = forward_log_returns(store.close, start, end, hold_bars)
    return store.features[start:end], labels, store.close[start:end]


def fine_tune(store: FeatureStore, fold: Fold, *, hold_bars: int) -> FittedModel:
    """The ridge of one (crypto, fold): :class:`RidgeLongFlat` on the fold's training rows."""
    features, labels, close = training_rows(store, fold, hold_bars=hold_bars)
    try:
        return RidgeLongFlat().fit(features, labels, close=close, hold_bars=hold_bars)
    except ValueError as exc:
        raise ValueError(f"fold {fold.fold_id}: {exc}") from None


def _validate_positions(positions: np.ndarray, n: int) -> np.ndarray:
    held = np.array(positions, dtype=np.float64)  # a copy: the last bar is forced flat below
    if held.shape != (n,):
        raise ValueError(f"positions must have one value per close ({n}), got shape {held.shape}")
    if not np.all((held == 0) | (held == 1)):
        raise ValueError("positions must be 0.0 (flat) or 1.0 (long)")
    return held


def equity_curve(prices: np.ndarray, entries: np.ndarray, exits: np.ndarray, net: np.ndarray, rt: float) -> np.ndarray:
    """Equity marked at each close, starting from 1.

    Inside trade ``k`` (entered at ``e``) the bar ``t`` is marked ``G_k * (c[t]/c[e] - rt/2)``
    (entry half of the cost paid), where ``G_k`` is the growth of the trades before; at its exit
    and until the next entry it is ``G_k * (1 + r_k)``. So the last mark is ``prod(1 + r_k)``.
    """
    n = prices.size
    growth = np.cumprod(net + 1.0)
    before = np.concatenate(([1.0], growth[:-1]))
    bars = np.arange(n)
    trade = np.searchsorted(entries, bars, side="right") - 1  # latest entry at or before t
    equity = np.ones(n)
    inside = trade >= 0
    k, t = trade[inside], bars[inside]
    is_open = t < exits[k]
    equity[inside] = np.where(is_open, before[k] * (prices[t] / prices[entries[k]] - rt / 2), growth[k])
    return equity


@dataclass(frozen=True)
class _Book:
    """The trades of long/flat positions over a window, and the equity marked at each close."""

    entries: np.ndarray
    net: np.ndarray  # each trade's net return
    equity: np.ndarray

    @property
    def bar_returns(self) -> np.ndarray:
        return np.diff(self.equity, prepend=1.0) / np.concatenate(([1.0], self.equity[:-1]))


def _book(positions: np.ndarray, close: np.ndarray, round_trip_cost: float) -> _Book:
    prices = validate_close(close)
    if not math.isfinite(round_trip_cost) or round_trip_cost < 0:
        raise ValueError(f"round_trip_cost must be a finite fraction >= 0, got {round_trip_cost!r}")
    held = _validate_positions(positions, prices.size)
    held[-1] = 0.0
    change = np.diff(held, prepend=0.0)
    entries, exits = np.flatnonzero(change > 0), np.flatnonzero(change < 0)
    net = trade_returns(prices[entries], prices[exits], round_trip_cost)
    return _Book(entries, net, equity_curve(prices, entries, exits, net, round_trip_cost))


def net_bar_returns(positions: np.ndarray, close: np.ndarray, round_trip_cost: float) -> np.ndarray:
    """Per-bar returns of the equity curve of long/flat ``positions`` (see :func:`evaluate`).

    ``r[t] = equity[t] / equity[t-1] - 1`` with ``equity[-1] = 1``: bar 0 carries the entry half
    of the cost when the book starts long; ``prod(1 + r) - 1`` is the net return.
    """
    return _book(positions, close, round_trip_cost).bar_returns


def evaluate(
    positions: np.ndarray, close: np.ndarray, round_trip_cost: float, *, bars_per_year: float = BARS_PER_YEAR
) -> ModelMetrics:
    """Metrics of long/flat ``positions`` over ``close`` (DESIGN 5 cost convention).

    ``position[t]`` is held from ``close[t]`` to ``close[t+1]``; the book is flat after the last
    bar whatever its position says. Each trade nets ``c[exit]/c[entry] - 1 - rt`` (half of ``rt``
    at the entry, half at the exit), trades compound. ``sharpe`` is the mean over the population
    std (ddof=0) of the per-bar returns of the equity curve (:func:`net_bar_returns`) times
    ``sqrt(bars_per_year)``, 0 when the std is 0; ``max_drawdown`` is the largest fall from an
    equity peak as a positive fraction.

    :param bars_per_year: bars of the data's interval in a year (:func:`finetune.bars.bars_per_year`,
        8760 for hourly bars, the default): the Sharpe ratio is annualised by its square root.
    """
    book = _book(positions, close, round_trip_cost)
    bar_returns = book.bar_returns
    std = float(bar_returns.std())
    if not math.isfinite(bars_per_year) or bars_per_year <= 0:
        raise ValueError(f"bars_per_year must be a finite number > 0, got {bars_per_year!r}")
    sharpe = float(bar_returns.mean()) / std * math.sqrt(bars_per_year) if std > 0 else 0.0
    peaks = np.maximum.accumulate(np.maximum(book.equity, 1.0))
    return ModelMetrics(
        net_return=compound(book.net),
        sharpe=sharpe,
        max_drawdown=float(np.max(1.0 - book.equity / peaks)),
        n_trades=int(book.entries.size),
    )
