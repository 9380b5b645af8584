-- A factor pod runs its cryptos in up to N worker processes (one crypto's feature store each), so
-- its peak grows with N, not with the number of cryptos. The recorded peak carries N: the sizing
-- recommender compares a peak with others of the same worker count, or scales it to the count a
-- run will use. NULL: an attempt recorded before workers existed (one process, N = 1).

ALTER TABLE finetune_pod_attempts
    ADD COLUMN workers integer CHECK (workers >= 1);
