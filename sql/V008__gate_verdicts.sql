-- The gate's last verdict on each finetune run, recorded by `check_baselines` when it decides.
-- Readers (the UI's run tab) reuse it while no row of the run has changed since `checked_at`,
-- instead of recomputing the gate's query over every model row and baseline.

CREATE TABLE finetune_gate_verdicts (
    run_id          text        PRIMARY KEY REFERENCES finetune_runs (run_id) ON DELETE CASCADE,
    ok              boolean     NOT NULL,
    n_problems      integer     NOT NULL,
    -- the first problems, as the gate lists them (at most gate.MAX_LISTED_PROBLEMS)
    problems        text[]      NOT NULL,
    -- the Airflow run whose gate decided ('' when the gate ran outside Airflow)
    dag_id          text        NOT NULL DEFAULT '',
    airflow_run_id  text        NOT NULL DEFAULT '',
    -- the database clock when the gate's query started: rows updated at or after it are newer
    checked_at      timestamptz NOT NULL
);
