"""The pod's connections to PostgreSQL: every statement bounded, outages ridden out, faults named.

- Every connection carries ``statement_timeout`` and ``lock_timeout`` in its startup options, so a
  lock that is never released or a stuck server fails the pod by itself instead of stalling the
  weekly schedule behind it. A timeout is not retried: it is the bound the operator chose.
- Transient failures (connection lost or refused, the server starting or shutting down, a
  serialization failure or deadlock, a demoted primary that went read-only) are retried with
  bounded exponential backoff for a total budget (``FINETUNE_DB_RETRY_SECONDS``), long enough to
  ride out a managed database's failover, reconnecting each time.
- Refused credentials (unknown role, wrong password, no ``pg_hba.conf`` entry, unknown database)
  are a configuration error: retrying cannot fix them, so they are named at once.
- A connection abandoned mid-statement (SIGTERM while an INSERT waits on a lock) has its statement
  cancelled on the server before it is closed; a rollback on a busy connection only fails with
  "another command is already in progress".

Settings (environment, all optional; seconds, fractions allowed; 0 turns a timeout off):
``FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS`` (60), ``FINETUNE_DB_LOCK_TIMEOUT_SECONDS`` (45),
``FINETUNE_DB_RETRY_SECONDS`` (120), ``FINETUNE_DB_CONNECT_TIMEOUT_SECONDS`` (10).
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from finetune.redaction import error_line, redact_dsn

T = TypeVar("T")

STATEMENT_TIMEOUT_ENV = "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS"
LOCK_TIMEOUT_ENV = "FINETUNE_DB_LOCK_TIMEOUT_SECONDS"
RETRY_SECONDS_ENV = "FINETUNE_DB_RETRY_SECONDS"
CONNECT_TIMEOUT_ENV = "FINETUNE_DB_CONNECT_TIMEOUT_SECONDS"

# Backoff between retries: 0.5 s doubling up to 5 s, so a recovered server is found within ~5 s
# while a minute-long outage costs only a dozen connection attempts.
RETRY_BASE_DELAY_SECONDS = 0.5
RETRY_MAX_DELAY_SECONDS = 5.0
# How long a cancel request may take before the connection is closed regardless.
CANCEL_TIMEOUT_SECONDS = 2.0
# Names the pod's sessions in pg_stat_activity (unless the DSN sets application_name).
APPLICATION_NAME = "finetune-pod"
# A server that vanishes without a reset (a failed-over VM) is noticed by TCP keepalives within
# ~1 minute instead of the kernel's 2 hours; the DSN's own keepalive settings win.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}

# What a server says when it refuses who we are or where we point (SQLSTATE 28000, 28P01, 3D000,
# 42501 on CONNECT). libpq gives connection failures no SQLSTATE, so the (English) server text is
# matched; a message not recognised here is treated as transient and ends as "unreachable".
_REFUSED = re.compile(
    r"password authentication failed"
    r"|authentication failed for user"
    r"|role \".*\" does not exist"
    r"|is not permitted to log in"
    r"|no pg_hba\.conf entry"
    r"|pg_hba\.conf rejects connection"
    r"|no password supplied"
    r"|database \".*\" does not exist"
    r"|permission denied for database"
)
_REFUSED_SQLSTATES = frozenset({"28000", "28P01", "3D000"})


class DatabaseUnavailable(RuntimeError):
    """The database could not be used (reached, after the retries); the message carries no secret."""


class DatabaseRefused(DatabaseUnavailable):
    """The server refused the credentials or the database name: a configuration error, not retried.

    A subclass of :class:`DatabaseUnavailable` so that callers which only need "the database
    cannot be used" keep working; the pod's CLI tells it apart (exit 2).
    """


class DatabaseTimeout(RuntimeError):
    """A statement exceeded the pod's ``statement_timeout`` or ``lock_timeout`` (not retried)."""


class DatabaseSettingsError(ValueError):
    """A ``FINETUNE_DB_*`` setting that is not a valid number of seconds; one line naming it."""


@dataclass(frozen=True)
class DatabaseSettings:
    """Bounds of the pod's database work, from ``FINETUNE_DB_*`` (see the module docstring).

    ``lock_timeout`` defaults below ``statement_timeout``: PostgreSQL counts a lock wait within the
    statement's time, so an equal or larger lock timeout would never be the one that fires, and a
    lock held by someone else is worth naming as such.
    """

    statement_timeout_seconds: float = 60.0
    lock_timeout_seconds: float = 45.0
    retry_seconds: float = 120.0
    connect_timeout_seconds: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        """The settings from ``environ`` (default ``os.environ``); :class:`DatabaseSettingsError` if bad."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            statement_timeout_seconds=_seconds(env, STATEMENT_TIMEOUT_ENV, defaults.statement_timeout_seconds),
            lock_timeout_seconds=_seconds(env, LOCK_TIMEOUT_ENV, defaults.lock_timeout_seconds),
            retry_seconds=_seconds(env, RETRY_SECONDS_ENV, defaults.retry_seconds),
            connect_timeout_seconds=_seconds(env, CONNECT_TIMEOUT_ENV, defaults.connect_timeout_seconds, positive=True),
        )

    def bounded(self, seconds: float) -> DatabaseSettings:
        """These settings with every bound at most ``seconds`` (0 = off counts as unbounded)."""

        def cap(value: float) -> float:
            return seconds if value == 0 else min(value, seconds)

        return replace(
            self,
            statement_timeout_seconds=cap(self.statement_timeout_seconds),
            lock_timeout_seconds=cap(self.lock_timeout_seconds),
            retry_seconds=min(self.retry_seconds, seconds),
            connect_timeout_seconds=cap(self.connect_timeout_seconds),
        )

    def startup_options(self) -> str:
        """The libpq ``options`` that set both timeouts for the session (milliseconds)."""
        return (
            f"-c statement_timeout={_milliseconds(self.statement_timeout_seconds)} "
            f"-c lock_timeout={_milliseconds(self.lock_timeout_seconds)}"
        )


def _seconds(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        allowed = "a number of seconds > 0" if positive else "a number of seconds >= 0 (0 turns it off)"
        raise DatabaseSettingsError(f"{name} must be {allowed}, got {text!r}")
    return value


def _milliseconds(seconds: float) -> int:
    # A positive bound never rounds to 0, which PostgreSQL would read as "no timeout".
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


# --- classification ------------------------------------------------------------------------------


def is_transient(exc: psycopg.Error) -> bool:
    """Whether retrying on a fresh connection may succeed.

    ``OperationalError`` covers connection loss and refusal, administrator shutdowns and, through
    ``TransactionRollback``, serialization failures and deadlocks. A statement or lock timeout is
    an ``OperationalError`` too but is the operator's bound, so it is not retried. A write refused
    as read-only comes from a primary demoted by a failover: a new connection finds the new one.
    Constraint violations or a trigger's ``RAISE`` are not transient: retrying them would only
    delay a loud failure.
    """
    if isinstance(exc, errors.QueryCanceled | errors.LockNotAvailable):
        return False
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return True
    return isinstance(exc, psycopg.OperationalError)


def is_refused(exc: psycopg.Error) -> bool:
    """Whether the server refused the credentials or the database (see :data:`_REFUSED`)."""
    return exc.sqlstate in _REFUSED_SQLSTATES or bool(_REFUSED.search(str(exc)))


def timeout_error(exc: psycopg.Error, settings: DatabaseSettings) -> DatabaseTimeout | None:
    """The one-line :class:`DatabaseTimeout` for a statement the server cancelled, else ``None``."""
    if isinstance(exc, errors.LockNotAvailable):
        bound, name, env = settings.lock_timeout_seconds, "lock_timeout", LOCK_TIMEOUT_ENV
    elif isinstance(exc, errors.QueryCanceled):
        bound, name, env = settings.statement_timeout_seconds, "statement_timeout", STATEMENT_TIMEOUT_ENV
    else:
        return None
    # The primary message only: the rest is the statement's text, long and not the point.
    said = exc.diag.message_primary or error_line(exc)
    return DatabaseTimeout(f"database {name} of {bound:g} s exceeded ({env}): {said}")


def interruption(exc: BaseException) -> BaseException | None:
    """The non-database exception that ``exc`` (a psycopg error) was raised while handling, if any.

    A signal handler's exception (SIGTERM) raised inside psycopg's wait can be replaced by the
    error psycopg meets while unwinding (``executemany``'s pipeline: "cannot exit pipeline mode
    while busy"); the interruption, not that error, is what happened.
    """
    seen = exc
    while isinstance(seen, psycopg.Error):
        if seen.__context__ is None:
            return None
        seen = seen.__context__
    return seen if seen is not exc else None


# --- retries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen: after ``attempt`` failed with ``error``, wait ``delay`` seconds."""

    attempt: int
    delay: float
    error: psycopg.Error


def retry_transient(
    operation: Callable[[], T],
    *,
    budget_seconds: float | None = None,
    attempts: int | None = None,
    base_delay: float | None = None,
    max_delay: float = RETRY_MAX_DELAY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[RetryNotice], None] | None = None,
) -> T:
    """Run ``operation``; retry transient errors with exponential backoff until the budget is spent.

    :param budget_seconds: total time for the retries (default ``FINETUNE_DB_RETRY_SECONDS``); the
        last wait is cut so that the last try starts when the budget ends; 0 means no retry.
    :param attempts: at most this many tries in all (default: as many as the budget allows).
    :param base_delay: first wait (doubling each retry, capped at ``max_delay``).
    :param jitter: in [0, 1): each wait is scaled by ``0.5 + jitter() / 2`` so that the pods of a
        sweep, all cut off by the same failover, do not reconnect in lockstep.
    :param on_retry: told about each retry before its wait (the runner emits an event).
    """
    budget = DatabaseSettings.from_env().retry_seconds if budget_seconds is None else budget_seconds
    base = RETRY_BASE_DELAY_SECONDS if base_delay is None else base_delay
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except psycopg.Error as exc:
            remaining = budget - (clock() - started)
            if not is_transient(exc) or remaining <= 0 or (attempts is not None and attempt >= attempts):
                raise
            delay = min(base * 2 ** (attempt - 1), max_delay) * (0.5 + jitter() / 2)
            delay = min(delay, remaining)
            if on_retry is not None:
                on_retry(RetryNotice(attempt=attempt, delay=delay, error=exc))
            sleep(delay)


# --- connections ---------------------------------------------------------------------------------


def _merged_options(dsn_options: str | None, settings: DatabaseSettings) -> str:
    # Passing ``options`` replaces the DSN's (and PGOPTIONS), so theirs are kept and ours come
    # last: the last ``-c`` of a setting wins, and the timeouts are the pod's to set.
    theirs = dsn_options or os.environ.get("PGOPTIONS", "")
    return f"{theirs} {settings.startup_options()}".strip()


def open_connection(dsn: str, *, settings: DatabaseSettings, autocommit: bool = False) -> psycopg.Connection:
    """One connection attempt with the pod's timeouts; :class:`DatabaseRefused` on refused credentials.

    Any other failure is raised as psycopg's own error, for :func:`retry_transient` to judge.
    """
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise DatabaseRefused(
            f"the database URI is not a valid libpq connection string: {error_line(exc, dsn)}"
        ) from exc
    extra: dict[str, object] = {key: value for key, value in KEEPALIVES.items() if key not in given}
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=math.ceil(settings.connect_timeout_seconds),
            options=_merged_options(given.get("options"), settings),
            fallback_application_name=APPLICATION_NAME,
            **extra,
        )
    except psycopg.OperationalError as exc:
        if is_refused(exc):
            raise DatabaseRefused(
                f"database refused the connection ({redact_dsn(dsn)}): {error_line(exc, dsn)}; "
                "a configuration error (check the user, password and database of FINETUNE_DB_URL), "
                "not retried"
            ) from exc
        raise


def unavailable(dsn: str, exc: BaseException, *, seconds: float) -> DatabaseUnavailable:
    """The one-line :class:`DatabaseUnavailable` after ``seconds`` of retries ended with ``exc``."""
    return DatabaseUnavailable(
        f"database unreachable ({redact_dsn(dsn)}) after {seconds:.1f} s of retries "
        f"({RETRY_SECONDS_ENV}): {error_line(exc, dsn)}"
    )


def connect(
    dsn: str,
    *,
    autocommit: bool = False,
    attempts: int | None = None,
    settings: DatabaseSettings | None = None,
    on_retry: Callable[[RetryNotice], None] | None = None,
) -> psycopg.Connection:
    """A connection with the pod's timeouts, retrying transient failures within the budget.

    :raises DatabaseRefused: refused credentials or database name (at once).
    :raises DatabaseUnavailable: still unreachable when the budget (or ``attempts``) ran out.
    """
    settings = DatabaseSettings.from_env() if settings is None else settings
    started = time.monotonic()
    try:
        return retry_transient(
            lambda: open_connection(dsn, settings=settings, autocommit=autocommit),
            budget_seconds=settings.retry_seconds,
            attempts=attempts,
            on_retry=on_retry,
        )
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc, seconds=time.monotonic() - started) from exc


def abandon(conn: psycopg.Connection) -> None:
    """Close ``conn``, cancelling on the server first a statement still in flight.

    Closing alone would leave a backend that waits on a lock waiting (the server notices a lost
    client only when it next reads), still holding the locks of its transaction.
    """
    if conn.closed:
        return
    if conn.info.transaction_status == TransactionStatus.ACTIVE:
        try:
            conn.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
        except psycopg.Error:
            pass  # the close below still ends the session; its transaction then rolls back
    conn.close()
