"""finetune.connection: settings, bounded backoff, fault classification, and real connections.

Real PostgreSQL for the timeouts, the refused role and the cancel; a minimal server speaking the
PostgreSQL wire protocol for the wrong password (the test server trusts every local login, so it
never asks for one).
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from finetune.connection import (
    DatabaseRefused,
    DatabaseSettings,
    DatabaseSettingsError,
    DatabaseUnavailable,
    RetryNotice,
    abandon,
    connect,
    interruption,
    is_refused,
    is_transient,
    retry_transient,
    timeout_error,
)

FAST = DatabaseSettings(
    statement_timeout_seconds=2, lock_timeout_seconds=0.3, retry_seconds=0.5, connect_timeout_seconds=2
)


class _FakeClock:
    """A monotonic clock that advances only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _always(exc: psycopg.Error) -> tuple[Callable[[], None], list[int]]:
    """An operation that always fails with ``exc``, and the list of its calls."""
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise exc

    return operation, calls


# --- settings --------------------------------------------------------------------------------------


def test_settings_defaults_and_environment() -> None:
    assert DatabaseSettings.from_env({}) == DatabaseSettings(60.0, 45.0, 120.0, 10.0)
    settings = DatabaseSettings.from_env(
        {
            "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS": "1.5",
            "FINETUNE_DB_LOCK_TIMEOUT_SECONDS": "0",
            "FINETUNE_DB_RETRY_SECONDS": " 30 ",
            "FINETUNE_DB_CONNECT_TIMEOUT_SECONDS": "3",
        }
    )
    assert settings == DatabaseSettings(1.5, 0.0, 30.0, 3.0)
    assert settings.startup_options() == "-c statement_timeout=1500 -c lock_timeout=0"
    # A positive bound never rounds down to PostgreSQL's "off".
    assert DatabaseSettings(statement_timeout_seconds=0.0001).startup_options().startswith("-c statement_timeout=1 ")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param(
            "FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS",
            "-1",
            "must be a number of seconds >= 0 (0 turns it off), got '-1'",
            id="negative",
        ),
        pytest.param("FINETUNE_DB_LOCK_TIMEOUT_SECONDS", "1m", "got '1m'", id="unit-suffix"),
        pytest.param("FINETUNE_DB_RETRY_SECONDS", "nan", "got 'nan'", id="nan"),
        pytest.param("FINETUNE_DB_RETRY_SECONDS", "inf", "got 'inf'", id="inf"),
        pytest.param(
            "FINETUNE_DB_CONNECT_TIMEOUT_SECONDS", "0", "must be a number of seconds > 0, got '0'", id="zero-connect"
        ),
    ],
)
def test_bad_settings_name_the_variable_and_what_is_allowed(name: str, value: str, expected: str) -> None:
    with pytest.raises(DatabaseSettingsError) as error:
        DatabaseSettings.from_env({name: value})
    assert str(error.value).startswith(name) and expected in str(error.value)


def test_bounded_caps_every_bound_and_turns_off_into_the_cap() -> None:
    settings = DatabaseSettings(
        statement_timeout_seconds=0, lock_timeout_seconds=45, retry_seconds=120, connect_timeout_seconds=3
    )
    assert settings.bounded(10) == DatabaseSettings(10, 10, 10, 3)


# --- backoff ---------------------------------------------------------------------------------------


def test_backoff_doubles_caps_and_stops_at_the_budget() -> None:
    clock = _FakeClock()
    operation, calls = _always(psycopg.OperationalError("connection refused"))
    notices: list[RetryNotice] = []
    with pytest.raises(psycopg.OperationalError):
        retry_transient(
            operation,
            budget_seconds=20,
            base_delay=0.5,
            max_delay=5,
            sleep=clock.sleep,
            clock=clock,
            jitter=lambda: 1.0,
            on_retry=notices.append,
        )
    # 0.5 + 1 + 2 + 4 + 5 + 5 = 17.5, then the last wait is cut to end exactly at the budget.
    assert clock.sleeps == [0.5, 1, 2, 4, 5, 5, 2.5]
    assert len(calls) == len(clock.sleeps) + 1 and clock.now == 20
    assert [n.attempt for n in notices] == list(range(1, 8)) and notices[0].delay == 0.5


def test_jitter_scales_each_wait_between_half_and_full() -> None:
    clock = _FakeClock()
    operation, _ = _always(psycopg.OperationalError("connection refused"))
    with pytest.raises(psycopg.OperationalError):
        retry_transient(
            operation, budget_seconds=100, attempts=4, base_delay=1, sleep=clock.sleep, clock=clock, jitter=lambda: 0.0
        )
    assert clock.sleeps == [0.5, 1, 2]


def test_retries_until_success_within_attempts() -> None:
    clock = _FakeClock()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return "ok"

    assert (
        retry_transient(flaky, attempts=4, base_delay=0.1, sleep=clock.sleep, clock=clock, jitter=lambda: 1.0) == "ok"
    )
    assert clock.sleeps == [0.1, 0.2]


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(psycopg.errors.UniqueViolation("duplicate key"), id="constraint"),
        pytest.param(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), id="lock-timeout"),
        pytest.param(
            psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), id="statement-timeout"
        ),
    ],
)
def test_no_retry_for_what_retrying_cannot_fix(exc: psycopg.Error) -> None:
    operation, calls = _always(exc)
    with pytest.raises(type(exc)):
        retry_transient(operation, budget_seconds=60, sleep=pytest.fail)
    assert calls == [1]


def test_a_zero_budget_means_no_retry() -> None:
    operation, calls = _always(psycopg.OperationalError("connection refused"))
    with pytest.raises(psycopg.OperationalError):
        retry_transient(operation, budget_seconds=0, sleep=pytest.fail)
    assert calls == [1]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        pytest.param(psycopg.OperationalError("server closed the connection unexpectedly"), True, id="connection-lost"),
        pytest.param(
            psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True, id="terminated"
        ),
        pytest.param(psycopg.errors.DeadlockDetected("deadlock detected"), True, id="deadlock"),
        pytest.param(
            psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
            True,
            id="demoted-primary",
        ),
        pytest.param(psycopg.errors.LockNotAvailable("lock timeout"), False, id="lock-timeout"),
        pytest.param(psycopg.errors.CheckViolation("check"), False, id="check"),
    ],
)
def test_is_transient(exc: psycopg.Error, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        pytest.param('FATAL:  password authentication failed for user "ft"', True, id="wrong-password"),
        pytest.param('FATAL:  role "nobody" does not exist', True, id="unknown-role"),
        pytest.param('FATAL:  role "ro" is not permitted to log in', True, id="nologin"),
        pytest.param('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "ft", database "db"', True, id="hba"),
        pytest.param("fe_sendauth: no password supplied", True, id="no-password"),
        pytest.param('FATAL:  database "nope" does not exist', True, id="unknown-database"),
        pytest.param('FATAL:  database "db" is not currently accepting connections', False, id="allow-connections-off"),
        pytest.param("FATAL:  the database system is starting up", False, id="starting-up"),
        pytest.param("Connection refused Is the server running", False, id="down"),
    ],
)
def test_is_refused(message: str, refused: bool) -> None:
    assert is_refused(psycopg.OperationalError(f"connection failed: {message}")) is refused


def test_interruption_finds_the_exception_psycopg_replaced() -> None:
    class Stop(Exception):
        pass

    try:
        try:
            raise Stop("received SIGTERM")
        except Stop:
            raise psycopg.OperationalError("cannot exit pipeline mode while busy")  # noqa: B904 - as psycopg does
    except psycopg.OperationalError as exc:
        assert isinstance(interruption(exc), Stop)
    assert interruption(psycopg.OperationalError("plain")) is None


# --- real connections ------------------------------------------------------------------------------


def test_every_connection_carries_the_timeouts_and_keeps_the_dsn_options(migrated_db: str) -> None:
    dsn = f"{migrated_db}?options=-c%20search_path%3Dpublic%2Cpg_catalog"
    with connect(dsn, settings=FAST) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "2s"
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "300ms"
        assert conn.execute("SHOW search_path").fetchone()[0] == "public,pg_catalog"
        assert conn.execute("SHOW application_name").fetchone()[0] == "finetune-pod"


def test_a_lock_never_released_fails_with_the_lock_timeout(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as holder:
        holder.execute("LOCK TABLE finetune_runs IN ACCESS EXCLUSIVE MODE")
        with connect(migrated_db, settings=FAST) as conn, pytest.raises(psycopg.errors.LockNotAvailable) as error:
            conn.execute("SELECT count(*) FROM finetune_runs")
    timeout = timeout_error(error.value, FAST)
    assert str(timeout) == (
        "database lock_timeout of 0.3 s exceeded (FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout"
    )


def test_a_statement_past_the_statement_timeout_is_cancelled(migrated_db: str) -> None:
    settings = DatabaseSettings(statement_timeout_seconds=0.2, lock_timeout_seconds=0.1)
    with connect(migrated_db, settings=settings) as conn, pytest.raises(psycopg.errors.QueryCanceled) as error:
        conn.execute("SELECT pg_sleep(5)")
    assert "statement_timeout of 0.2 s exceeded (FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS)" in str(
        timeout_error(error.value, settings)
    )


def test_unreachable_database_raises_one_redacted_line_after_the_budget() -> None:
    dsn = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/test"
    with pytest.raises(DatabaseUnavailable) as error:
        connect(dsn, settings=FAST)
    message = str(error.value)
    assert not isinstance(error.value, DatabaseRefused)
    assert "s3cr3t-pw" not in message and "\n" not in message
    assert message.startswith("database unreachable (postgresql://postgres:***@127.0.0.1:1/test) after ")
    assert "FINETUNE_DB_RETRY_SECONDS" in message


def test_an_unknown_role_is_refused_at_once(migrated_db: str) -> None:
    dsn = migrated_db.replace("postgres@", "no_such_role:Pa55word@", 1)
    notices: list[RetryNotice] = []
    with pytest.raises(DatabaseRefused) as error:
        connect(dsn, settings=DatabaseSettings(retry_seconds=60), on_retry=notices.append)
    message = str(error.value)
    assert notices == []  # no retry loop
    assert 'role "no_such_role" does not exist' in message and "configuration error" in message
    assert "Pa55word" not in message and "unreachable" not in message and "\n" not in message


@pytest.fixture
def password_refusing_server() -> Iterator[int]:
    """A server that asks for a password and refuses it with 28P01, as PostgreSQL does."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def read_exactly(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def serve() -> None:
        with listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return  # closed by the fixture
                with conn:
                    try:
                        length, code = struct.unpack("!ii", read_exactly(conn, 8))
                        while code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: not offered
                            conn.sendall(b"N")
                            length, code = struct.unpack("!ii", read_exactly(conn, 8))
                        read_exactly(conn, length - 8)  # the startup parameters
                        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                        kind, length = struct.unpack("!ci", read_exactly(conn, 5))
                        read_exactly(conn, length - 4)  # the password message
                        fields = (
                            b"".join(
                                tag + text.encode() + b"\0"
                                for tag, text in (
                                    (b"S", "FATAL"),
                                    (b"V", "FATAL"),
                                    (b"C", "28P01"),
                                    (b"M", 'password authentication failed for user "ft"'),
                                )
                            )
                            + b"\0"
                        )
                        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                    except ConnectionError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=5)


def test_a_wrong_password_is_refused_at_once_without_the_password(password_refusing_server: int) -> None:
    dsn = f"postgresql://ft:WrongPa55@127.0.0.1:{password_refusing_server}/finetune?sslmode=disable"
    notices: list[RetryNotice] = []
    with pytest.raises(DatabaseRefused) as error:
        connect(dsn, settings=DatabaseSettings(retry_seconds=60), on_retry=notices.append)
    message = str(error.value)
    assert notices == []
    assert 'password authentication failed for user "ft"' in message and "configuration error" in message
    assert "WrongPa55" not in message and "ft:***@" in message


def test_abandon_cancels_a_statement_interrupted_by_a_signal(migrated_db: str) -> None:
    """A signal inside a statement blocked on a lock: the server-side statement must not linger."""

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with psycopg.connect(migrated_db) as holder:
        holder.execute("LOCK TABLE finetune_runs IN ACCESS EXCLUSIVE MODE")
        conn = connect(migrated_db, settings=DatabaseSettings(lock_timeout_seconds=30, statement_timeout_seconds=60))
        backend = conn.info.backend_pid
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(Interrupted):
                conn.execute(
                    "INSERT INTO finetune_runs (run_id, strategy, as_of, params) VALUES ('x', 's', now(), '{}')"
                )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        abandon(conn)
        assert conn.closed
        with psycopg.connect(migrated_db, autocommit=True) as admin:
            # The server ends the session: the backend is gone, not still waiting on the lock.
            for _ in range(100):
                if not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0]:
                    break
                admin.execute("SELECT pg_sleep(0.05)")
            assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0] == 0
