"""The finetune database from the Airflow side: the DSN, and the rows the workers write."""
