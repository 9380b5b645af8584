-- Sizing that learns (the starting profile of each factor and why), and the link from Airflow's
-- runs to finetune runs (several Airflow runs can rerun one finetune run id).

ALTER TABLE finetune_run_factors
    -- the sizing map's profile for the factor; `profile` holds the one the run started on
    ADD COLUMN map_profile text,
    -- why `profile` was chosen: 'map', 'history: p95 ...', 'history: OOM on STANDARD in run ...'
    ADD COLUMN profile_reason text;

CREATE TABLE finetune_airflow_runs (
    dag_id          text        NOT NULL,
    airflow_run_id  text        NOT NULL,
    run_id          text        NOT NULL REFERENCES finetune_runs (run_id) ON DELETE CASCADE,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_id, airflow_run_id)
);

CREATE INDEX ix_finetune_airflow_runs_run ON finetune_airflow_runs (run_id);
