"""Tests of finetune_sweep.db.connect: the one bounded way to the database, on real PostgreSQL."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from finetune_sweep.db.connect import connect, database_error_line
from finetune_sweep.settings import DatabaseBounds, get_settings


def _setting(conn: psycopg.Connection, name: str) -> tuple[str, str]:
    """``SHOW name`` and where the value came from (``client``: the connection's options)."""
    shown = conn.execute(f"SHOW {name}").fetchone()[0]
    source = conn.execute("SELECT source FROM pg_settings WHERE name = %s", (name,)).fetchone()[0]
    return shown, source


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP port that takes the connection but never answers (a hung or firewalled server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nothing ever replies
        yield listener.getsockname()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set ``FINETUNE_DB_*`` for the process-wide settings, read afresh."""
    for name in ("STATEMENT", "LOCK", "CONNECT"):
        monkeypatch.delenv(f"FINETUNE_DB_{name}_TIMEOUT_SECONDS", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("statement", "lock", "statement_shown", "lock_shown"),
    [
        # PostgreSQL shows milliseconds in the largest unit that divides them exactly
        pytest.param(1.5, 0.25, "1500ms", "250ms", id="ms"),
        pytest.param(60, 30, "1min", "30s", id="larger-units"),
        pytest.param(0, 0, "0", "0", id="zero-turns-them-off"),
    ],
)
def test_the_bounds_and_the_session_settings_are_in_force(
    empty_db: str, statement: float, lock: float, statement_shown: str, lock_shown: str
) -> None:
    bounds = DatabaseBounds(statement_timeout_seconds=statement, lock_timeout_seconds=lock)

    with connect(empty_db, bounds=bounds, session={"TimeZone": "UTC"}) as conn:
        assert _setting(conn, "statement_timeout") == (statement_shown, "client")
        assert _setting(conn, "lock_timeout") == (lock_shown, "client")
        # the server's own zone is spelled differently (Etc/UTC here): this is the session's
        assert _setting(conn, "TimeZone") == ("UTC", "client")


def test_without_bounds_given_the_settings_apply(empty_db: str, settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS", "7")

    with connect(empty_db) as conn:
        # the set one, and the pod's defaults for the others: one policy on both sides
        assert _setting(conn, "statement_timeout") == ("7s", "client")
        assert _setting(conn, "lock_timeout") == ("45s", "client")
        assert conn.info.get_parameters()["connect_timeout"] == "10"


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_bound_is_refused_naming_it(value: str) -> None:
    from finetune_sweep.settings import Settings, SettingsError

    with pytest.raises(
        SettingsError, match=rf"^FINETUNE_DB_LOCK_TIMEOUT_SECONDS='{value}' must be a number of seconds"
    ):
        Settings.from_env({"FINETUNE_DB_LOCK_TIMEOUT_SECONDS": value})


def test_the_statement_timeout_cancels_a_long_statement(empty_db: str) -> None:
    bounds = DatabaseBounds(statement_timeout_seconds=0.1)

    with connect(empty_db, bounds=bounds) as conn, pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
        conn.execute("SELECT pg_sleep(5)")

    assert database_error_line(cancelled.value, bounds=bounds) == (
        "the finetune database did not answer: statement_timeout of 0.1 s exceeded "
        "(FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS): canceling statement due to statement timeout"
    )


def test_a_held_lock_fails_at_the_lock_timeout_in_one_line(empty_db: str) -> None:
    bounds = DatabaseBounds(lock_timeout_seconds=0.3)
    with psycopg.connect(empty_db, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (x int)")

    with psycopg.connect(empty_db) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # held until the end of the block
        started = time.monotonic()
        with connect(empty_db, bounds=bounds) as conn, pytest.raises(psycopg.errors.LockNotAvailable) as refused:
            conn.execute("SELECT * FROM t")
        elapsed = time.monotonic() - started

    assert elapsed < 5, elapsed
    line = database_error_line(refused.value, bounds=bounds)
    assert line == (
        "the finetune database did not answer: lock_timeout of 0.3 s exceeded (FINETUNE_DB_LOCK_TIMEOUT_SECONDS): "
        "canceling statement due to lock timeout"
    )


def test_another_database_error_is_not_a_bound(empty_db: str) -> None:
    with connect(empty_db) as conn, pytest.raises(psycopg.errors.UndefinedTable) as missing:
        conn.execute("SELECT * FROM finetune_runs")

    assert database_error_line(missing.value) is None


@pytest.mark.parametrize(
    ("dsn_timeout", "bound", "expected"),
    [
        pytest.param(None, 10.0, "10", id="default"),
        pytest.param(None, 7.0, "7", id="setting"),
        pytest.param(3, 7.0, "3", id="dsn-wins"),
    ],
)
def test_the_dsns_own_connect_timeout_wins(empty_db: str, dsn_timeout: int | None, bound: float, expected: str) -> None:
    dsn = make_conninfo(empty_db, connect_timeout=dsn_timeout) if dsn_timeout is not None else empty_db

    with connect(dsn, bounds=DatabaseBounds(connect_timeout_seconds=bound)) as conn:
        assert conn.info.get_parameters().get("connect_timeout") == expected


def test_further_kwargs_reach_psycopg(empty_db: str) -> None:
    with connect(empty_db, autocommit=True, bounds=DatabaseBounds(lock_timeout_seconds=0.1)) as conn:
        assert conn.autocommit is True
        assert conn.execute("SHOW lock_timeout").fetchone() == ("100ms",)


def test_a_refused_connection_fails_at_once() -> None:
    started = time.monotonic()

    with pytest.raises(psycopg.OperationalError) as refused:
        connect("postgresql://postgres@127.0.0.1:1/x", bounds=DatabaseBounds(connect_timeout_seconds=2))

    assert time.monotonic() - started < 2
    assert database_error_line(refused.value).startswith("the finetune database could not be reached: ")


def test_a_silent_server_fails_within_the_connect_timeout(silent_server: tuple[str, int]) -> None:
    host, port = silent_server
    started = time.monotonic()

    # libpq (and psycopg) count a timeout below 2 s as 2 s
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        connect(f"postgresql://postgres@{host}:{port}/x", bounds=DatabaseBounds(connect_timeout_seconds=2))

    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6, elapsed
