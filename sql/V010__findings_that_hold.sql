-- Findings that hold on the models that trade (DESIGN 5 "Shift test", "Findings"): two questions,
-- two tests. perm_p_value keeps its name and becomes the *timing* test's p-value (once per model,
-- on volatility-scaled returns, offsets without replacement away from the wrap; the same on every
-- cost row of a model); the columns below add profit after costs per cost basis. Every column is
-- nullable and has no default: nothing existing is rewritten, and rows written before this
-- version read as "not tested" (never recomputed).

ALTER TABLE finetune_results
    -- share of the model's own shifted copies whose net return at the row's cost is below the
    -- model's, ties counting half (same exposure and, up to the wrap, the same trades)
    ADD COLUMN matched_percentile double precision
        CONSTRAINT ck_finetune_results_matched_percentile CHECK (matched_percentile BETWEEN 0 AND 1),
    -- circular block bootstrap of the per-bar net log P&L: H0 mean <= 0, and H0 mean of
    -- (model - buy-and-hold) <= 0, on the row's cost basis
    ADD COLUMN profit_p_value double precision
        CONSTRAINT ck_finetune_results_profit_p_value CHECK (profit_p_value > 0 AND profit_p_value <= 1),
    ADD COLUMN profit_vs_buy_and_hold_p_value double precision
        CONSTRAINT ck_finetune_results_profit_vs_bh_p_value
            CHECK (profit_vs_buy_and_hold_p_value > 0 AND profit_vs_buy_and_hold_p_value <= 1),
    ADD COLUMN profit_n_resamples integer
        CONSTRAINT ck_finetune_results_profit_n_resamples CHECK (profit_n_resamples >= 0),
    -- per-bar net returns' Sharpe ratio (not annualised), skewness and Pearson kurtosis: the
    -- deflated Sharpe ratio's inputs
    ADD COLUMN bar_sharpe double precision,
    ADD COLUMN bar_skewness double precision,
    ADD COLUMN bar_kurtosis double precision;

ALTER TABLE finetune_findings
    -- p_value / q_value stay the timing test's (folds combined, BH over the run's distinct
    -- models); `discovered` is now "a finding at this cost": timing discovered AND profit
    -- discovered AND a positive mean net return
    ADD COLUMN timing_discovered boolean,
    ADD COLUMN profit_p_value double precision
        CONSTRAINT ck_finetune_findings_profit_p_value CHECK (profit_p_value >= 0 AND profit_p_value <= 1),
    ADD COLUMN profit_q_value double precision
        CONSTRAINT ck_finetune_findings_profit_q_value CHECK (profit_q_value >= 0 AND profit_q_value <= 1),
    ADD COLUMN profit_discovered boolean,
    ADD COLUMN profit_vs_buy_and_hold_p_value double precision
        CONSTRAINT ck_finetune_findings_profit_vs_bh CHECK (
            profit_vs_buy_and_hold_p_value >= 0 AND profit_vs_buy_and_hold_p_value <= 1),
    ADD COLUMN mean_matched_percentile double precision,
    ADD COLUMN deflated_sharpe double precision
        CONSTRAINT ck_finetune_findings_deflated_sharpe CHECK (deflated_sharpe >= 0 AND deflated_sharpe <= 1),
    ADD COLUMN n_folds_profitable integer CHECK (n_folds_profitable >= 0),
    -- the smallest combined timing p-value this group could reach (its shifts' floor)
    ADD COLUMN p_value_floor double precision,
    -- the other groups of the run whose model is this one (same positions on the same windows,
    -- e.g. BTC's btc_features and base_features): tested and counted once
    ADD COLUMN same_model_as text[],
    -- what the row means, in words ("finding", "timing edge, eaten by costs at 30 bps", ...)
    ADD COLUMN verdict text;
