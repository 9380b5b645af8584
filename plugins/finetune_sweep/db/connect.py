"""One way for the Airflow side to reach the finetune database: :func:`connect`, bounded.

Every connection the workers, the CLI and the UI open goes through here, so an unreachable host
fails in seconds and a locked table cannot hold a task forever. A caller passes the bounds its
job needs (a UI page waits less than a findings step); ``None`` leaves a bound unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


class NotMigrated(RuntimeError):
    """The database has none of the tables asked for: a wrong database, or ``migrate`` never ran."""


# An unreachable host must fail in seconds, not after the operating system's TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


def connect(
    dsn: str,
    *,
    connect_timeout: int | None = CONNECT_TIMEOUT_SECONDS,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
    session: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> psycopg.Connection:
    """A psycopg connection with the given bounds (the DSN's own ``connect_timeout`` wins).

    :param dsn: the libpq URI (never logged).
    :param connect_timeout: seconds to reach the server (None: the DSN's or libpq's default).
    :param statement_timeout_ms: ``statement_timeout`` of the session (None: the server's).
    :param lock_timeout_ms: ``lock_timeout`` of the session (None: the server's).
    :param session: further settings of the session, e.g. ``{"TimeZone": "UTC"}``.
    :param kwargs: passed to :func:`psycopg.connect` (``row_factory``, ``autocommit`` ...).
    """
    # psycopg is imported on first use: the DAG file imports this module at parse time.
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    bounds = {"statement_timeout": statement_timeout_ms, "lock_timeout": lock_timeout_ms}
    options = [f"-c {name}={int(value)}" for name, value in bounds.items() if value is not None]
    options += [f"-c {name}={value}" for name, value in (session or {}).items()]
    if options:
        kwargs["options"] = " ".join(options)
    if connect_timeout is not None and "connect_timeout" not in conninfo_to_dict(dsn):
        kwargs["connect_timeout"] = connect_timeout
    return psycopg.connect(dsn, **kwargs)
