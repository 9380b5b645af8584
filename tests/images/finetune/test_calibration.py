"""The timing test keeps its level on the real model: a small version of
``benchmarks/bench_calibration.py``'s null check (issue 16, item 5).

A handful of seeded random-walk markets (no edge anywhere), every factor on BTC, ETH and SOL,
two folds, run by the pod's own code in-process (``runner.prepare`` then
``runner.evaluate_crypto``, no database). The timing p-values of the models that trade
(0 < exposure < 1; identical models once) must look uniform: a Kolmogorov-Smirnov test against
U(0, 1) and the share at p <= 0.10 (a two-sided binomial test), each at a lenient 1 %.

It can fail, checked by hand with ``significance.scaled_returns`` patched: a statistic that pairs
each position with the bar return its features had already seen (``z[t]`` replaced by the
return into bar ``t``: a look-ahead in the test itself) is rejected by the KS check at p = 3e-24
(111 models; the share at p <= 0.10 alone does not see it, 13 of 111: the look-ahead pushes the
p-values to both ends). Small over-rejections (the circular-shift test's 0.059 against 0.05 over
thousands of models) are *not* caught at this size: that takes
``benchmarks/bench_calibration.py``. The sign-flip test: KS p = 0.25, 8 of 111 at <= 0.10.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from finetune import runner
from finetune.factors import KNOWN_FACTORS

AS_OF = pd.Timestamp("2026-06-07T00:00:00Z")
MARKETS = [f"synthetic://random-walk?seed={seed}" for seed in range(1000, 1006)]
CRYPTOS = ("BTC", "ETH", "SOL")
# 720 test bars: a month of hourly bars, the CLI's default window.
N_FOLDS, N_SEEDS, HOLD_BARS, TRAIN_BARS, TEST_BARS, N_SHIFTS = 2, 10, 24, 1440, 720, 199
LENIENT = 0.01


def null_timing_p_values(markets: list[str] = MARKETS) -> np.ndarray:
    """The timing p of every distinct model that trades, over ``markets`` and every factor."""
    p_values: dict[tuple[str, str, int, str], float] = {}
    for uri in markets:
        for factor in KNOWN_FACTORS:
            config = runner.RunConfig(
                run_id="calibration",
                factor=factor,
                cryptos=CRYPTOS,
                cost_bps=(0,),
                slippage_bps=(0,),
                as_of=AS_OF,
                n_folds=N_FOLDS,
                n_seeds=N_SEEDS,
                hold_bars=HOLD_BARS,
                train_bars=TRAIN_BARS,
                test_bars=TEST_BARS,
                data_uri=uri,
                n_shifts=N_SHIFTS,
            )
            plan = runner.prepare(config)
            for crypto in CRYPTOS:
                for _, fold, (result,) in runner.evaluate_crypto(plan, crypto):
                    model = result.model
                    if 0.0 < model.exposure < 1.0:
                        held = hashlib.sha1(np.asarray(model.positions, dtype=np.int8).tobytes()).hexdigest()
                        p_values.setdefault((uri, crypto, fold.fold_id, held), model.perm_p_value)
    return np.array(list(p_values.values()))


@pytest.fixture(scope="module")
def p_values() -> np.ndarray:
    return null_timing_p_values()


def test_enough_trading_models_for_the_check(p_values):
    assert p_values.size >= 100, p_values.size


def test_timing_p_values_of_trading_models_look_uniform_on_random_walks(p_values):
    ks = stats.kstest(p_values, "uniform")
    assert ks.pvalue > LENIENT, (ks, np.sort(p_values)[:10])


def test_the_share_at_p_010_is_within_a_binomial_ci_of_010(p_values):
    hits = int(np.count_nonzero(p_values <= 0.10))
    test = stats.binomtest(hits, p_values.size, 0.10)
    assert test.pvalue > LENIENT, (hits, p_values.size, test.proportion_ci())


def test_the_planted_market_with_2_folds_and_10_seeds_finds_btc_features_on_eth_at_0_bps():
    # The outside check, with the production rule (finetune_sweep.findings): timing and
    # profit after costs both discovered, and a positive mean net return wherever there is a finding.
    from finetune_sweep.findings import compute_findings, groups_from_rows

    rows = []
    for factor in KNOWN_FACTORS:
        config = runner.RunConfig(
            run_id="planted",
            factor=factor,
            cryptos=CRYPTOS,
            cost_bps=(0, 10, 30),
            slippage_bps=(0,),
            as_of=AS_OF,
            n_folds=2,
            n_seeds=10,
            hold_bars=HOLD_BARS,
            train_bars=4_320,
            test_bars=TEST_BARS,
            data_uri="synthetic://",
        )
        plan = runner.prepare(config)
        for crypto in CRYPTOS:
            for _, fold, results in runner.evaluate_crypto(plan, crypto):
                for result in results:
                    held = hashlib.sha1(np.asarray(result.model.positions, dtype=np.int8).tobytes()).hexdigest()
                    rows.append(
                        {
                            "factor": factor,
                            "crypto": crypto,
                            "fold_id": fold.fold_id,
                            "cost_bps": result.key.cost_bps,
                            "slippage_bps": 0,
                            "net_return": result.model.net_return,
                            "perm_p_value": result.model.perm_p_value,
                            "perm_n_shifts": result.model.perm_n_shifts,
                            "profit_p_value": result.model.profit_p_value,
                            "profit_vs_buy_and_hold_p_value": result.model.profit_vs_buy_and_hold_p_value,
                            "model_id": held,
                        }
                    )

    found, untested = compute_findings(groups_from_rows(rows), fdr_q=0.10)

    assert not untested and {f.n_folds for f in found} == {2}
    discovered = {(f.factor, f.crypto, f.cost_bps) for f in found if f.discovered}
    assert ("btc_features", "ETH", 0) in discovered
    assert all(f.mean_model_return > 0 for f in found if f.discovered)
    # BTC's btc_features model is its base_features model: one hypothesis, named on both rows
    btc = {f.factor: f for f in found if f.crypto == "BTC" and f.cost_bps == 0}
    if btc["btc_features"].same_model_as:
        assert btc["btc_features"].same_model_as == ("base_features",)
