"""Findings of a run: which (factor, crypto, cost basis) carry an edge that holds after costs and
after every comparison made (DESIGN 5, "Findings").

A sweep tests many models at once (4 factors x 3 cryptos x 4 folds), so at the 5 % level several
"beat chance" by luck alone. Two questions are asked, each with its own test and its own
Benjamini-Hochberg control at ``fdr_q`` (``scipy.stats.false_discovery_control``, method ``bh``):

1. **Timing** -- per model (factor, crypto), the folds' timing-test p-values
   (``finetune_results.perm_p_value``: the model's exposure, less its mean before each bar, on
   volatility-scaled returns against random sign flips of the bars; the same on every cost row of
   the model) combined with
   ``scipy.stats.combine_pvalues`` (Fisher by default; the folds are disjoint test windows), then
   BH over the run's *distinct* models: identical models (the same positions on the same windows,
   e.g. BTC's ``btc_features`` and ``base_features``) are one hypothesis, and the findings name
   the groups that share it (``same_model_as``).
2. **Profit after costs** -- per (model, cost basis), the folds' block-bootstrap p-values of "the
   mean per-bar net P&L is above zero" (``profit_p_value``) combined the same way, then BH over the
   run's distinct (model, cost basis) pairs.

A group is a **finding at a cost** (``discovered``) only when its timing is discovered, its profit at
that cost is discovered, and its mean net return there is positive. A group whose timing is
discovered but which loses money says so ("timing edge, eaten by costs at 30 bps"). Stored beside:
the combined "above buy-and-hold" p-value (not a condition: an edge in a falling market may lose
to nothing and still beat holding), the mean matched percentile (the model among its own shifted
copies at that cost), the folds with a positive net return, and the **deflated Sharpe ratio**
(Bailey & Lopez de Prado 2014): the probability that the group's per-bar Sharpe ratio beats the
largest one expected among the run's ``N`` trials (distinct models) by chance,
``Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2))`` with
``SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``, ``V`` the variance of
the trials' Sharpe ratios at that cost basis; ``SR``, skewness and kurtosis are the folds' per-bar
values weighted by their bars, ``T`` the group's bars (scipy's normal distribution).

**The floor.** A fold's p-value is never below ``1 / (1 + perm_n_shifts)``; combined over the folds,
that is the smallest p a group can reach, and BH can find a lone true edge among at most
``fdr_q / floor`` hypotheses (:func:`lone_edge_capacity`). The headline prints it; the DAG's
plan refuses a sweep whose groups exceed it (:func:`shifts_needed`).

A group whose model rows lack a p-value of either test on some fold (rows written before
migration V010, or by an older pod image) is **not tested**: it gets no row, is not counted among
the hypotheses, and is listed as such. No p-value is ever invented or recomputed.

The run's rows are replaced in one transaction (delete + copy under a per-run advisory lock), so
a rerun -- also with another ``fdr_q`` -- leaves exactly one row per tested group.

Airflow side only: psycopg and scipy, never the pod package.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune_sweep.db.connect import connect
from finetune_sweep.gate import same_basis_join

if TYPE_CHECKING:
    import numpy as np
    import psycopg

DEFAULT_FDR_Q = 0.10
# Shifts per model (timing) and bootstrap resamples per cost (profit): the DAG param and the pod's
# --n-shifts default (finetune.significance.DEFAULT_N_SHIFTS; this side never imports the pod).
DEFAULT_N_SHIFTS = 999
DEFAULT_COMBINE_METHOD = "fisher"
# scipy.stats.combine_pvalues' methods; the name is stored in finetune_findings.combine_method.
COMBINE_METHODS = ("fisher", "pearson", "tippett", "stouffer", "mudholkar_george")
MAX_LISTED_UNTESTED = 10


# A fold counts as tested when its row has both tests' p-values (rows before V010 have no profit p).
TESTED_FOLDS = "count(*) FILTER (WHERE m.perm_p_value IS NOT NULL AND m.profit_p_value IS NOT NULL)"

# One row per group of the run, over the factors of its manifest (the findings table references
# it). Edges are taken against the baselines on the model row's full basis, as in the report.
# Per-fold values come in fold order. A model's identity is its window and positions (their
# 64-bit hash); rows without stored positions are their factor's own model.
GROUPS_SQL = f"""
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps,
       count(*)::integer AS n_folds,
       {TESTED_FOLDS}::integer AS n_p_values,
       array_agg(m.perm_p_value ORDER BY m.fold_id) AS p_values,
       avg(m.net_return) AS mean_model_return,
       avg(m.net_return - bh.net_return) AS mean_edge_vs_buy_and_hold,
       avg(m.net_return - rnd.net_return) AS mean_edge_vs_random,
       array_agg(m.perm_n_shifts ORDER BY m.fold_id) AS n_shifts,
       array_agg(m.profit_p_value ORDER BY m.fold_id) AS profit_p_values,
       array_agg(m.profit_vs_buy_and_hold_p_value ORDER BY m.fold_id) AS profit_vs_buy_and_hold_p_values,
       array_agg(m.fold_id || '@' || m.test_start || ':'
                 || coalesce(hash_array_extended(m.positions, 0)::text, 'factor ' || m.factor)
                 ORDER BY m.fold_id) AS model_ids,
       avg(m.matched_percentile) AS mean_matched_percentile,
       count(*) FILTER (WHERE m.net_return > 0)::integer AS n_folds_profitable,
       array_agg(m.bar_sharpe ORDER BY m.fold_id) AS bar_sharpes,
       array_agg(m.bar_skewness ORDER BY m.fold_id) AS bar_skewnesses,
       array_agg(m.bar_kurtosis ORDER BY m.fold_id) AS bar_kurtoses,
       array_agg(m.n_bars ORDER BY m.fold_id) AS n_bars
FROM finetune_results AS m
JOIN finetune_run_factors AS f ON f.run_id = m.run_id AND f.factor = m.factor
{same_basis_join("bh", "buy_and_hold")}
{same_basis_join("rnd", "random")}
WHERE m.run_id = %(run_id)s
GROUP BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
"""

# The groups the step leaves out (for the report): one scan of the run's model rows, no joins.
UNTESTED_SQL = f"""
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps,
       count(*)::integer AS n_folds,
       {TESTED_FOLDS}::integer AS n_p_values,
       array_agg(m.perm_p_value ORDER BY m.fold_id) AS p_values,
       avg(m.net_return) AS mean_model_return
FROM finetune_results AS m
JOIN finetune_run_factors AS f ON f.run_id = m.run_id AND f.factor = m.factor
WHERE m.run_id = %(run_id)s
GROUP BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
HAVING {TESTED_FOLDS} < count(*)
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
"""

FINDING_COLUMNS = (
    "run_id",
    "factor",
    "crypto",
    "cost_bps",
    "slippage_bps",
    "n_folds",
    "mean_model_return",
    "mean_edge_vs_buy_and_hold",
    "mean_edge_vs_random",
    "p_value",
    "q_value",
    "discovered",
    "fdr_q",
    "combine_method",
    "timing_discovered",
    "profit_p_value",
    "profit_q_value",
    "profit_discovered",
    "profit_vs_buy_and_hold_p_value",
    "mean_matched_percentile",
    "deflated_sharpe",
    "n_folds_profitable",
    "p_value_floor",
    "same_model_as",
    "verdict",
)


@dataclass(frozen=True)
class GroupInput:
    """One (factor, crypto, cost basis) of a run, as :data:`GROUPS_SQL` returns it (per-fold values
    in fold order)."""

    factor: str
    crypto: str
    cost_bps: int
    slippage_bps: int
    n_folds: int
    n_p_values: int  # folds with both tests' p-values
    p_values: tuple[float | None, ...]  # the timing test's, per fold
    mean_model_return: float
    mean_edge_vs_buy_and_hold: float | None = None
    mean_edge_vs_random: float | None = None
    n_shifts: tuple[int | None, ...] = ()
    profit_p_values: tuple[float | None, ...] = ()
    profit_vs_buy_and_hold_p_values: tuple[float | None, ...] = ()
    model_ids: tuple[str, ...] = ()  # per fold: window and positions; equal tuples = one model
    mean_matched_percentile: float | None = None
    n_folds_profitable: int = 0
    bar_sharpes: tuple[float | None, ...] = ()
    bar_skewnesses: tuple[float | None, ...] = ()
    bar_kurtoses: tuple[float | None, ...] = ()
    n_bars: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.factor} {self.crypto} {self.cost_bps}/{self.slippage_bps} bps"

    @property
    def model_label(self) -> str:
        return f"{self.factor} {self.crypto}"

    @property
    def testable(self) -> bool:
        """Every fold has both tests' p-values (nothing is combined from a part of the folds)."""
        return self.n_folds >= 1 and self.n_p_values == self.n_folds

    @property
    def model_key(self) -> tuple:
        """The model's identity: its crypto and each fold's window and positions (the factor when
        the positions are not stored)."""
        return (self.crypto, self.model_ids or (self.factor,))

    @property
    def basis(self) -> tuple[int, int]:
        return (self.cost_bps, self.slippage_bps)


@dataclass(frozen=True)
class Finding:
    """One row of ``finetune_findings`` (without the run id, fdr_q and method)."""

    factor: str
    crypto: str
    cost_bps: int
    slippage_bps: int
    n_folds: int
    mean_model_return: float
    mean_edge_vs_buy_and_hold: float | None
    mean_edge_vs_random: float | None
    p_value: float  # timing, folds combined
    q_value: float  # timing, BH over the run's distinct models
    discovered: bool  # a finding at this cost: timing AND profit discovered, mean net return > 0
    timing_discovered: bool = False
    profit_p_value: float | None = None
    profit_q_value: float | None = None
    profit_discovered: bool = False
    profit_vs_buy_and_hold_p_value: float | None = None
    mean_matched_percentile: float | None = None
    deflated_sharpe: float | None = None
    n_folds_profitable: int = 0
    p_value_floor: float | None = None
    same_model_as: tuple[str, ...] = ()
    verdict: str = ""

    @property
    def label(self) -> str:
        return f"{self.factor} {self.crypto} {self.cost_bps}/{self.slippage_bps} bps"


@dataclass(frozen=True)
class FindingsResult:
    """The findings of one run, and the groups that could not be tested."""

    run_id: str
    fdr_q: float
    combine_method: str
    findings: tuple[Finding, ...]
    untested: tuple[GroupInput, ...] = ()

    @property
    def n_groups(self) -> int:
        return len(self.findings)

    @property
    def n_discovered(self) -> int:
        return sum(finding.discovered for finding in self.findings)

    @property
    def n_models(self) -> int:
        """Distinct models tested for timing (the ``m`` of the timing family)."""
        return len({(f.crypto, min((f.factor, *f.same_model_as))) for f in self.findings})

    @property
    def n_timing_discovered(self) -> int:
        return len({(f.crypto, min((f.factor, *f.same_model_as))) for f in self.findings if f.timing_discovered})

    @property
    def p_value_floor(self) -> float | None:
        """The smallest combined timing p-value any group of the run could reach."""
        floors = [f.p_value_floor for f in self.findings if f.p_value_floor is not None]
        return min(floors, default=None)

    def summary(self) -> str:
        """The one-line answer, the floor, and a clear note on any untested group."""
        lines = [
            headline(
                n_discovered=self.n_discovered,
                n_groups=self.n_groups,
                fdr_q=self.fdr_q,
                combine_method=self.combine_method,
                n_models=self.n_models,
                n_timing_discovered=self.n_timing_discovered,
                p_value_floor=self.p_value_floor,
            )
        ]
        eaten = [f for f in self.findings if f.timing_discovered and not f.discovered]
        if eaten:
            lines.append("; ".join(f"{f.factor} {f.crypto}: {f.verdict}" for f in eaten[:MAX_LISTED_UNTESTED]))
        if self.untested:
            lines.append(untested_note(self.untested))
        return "\n".join(lines)


def headline(
    *,
    n_discovered: int,
    n_groups: int,
    fdr_q: float,
    combine_method: str,
    n_models: int | None = None,
    n_timing_discovered: int | None = None,
    p_value_floor: float | None = None,
) -> str:
    """``N of M groups are findings at FDR q``, how many models time the market, and the floor.

    :param n_discovered: groups that are findings at their cost (timing and profit discovered).
    :param n_groups: tested groups (factor x crypto x cost basis).
    :param fdr_q: the false discovery rate.
    :param combine_method: how the folds' p-values were combined.
    :param n_models: distinct models tested for timing (None: not known, e.g. older rows).
    :param n_timing_discovered: how many of them have a discovered timing edge.
    :param p_value_floor: the smallest combined timing p-value a group could reach.
    """
    how = f"timing and profit after costs, folds combined by {combine_method}, Benjamini-Hochberg over the run"
    if n_groups == 0:
        return f"0 of 0 groups are findings at FDR {fdr_q:g}: no group has the p-values of both tests"
    parts = []
    if n_models is not None and n_timing_discovered is not None:
        parts.append(f"timing edge in {n_timing_discovered} of {n_models} distinct models")
    if p_value_floor is not None:
        capacity = lone_edge_capacity(p_value_floor, fdr_q=fdr_q)
        if n_models is not None and capacity < n_models:
            parts.append(
                f"p-value floor {p_value_floor:.3g}: NO FINDING WAS POSSIBLE, a lone edge is found among at most "
                f"{capacity} models and this run has {n_models} (raise n_shifts or the test window)"
            )
        else:
            parts.append(f"p-value floor {p_value_floor:.3g}, a lone edge is found among up to {capacity:,} models")
    detail = f" [{'; '.join(parts)}]" if parts else ""
    if n_discovered == 0:
        return f"0 of {n_groups} groups are findings at FDR {fdr_q:g}: no finding in this run ({how}){detail}"
    return f"{n_discovered} of {n_groups} groups are findings at FDR {fdr_q:g} ({how}){detail}"


def untested_note(untested: Sequence[GroupInput]) -> str:
    """Which groups lack p-values and why they are left out (never filled in).

    :param untested: the groups without both tests' p-values on every fold.
    """
    listed = ", ".join(f"{g.label} ({g.n_p_values} of {g.n_folds} folds)" for g in untested[:MAX_LISTED_UNTESTED])
    more = len(untested) - MAX_LISTED_UNTESTED
    return (
        f"{len(untested)} group(s) NOT TESTED: their model rows lack the timing or the profit p-value "
        f"(written before migration V010 or by an older pod image); they are not counted among the "
        f"groups: {listed}" + (f" and {more} more" if more > 0 else "")
    )


def lone_edge_capacity(p_value_floor: float, *, fdr_q: float) -> int:
    """The most hypotheses among which BH can still discover a lone edge at the floor: a single
    rejection needs ``p <= fdr_q / m``."""
    if p_value_floor <= 0:
        return sys.maxsize
    return int(math.floor(fdr_q / p_value_floor * (1 + 1e-12)))


def p_value_floor(n_shifts: Sequence[int], *, method: str = DEFAULT_COMBINE_METHOD) -> float:
    """The smallest combined p-value of folds with these shift counts (each ``1 / (1 + n)``)."""
    return _p_value_floor(tuple(max(0, int(n)) for n in n_shifts), method)


@functools.lru_cache(maxsize=256)
def _p_value_floor(n_shifts: tuple[int, ...], method: str) -> float:
    # a run's groups share a handful of shift counts: one scipy call each, not one per group
    import numpy as np

    floors = np.array([[1.0 / (1 + n) for n in n_shifts]])
    return float(combine_fold_p_values(floors, method=method)[0])


def shifts_needed(n_hypotheses: int, *, n_folds: int, fdr_q: float, method: str = DEFAULT_COMBINE_METHOD) -> int:
    """The fewest shifts per fold with which a lone edge can be discovered among ``n_hypotheses``."""
    low, high = 1, 1
    while lone_edge_capacity(p_value_floor([high] * n_folds, method=method), fdr_q=fdr_q) < n_hypotheses:
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        if lone_edge_capacity(p_value_floor([middle] * n_folds, method=method), fdr_q=fdr_q) >= n_hypotheses:
            high = middle
        else:
            low = middle + 1
    return high


def validate_fdr_q(fdr_q: Any) -> float:
    """``fdr_q`` as a float if ``0 < fdr_q < 1``, else ValueError naming it.

    :param fdr_q: the false discovery rate.
    """
    if isinstance(fdr_q, bool) or not isinstance(fdr_q, (int, float)) or not (0 < fdr_q < 1):
        raise ValueError(f"fdr_q must be a number strictly between 0 and 1, got {fdr_q!r}")
    return float(fdr_q)


def validate_combine_method(method: Any) -> str:
    """``method`` if scipy's ``combine_pvalues`` has it, else ValueError listing the allowed ones.

    :param method: the combination method.
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"combine method must be one of {', '.join(COMBINE_METHODS)}, got {method!r}")
    return str(method)


def combine_fold_p_values(p_values: np.ndarray, *, method: str = DEFAULT_COMBINE_METHOD) -> np.ndarray:
    """One combined p-value per row of ``p_values`` (groups x folds), by scipy.

    :param p_values: 2-D array, one row per group, one column per fold, every value in (0, 1].
    :param method: one of :data:`COMBINE_METHODS`.
    """
    import numpy as np
    from scipy.stats import combine_pvalues

    method = validate_combine_method(method)
    values = np.asarray(p_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"p_values must be groups x folds with at least one fold, got shape {values.shape}")
    if values.shape[0] == 0:
        return np.empty(0)
    if not np.all((values > 0) & (values <= 1)):
        raise ValueError("every fold p-value must be in (0, 1]")
    combined = combine_pvalues(values, method=method, axis=1).pvalue
    # Floating point may leave a hair outside [0, 1]; the table's CHECK holds the exact range.
    return np.clip(np.atleast_1d(combined), 0.0, 1.0)


def benjamini_hochberg(p_values: np.ndarray, *, fdr_q: float) -> tuple[np.ndarray, np.ndarray]:
    """BH-adjusted q-values (scipy) and the discoveries ``q <= fdr_q``.

    :param p_values: one p-value per hypothesis (the run's groups).
    :param fdr_q: the false discovery rate, ``0 < fdr_q < 1``.
    """
    import numpy as np
    from scipy.stats import false_discovery_control

    fdr_q = validate_fdr_q(fdr_q)
    values = np.asarray(p_values, dtype=np.float64)
    if values.size == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    q_values = np.atleast_1d(false_discovery_control(values, method="bh"))
    return q_values, q_values <= fdr_q


def _combined(groups: Sequence[GroupInput], values: Any, *, method: str) -> list[float]:
    """Each group's per-fold p-values (``values(group)``) combined, one scipy call per fold count."""
    import numpy as np

    combined = np.empty(len(groups))
    by_folds: dict[int, list[int]] = {}
    for position, group in enumerate(groups):
        by_folds.setdefault(group.n_folds, []).append(position)
    for positions in by_folds.values():
        matrix = np.array([values(groups[i]) for i in positions], dtype=np.float64)
        combined[positions] = combine_fold_p_values(matrix, method=method)
    return combined.tolist()


def _controlled(p_by_key: dict[Any, float], *, fdr_q: float) -> dict[Any, tuple[float, bool]]:
    """BH over the distinct hypotheses (the keys): (q-value, discovered) per key."""
    q_values, discovered = benjamini_hochberg(list(p_by_key.values()), fdr_q=fdr_q)
    return {key: (float(q), bool(d)) for key, q, d in zip(p_by_key, q_values, discovered, strict=True)}


def _weighted(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    if not values or any(v is None for v in values) or sum(weights) <= 0:
        return None
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def deflated_sharpe_ratio(
    sharpe: float, *, n_bars: int, skewness: float, kurtosis: float, n_trials: int, trials_variance: float
) -> float | None:
    """Bailey & Lopez de Prado's deflated Sharpe ratio of a per-bar Sharpe ratio (module docstring).

    :param sharpe: the per-bar (not annualised) Sharpe ratio.
    :param n_bars: the bars it was measured on (``T``).
    :param skewness: the per-bar returns' skewness.
    :param kurtosis: their Pearson kurtosis (3 for a normal distribution).
    :param n_trials: the trials of the run (``N``); one trial expects a maximum of 0.
    :param trials_variance: the variance of the trials' Sharpe ratios (``V``).
    """
    from scipy.special import ndtr  # the standard normal cdf, as a ufunc (scipy.stats.norm.cdf's core)

    if n_bars < 2:
        return None
    sr0 = math.sqrt(trials_variance) * _expected_max_of_trials(n_trials) if trials_variance > 0 else 0.0
    spread = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if not spread > 0:
        return None
    return float(ndtr((sharpe - sr0) * math.sqrt(n_bars - 1) / math.sqrt(spread)))


@functools.lru_cache(maxsize=64)
def _expected_max_of_trials(n_trials: int) -> float:
    """The expected maximum of ``n_trials`` standard normal draws (the DSR's approximation), 0 for one."""
    from scipy.stats import norm

    if n_trials <= 1:
        return 0.0
    gamma = 0.5772156649015329  # Euler-Mascheroni
    return float((1 - gamma) * norm.ppf(1 - 1 / n_trials) + gamma * norm.ppf(1 - 1 / (n_trials * math.e)))


def _deflated_sharpes(groups: Sequence[GroupInput], n_trials: int) -> list[float | None]:
    """Each group's deflated Sharpe ratio over the run's trials, the variance taken per cost basis
    over the distinct models' Sharpe ratios."""
    import numpy as np

    moments = []
    for group in groups:
        weights = group.n_bars or (1,) * group.n_folds
        moments.append(
            (
                _weighted(group.bar_sharpes, weights),
                _weighted(group.bar_skewnesses, weights),
                _weighted(group.bar_kurtoses, weights),
                sum(group.n_bars),
            )
        )
    by_basis: dict[tuple[int, int], dict[tuple, float]] = {}
    for group, (sharpe, *_rest) in zip(groups, moments, strict=True):
        if sharpe is not None:
            by_basis.setdefault(group.basis, {})[group.model_key] = sharpe
    variance = {
        basis: float(np.var(list(sharpes.values()), ddof=1)) if len(sharpes) > 1 else 0.0
        for basis, sharpes in by_basis.items()
    }
    return [
        None
        if sharpe is None or skewness is None or kurtosis is None
        else deflated_sharpe_ratio(
            sharpe,
            n_bars=n_bars,
            skewness=skewness,
            kurtosis=kurtosis,
            n_trials=n_trials,
            trials_variance=variance.get(group.basis, 0.0),
        )
        for group, (sharpe, skewness, kurtosis, n_bars) in zip(groups, moments, strict=True)
    ]


def verdict(*, timing: bool, profit: bool, mean_return: float, cost_bps: int, slippage_bps: int) -> str:
    """What a finding row means, in words."""
    at = f"{cost_bps} bps" if slippage_bps == 0 else f"{cost_bps}+{slippage_bps} bps"
    if not timing:
        return "no timing edge"
    if mean_return <= 0:
        return f"timing edge, eaten by costs at {at}"
    if not profit:
        return f"timing edge, profit at {at} not significant"
    return f"finding at {at}"


def compute_findings(
    groups: Sequence[GroupInput], *, fdr_q: float = DEFAULT_FDR_Q, method: str = DEFAULT_COMBINE_METHOD
) -> tuple[list[Finding], list[GroupInput]]:
    """Both tests per testable group, each under BH over its distinct hypotheses (no database).

    Groups with the same number of folds are combined in one vectorised scipy call, so a run of
    tens of thousands of groups costs a handful of calls.

    :param groups: the run's groups.
    :param fdr_q: the false discovery rate.
    :param method: the fold combination method.
    :returns: (findings in the order of ``groups``, untested groups).
    """
    fdr_q = validate_fdr_q(fdr_q)
    method = validate_combine_method(method)
    tested = [group for group in groups if group.testable]
    untested = [group for group in groups if not group.testable]
    if not tested:
        return [], untested

    # Timing: one hypothesis per distinct model (its cost rows carry the same p-values).
    first_of_model: dict[tuple, GroupInput] = {}
    for group in tested:
        first_of_model.setdefault(group.model_key, group)
    models = list(first_of_model.values())
    timing_p = dict(
        zip(
            first_of_model,
            _combined(models, lambda g: g.p_values, method=method),
            strict=True,
        )
    )
    timing = _controlled(timing_p, fdr_q=fdr_q)
    # Profit: one hypothesis per distinct (model, cost basis).
    profit_keys = [(group.model_key, group.basis) for group in tested]
    profit_p = dict(zip(profit_keys, _combined(tested, lambda g: g.profit_p_values, method=method), strict=True))
    profit = _controlled(profit_p, fdr_q=fdr_q)
    # Shown, not a condition (and None where a fold lacks it, never made up).
    with_hold = [i for i, g in enumerate(tested) if all(p is not None for p in g.profit_vs_buy_and_hold_p_values)]
    versus_hold: list[float | None] = [None] * len(tested)
    hold_p = _combined([tested[i] for i in with_hold], lambda g: g.profit_vs_buy_and_hold_p_values, method=method)
    for i, p in zip(with_hold, hold_p, strict=True):
        versus_hold[i] = p
    deflated = _deflated_sharpes(tested, n_trials=len(models))
    sharing: dict[tuple, list[str]] = {}  # the factors whose groups are one model
    for group in tested:
        factors = sharing.setdefault(group.model_key, [])
        if group.factor not in factors:
            factors.append(group.factor)

    findings = []
    for group, key, vs_hold, dsr in zip(tested, profit_keys, versus_hold, deflated, strict=True):
        timing_q, timing_found = timing[group.model_key]
        profit_q, profit_found = profit[key]
        floor = None
        if len(group.n_shifts) == group.n_folds and all(n is not None for n in group.n_shifts):
            floor = p_value_floor(group.n_shifts, method=method)
        findings.append(
            Finding(
                factor=group.factor,
                crypto=group.crypto,
                cost_bps=group.cost_bps,
                slippage_bps=group.slippage_bps,
                n_folds=group.n_folds,
                mean_model_return=group.mean_model_return,
                mean_edge_vs_buy_and_hold=group.mean_edge_vs_buy_and_hold,
                mean_edge_vs_random=group.mean_edge_vs_random,
                p_value=timing_p[group.model_key],
                q_value=timing_q,
                discovered=timing_found and profit_found and group.mean_model_return > 0,
                timing_discovered=timing_found,
                profit_p_value=profit_p[key],
                profit_q_value=profit_q,
                profit_discovered=profit_found,
                profit_vs_buy_and_hold_p_value=vs_hold,
                mean_matched_percentile=group.mean_matched_percentile,
                deflated_sharpe=dsr,
                n_folds_profitable=group.n_folds_profitable,
                p_value_floor=floor,
                same_model_as=tuple(f for f in sharing[group.model_key] if f != group.factor),
                verdict=verdict(
                    timing=timing_found,
                    profit=profit_found,
                    mean_return=group.mean_model_return,
                    cost_bps=group.cost_bps,
                    slippage_bps=group.slippage_bps,
                ),
            )
        )
    return findings, untested


def groups_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[GroupInput]:
    """The groups of model rows held in memory, as :data:`GROUPS_SQL` builds them from the table
    (benchmarks and tests that run the pod's code without a database).

    :param rows: one mapping per model row with ``factor, crypto, fold_id, cost_bps, slippage_bps,
        net_return, perm_p_value, perm_n_shifts, profit_p_value, profit_vs_buy_and_hold_p_value``
        and ``model_id`` (the fold's window and positions: equal ids are one model).
    """
    by_group: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_group.setdefault((row["factor"], row["crypto"], row["cost_bps"], row["slippage_bps"]), []).append(row)
    groups = []
    for (factor, crypto, cost_bps, slippage_bps), members in by_group.items():
        members = sorted(members, key=lambda r: r["fold_id"])
        tested = [r for r in members if r["perm_p_value"] is not None and r["profit_p_value"] is not None]
        groups.append(
            GroupInput(
                factor=factor,
                crypto=crypto,
                cost_bps=cost_bps,
                slippage_bps=slippage_bps,
                n_folds=len(members),
                n_p_values=len(tested),
                p_values=tuple(r["perm_p_value"] for r in members),
                mean_model_return=sum(r["net_return"] for r in members) / len(members),
                n_shifts=tuple(r["perm_n_shifts"] for r in members),
                profit_p_values=tuple(r["profit_p_value"] for r in members),
                profit_vs_buy_and_hold_p_values=tuple(r["profit_vs_buy_and_hold_p_value"] for r in members),
                model_ids=tuple(f"{r['fold_id']}:{r['model_id']}" for r in members),
                n_folds_profitable=sum(r["net_return"] > 0 for r in members),
            )
        )
    return groups


def fetch_groups(conn: psycopg.Connection, run_id: str) -> list[GroupInput]:
    """The run's groups (:data:`GROUPS_SQL`).

    :param conn: an open connection, not in autocommit mode (its transaction is used).
    :param run_id: the finetune run id.
    """
    # The step runs right after the pods wrote the run: the planner has no statistics for this
    # run_id and estimates a few rows, then picks a merge join on `factor` alone with the rest as
    # a join filter, quadratic in the run (a 60,000-key run did not finish in 60 s). The query
    # reads the whole run once, which hash joins do in linear time whatever the estimates; the
    # sort of 60,000 rows fits in 64 MB instead of spilling. JIT would add ~0.6 s of fixed cost
    # (DESIGN 8). LOCAL: this transaction only (psycopg opens one implicitly).
    for setting in ("jit = off", "enable_nestloop = off", "enable_mergejoin = off", "work_mem = '64MB'"):
        conn.execute(f"SET LOCAL {setting}")
    return _groups(conn.execute(GROUPS_SQL, {"run_id": run_id}).fetchall())


def fetch_untested(conn: psycopg.Connection, run_id: str) -> list[GroupInput]:
    """The run's groups that lack a shift-test p-value on some fold (:data:`UNTESTED_SQL`).

    :param conn: an open connection.
    :param run_id: the finetune run id.
    """
    return _groups(conn.execute(UNTESTED_SQL, {"run_id": run_id}).fetchall())


def _groups(rows: Sequence[Sequence[Any]]) -> list[GroupInput]:
    groups = []
    for row in rows:
        (factor, crypto, cost_bps, slippage_bps, n_folds, n_p_values, p_values, mean_model_return, *rest) = row
        extra: dict[str, Any] = {}
        if rest:
            (
                edge_bh,
                edge_random,
                n_shifts,
                profit,
                vs_hold,
                model_ids,
                matched,
                profitable,
                sharpes,
                skews,
                kurts,
                bars,
            ) = rest
            extra = {
                "mean_edge_vs_buy_and_hold": edge_bh,
                "mean_edge_vs_random": edge_random,
                "n_shifts": tuple(n_shifts),
                "profit_p_values": tuple(profit),
                "profit_vs_buy_and_hold_p_values": tuple(vs_hold),
                "model_ids": tuple(model_ids),
                "mean_matched_percentile": matched,
                "n_folds_profitable": profitable,
                "bar_sharpes": tuple(sharpes),
                "bar_skewnesses": tuple(skews),
                "bar_kurtoses": tuple(kurts),
                "n_bars": tuple(bars),
            }
        groups.append(
            GroupInput(
                factor=factor,
                crypto=crypto,
                cost_bps=cost_bps,
                slippage_bps=slippage_bps,
                n_folds=n_folds,
                n_p_values=n_p_values,
                p_values=tuple(p_values),
                mean_model_return=mean_model_return,
                **extra,
            )
        )
    return groups


def replace_findings(
    conn: psycopg.Connection, run_id: str, findings: Sequence[Finding], *, fdr_q: float, method: str
) -> None:
    """Delete the run's findings and copy the new ones in (inside the caller's transaction).

    :param conn: an open connection, in a transaction.
    :param run_id: the finetune run id.
    :param findings: the rows to write.
    :param fdr_q: stored on every row.
    :param method: stored on every row.
    """
    conn.execute("DELETE FROM finetune_findings WHERE run_id = %(run_id)s", {"run_id": run_id})
    with conn.cursor() as cur, cur.copy(f"COPY finetune_findings ({', '.join(FINDING_COLUMNS)}) FROM STDIN") as copy:
        for f in findings:
            copy.write_row(
                (
                    run_id,
                    f.factor,
                    f.crypto,
                    f.cost_bps,
                    f.slippage_bps,
                    f.n_folds,
                    f.mean_model_return,
                    f.mean_edge_vs_buy_and_hold,
                    f.mean_edge_vs_random,
                    f.p_value,
                    f.q_value,
                    f.discovered,
                    fdr_q,
                    method,
                    f.timing_discovered,
                    f.profit_p_value,
                    f.profit_q_value,
                    f.profit_discovered,
                    f.profit_vs_buy_and_hold_p_value,
                    f.mean_matched_percentile,
                    f.deflated_sharpe,
                    f.n_folds_profitable,
                    f.p_value_floor,
                    list(f.same_model_as),
                    f.verdict,
                )
            )


def run_findings(
    dsn: str,
    *,
    run_id: str,
    fdr_q: float = DEFAULT_FDR_Q,
    method: str = DEFAULT_COMBINE_METHOD,
) -> FindingsResult:
    """Compute and store the findings of one run, replacing its previous ones, in one transaction.

    Bad ``fdr_q`` or ``method`` raise ValueError before the database is touched.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param fdr_q: the false discovery rate, ``0 < fdr_q < 1``.
    :param method: the fold combination method (:data:`COMBINE_METHODS`).
    """
    fdr_q = validate_fdr_q(fdr_q)
    method = validate_combine_method(method)
    # db.connect bounds every statement and lock wait (the settings'): a database that hangs fails the task
    with connect(dsn) as conn, conn.transaction():
        # Two findings steps of one run (a cleared task beside a running one) take turns, so
        # the delete + copy of one never interleaves with the other's.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))", {"key": f"findings:{run_id}"})
        findings, untested = compute_findings(fetch_groups(conn, run_id), fdr_q=fdr_q, method=method)
        replace_findings(conn, run_id, findings, fdr_q=fdr_q, method=method)
    return FindingsResult(
        run_id=run_id, fdr_q=fdr_q, combine_method=method, findings=tuple(findings), untested=tuple(untested)
    )


if __name__ == "__main__":
    # The older spelling of `python -m finetune_sweep findings ...`, kept working: run the one CLI.
    import runpy

    sys.argv[0:1] = ["python -m finetune_sweep", "findings"]
    runpy.run_module("finetune_sweep", run_name="__main__", alter_sys=True)
