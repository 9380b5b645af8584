"""The PostgreSQL server of the tests: its admin URL, per-test databases, and a failover of one of them.

Databases are created on the server named by ``FINETUNE_TEST_ADMIN_URL`` (default: the machine's
PostgreSQL); the fixtures in ``conftest.py`` create and drop them. Importable by name (``tests``
is on pytest's pythonpath) so that fault tests can drive :class:`DatabaseOutage` themselves.
"""

from __future__ import annotations

import os

ADMIN_URL = os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def dsn_for(database: str) -> str:
    """The admin URL with its database name replaced."""
    base, _, query = ADMIN_URL.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + database
    return f"{base}?{query}" if query else base


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


class DatabaseOutage:
    """A failover as the pods see it: the test database refuses new connections and its sessions
    are terminated (``ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``), until :meth:`end`.

    Only the test's own database is touched; the shared server keeps running.
    """

    def __init__(self, dsn: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        self.database = conninfo_to_dict(dsn)["dbname"]
        self.active = False

    def start(self) -> int:
        """Cut the database off; returns how many sessions were terminated."""
        import psycopg

        self.active = True
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
            return conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (self.database,),
            ).fetchone()[0]

    def end(self) -> None:
        if self.active:
            admin_execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
            self.active = False
