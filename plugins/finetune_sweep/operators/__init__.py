"""The DAG's operators: the factor pod (with its OOM ladder) and the baseline gate sensor."""
