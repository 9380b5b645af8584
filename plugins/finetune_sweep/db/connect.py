"""One way for the Airflow side to reach the finetune database: :func:`connect`, bounded.

Every connection the tasks, the CLI and the UI open goes through here, with one policy: the
connect, statement and lock timeouts of the settings (``FINETUNE_DB_*_TIMEOUT_SECONDS``, the
pod's variables and defaults), so an unreachable host fails in seconds and a locked table or a
hung server cannot hold a task or a page beyond a known bound. :func:`database_error_line` says
which bound fired, in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from finetune_sweep.settings import DatabaseBounds, get_settings

if TYPE_CHECKING:
    import psycopg


class NotMigrated(RuntimeError):
    """The database has none of the tables asked for: a wrong database, or ``migrate`` never ran."""


def _milliseconds(seconds: float) -> int:
    # A positive bound never rounds to 0, which PostgreSQL would read as "no timeout".
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def session_options(bounds: DatabaseBounds, session: Mapping[str, str] | None = None) -> str:
    """The libpq ``options`` that put ``bounds`` (and further settings) on a session.

    :param bounds: the statement and lock timeouts to set.
    :param session: further settings of the session, e.g. ``{"TimeZone": "UTC"}``.
    """
    settings = {
        "statement_timeout": _milliseconds(bounds.statement_timeout_seconds),
        "lock_timeout": _milliseconds(bounds.lock_timeout_seconds),
        **(session or {}),
    }
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def connect_kwargs(
    dsn: str, *, bounds: DatabaseBounds | None = None, session: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of a bounded connection (a pool passes them to each of its connections).

    :param dsn: the libpq URI (its own ``connect_timeout`` wins).
    :param bounds: default: the settings' (``get_settings().database``).
    :param session: further settings of the session.
    """
    from psycopg.conninfo import conninfo_to_dict

    bounds = bounds or get_settings().database
    kwargs: dict[str, Any] = {"options": session_options(bounds, session)}
    if "connect_timeout" not in conninfo_to_dict(dsn):
        # libpq takes whole seconds (and counts less than 2 as 2)
        kwargs["connect_timeout"] = max(1, round(bounds.connect_timeout_seconds))
    return kwargs


def connect(
    dsn: str,
    *,
    bounds: DatabaseBounds | None = None,
    session: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> psycopg.Connection:
    """A psycopg connection bounded by the settings' connect, statement and lock timeouts.

    :param dsn: the libpq URI (never logged; its own ``connect_timeout`` wins).
    :param bounds: the bounds (default: the settings', ``FINETUNE_DB_*_TIMEOUT_SECONDS``).
    :param session: further settings of the session, e.g. ``{"TimeZone": "UTC"}``.
    :param kwargs: passed to :func:`psycopg.connect` (``row_factory``, ``autocommit`` ...).
    """
    # psycopg is imported on first use: the DAG file imports this module at parse time.
    import psycopg

    return psycopg.connect(dsn, **connect_kwargs(dsn, bounds=bounds, session=session), **kwargs)


def database_error_line(exc: Exception, *, bounds: DatabaseBounds | None = None) -> str | None:
    """One line for a bound that fired (lock or statement timeout, or no connection); None for another error.

    :param exc: the psycopg error.
    :param bounds: the bounds in force (default: the settings').
    """
    from psycopg import errors

    bounds = bounds or get_settings().database
    said = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, errors.LockNotAvailable):
        bound, name, env = bounds.lock_timeout_seconds, "lock_timeout", "FINETUNE_DB_LOCK_TIMEOUT_SECONDS"
    elif isinstance(exc, errors.QueryCanceled):
        bound, name, env = (
            bounds.statement_timeout_seconds,
            "statement_timeout",
            "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS",
        )
    elif isinstance(exc, errors.OperationalError):
        return f"the finetune database could not be reached: {said.splitlines()[0] if said else ''}"
    else:
        return None
    # the primary message only: the rest is the statement's text, long and not the point
    primary = exc.diag.message_primary or said
    return f"the finetune database did not answer: {name} of {bound:g} s exceeded ({env}): {primary}"
