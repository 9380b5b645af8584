"""Tests of finetune_sweep.db.dsn: libpq URIs from Airflow connections, and back."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from finetune_sweep.db.dsn import (
    connection_json_from_dsn,
    dsn_from_connection,
    dsn_from_parts,
    redact,
    redact_dsn,
)


def _make_parts(**overrides: Any) -> dict[str, Any]:
    parts = {"host": "db.example", "port": 5432, "login": "ft", "password": None, "database": "finetune", "extra": {}}
    parts.update(overrides)
    return parts


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, "postgresql://ft@db.example:5432/finetune", id="tcp"),
        pytest.param(
            {"password": "p@ss:w/rd?#%"},
            "postgresql://ft:p%40ss%3Aw%2Frd%3F%23%25@db.example:5432/finetune",
            id="quoted-password",
        ),
        pytest.param(
            {"host": "/tmp/pg sock", "port": None}, "postgresql://ft@/finetune?host=/tmp/pg+sock", id="socket"
        ),
        pytest.param(
            {"host": "/tmp/x", "port": 5433}, "postgresql://ft@/finetune?host=/tmp/x&port=5433", id="socket-port"
        ),
        pytest.param(
            {"host": None, "extra": {"host": "/tmp/x"}},
            "postgresql://ft@/finetune?host=/tmp/x&port=5432",
            id="socket-in-extra",
        ),
        pytest.param(
            {"extra": {"sslmode": "require", "cursor": "dictcursor"}},
            "postgresql://ft@db.example:5432/finetune?sslmode=require",
            id="sslmode",
        ),
        pytest.param({"host": "::1", "port": None}, "postgresql://ft@[::1]/finetune", id="ipv6"),
        pytest.param({"login": None, "database": None, "port": None}, "postgresql://db.example/", id="bare"),
    ],
)
def test_dsn_from_parts(overrides: dict[str, Any], expected: str) -> None:
    assert dsn_from_parts(**_make_parts(**overrides)) == expected


def test_dsn_from_connection_reads_the_airflow_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FINETUNE_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "/tmp/sock",
                "login": "postgres",
                "password": "s3 cret",
                "schema": "ft",
                "extra": {"sslmode": "disable"},
            }
        ),
    )

    assert dsn_from_connection() == "postgresql://postgres:s3%20cret@/ft?host=/tmp/sock&sslmode=disable"


def test_dsn_from_connection_connects(monkeypatch: pytest.MonkeyPatch, empty_db: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(empty_db))

    with psycopg.connect(dsn_from_connection("finetune_db")) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == empty_db.rsplit("/", 1)[1]


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param("postgresql://postgres@127.0.0.1:5432/test", id="tcp"),
        pytest.param("postgresql://u:p%40ss@/db?host=/tmp/x&sslmode=require", id="socket-password"),
    ],
)
def test_connection_json_round_trip(dsn: str) -> None:
    conn = json.loads(connection_json_from_dsn(dsn))

    assert conn["conn_type"] == "postgres"
    rebuilt = dsn_from_parts(
        host=conn.get("host"),
        port=conn.get("port"),
        login=conn.get("login"),
        password=conn.get("password"),
        database=conn.get("schema"),
        extra=conn.get("extra"),
    )
    assert psycopg.conninfo.conninfo_to_dict(rebuilt) == psycopg.conninfo.conninfo_to_dict(dsn)


def test_connection_json_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="postgresql"):
        connection_json_from_dsn("mysql://x@y/z")


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        pytest.param("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db", id="uri"),
        pytest.param("postgresql://u@/db?host=/tmp/x", "postgresql://u@/db?host=/tmp/x", id="no-password"),
        pytest.param("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d", id="keyword"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
    assert "secret" not in redact_dsn(dsn)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db", id="uri-password"),
        pytest.param("postgresql://u@/db?host=/tmp", "postgresql://u@/db?host=/tmp", id="no-password"),
        pytest.param("token abc123 seen", "token *** seen", id="literal-secret"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text, ["abc123"]) == expected
