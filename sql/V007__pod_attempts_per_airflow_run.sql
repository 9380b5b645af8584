-- Reruns keep history. The same sweep at the same as-of is the same finetune run id, and
-- Airflow's try number restarts at 1 in each new DAG run: keyed by (run, factor, attempt) alone,
-- a rerun overwrote the earlier DAG run's attempts (an OOM vanished, and with it the sizing
-- recommender's evidence). The Airflow run that made the attempt joins the key.
--
-- '' stands for "outside Airflow" (a pod started by hand, or a row written before this version):
-- the default is kept on purpose so that a manual `python -m finetune run` still records.

ALTER TABLE finetune_pod_attempts
    ADD COLUMN airflow_run_id text NOT NULL DEFAULT '';

ALTER TABLE finetune_pod_attempts DROP CONSTRAINT finetune_pod_attempts_pkey;
ALTER TABLE finetune_pod_attempts
    ADD CONSTRAINT finetune_pod_attempts_pkey PRIMARY KEY (run_id, factor, airflow_run_id, attempt);
