-- Core tables of a sweep, as the original system first shipped them: no slippage column yet
-- (V002 adds it the safe way, on populated tables).

CREATE TABLE finetune_runs (
    run_id      text PRIMARY KEY,
    dag_id      text,
    strategy    text        NOT NULL,
    as_of       timestamptz NOT NULL,
    params      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The manifest: one row per planned (run, factor); the gate reads its status.
CREATE TABLE finetune_run_factors (
    run_id              text        NOT NULL REFERENCES finetune_runs (run_id) ON DELETE CASCADE,
    factor              text        NOT NULL,
    profile             text,
    status              text        NOT NULL DEFAULT 'planned'
        CONSTRAINT ck_finetune_run_factors_status
        CHECK (status IN ('planned', 'running', 'done', 'failed')),
    memory_limit_bytes  bigint CHECK (memory_limit_bytes > 0),
    peak_memory_bytes   bigint CHECK (peak_memory_bytes >= 0),
    exit_reason         text,
    attempt             integer     NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, factor)
);

-- One model row per (crypto, fold, cost basis, variant). Cost columns have no default: a writer
-- that forgets the cost must fail rather than silently store a zero-cost row.
CREATE TABLE finetune_results (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             text             NOT NULL,
    factor             text             NOT NULL,
    strategy           text             NOT NULL,
    variant            text             NOT NULL,
    crypto             text             NOT NULL,
    fold_id            integer          NOT NULL CHECK (fold_id >= 0),
    cost_bps           integer          NOT NULL CHECK (cost_bps >= 0),
    test_start         timestamptz      NOT NULL,
    test_end           timestamptz      NOT NULL,
    n_bars             integer          NOT NULL CHECK (n_bars > 0),
    model_hyperparams  jsonb            NOT NULL,
    feature_hash       text             NOT NULL,
    net_return         double precision NOT NULL,
    sharpe             double precision,
    max_drawdown       double precision,
    n_trades           integer          NOT NULL CHECK (n_trades >= 0),
    created_at         timestamptz      NOT NULL DEFAULT now(),
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT ck_finetune_results_window CHECK (test_end >= test_start),
    CONSTRAINT fk_finetune_results_factor FOREIGN KEY (run_id, factor)
        REFERENCES finetune_run_factors (run_id, factor) ON DELETE CASCADE,
    CONSTRAINT uq_finetune_result UNIQUE (run_id, factor, variant, crypto, fold_id, cost_bps)
);

-- Three same-basis baselines per model key. `strategy` stays in the key so that a baseline that
-- ever becomes strategy-dependent cannot collapse onto another strategy's row.
CREATE TABLE finetune_baselines (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         text             NOT NULL,
    factor         text             NOT NULL,
    strategy       text             NOT NULL,
    baseline_type  text             NOT NULL
        CONSTRAINT ck_finetune_baselines_type
        CHECK (baseline_type IN ('buy_and_hold', 'random', 'naive')),
    crypto         text             NOT NULL,
    fold_id        integer          NOT NULL CHECK (fold_id >= 0),
    cost_bps       integer          NOT NULL CHECK (cost_bps >= 0),
    test_start     timestamptz      NOT NULL,
    test_end       timestamptz      NOT NULL,
    n_bars         integer          NOT NULL CHECK (n_bars > 0),
    net_return     double precision NOT NULL,
    -- the random baseline's trade count is a mean over seeds, hence not an integer
    n_trades       double precision NOT NULL CHECK (n_trades >= 0),
    n_seeds        integer CHECK (n_seeds > 0),
    hold_bars      integer CHECK (hold_bars > 0),
    return_std     double precision,
    created_at     timestamptz      NOT NULL DEFAULT now(),
    updated_at     timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT ck_finetune_baselines_window CHECK (test_end >= test_start),
    CONSTRAINT fk_finetune_baselines_factor FOREIGN KEY (run_id, factor)
        REFERENCES finetune_run_factors (run_id, factor) ON DELETE CASCADE,
    CONSTRAINT uq_finetune_baseline
        UNIQUE (run_id, factor, strategy, baseline_type, crypto, fold_id, cost_bps)
);
