-- Significance and exposure of a model row (DESIGN 4.2 "Significance", 5 "Shift test").
-- Every column is nullable: rows written before this version have none of them, and adding a
-- nullable column without a default rewrites nothing, so this is safe on populated tables.

ALTER TABLE finetune_results
    -- share of the random seeds whose net return is below the model's, ties counting half
    ADD COLUMN random_percentile double precision
        CONSTRAINT ck_finetune_results_random_percentile CHECK (random_percentile BETWEEN 0 AND 1),
    -- how many bars of the test window were filled by --gaps fill (close carried forward)
    ADD COLUMN n_filled_bars integer
        CONSTRAINT ck_finetune_results_n_filled_bars CHECK (n_filled_bars >= 0),
    -- share of the test window's bars in the market
    ADD COLUMN exposure double precision
        CONSTRAINT ck_finetune_results_exposure CHECK (exposure BETWEEN 0 AND 1),
    -- the model's long/flat position per test bar (0/1, in bar order): anyone can recompute the
    -- row's return, its shift test, and draw its equity curve
    ADD COLUMN positions smallint[],
    -- exposure-matched shift test: (1 + #shifted >= model) / (1 + n_shifts)
    ADD COLUMN perm_p_value double precision
        CONSTRAINT ck_finetune_results_perm_p_value CHECK (perm_p_value > 0 AND perm_p_value <= 1),
    ADD COLUMN perm_n_shifts integer
        CONSTRAINT ck_finetune_results_perm_n_shifts CHECK (perm_n_shifts >= 0);

ALTER TABLE finetune_baselines
    -- quantiles of the seeds' net returns (random baseline rows only; numpy's default method)
    ADD COLUMN seed_p05 double precision,
    ADD COLUMN seed_p50 double precision,
    ADD COLUMN seed_p95 double precision,
    -- share of the window's bars in the market (the random baseline: mean over its seeds)
    ADD COLUMN exposure double precision
        CONSTRAINT ck_finetune_baselines_exposure CHECK (exposure BETWEEN 0 AND 1);
