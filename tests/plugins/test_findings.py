"""Tests of finetune_sweep.findings: fold combination, Benjamini-Hochberg, the stored findings.

The statistics are checked three ways: hand-worked small cases, an independent reference written
here from the definitions (never the module's code path), and scipy itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import psycopg
import pytest
from scipy import stats

from finetune_rows import RUN_ID, seed_complete_run, set_p_values, stored_findings
from finetune_sweep import findings
from finetune_sweep.findings import (
    GroupInput,
    benjamini_hochberg,
    combine_fold_p_values,
    compute_findings,
)


def _make_group(**overrides: Any) -> GroupInput:
    group = {
        "factor": "base_features",
        "crypto": "BTC",
        "cost_bps": 10,
        "slippage_bps": 0,
        "n_folds": 2,
        "n_p_values": 2,
        "p_values": (0.1, 0.2),
        "mean_model_return": 0.01,
        "mean_edge_vs_buy_and_hold": 0.005,
        "mean_edge_vs_random": 0.004,
        "n_shifts": (999, 999),
        "profit_p_values": (0.01, 0.02),
        "profit_vs_buy_and_hold_p_values": (0.2, 0.3),
    }
    group.update(overrides)
    n_folds = group["n_folds"]
    # one model per (factor, crypto) unless a test says two groups share one
    group.setdefault("model_ids", tuple(f"{fold}@window:{group['factor']}" for fold in range(n_folds)))
    if len(group["n_shifts"]) != n_folds:
        group["n_shifts"] = (999,) * n_folds
    if len(group["profit_p_values"]) != n_folds:
        group["profit_p_values"] = (0.01,) * n_folds
        group["profit_vs_buy_and_hold_p_values"] = (0.2,) * n_folds
    return GroupInput(**group)


def _bh_step_up(p_values: list[float], q: float) -> list[bool]:
    """Benjamini-Hochberg from its definition: reject the k smallest, k = max{i: p_(i) <= i q / m}."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    k = max((rank for rank, i in enumerate(order, start=1) if p_values[i] <= rank * q / m), default=0)
    rejected = [False] * m
    for i in order[:k]:
        rejected[i] = True
    return rejected


# --- fold combination ------------------------------------------------------------------------


def test_fisher_two_folds_by_hand() -> None:
    # -2 ln(p1 p2) is chi-square with 4 dof under the null, whose survival function is
    # exp(-x/2) (1 + x/2): with P = p1 p2 the combined p is P (1 - ln P).
    product = 0.1 * 0.2
    expected = product * (1 - math.log(product))  # 0.098240...

    combined = combine_fold_p_values(np.array([[0.1, 0.2]]))

    assert combined[0] == pytest.approx(expected, rel=1e-12)
    assert combined[0] == pytest.approx(0.0982405, abs=1e-7)


@pytest.mark.parametrize("p", [pytest.param(p, id=str(p)) for p in (1e-6, 0.03, 0.5, 1.0)])
def test_fisher_of_one_fold_is_that_fold(p: float) -> None:
    assert combine_fold_p_values(np.array([[p]]))[0] == pytest.approx(p, rel=1e-12)


def test_stouffer_by_hand() -> None:
    # z = (z1 + z2) / sqrt(2); p1 = p2 = 0.5 gives z = 0 and p = 0.5; p = (0.025, 0.975) cancels too.
    combined = combine_fold_p_values(np.array([[0.5, 0.5], [0.025, 0.975]]), method="stouffer")

    assert combined == pytest.approx([0.5, 0.5], abs=1e-12)


def test_vectorised_combination_equals_one_scipy_call_per_group() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.uniform(0.001, 1.0, size=(50, 4))

    combined = combine_fold_p_values(matrix)

    one_by_one = [stats.combine_pvalues(row, method="fisher").pvalue for row in matrix]
    assert combined == pytest.approx(one_by_one, rel=1e-12)


@pytest.mark.parametrize(
    ("matrix", "method", "match"),
    [
        pytest.param([[0.0, 0.5]], "fisher", r"\(0, 1\]", id="zero-p"),
        pytest.param([[1.5]], "fisher", r"\(0, 1\]", id="above-one"),
        pytest.param([[float("nan")]], "fisher", r"\(0, 1\]", id="nan"),
        pytest.param([[0.5]], "average", r"one of fisher, pearson.*'average'", id="unknown-method"),
        pytest.param([0.5, 0.5], "fisher", r"groups x folds", id="one-dimensional"),
    ],
)
def test_combination_refuses_bad_input(matrix: list, method: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        combine_fold_p_values(np.array(matrix), method=method)


# --- Benjamini-Hochberg ------------------------------------------------------------------------


def test_benjamini_hochberg_by_hand() -> None:
    # m = 4. Sorted 0.01, 0.03, 0.04, 0.20. Adjusted (from the largest down, min of m p_(i) / i):
    # 0.20; min(0.20, 4/3 * 0.04) = 0.05333; min(0.05333, 2 * 0.03) = 0.05333; min(0.05333, 4 * 0.01) = 0.04.
    p = [0.01, 0.04, 0.03, 0.20]

    q_values, at_5 = benjamini_hochberg(np.array(p), fdr_q=0.05)
    _, at_6 = benjamini_hochberg(np.array(p), fdr_q=0.06)

    assert q_values == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20], rel=1e-12)
    # At 5 %: thresholds 0.0125, 0.025, 0.0375, 0.05 -> only 0.01 passes.
    assert at_5.tolist() == [True, False, False, False]
    # At 6 %: thresholds 0.015, 0.03, 0.045, 0.06 -> step-up to rank 3 (0.03 <= 0.03 and 0.04 <= 0.045).
    assert at_6.tolist() == [True, True, True, False]


def test_benjamini_hochberg_exact_threshold_is_a_discovery() -> None:
    # m = 4, q = 0.5: the thresholds i q / m are exact binary fractions; p_(2) = 0.25 = 2 * 0.5 / 4.
    _, discovered = benjamini_hochberg(np.array([0.25, 0.9, 0.1, 0.8]), fdr_q=0.5)

    assert discovered.tolist() == [True, False, True, False]


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_the_step_up_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # A mixture of nulls and small p-values, so that the cut falls inside.
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10)])

    for q in (0.05, 0.10, 0.20):
        q_values, discovered = benjamini_hochberg(p, fdr_q=q)
        assert discovered.tolist() == _bh_step_up(p.tolist(), q)
        assert q_values == pytest.approx(stats.false_discovery_control(p, method="bh"), rel=1e-12)


@pytest.mark.parametrize("fdr_q", [0, 1, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_fdr_q_must_be_strictly_between_0_and_1(fdr_q: Any) -> None:
    with pytest.raises(ValueError, match=r"fdr_q must be a number strictly between 0 and 1, got"):
        benjamini_hochberg(np.array([0.5]), fdr_q=fdr_q)


def test_no_hypotheses_no_discoveries() -> None:
    q_values, discovered = benjamini_hochberg(np.empty(0), fdr_q=0.1)

    assert q_values.size == 0 and discovered.size == 0


# --- groups -> findings ------------------------------------------------------------------------


def test_compute_findings_combines_then_controls_over_the_tested_groups_only() -> None:
    groups = [
        _make_group(crypto="BTC", p_values=(0.001, 0.002)),
        _make_group(crypto="ETH", p_values=(0.5, 0.6)),
        _make_group(crypto="SOL", n_folds=3, n_p_values=3, p_values=(0.01, 0.02, 0.04)),
        # Lacks a p-value on one fold: not tested, not one of the m hypotheses.
        _make_group(crypto="XRP", n_p_values=1, p_values=(0.0001, None)),
    ]

    found, untested = compute_findings(groups, fdr_q=0.1)

    assert [f.crypto for f in found] == ["BTC", "ETH", "SOL"]
    assert [g.crypto for g in untested] == ["XRP"]
    combined = [stats.combine_pvalues(g.p_values, method="fisher").pvalue for g in groups[:3]]
    assert [f.p_value for f in found] == pytest.approx(combined, rel=1e-12)
    assert [f.q_value for f in found] == pytest.approx(stats.false_discovery_control(combined), rel=1e-12)
    assert [f.timing_discovered for f in found] == _bh_step_up(combined, 0.1) == [True, False, True]
    profit = [stats.combine_pvalues(g.profit_p_values, method="fisher").pvalue for g in groups[:3]]
    assert [f.profit_p_value for f in found] == pytest.approx(profit, rel=1e-12)
    assert [f.profit_q_value for f in found] == pytest.approx(stats.false_discovery_control(profit), rel=1e-12)
    assert [f.discovered for f in found] == [True, False, True]
    assert [f.verdict for f in found] == ["finding at 10 bps", "no timing edge", "finding at 10 bps"]
    hold = stats.combine_pvalues([0.2, 0.3]).pvalue
    assert found[0].profit_vs_buy_and_hold_p_value == pytest.approx(hold, rel=1e-12)
    assert found[2].n_folds == 3 and found[0].mean_edge_vs_random == 0.004


def test_a_timing_edge_that_loses_money_at_a_cost_is_not_a_finding_there() -> None:
    timing = {"p_values": (0.0005, 0.001)}
    groups = [
        _make_group(cost_bps=0, mean_model_return=0.02, profit_p_values=(0.001, 0.002), **timing),
        _make_group(cost_bps=10, mean_model_return=0.004, profit_p_values=(0.3, 0.4), **timing),
        _make_group(cost_bps=30, mean_model_return=-0.01, profit_p_values=(0.9, 0.95), **timing),
    ]

    found, _ = compute_findings(groups, fdr_q=0.1)

    # one model, one timing hypothesis: its three cost rows share p and q
    assert len({(f.p_value, f.q_value) for f in found}) == 1 and all(f.timing_discovered for f in found)
    assert [f.discovered for f in found] == [True, False, False]
    assert [f.verdict for f in found] == [
        "finding at 0 bps",
        "timing edge, profit at 10 bps not significant",
        "timing edge, eaten by costs at 30 bps",
    ]
    summary = findings.FindingsResult(run_id="r", fdr_q=0.1, combine_method="fisher", findings=tuple(found)).summary()
    assert summary.startswith("1 of 3 groups are findings at FDR 0.1")
    assert "timing edge in 1 of 1 distinct models" in summary
    assert "base_features BTC: timing edge, eaten by costs at 30 bps" in summary


def test_no_group_is_ever_a_finding_where_its_mean_net_return_is_not_positive() -> None:
    rng = np.random.default_rng(3)
    groups = [
        _make_group(
            crypto=f"C{i}",
            mean_model_return=float(rng.normal(0, 0.01)),
            p_values=tuple(rng.uniform(1e-6, 0.01, 2)),
            profit_p_values=tuple(rng.uniform(1e-6, 0.01, 2)),  # even a tiny profit p-value
        )
        for i in range(200)
    ]

    found, _ = compute_findings(groups, fdr_q=0.1)

    assert any(f.discovered for f in found)
    assert all(f.mean_model_return > 0 for f in found if f.discovered)


def test_identical_models_are_tested_and_counted_once_and_named() -> None:
    # BTC's btc_features rows are its base_features rows: the same positions on the same windows
    same = ("0@w0:hash-a", "1@w1:hash-b")
    groups = [
        _make_group(factor="base_features", crypto="BTC", p_values=(0.01, 0.02), model_ids=same),
        _make_group(factor="btc_features", crypto="BTC", p_values=(0.01, 0.02), model_ids=same),
        _make_group(factor="base_features", crypto="ETH", p_values=(0.4, 0.5)),
    ]

    found, _ = compute_findings(groups, fdr_q=0.1)

    combined = [stats.combine_pvalues(p).pvalue for p in ((0.01, 0.02), (0.4, 0.5))]
    q_values = stats.false_discovery_control(combined)  # m = 2 distinct models, not 3
    assert [f.q_value for f in found] == pytest.approx([q_values[0], q_values[0], q_values[1]], rel=1e-12)
    assert [f.same_model_as for f in found] == [("btc_features",), ("base_features",), ()]
    result = findings.FindingsResult(run_id="r", fdr_q=0.1, combine_method="fisher", findings=tuple(found))
    assert result.n_models == 2


def test_deflated_sharpe_ratio_against_its_definition() -> None:
    from scipy.stats import norm

    # one trial: no deflation, the probabilistic Sharpe ratio against 0
    sr, t, skew, kurt = 0.05, 720, -0.3, 6.0
    expected = norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert findings.deflated_sharpe_ratio(
        sr, n_bars=t, skewness=skew, kurtosis=kurt, n_trials=1, trials_variance=0.0
    ) == pytest.approx(expected, rel=1e-12)
    # 100 trials with a Sharpe variance of 0.0004: the bar is the expected maximum of 100 draws
    emc = 0.5772156649015329
    sr0 = 0.02 * ((1 - emc) * norm.ppf(1 - 1 / 100) + emc * norm.ppf(1 - 1 / (100 * math.e)))
    expected = norm.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    deflated = findings.deflated_sharpe_ratio(
        sr, n_bars=t, skewness=skew, kurtosis=kurt, n_trials=100, trials_variance=0.0004
    )
    assert deflated == pytest.approx(expected, rel=1e-12) and deflated < 0.9  # the more trials, the higher the bar


def test_the_floor_and_the_shifts_a_run_needs() -> None:
    # two folds at 9 shifts: each p >= 1/10, Fisher of (0.1, 0.1) = P (1 - ln P) with P = 0.01
    floor = findings.p_value_floor([9, 9])
    assert floor == pytest.approx(0.01 * (1 - math.log(0.01)), rel=1e-12)
    assert findings.lone_edge_capacity(floor, fdr_q=0.1) == 1  # 0.1 / 0.056 -> one hypothesis at most
    needed = findings.shifts_needed(8, n_folds=2, fdr_q=0.1)
    assert findings.lone_edge_capacity(findings.p_value_floor([needed] * 2), fdr_q=0.1) >= 8
    assert findings.lone_edge_capacity(findings.p_value_floor([needed - 1] * 2), fdr_q=0.1) < 8
    # the default 999 shifts over 4 folds: millions of models
    assert findings.lone_edge_capacity(findings.p_value_floor([999] * 4), fdr_q=0.1) > 1_000_000


def test_a_run_whose_floor_hides_every_edge_says_so() -> None:
    found, _ = compute_findings(
        [_make_group(crypto=c, n_shifts=(9, 9), p_values=(0.1, 0.1)) for c in ("BTC", "ETH", "SOL")], fdr_q=0.1
    )
    summary = findings.FindingsResult(run_id="r", fdr_q=0.1, combine_method="fisher", findings=tuple(found)).summary()
    assert "NO FINDING WAS POSSIBLE, a lone edge is found among at most 1 models and this run has 3" in summary


def test_a_group_with_no_p_value_at_all_is_untested() -> None:
    found, untested = compute_findings([_make_group(n_p_values=0, p_values=(None, None))])

    assert found == [] and len(untested) == 1
    result = findings.FindingsResult(
        run_id="r", fdr_q=0.1, combine_method="fisher", findings=(), untested=tuple(untested)
    )
    text = result.summary()
    assert text.startswith("0 of 0 groups are findings at FDR 0.1: no group has the p-values of both tests")
    assert "1 group(s) NOT TESTED" in text and "base_features BTC 10/0 bps (0 of 2 folds)" in text


@pytest.mark.parametrize(
    ("n_discovered", "n_groups", "expected"),
    [
        pytest.param(2, 36, "2 of 36 groups are findings at FDR 0.1 (timing and profit after costs", id="some"),
        pytest.param(0, 36, "0 of 36 groups are findings at FDR 0.1: no finding in this run", id="none"),
    ],
)
def test_headline(n_discovered: int, n_groups: int, expected: str) -> None:
    line = findings.headline(n_discovered=n_discovered, n_groups=n_groups, fdr_q=0.1, combine_method="fisher")

    assert line.startswith(expected)


# --- the stored findings -------------------------------------------------------------------------


def test_run_findings_stores_one_row_per_group(migrated_db: str) -> None:
    # 2 factors x 2 cryptos x 2 costs = 8 groups of 2 folds each.
    seed_complete_run(migrated_db)
    set_p_values(migrated_db, {"BTC": (0.001, 0.004), "ETH": (0.3, 0.9)})

    result = findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    rows = stored_findings(migrated_db)
    assert len(rows) == result.n_groups == 8
    btc = stats.combine_pvalues([0.001, 0.004]).pvalue
    eth = stats.combine_pvalues([0.3, 0.9]).pvalue
    # 2 factors x 2 cryptos: four models (each factor's own positions), tested once for all costs
    q_btc, q_eth = stats.false_discovery_control([btc] * 2 + [eth] * 2)[[0, 2]]
    for _factor, crypto, _, slip, n_folds, model, edge_bh, edge_random, p, q, discovered, fdr_q, method, *_ in rows:
        assert (slip, n_folds, fdr_q, method) == (0, 2, 0.1, "fisher")
        # seed_complete_run: model 1 %, buy-and-hold and random 0.5 % on every fold.
        assert (model, edge_bh, edge_random) == pytest.approx((0.01, 0.005, 0.005), abs=1e-15)
        assert p == pytest.approx(btc if crypto == "BTC" else eth, rel=1e-12)
        assert q == pytest.approx(q_btc if crypto == "BTC" else q_eth, rel=1e-12)
        assert discovered is (crypto == "BTC")
    assert result.n_discovered == 4
    assert result.summary().startswith("4 of 8 groups are findings at FDR 0.1")
    # profit: a clear profit on every fold (0.001), and the stored extras
    extras = stored_findings(migrated_db, columns="profit_p_value, verdict, p_value_floor, n_folds_profitable")
    assert [row[0] for row in extras] == pytest.approx([stats.combine_pvalues([0.001, 0.001]).pvalue] * 8, rel=1e-12)
    assert {row[1] for row in extras} == {"finding at 10 bps", "finding at 30 bps", "no timing edge"}
    assert [row[2] for row in extras] == pytest.approx([findings.p_value_floor([999, 999])] * 8, rel=1e-12)
    assert {row[3] for row in extras} == {2}


def test_rerun_replaces_the_runs_rows_and_leaves_other_runs_alone(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    set_p_values(migrated_db, {"BTC": (0.01, 0.04), "ETH": (0.3, 0.9)})
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('other', 'finetune_sweep', 'ridge_long_flat', now(), '{}')"
        )
        conn.execute(
            "INSERT INTO finetune_run_factors (run_id, factor, profile, status) "
            "VALUES ('other', 'base_features', 'STANDARD', 'done')"
        )
        conn.execute(
            "INSERT INTO finetune_findings (run_id, factor, crypto, cost_bps, slippage_bps, n_folds, "
            "mean_model_return, p_value, q_value, discovered, fdr_q, combine_method) "
            "VALUES ('other', 'base_features', 'BTC', 10, 0, 2, 0.0, 0.5, 0.5, false, 0.1, 'fisher')"
        )

    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)
    first = stored_findings(migrated_db)
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)
    again = stored_findings(migrated_db)
    strict = findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.001)
    stricter = stored_findings(migrated_db)

    assert again == first and len(first) == 8
    assert len(stricter) == 8 and {row[11] for row in stricter} == {0.001}
    assert strict.n_discovered == 0 < sum(row[10] for row in first)
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_findings WHERE run_id = 'other'").fetchone()[0] == 1


def test_groups_without_p_values_are_named_and_get_no_row(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    # ETH's rows come from an "older image": no shift test on fold 1.
    set_p_values(migrated_db, {"BTC": (0.01, 0.04), "ETH": (0.2, None)})

    result = findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    assert {row[1] for row in stored_findings(migrated_db)} == {"BTC"}
    assert result.n_groups == 4 and len(result.untested) == 4
    summary = result.summary()
    assert "4 group(s) NOT TESTED" in summary and "l2_features ETH 30/0 bps (1 of 2 folds)" in summary
    # The report's lighter query names the same groups.
    with psycopg.connect(migrated_db) as conn:
        assert [g.label for g in findings.fetch_untested(conn, RUN_ID)] == [g.label for g in result.untested]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"fdr_q": 1.0}, "fdr_q must be a number strictly between 0 and 1, got 1.0", id="fdr"),
        pytest.param({"method": "median"}, "combine method must be one of", id="method"),
    ],
)
def test_bad_arguments_write_nothing(migrated_db: str, kwargs: dict[str, Any], match: str) -> None:
    seed_complete_run(migrated_db)
    set_p_values(migrated_db, {"BTC": (0.01, 0.04), "ETH": (0.3, 0.9)})
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)
    before = stored_findings(migrated_db)

    with pytest.raises(ValueError, match=match):
        findings.run_findings(migrated_db, run_id=RUN_ID, **kwargs)

    assert stored_findings(migrated_db) == before


def test_a_run_without_rows_has_no_findings(migrated_db: str) -> None:
    result = findings.run_findings(migrated_db, run_id="never-ran", fdr_q=0.1)

    assert result.n_groups == 0 and result.untested == ()


# --- validated like a method -----------------------------------------------------------------
#
# With no edge anywhere every group's null holds, and then Benjamini-Hochberg's false discovery
# rate *is* the probability of any discovery: the share of sweeps with at least one finding must
# stay at or below fdr_q. Simulated over independently seeded random-walk markets with the pod's
# own data (MarketData "synthetic://random-walk?seed=N"), cost and shift-test functions, and this
# module's combination + BH. The positions stand in for the fitted model's, which would cost a
# fine_tune per (crypto, fold) of every simulated sweep: like the model's, they are long/flat,
# read only past closes, persist over many bars and include both a trend and a reversal rule
# (the two ways in which a shift could leak -- the wrap moves later positions earlier).

METHOD_FDR_Q = 0.10
METHOD_MARKETS = 20
METHOD_SWEEPS_PER_MARKET = 10  # windows months apart in one market: independent sweeps
METHOD_CRYPTOS = ("BTC", "ETH", "SOL")
METHOD_COSTS = (0, 30)
METHOD_FOLDS = 2
METHOD_TEST_BARS = 168
METHOD_WARMUP = 24
METHOD_N_SHIFTS = 100
METHOD_HOLD_BARS = 6
METHOD_AS_OF = "2026-06-07T00:00:00Z"


def _stand_in_positions(close: np.ndarray) -> dict[str, np.ndarray]:
    """Long/flat positions on ``close[METHOD_WARMUP:]`` from past closes only."""
    log_close = np.log(close)
    return {
        "trend_24": (log_close[METHOD_WARMUP:] > log_close[:-METHOD_WARMUP]).astype(np.float64),
        "reversal_6": (log_close[METHOD_WARMUP:] < log_close[METHOD_WARMUP - 6 : -6]).astype(np.float64),
    }


def _simulated_sweeps() -> list[list[GroupInput]]:
    """The groups (factor x crypto x cost, their folds' shift-test p-values) of every simulated sweep."""
    import pandas as pd

    from finetune import significance
    from finetune.costs import round_trip_cost
    from finetune.data import MarketData
    from finetune.model import evaluate

    block = METHOD_WARMUP + METHOD_FOLDS * METHOD_TEST_BARS
    rt_costs = [round_trip_cost(cost) for cost in METHOD_COSTS]
    sweeps = []
    for seed in range(METHOD_MARKETS):
        market = MarketData(f"synthetic://random-walk?seed={seed}")
        closes = {c: market.ohlcv(c, as_of=pd.Timestamp(METHOD_AS_OF))["close"].to_numpy() for c in METHOD_CRYPTOS}
        sigma = {c: significance.ewma_volatility(close) for c, close in closes.items()}
        spacing = len(closes["BTC"]) // METHOD_SWEEPS_PER_MARKET
        assert spacing > 10 * block, "sweeps far apart"
        for sweep in range(METHOD_SWEEPS_PER_MARKET):
            p_values: dict[tuple[str, str, int], list[float]] = {}
            for crypto, close in closes.items():
                for fold in range(METHOD_FOLDS):
                    start = sweep * spacing + fold * METHOD_TEST_BARS
                    window = close[start : start + METHOD_WARMUP + METHOD_TEST_BARS]
                    for factor, positions in _stand_in_positions(window).items():
                        # What the runner calls: the timing test once per model, the profit per cost.
                        test_close = window[METHOD_WARMUP:]
                        timing = significance.shift_test(
                            positions,
                            test_close,
                            n_shifts=METHOD_N_SHIFTS,
                            volatility=sigma[crypto][start + METHOD_WARMUP : start + METHOD_WARMUP + METHOD_TEST_BARS],
                        )
                        profit = significance.profit_tests(
                            positions,
                            test_close,
                            rt_costs,
                            n_resamples=METHOD_N_SHIFTS,
                            block_bars=METHOD_HOLD_BARS,
                        )
                        for cost, test in zip(METHOD_COSTS, profit, strict=True):
                            net = evaluate(positions, test_close, round_trip_cost(cost)).net_return
                            p_values.setdefault((factor, crypto, cost), []).append((timing.p_value, test.p_value, net))
            sweeps.append(
                [
                    _make_group(
                        factor=factor,
                        crypto=crypto,
                        cost_bps=cost,
                        n_folds=len(ps),
                        n_p_values=len(ps),
                        p_values=tuple(p[0] for p in ps),
                        profit_p_values=tuple(p[1] for p in ps),
                        mean_model_return=float(np.mean([p[2] for p in ps])),
                        n_shifts=(METHOD_N_SHIFTS,) * len(ps),
                    )
                    for (factor, crypto, cost), ps in p_values.items()
                ]
            )
    return sweeps


@pytest.fixture(scope="module")
def null_sweeps() -> list[list[GroupInput]]:
    return _simulated_sweeps()


def test_method_no_edge_any_discovery_stays_within_fdr_q(null_sweeps: list[list[GroupInput]]) -> None:
    any_finding = [any(f.discovered for f in compute_findings(groups, fdr_q=METHOD_FDR_Q)[0]) for groups in null_sweeps]
    n, k = len(any_finding), sum(any_finding)

    above = stats.binomtest(k, n, METHOD_FDR_Q, alternative="greater")
    # One-sided Clopper-Pearson: the rate is below `upper` with 99 % confidence.
    upper = stats.binomtest(k, n, alternative="less").proportion_ci(confidence_level=0.99).high
    # No evidence at 1 % of a rate above fdr_q, and with 99 % confidence below 1.5 x fdr_q.
    assert above.pvalue > 0.01, f"{k} of {n} null sweeps had a finding"
    assert upper < 1.5 * METHOD_FDR_Q, f"{k} of {n} null sweeps had a finding (99 % upper bound {upper:.3f})"
    assert n == METHOD_MARKETS * METHOD_SWEEPS_PER_MARKET and len(null_sweeps[0]) == 2 * 3 * 2


def test_method_without_the_correction_the_same_sweeps_find_edges(null_sweeps: list[list[GroupInput]]) -> None:
    # The simulation can tell a procedure that does not control the error: calling every group
    # whose combined p-value is below fdr_q a finding (no multiple-comparison correction) finds
    # "edges" in the random walk in far more than fdr_q of the sweeps.
    uncorrected = [any(f.p_value <= METHOD_FDR_Q for f in compute_findings(groups)[0]) for groups in null_sweeps]

    test = stats.binomtest(sum(uncorrected), len(uncorrected), METHOD_FDR_Q, alternative="greater")
    assert test.pvalue < 1e-6, f"{sum(uncorrected)} of {len(uncorrected)}"
