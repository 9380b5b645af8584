-- One row per pod attempt: the history the sizing recommender reads. finetune_run_factors keeps
-- only the latest attempt of each (run, factor); retries after an OOM must not erase the peaks.

CREATE TABLE finetune_pod_attempts (
    run_id              text             NOT NULL,
    factor              text             NOT NULL,
    attempt             integer          NOT NULL CHECK (attempt >= 1),
    profile             text,
    memory_limit_bytes  bigint CHECK (memory_limit_bytes > 0),
    peak_memory_bytes   bigint CHECK (peak_memory_bytes >= 0),
    exit_reason         text,
    duration_seconds    double precision CHECK (duration_seconds >= 0),
    finished_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, factor, attempt),
    CONSTRAINT fk_finetune_pod_attempts_factor FOREIGN KEY (run_id, factor)
        REFERENCES finetune_run_factors (run_id, factor) ON DELETE CASCADE
);

-- The recommender reads the peaks of a factor across runs.
CREATE INDEX ix_finetune_pod_attempts_factor ON finetune_pod_attempts (factor, finished_at);
