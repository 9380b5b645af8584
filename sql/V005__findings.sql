-- Findings of a run (DESIGN 5 "Findings"): one row per run x factor x crypto x cost basis, the
-- folds' shift-test p-values combined, then Benjamini-Hochberg over every group of the run.
-- Written by the DAG's findings step after the gate passed; a rerun replaces the run's rows.

CREATE TABLE finetune_findings (
    run_id                     text             NOT NULL,
    factor                     text             NOT NULL,
    crypto                     text             NOT NULL,
    cost_bps                   integer          NOT NULL CHECK (cost_bps >= 0),
    slippage_bps               integer          NOT NULL CHECK (slippage_bps >= 0),
    n_folds                    integer          NOT NULL CHECK (n_folds >= 1),
    mean_model_return          double precision NOT NULL,
    mean_edge_vs_buy_and_hold  double precision,
    mean_edge_vs_random        double precision,
    -- the folds' p-values combined (combine_method), and the BH-adjusted q-value over the run
    p_value                    double precision NOT NULL CHECK (p_value >= 0 AND p_value <= 1),
    q_value                    double precision NOT NULL CHECK (q_value >= 0 AND q_value <= 1),
    discovered                 boolean          NOT NULL,
    fdr_q                      double precision NOT NULL CHECK (fdr_q > 0 AND fdr_q < 1),
    combine_method             text             NOT NULL,
    created_at                 timestamptz      NOT NULL DEFAULT now(),
    updated_at                 timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, factor, crypto, cost_bps, slippage_bps),
    CONSTRAINT fk_finetune_findings_factor FOREIGN KEY (run_id, factor)
        REFERENCES finetune_run_factors (run_id, factor) ON DELETE CASCADE
);
