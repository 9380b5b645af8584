"""The finetune database from the Airflow side: one bounded connect (:mod:`.connect`), the DSN of
the Airflow connection (:mod:`.dsn`), the attempts the workers record (:mod:`.attempts`) and the
run they register (:mod:`.runs`).

The DSN helpers stay importable from the package, as they were from the former ``db`` module.
"""

from finetune_sweep.db.dsn import connection_json_from_dsn, dsn_from_connection, dsn_from_parts, redact, redact_dsn

__all__ = ["connection_json_from_dsn", "dsn_from_connection", "dsn_from_parts", "redact", "redact_dsn"]
