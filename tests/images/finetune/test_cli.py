"""``python -m finetune``: exit codes, one-line refusals that write nothing, and a real subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from finetune.cli import main
from finetune.migrate import ADVISORY_LOCK_KEY, default_migrations_dir, load_migrations
from finetune.synthetic import synthetic_ohlcv

TABLES = ("finetune_runs", "finetune_run_factors", "finetune_results", "finetune_baselines", "finetune_pod_attempts")
AS_OF = "2026-06-07T00:00:00Z"


def _make_argv(**overrides: str | None) -> list[str]:
    args: dict[str, str | None] = {
        "--run-id": "run-1",
        "--factor": "base_features",
        "--cryptos": "BTC,ETH",
        "--cost-bps": "10",
        "--slippage-bps": "0",
        "--as-of": AS_OF,
        "--n-folds": "2",
        "--n-seeds": "5",
        "--hold-bars": "4",
        "--train-bars": "300",
        "--test-bars": "48",
    }
    args.update(overrides)
    argv = ["run"]
    for flag, value in args.items():
        if value is not None:
            argv += [flag, value]
    return argv


def _total_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)


def _write_ohlcv(directory: Path, symbol: str, n_bars: int, *, drop: Sequence[int] = ()) -> None:
    """The last ``n_bars`` hourly synthetic bars up to and including the one stamped at as-of
    (open-stamped: it is still open at as-of), without the bars at positions ``drop``."""
    frame = synthetic_ohlcv(symbol).loc[:AS_OF].iloc[-n_bars:]
    frame = frame.drop(index=frame.index[list(drop)])
    frame.rename(columns=str.capitalize).to_csv(directory / f"{symbol}.csv", index_label="timestamp")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BTC with enough bars; ETH too short for the grid; SOL malformed."""
    directory = tmp_path_factory.mktemp("ohlcv")
    _write_ohlcv(directory, "BTC", 1200)
    _write_ohlcv(directory, "ETH", 500)
    (directory / "SOL.csv").write_text("timestamp,open,high,low,close,volume\n2026-01-01T00:00:00Z,1,2,x,1,1\n")
    return directory


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"--factor": "nope"},
            "unknown factor 'nope'; installed factors: base_features, btc_features, l2_features, n_features",
            id="unknown-factor",
        ),
        pytest.param(
            {"--model": "nope"}, "unknown model 'nope'; installed models: ridge_long_flat", id="unknown-model"
        ),
        pytest.param({"--cost-bps": "10,-5"}, "basis points must be integers >= 0, got '-5'", id="negative-cost"),
        pytest.param(
            {"--slippage-bps": "1.5"}, "basis points must be integers >= 0, got '1.5'", id="fractional-slippage"
        ),
        pytest.param({"--cryptos": ""}, "expected a non-empty comma-separated list", id="empty-cryptos"),
        pytest.param({"--cryptos": "BTC,,ETH"}, "expected a non-empty comma-separated list", id="empty-crypto-item"),
        pytest.param({"--cryptos": "btc"}, "invalid symbol 'btc'", id="malformed-symbol"),
        pytest.param({"--cryptos": "BTC/USDT"}, "invalid symbol 'BTC/USDT'", id="symbol-with-slash"),
        pytest.param({"--n-folds": "0"}, "argument --n-folds: expected an integer >= 1", id="zero-folds"),
        pytest.param({"--as-of": "yesterday"}, "not an ISO timestamp: 'yesterday'", id="bad-as-of"),
        pytest.param({"--run-id": None}, "the following arguments are required: --run-id", id="missing-run-id"),
        pytest.param({"--cryptos": "ZZZ"}, "no synthetic data for symbol ZZZ", id="symbol-without-data"),
        pytest.param(
            {"--data-uri": "synthetic://random_walk"},
            "unsupported synthetic data URI 'synthetic://random_walk': use synthetic:// (planted lead-lag), synthetic://random-walk",
            id="unknown-synthetic-market",
        ),
        pytest.param(
            {"--as-of": "2019-01-01T00:00:00Z"},
            "symbol BTC: as-of 2019-01-01T00:00:00+00:00 is before its first bar",
            id="as-of-before-data",
        ),
        pytest.param(
            {"--train-bars": "100000"}, "symbol BTC: fold 0 of 2: needs 100000 training bars", id="too-few-bars"
        ),
        pytest.param(
            {"--data-uri": "ftp://bucket/x"}, "unsupported data URI 'ftp://bucket/x'", id="unsupported-data-uri"
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    migrated_db: str, capsys: pytest.CaptureFixture[str], overrides: dict[str, str | None], expected: str
) -> None:
    code = main(_make_argv(**overrides), environ={"FINETUNE_DB_URL": migrated_db})
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and expected in captured.err, captured.err
    assert _total_rows(migrated_db) == 0


@pytest.mark.parametrize(
    ("cryptos", "expected"),
    [
        pytest.param("BTC,ADA", "no data for symbol ADA: neither ADA.parquet nor ADA.csv", id="missing-file"),
        pytest.param("BTC,ETH", "symbol ETH: fold 0 of 2: needs 300 training bars", id="file-too-short"),
        pytest.param("BTC,SOL", "symbol SOL", id="malformed-file"),
    ],
)
def test_file_data_problems_exit_2_before_any_write(
    migrated_db: str, capsys: pytest.CaptureFixture[str], data_dir: Path, cryptos: str, expected: str
) -> None:
    argv = _make_argv(**{"--cryptos": cryptos, "--data-uri": data_dir.as_uri()})
    code = main(argv, environ={"FINETUNE_DB_URL": migrated_db})
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1 and expected in captured.err, captured.err
    assert _total_rows(migrated_db) == 0


def test_missing_database_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_make_argv(), environ={}) == 2
    assert (
        capsys.readouterr().err
        == "finetune: error: FINETUNE_DB_URL is not set: it must hold the database's libpq URI\n"
    )


def test_bad_attempt_number_exits_2(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_make_argv(), environ={"FINETUNE_DB_URL": migrated_db, "FINETUNE_ATTEMPT": "zero"}) == 2
    assert "FINETUNE_ATTEMPT must be an integer >= 1" in capsys.readouterr().err


COMMANDS = [pytest.param(_make_argv(), id="run"), pytest.param(["migrate"], id="migrate")]


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_database_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    environ = {
        "FINETUNE_DB_URL": "postgresql://postgres:Sup3rS3cret@127.0.0.1:1/test",
        "FINETUNE_DB_RETRY_SECONDS": "0.5",
    }
    code = main(command, environ=environ)
    captured = capsys.readouterr()
    assert code == 1
    # A run reports its retries while it waits for the database; nothing else happened.
    assert {json.loads(line)["event"] for line in captured.out.splitlines()} <= {"database_retry"}
    assert len(captured.err.splitlines()) == 1 and "database unreachable" in captured.err
    assert "Sup3rS3cret" not in captured.err and "postgres:***@127.0.0.1:1" in captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_refused_credentials_exit_2_at_once_as_a_configuration_error(
    migrated_db: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    dsn = migrated_db.replace("postgres@", "no_such_role:Sup3rS3cret@", 1)
    # A long budget: a retry loop would show as minutes, a refusal returns at once.
    code = main(command, environ={"FINETUNE_DB_URL": dsn, "FINETUNE_DB_RETRY_SECONDS": "600"})
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "finetune: error: database refused the connection (postgresql://no_such_role:***@"
    )
    assert 'role "no_such_role" does not exist' in lines[0] and "configuration error" in lines[0]
    assert "unreachable" not in lines[0] and "Sup3rS3cret" not in lines[0]
    assert _total_rows(migrated_db) == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_a_malformed_database_uri_exits_2_without_its_password(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code = main(command, environ={"FINETUNE_DB_URL": "host=db password=Sup3rS3cret dbname"})
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        "finetune: error: the database URI is not a valid libpq connection string: "
        'missing "=" after "dbname" in connection info string\n'
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("FINETUNE_DB_STATEMENT_TIMEOUT_SECONDS", "soon", id="statement-timeout"),
        pytest.param("FINETUNE_DB_LOCK_TIMEOUT_SECONDS", "-5", id="lock-timeout"),
        pytest.param("FINETUNE_DB_RETRY_SECONDS", "2min", id="retry-budget"),
    ],
)
def test_bad_database_settings_exit_2_naming_the_variable(
    migrated_db: str, capsys: pytest.CaptureFixture[str], command: list[str], name: str, value: str
) -> None:
    code = main(command, environ={"FINETUNE_DB_URL": migrated_db, name: value})
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == f"finetune: error: {name} must be a number of seconds >= 0 (0 turns it off), got {value!r}\n"
    assert _total_rows(migrated_db) == 0


def test_run_on_an_unmigrated_database_exits_1_with_one_line(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_make_argv(**{"--cryptos": "BTC"}), environ={"FINETUNE_DB_URL": empty_db}) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("finetune: error: database error before the run started: ")
    assert 'relation "finetune_runs" does not exist' in captured.err and len(captured.err.splitlines()) == 1


def test_migrate_applies_then_reports_nothing_to_do(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"], environ={"FINETUNE_DB_URL": empty_db}) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == [
        m.version for m in load_migrations(default_migrations_dir())
    ]
    assert main(["migrate"], environ={"FINETUNE_DB_URL": empty_db}) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == []


def test_migrate_behind_a_lock_past_the_lock_timeout_is_one_line_exit_1(
    migrated_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))  # another migrate, still running
        code = main(["migrate"], environ={"FINETUNE_DB_URL": migrated_db, "FINETUNE_DB_LOCK_TIMEOUT_SECONDS": "0.3"})
    assert code == 1
    assert capsys.readouterr().err == (
        "finetune: error: migrate failed: database lock_timeout of 0.3 s exceeded "
        "(FINETUNE_DB_LOCK_TIMEOUT_SECONDS): canceling statement due to lock timeout\n"
    )


def test_migrate_refusal_is_one_line_exit_1(empty_db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "V1_bad.sql").write_text("SELECT 1;")
    assert main(["migrate", "--dir", str(tmp_path)], environ={"FINETUNE_DB_URL": empty_db}) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "misnamed migration file V1_bad.sql" in err


def test_no_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_subprocess_run_on_file_data(migrated_db: str, data_dir: Path) -> None:
    """The real entry point, as the pod runs it: env configuration, JSON lines, exit code."""
    env = {
        **os.environ,
        "FINETUNE_DB_URL": migrated_db,
        "FINETUNE_DATA_URI": data_dir.as_uri(),
        "FINETUNE_ATTEMPT": "3",
        "FINETUNE_PROFILE": "STANDARD",
    }
    argv = _make_argv(**{"--cryptos": "BTC", "--cost-bps": "10,15"})
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 0
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_results").fetchone()[0] == 2 * 2
        assert conn.execute("SELECT count(*) FROM finetune_baselines").fetchone()[0] == 3 * 2 * 2
        assert conn.execute("SELECT attempt, profile, status FROM finetune_run_factors").fetchone() == (
            3,
            "STANDARD",
            "done",
        )
        (params,) = conn.execute("SELECT params FROM finetune_runs").fetchone()
    assert params["data_uri"] == data_dir.as_uri()


# --- calendar-correct bars, checked from outside (issue 8 item 1) ------------------------------

N_BARS = 1200  # hourly bars per file, the last one stamped at as-of (still open then)
HOLE = (-20, -19, -18)  # three hours inside the newest 48-bar test window
TEN_DAYS = tuple(range(-500, -260))  # 240 bars, inside the span a 2-fold run of 300 training bars uses
STALE_TAIL = tuple(range(-121, 0))  # the feed stops 5 days (+ the open bar) before as-of


def _subprocess_run(argv: list[str], dsn: str, data_uri: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FINETUNE_DB_URL": dsn, "FINETUNE_DATA_URI": data_uri}
    return subprocess.run(
        [sys.executable, "-m", "finetune", *argv], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _market_dir(tmp_path: Path, *, eth_drop: Sequence[int]) -> Path:
    _write_ohlcv(tmp_path, "BTC", N_BARS)
    _write_ohlcv(tmp_path, "ETH", N_BARS, drop=eth_drop)
    return tmp_path


def _windows(dsn: str, table: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT crypto, fold_id, test_start, test_end, n_bars FROM {table}").fetchall()


def test_subprocess_fills_a_three_hour_hole_and_records_it(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=HOLE).as_uri()
    proc = _subprocess_run(_make_argv(**{"--cryptos": "BTC,ETH"}), migrated_db, data_uri)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(migrated_db) as conn:
        filled = dict(
            ((crypto, fold), n)
            for crypto, fold, n in conn.execute("SELECT crypto, fold_id, n_filled_bars FROM finetune_results")
        )
        (params,) = conn.execute("SELECT params FROM finetune_runs").fetchone()
    assert filled == {("BTC", 0): 0, ("BTC", 1): 0, ("ETH", 0): 0, ("ETH", 1): 3}
    rows = _windows(migrated_db, "finetune_results") + _windows(migrated_db, "finetune_baselines")
    assert len(rows) == 4 + 12
    for _, _, start, end, n_bars in rows:
        assert end - start == (n_bars - 1) * timedelta(hours=1)  # bars are hours, holes included
    newest = {end for _, fold, _, end, _ in rows if fold == 1}
    # the bar stamped at as-of opens then: it is excluded, the newest window ends an hour before
    assert newest == {datetime(2026, 6, 6, 23, tzinfo=UTC)}
    assert params["bars"] == {
        "gaps": "fill",
        "max_gap_bars": 6,
        "bar_label": "open",
        "max_stale_bars": 24,
        "bar_interval": None,
    }


def test_btc_features_count_the_bars_filled_in_btc_too(migrated_db: str, tmp_path: Path) -> None:
    # The hole is in BTC only: ETH's btc_features read BTC's filled bars, base_features do not.
    _write_ohlcv(tmp_path, "BTC", N_BARS, drop=HOLE)
    _write_ohlcv(tmp_path, "ETH", N_BARS)
    for factor in ("btc_features", "base_features"):
        argv = _make_argv(**{"--cryptos": "ETH", "--factor": factor, "--run-id": f"run-{factor}"})
        proc = _subprocess_run(argv, migrated_db, tmp_path.as_uri())
        assert proc.returncode == 0, proc.stderr

    with psycopg.connect(migrated_db) as conn:
        filled = dict(
            ((factor, fold), n)
            for factor, fold, n in conn.execute(
                "SELECT factor, fold_id, n_filled_bars FROM finetune_results WHERE crypto = 'ETH'"
            )
        )
    assert filled == {("btc_features", 0): 0, ("btc_features", 1): 3, ("base_features", 0): 0, ("base_features", 1): 0}


def test_a_run_id_registered_on_other_data_is_refused_and_nothing_written(migrated_db: str) -> None:
    argv = _make_argv(**{"--cryptos": "ETH", "--factor": "btc_features"})
    first = _subprocess_run(argv, migrated_db, "synthetic://")
    assert first.returncode == 0, first.stderr
    with psycopg.connect(migrated_db) as conn:
        before = conn.execute("SELECT id, net_return, updated_at FROM finetune_results ORDER BY id").fetchall()

    other = _subprocess_run(argv, migrated_db, "synthetic://random-walk")

    assert other.returncode == 2
    assert other.stderr.strip() == (
        "finetune: error: run run-1 was registered on 'synthetic://', this pod reads 'synthetic://random-walk': "
        "other data is another run (give it its own --run-id)"
    )
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT id, net_return, updated_at FROM finetune_results ORDER BY id").fetchall() == before
        assert conn.execute("SELECT status FROM finetune_run_factors").fetchall() == [("done",)]
    # the same data again is the same run: an idempotent rerun
    assert _subprocess_run(argv, migrated_db, "synthetic://").returncode == 0


def test_subprocess_refuses_a_ten_day_hole_in_the_span_and_writes_nothing(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=TEN_DAYS).as_uri()
    proc = _subprocess_run(_make_argv(**{"--cryptos": "BTC,ETH"}), migrated_db, data_uri)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    first_missing = (pd.Timestamp(AS_OF) + (TEN_DAYS[0] + 1) * pd.Timedelta(hours=1)).isoformat()
    assert f"symbol ETH: a gap of 240 missing bars (10d) starting {first_missing} inside the span" in proc.stderr
    assert _total_rows(migrated_db) == 0


def test_subprocess_refuses_a_feed_that_stopped_five_days_before_as_of(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=STALE_TAIL).as_uri()
    proc = _subprocess_run(_make_argv(**{"--cryptos": "BTC,ETH"}), migrated_db, data_uri)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "symbol ETH: stale data: its last usable bar 2026-06-01T23:00:00+00:00 closes 5d" in proc.stderr
    assert f"before as-of {pd.Timestamp(AS_OF).isoformat()}" in proc.stderr
    assert _total_rows(migrated_db) == 0


def test_a_hole_far_before_the_span_is_not_the_runs_concern(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=tuple(range(10, 250))).as_uri()  # 10 days, 950 bars before as-of
    assert main(_make_argv(**{"--data-uri": data_uri}), environ={"FINETUNE_DB_URL": migrated_db}) == 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"--gaps": "refuse"}, "symbol ETH: a gap of 3 missing bars (3h) starting", id="refuse-any-gap"),
        pytest.param({"--max-gap-bars": "2"}, "symbol ETH: a gap of 3 missing bars (3h) starting", id="gap-above-max"),
        pytest.param({"--as-of": "now"}, "not an ISO timestamp: 'now'", id="as-of-now"),
        pytest.param({"--as-of": "today"}, "never the wall clock", id="as-of-today"),
        pytest.param({"--gaps": "skip"}, "argument --gaps: invalid choice: 'skip'", id="bad-gaps"),
        pytest.param({"--bar-label": "mid"}, "argument --bar-label: invalid choice: 'mid'", id="bad-label"),
        pytest.param({"--max-stale-bars": "-1"}, "argument --max-stale-bars: expected an integer >= 0", id="bad-stale"),
        pytest.param({"--bar-interval": "hourly"}, "not a bar interval: 'hourly'", id="bad-interval"),
        pytest.param(
            {"--bar-interval": "30min"},
            "--bar-interval 30min is not the data's bar interval",
            id="interval-not-the-datas",
        ),
    ],
)
def test_bar_refusals_exit_2_with_one_line(
    migrated_db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=HOLE).as_uri()
    argv = _make_argv(**{"--data-uri": data_uri, "--cryptos": "BTC,ETH", **overrides})
    code = main(argv, environ={"FINETUNE_DB_URL": migrated_db})
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1 and expected in captured.err, captured.err
    assert _total_rows(migrated_db) == 0


def test_gaps_rows_takes_the_rows_as_given(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=HOLE).as_uri()
    argv = _make_argv(**{"--data-uri": data_uri, "--cryptos": "ETH", "--gaps": "rows"})
    assert main(argv, environ={"FINETUNE_DB_URL": migrated_db}) == 0
    windows = {fold: (start, end, n) for _, fold, start, end, n in _windows(migrated_db, "finetune_results")}
    start, end, n_bars = windows[1]
    assert n_bars == 48 and end - start == (48 - 1 + len(HOLE)) * timedelta(hours=1)  # rows, not hours
    with psycopg.connect(migrated_db) as conn:
        assert {n for (n,) in conn.execute("SELECT n_filled_bars FROM finetune_results")} == {0}


def test_gaps_rows_with_close_labels_is_the_behaviour_before_calendar_bars(migrated_db: str, tmp_path: Path) -> None:
    # Rows as given, the row stamped at as-of used: the newest window is the file's last 48 rows.
    data_dir = _market_dir(tmp_path, eth_drop=HOLE)
    argv = _make_argv(**{"--data-uri": data_dir.as_uri(), "--cryptos": "ETH", "--gaps": "rows", "--bar-label": "close"})
    assert main(argv, environ={"FINETUNE_DB_URL": migrated_db}) == 0
    rows = pd.read_csv(data_dir / "ETH.csv", parse_dates=["timestamp"])["timestamp"]
    windows = {fold: (start, end, n) for _, fold, start, end, n in _windows(migrated_db, "finetune_results")}
    assert windows[1] == (rows.iloc[-48].to_pydatetime(), rows.iloc[-1].to_pydatetime(), 48)
    assert windows[0] == (rows.iloc[-96].to_pydatetime(), rows.iloc[-49].to_pydatetime(), 48)


def test_close_labelled_bars_use_the_bar_stamped_at_as_of(migrated_db: str, tmp_path: Path) -> None:
    data_uri = _market_dir(tmp_path, eth_drop=()).as_uri()
    argv = _make_argv(**{"--data-uri": data_uri, "--cryptos": "BTC", "--bar-label": "close"})
    assert main(argv, environ={"FINETUNE_DB_URL": migrated_db}) == 0
    newest = max(end for _, _, _, end, _ in _windows(migrated_db, "finetune_results"))
    assert newest == datetime(2026, 6, 7, tzinfo=UTC)


def test_sharpe_is_annualised_by_the_datas_interval(migrated_db: str, tmp_path: Path) -> None:
    # The same closes stamped hourly and daily: identical bars, folds and returns; only the
    # annualisation differs, by sqrt(8760 / 365) = sqrt(24).
    frame = synthetic_ohlcv("ETH").loc[:AS_OF].iloc[-N_BARS:]  # the model trades in one of its 4 folds
    sharpes = {}
    for interval in ("h", "D"):
        directory = tmp_path / interval
        directory.mkdir()
        stamped = frame.set_axis(pd.date_range("2020-01-01", periods=N_BARS, freq=interval, tz="UTC"))
        stamped.rename(columns=str.capitalize).to_csv(directory / "ETH.csv", index_label="timestamp")
        as_of = stamped.index[-1] + pd.Timedelta(1, unit=interval)
        argv = _make_argv(
            **{
                "--run-id": f"run-{interval}",
                "--cryptos": "ETH",
                "--as-of": as_of.isoformat(),
                "--n-folds": "4",
                "--data-uri": directory.as_uri(),
            }
        )
        assert main(argv, environ={"FINETUNE_DB_URL": migrated_db}) == 0
        with psycopg.connect(migrated_db) as conn:
            sharpes[interval] = conn.execute(
                "SELECT fold_id, net_return, sharpe FROM finetune_results WHERE run_id = %s ORDER BY fold_id",
                (f"run-{interval}",),
            ).fetchall()
    assert [(fold, ret) for fold, ret, _ in sharpes["h"]] == [(fold, ret) for fold, ret, _ in sharpes["D"]]
    assert any(sharpe != 0 for _, _, sharpe in sharpes["h"])  # at least one fold trades
    for (_, _, hourly), (_, _, daily) in zip(sharpes["h"], sharpes["D"], strict=False):
        assert hourly == pytest.approx(daily * math.sqrt(24), rel=1e-9)
