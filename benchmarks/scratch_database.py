"""A scratch database for a benchmark: created on the admin URL's server, dropped when done.

    from scratch_database import ADMIN_URL, scratch_database

    with scratch_database("ft_bench_x") as dsn:
        ...

The server is ``FINETUNE_BENCH_ADMIN_URL``'s (default: the machine's PostgreSQL); the database is
dropped even when the benchmark fails, unless ``keep`` (then its DSN stays usable).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("FINETUNE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(admin_url: str, name: str) -> str:
    """The admin URL with its database name replaced (its query kept)."""
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


@contextmanager
def scratch_database(prefix: str, *, admin_url: str = ADMIN_URL, keep: bool = False) -> Iterator[str]:
    """A new database named ``<prefix>_<random>``; yields its DSN, drops it at the end (unless ``keep``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(admin_url, name)
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
