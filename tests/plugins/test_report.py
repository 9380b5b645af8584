"""Tests of finetune_sweep.report: the model-vs-baselines table and the end-of-run report."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from finetune_rows import RUN_ID, seed_complete_run

from finetune_sweep import report


def _make_summary_row(**overrides: Any) -> dict[str, Any]:
    row = {"factor": "base_features", "crypto": "BTC", "cost_bps": 10, "slippage_bps": 0, "rows": 4, "model": 0.0123,
           "buy_and_hold": -0.02, "random": 0.001, "naive": 0.0, "beats_buy_and_hold": 3, "missing_baselines": 0}
    row.update(overrides)
    return row


def test_format_summary_is_a_readable_table() -> None:
    text = report.format_summary([_make_summary_row(), _make_summary_row(crypto="ETH", model=None, beats_buy_and_hold=0)])

    header, first, second = text.splitlines()
    assert header.split() == ["factor", "crypto", "cost", "slip", "rows", "model", "buy&hold", "random", "naive", "beats", "b&h"]
    assert first.split() == ["base_features", "BTC", "10", "0", "4", "+1.23%", "-2.00%", "+0.10%", "+0.00%", "3/4"]
    assert second.split()[5] == "-"
    assert len(first) == len(second), "fixed width"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([], "no model rows for this run", id="empty"),
        pytest.param([_make_summary_row(missing_baselines=2)], "2 model row(s) lack a same-basis baseline", id="missing"),
    ],
)
def test_format_summary_edge_cases(rows: list[dict[str, Any]], expected: str) -> None:
    assert expected in report.format_summary(rows)


def test_build_report_on_a_real_run(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes, peak_memory_bytes) "
            "VALUES (%s, 'l2_features', 1, 'STANDARD', %s, %s)",
            (RUN_ID, 8 * 2**30, 7 * 2**30),
        )

    text = report.build_report(migrated_db, RUN_ID)

    summary, sizing_table = text.split("\n\nSizing")
    # 2 factors x 2 cryptos x 2 costs, each over 2 folds and beating buy-and-hold in both.
    model_lines = summary.splitlines()[2:]
    assert len(model_lines) == 8
    assert all(line.split()[4] == "2" and line.split()[-1] == "2/2" for line in model_lines)
    sizing_line = next(line for line in sizing_table.splitlines() if line.startswith("l2_features") and "FLAG" in line)
    assert "MEDIUM" in sizing_line


def test_print_run_summary_finds_the_run_by_its_as_of(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_complete_run(migrated_db)

    report.print_run_summary(dsn=migrated_db, dag_id="finetune_sweep", logical_date="2026-06-07T00:00:00+00:00")
    found = capsys.readouterr().out
    report.print_run_summary(dsn=migrated_db, dag_id="finetune_sweep", logical_date="2026-06-14T00:00:00+00:00")
    missing = capsys.readouterr().out

    assert f"run {RUN_ID}" in found and "+1.00%" in found
    assert missing.startswith("no finetune run of finetune_sweep as of 2026-06-14")


def test_print_run_summary_on_an_empty_database(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    report.print_run_summary(dsn=empty_db, dag_id="finetune_sweep", logical_date="2026-06-07T00:00:00+00:00")

    assert capsys.readouterr().out.startswith("no finetune run")


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param({"run_factor_0": "success", "run_factor_1": "success", "check_baselines": "success"}, [],
                     id="all-succeeded"),
        pytest.param({"run_factor_0": "success", "run_factor_1": "failed", "check_baselines": "failed"},
                     ["check_baselines: failed", "run_factor_1: failed"], id="a-pod-and-the-gate-failed"),
        pytest.param({"run_factor": "upstream_failed", "check_baselines": "failed"},
                     ["check_baselines: failed", "run_factor: upstream_failed"], id="plan-failed"),
        pytest.param({"run_factor_0": "success", "check_baselines": None}, ["check_baselines: None"],
                     id="gate-never-ran"),
    ],
)
def test_unsuccessful_tasks_decide_the_verdict(states: dict[str, str | None], expected: list[str]) -> None:
    assert report.unsuccessful_tasks(states) == expected
