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
from databases import DatabaseOutage, admin_execute, dsn_for

REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import time: isolate it before any test imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="finetune-airflow-home-"))
# pytest-xdist workers inherit the controller's environment: a home this file made there would be
# one SQLite metadata database for every worker, whose concurrent `initdb`s collide. Each worker
# takes its own (a home the user set before pytest is kept).
_MADE_HOME = "_FINETUNE_TESTS_AIRFLOW_HOME"
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("AIRFLOW_HOME") == os.environ.get(_MADE_HOME):
    for _name in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        os.environ.pop(_name, None)
if "AIRFLOW_HOME" not in os.environ:
    os.environ[_MADE_HOME] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")


@pytest.fixture(scope="session")
def _migrated_template() -> Iterator[str]:
    """A database with every migration applied, cloned for each test that wants tables."""
    from finetune.migrate import apply_migrations

    name = f"ft_tmpl_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        apply_migrations(dsn_for(name))
        yield name
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db() -> Iterator[str]:
    """DSN of a fresh, empty database (no tables), dropped after the test."""
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(name)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_db(_migrated_template: str) -> Iterator[str]:
    """DSN of a fresh database holding the full schema (all migrations applied)."""
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template}"')
    try:
        yield dsn_for(name)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_outage(migrated_db: str) -> Iterator[DatabaseOutage]:
    """A :class:`DatabaseOutage` of ``migrated_db``, always ended by the teardown."""
    outage = DatabaseOutage(migrated_db)
    try:
        yield outage
    finally:
        outage.end()
