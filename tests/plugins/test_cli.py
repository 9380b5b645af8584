"""Tests of finetune_sweep.cli: `python -m finetune_sweep render|recommend|findings` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from finetune_rows import (
    GI,
    RUN_ID,
    record_attempt,
    seed_complete_run,
    set_p_values,
    stored_findings,
)
from finetune_sweep import cli


def test_recommend_cli_reads_the_history(
    migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.setenv("FINETUNE_SIZING", '{"btc_features": "STANDARD"}')
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('r2', 'finetune_sweep', 'ridge_long_flat', '2026-06-07T00:00:00Z', '{}')"
        )
        conn.execute(
            "INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES ('r2', 'btc_features', 'STANDARD', 'done')"
        )
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes, peak_memory_bytes, "
            "exit_reason, duration_seconds) VALUES ('r2', 'btc_features', 1, 'STANDARD', %s, %s, NULL, 60)",
            (8 * GI, int(7.68 * GI)),
        )

    assert cli.main(["recommend", "--dsn", migrated_db]) == 0

    out = capsys.readouterr().out
    btc = next(line for line in out.splitlines() if line.startswith("btc_features"))
    assert "FLAG" in btc and "MEDIUM" in btc and "7.68Gi" in btc


def test_recommend_cli_on_a_database_without_tables(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recommend", "--dsn", empty_db]) == 2
    assert "no finetune tables" in capsys.readouterr().err


def _recommend_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m finetune_sweep.sizing recommend ...`` as a user runs it (a real process)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_DB_URL", "AIRFLOW_CONN_FINETUNE_DB")}
    return subprocess.run(
        [sys.executable, "-m", "finetune_sweep.sizing", "recommend", *args],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=600,
    )


def test_recommend_cli_with_the_database_down_says_so_in_one_line() -> None:
    # nothing listens on port 1: the server is down (connection refused)
    dsn = "postgresql://finetune:hunter2@127.0.0.1:1/finetune"

    done = _recommend_process("--dsn", dsn)

    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: database unreachable: ")
    assert "Connection refused" in line
    assert "hunter2" not in done.stderr


def test_recommend_cli_on_a_database_refusing_connections(migrated_db: str) -> None:
    import psycopg

    # the test's own database, altered from the server's admin database
    name = migrated_db.rsplit("/", 1)[1]
    admin = os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        done = _recommend_process("--dsn", migrated_db)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: database unreachable: ")
    assert "not currently accepting connections" in line


def test_recommend_cli_with_an_unknown_role_says_configuration_error(migrated_db: str) -> None:
    dsn = migrated_db.replace("postgresql://postgres@", "postgresql://no_such_role:pw-4711@", 1)
    assert dsn != migrated_db

    done = _recommend_process(env={"FINETUNE_DB_URL": dsn})

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "error: the database refused the connection settings (a configuration error, not an outage): "
    )
    assert 'role "no_such_role" does not exist' in line
    assert "pw-4711" not in done.stderr


def test_recommend_cli_without_any_database_configured() -> None:
    done = _recommend_process()

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: no database given: pass --dsn, set FINETUNE_DB_URL or define the Airflow connection finetune_db"
    )


def test_recommend_cli_reads_the_window_register_uses(
    migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.setenv("FINETUNE_SIZING", '{"btc_features": "STANDARD"}')
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "30")
    monkeypatch.delenv("FINETUNE_SIZING_HISTORY_RUNS", raising=False)
    monkeypatch.delenv("FINETUNE_SIZING_MODE", raising=False)
    record_attempt(
        migrated_db,
        run_id="old",
        factor="btc_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=int(7.9 * GI),
        days_ago=31,
    )
    record_attempt(
        migrated_db,
        run_id="new",
        factor="btc_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=int(7.6 * GI),
        days_ago=1,
    )

    assert cli.main(["recommend", "--dsn", migrated_db]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[0] == "history: each factor's last 8 runs within 30 days"
    btc = next(line for line in out.splitlines() if line.startswith("btc_features"))
    assert btc.split()[1:3] == ["1", "1"], "one run, one attempt: the 31-day-old one is outside the window"
    assert "7.60Gi" in btc and "7.90Gi" not in out
    assert "advice: btc_features starts its next run on MEDIUM (history; map STANDARD)" in out


def test_recommend_cli_refuses_a_bad_sizing_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_RUNS", "all")

    assert cli.main(["recommend", "--dsn", "postgresql://nowhere.invalid/x"]) == 2

    err = capsys.readouterr().err
    assert err == "error: FINETUNE_SIZING_HISTORY_RUNS='all' must be an integer from 1 to 1000\n"


def test_findings_recomputes_a_stored_run_at_another_fdr(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_complete_run(migrated_db)
    set_p_values(migrated_db, {"BTC": (0.001, 0.004), "ETH": (0.3, 0.9)})

    ok = cli.main(["findings", "--dsn", migrated_db, "--run-id", RUN_ID, "--fdr-q", "0.05"])
    out = capsys.readouterr().out
    bad = cli.main(["findings", "--dsn", migrated_db, "--run-id", RUN_ID, "--fdr-q", "5"])
    err = capsys.readouterr().err

    assert ok == 0 and out.startswith("4 of 8 groups are findings at FDR 0.05")
    assert bad == 2 and err.strip() == "error: fdr_q must be a number strictly between 0 and 1, got 5.0"
    assert {row[11] for row in stored_findings(migrated_db)} == {0.05}


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(["finetune_sweep", "findings"], id="one-entry-point"),
        pytest.param(["finetune_sweep.findings"], id="older-findings"),
    ],
)
def test_the_findings_command_runs_under_both_spellings(spelling: list[str], migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    set_p_values(migrated_db, {"BTC": (0.001, 0.004), "ETH": (0.3, 0.9)})

    done = subprocess.run(
        [sys.executable, "-m", *spelling, "--dsn", migrated_db, "--run-id", RUN_ID, "--fdr-q", "0.05"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 of 8 groups are findings at FDR 0.05")
