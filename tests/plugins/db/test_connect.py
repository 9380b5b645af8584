"""Tests of finetune_sweep.db.connect: the bounds of every Airflow-side connection, on real PostgreSQL."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from finetune_sweep.db.connect import CONNECT_TIMEOUT_SECONDS, connect


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


@pytest.mark.parametrize(
    ("statement_timeout_ms", "lock_timeout_ms", "statement_shown", "lock_shown"),
    [
        # PostgreSQL shows milliseconds in the largest unit that divides them exactly
        pytest.param(1500, 250, "1500ms", "250ms", id="ms"),
        pytest.param(60_000, 30_000, "1min", "30s", id="larger-units"),
    ],
)
def test_the_bounds_and_the_session_settings_are_in_force(
    empty_db: str, statement_timeout_ms: int, lock_timeout_ms: int, statement_shown: str, lock_shown: str
) -> None:
    with connect(
        empty_db,
        statement_timeout_ms=statement_timeout_ms,
        lock_timeout_ms=lock_timeout_ms,
        session={"TimeZone": "UTC"},
    ) as conn:
        assert _setting(conn, "statement_timeout") == (statement_shown, "client")
        assert _setting(conn, "lock_timeout") == (lock_shown, "client")
        # the server's own zone is spelled differently (Etc/UTC here): this is the session's
        assert _setting(conn, "TimeZone") == ("UTC", "client")


@pytest.mark.parametrize(
    ("statement_timeout_ms", "lock_timeout_ms", "set_by_client"),
    [
        pytest.param(None, None, set(), id="neither"),
        pytest.param(2000, None, {"statement_timeout"}, id="statement-only"),
        pytest.param(None, 2000, {"lock_timeout"}, id="lock-only"),
    ],
)
def test_none_leaves_a_bound_to_the_server(
    empty_db: str, statement_timeout_ms: int | None, lock_timeout_ms: int | None, set_by_client: set[str]
) -> None:
    with psycopg.connect(empty_db) as plain:
        server = {name: _setting(plain, name)[0] for name in ("statement_timeout", "lock_timeout")}

    with connect(empty_db, statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms) as conn:
        for name in ("statement_timeout", "lock_timeout"):
            shown, source = _setting(conn, name)
            assert (source == "client") == (name in set_by_client), name
            if name not in set_by_client:
                assert shown == server[name]
        assert ("options" in conn.info.get_parameters()) == bool(set_by_client)


def test_the_statement_timeout_cancels_a_long_statement(empty_db: str) -> None:
    with (
        connect(empty_db, statement_timeout_ms=100) as conn,
        pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"),
    ):
        conn.execute("SELECT pg_sleep(5)")


@pytest.mark.parametrize(
    ("dsn_timeout", "argument", "expected"),
    [
        pytest.param(None, CONNECT_TIMEOUT_SECONDS, "10", id="default"),
        pytest.param(None, 7, "7", id="argument"),
        pytest.param(3, 7, "3", id="dsn-wins"),
        pytest.param(3, None, "3", id="dsn-only"),
        pytest.param(None, None, None, id="neither"),
    ],
)
def test_the_dsns_own_connect_timeout_wins(
    empty_db: str, dsn_timeout: int | None, argument: int | None, expected: str | None
) -> None:
    dsn = make_conninfo(empty_db, connect_timeout=dsn_timeout) if dsn_timeout is not None else empty_db

    with connect(dsn, connect_timeout=argument) as conn:
        assert conn.info.get_parameters().get("connect_timeout") == expected


def test_further_kwargs_reach_psycopg(empty_db: str) -> None:
    with connect(empty_db, autocommit=True, lock_timeout_ms=100) as conn:
        assert conn.autocommit is True
        assert conn.execute("SHOW lock_timeout").fetchone() == ("100ms",)


def test_a_refused_connection_fails_at_once() -> None:
    started = time.monotonic()

    with pytest.raises(psycopg.OperationalError):
        connect("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2)

    assert time.monotonic() - started < 2


def test_a_silent_server_fails_within_the_connect_timeout(silent_server: tuple[str, int]) -> None:
    host, port = silent_server
    started = time.monotonic()

    # libpq (and psycopg) count a timeout below 2 s as 2 s
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        connect(f"postgresql://postgres@{host}:{port}/x", connect_timeout=2)

    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6, elapsed
