-- Slippage becomes part of the cost basis. Both tables may already hold rows, so the NOT NULL
-- column is added the safe way: with a temporary default, an explicit backfill, then the default
-- is dropped so that a writer omitting slippage_bps fails loudly from now on.

ALTER TABLE finetune_results
    ADD COLUMN slippage_bps integer NOT NULL DEFAULT 0
    CONSTRAINT ck_finetune_results_slippage CHECK (slippage_bps >= 0);
-- Rows written before slippage existed were charged none: record that explicitly.
UPDATE finetune_results SET slippage_bps = 0 WHERE slippage_bps IS DISTINCT FROM 0;
ALTER TABLE finetune_results ALTER COLUMN slippage_bps DROP DEFAULT;

ALTER TABLE finetune_baselines
    ADD COLUMN slippage_bps integer NOT NULL DEFAULT 0
    CONSTRAINT ck_finetune_baselines_slippage CHECK (slippage_bps >= 0);
UPDATE finetune_baselines SET slippage_bps = 0 WHERE slippage_bps IS DISTINCT FROM 0;
ALTER TABLE finetune_baselines ALTER COLUMN slippage_bps DROP DEFAULT;

-- The keys now include slippage: two bases differing only by slippage are distinct rows.
ALTER TABLE finetune_results DROP CONSTRAINT uq_finetune_result;
ALTER TABLE finetune_results ADD CONSTRAINT uq_finetune_result
    UNIQUE (run_id, factor, variant, crypto, fold_id, cost_bps, slippage_bps);

ALTER TABLE finetune_baselines DROP CONSTRAINT uq_finetune_baseline;
ALTER TABLE finetune_baselines ADD CONSTRAINT uq_finetune_baseline
    UNIQUE (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps, slippage_bps);
