"""Shared fixtures: a real PostgreSQL database per test, and an isolated Airflow home.

Databases are created on the server named by ``FINETUNE_TEST_ADMIN_URL`` (default: the machine's
PostgreSQL, ``postgresql://postgres@127.0.0.1:5432/test``) and dropped after the test. Nothing is
mocked: tests that need tables get a fresh database with the real migrations applied.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import time: isolate it before any test imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="finetune-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")

ADMIN_URL = os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _dsn_for(database: str) -> str:
    """The admin URL with its database name replaced."""
    base, _, query = ADMIN_URL.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + database
    return f"{base}?{query}" if query else base


def _admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def _migrated_template() -> Iterator[str]:
    """A database with every migration applied, cloned for each test that wants tables."""
    from finetune.migrate import apply_migrations

    name = f"ft_tmpl_{uuid.uuid4().hex[:10]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        apply_migrations(_dsn_for(name))
        yield name
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db() -> Iterator[str]:
    """DSN of a fresh, empty database (no tables), dropped after the test."""
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _dsn_for(name)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_db(_migrated_template: str) -> Iterator[str]:
    """DSN of a fresh database holding the full schema (all migrations applied)."""
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template}"')
    try:
        yield _dsn_for(name)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
            _admin_execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
            self.active = False


@pytest.fixture
def database_outage(migrated_db: str) -> Iterator[DatabaseOutage]:
    """A :class:`DatabaseOutage` of ``migrated_db``, always ended by the teardown."""
    outage = DatabaseOutage(migrated_db)
    try:
        yield outage
    finally:
        outage.end()
