"""Tests of finetune_sweep.report: the model-vs-baselines table and the end-of-run report."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from finetune_rows import AS_OF, PLAN, RUN_ID, record_attempt, register_sweep, seed_complete_run
from finetune_sweep import findings, report
from finetune_sweep.pods import spec as pods
from finetune_sweep.settings import SizingPolicy
from finetune_sweep.sizing.profiles import PROFILES
from finetune_sweep.sizing.recommend import StartChoice
from finetune_sweep.sweep.params import validate_params
from finetune_sweep.sweep.plan import plan_pods

GI = 2**30


def _make_summary_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "factor": "base_features",
        "crypto": "BTC",
        "cost_bps": 10,
        "slippage_bps": 0,
        "folds": 4,
        "model": 0.0123,
        "buy_and_hold": -0.02,
        "random": 0.001,
        "naive": 0.0,
        "percentile": 0.735,
        "random_percentile": 0.64,
        "beats_buy_and_hold": 3,
        "missing_baselines": 0,
    }
    row.update(overrides)
    return row


def test_format_summary_is_a_readable_table() -> None:
    text = report.format_summary(
        [_make_summary_row(), _make_summary_row(crypto="ETH", model=None, beats_buy_and_hold=0)]
    )

    header, first, second = text.splitlines()
    assert header.split() == [
        "factor",
        "crypto",
        "cost",
        "slip",
        "rows",
        "model",
        "buy&hold",
        "random",
        "naive",
        "matched",
        "pctl",
        "rnd",
        "pctl",
        "beats",
        "b&h",
    ]
    assert first.split() == [
        "base_features",
        "BTC",
        "10",
        "0",
        "4",
        "+1.23%",
        "-2.00%",
        "+0.10%",
        "+0.00%",
        "73.5%",
        "64.0%",
        "3/4",
    ]
    assert second.split()[5] == "-"
    assert len(first) == len(second), "fixed width"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([], "no model rows for this run", id="empty"),
        pytest.param(
            [_make_summary_row(missing_baselines=2)], "2 model row(s) lack a same-basis baseline", id="missing"
        ),
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

    text = report.build_report(migrated_db, RUN_ID, policy=SizingPolicy())

    findings_section, rest = text.split("\n\nModel vs same-basis baselines")
    summary, run_sizing, advice = rest.split("\n\nSizing")
    # No shift-test p-values on these rows: nothing is tested, and it says so.
    assert "0 of 0 groups are findings at FDR 0.1" in findings_section
    assert "8 group(s) NOT TESTED" in findings_section
    # 2 factors x 2 cryptos x 2 costs, each over 2 folds and beating buy-and-hold in both.
    model_lines = summary.splitlines()[2:]
    assert len(model_lines) == 8
    assert all(line.split()[4] == "2" and line.split()[-1] == "2/2" for line in model_lines)
    assert (
        run_sizing.splitlines()[0]
        == " of this run (map profile, the profile it started on and why, sizing mode history)"
    )
    assert [line.split()[:3] for line in run_sizing.splitlines()[2:]] == [
        ["base_features", "STANDARD", "STANDARD"],
        ["l2_features", "STANDARD", "STANDARD"],
    ]
    assert advice.startswith(" advice (recorded pod attempts: each factor's last 8 runs within 90 days;")
    sizing_line = next(line for line in advice.splitlines() if line.startswith("l2_features") and "FLAG" in line)
    assert "MEDIUM" in sizing_line
    assert "advice: l2_features starts its next run on MEDIUM (history; map STANDARD)" in advice


def test_the_run_sizing_shows_map_chosen_reason_and_this_registrations_attempts(migrated_db: str) -> None:
    params = validate_params(PLAN)
    reason = "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM"
    choices = {"l2_features": StartChoice("l2_features", "STANDARD", "MEDIUM", reason)}
    entries = [
        pods.with_profile(e, profile=PROFILES["MEDIUM"]) if e["factor"] == "l2_features" else e
        for e in plan_pods(params, run_id=RUN_ID, as_of=AS_OF)
    ]

    def register(airflow_run_id: str) -> None:
        register_sweep(migrated_db, params, entries, choices=choices, airflow_run_id=airflow_run_id)

    def attempt(airflow_run_id: str, factor: str, attempt: int, profile: str, exit_reason: str) -> None:
        record_attempt(
            migrated_db,
            run_id=RUN_ID,
            factor=factor,
            airflow_run_id=airflow_run_id,
            attempt=attempt,
            profile=profile,
            memory_limit_bytes=PROFILES[profile].memory_bytes,
            peak_memory_bytes=GI,
            exit_reason=exit_reason,
        )

    # An earlier Airflow run of the same sweep, then this one, registered twice (the run was cleared):
    # only the attempts after the latest registration are this run's.
    register("manual__earlier")
    attempt("manual__earlier", "l2_features", 1, "STANDARD", "OOMKilled")
    register("manual__now")
    attempt("manual__now", "l2_features", 1, "HEAVY", "error")
    register("manual__now")
    attempt("manual__now", "l2_features", 2, "MEDIUM", "OOMKilled")
    attempt("manual__now", "l2_features", 3, "HEAVY", "completed")
    attempt("manual__now", "base_features", 2, "STANDARD", "completed")
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "UPDATE finetune_run_factors SET status = 'done', profile = 'HEAVY', peak_memory_bytes = %s, "
            "memory_limit_bytes = %s WHERE factor = 'l2_features'",
            (GI, 24 * GI),
        )

    rows = {row["factor"]: row for row in report.fetch_run_sizing(migrated_db, RUN_ID)}
    table = report.format_run_sizing(list(rows.values()))

    assert rows["l2_features"]["chosen_profile"] == "MEDIUM", "register's choice, though the ladder moved on"
    assert rows["l2_features"]["attempts"] == "MEDIUM OOMKilled, HEAVY completed"
    assert rows["base_features"]["attempts"] == "STANDARD completed"
    header, base, l2 = table.splitlines()
    assert header.split() == ["factor", "map", "chosen", "status", "peak", "limit", "attempts", "reason"]
    assert base.split() == [
        "base_features",
        "STANDARD",
        "STANDARD",
        "planned",
        "-",
        "8.00Gi",
        "STANDARD",
        "completed",
        "map",
    ]
    assert l2.split()[:6] == ["l2_features", "STANDARD", "MEDIUM", "done", "1.00Gi", "24.00Gi"]
    assert l2.endswith(reason)
    assert report.format_run_sizing([]) == "no factors registered for this run"


def _seed_tested_run(dsn: str) -> None:
    """The complete run with both tests' p-values (BTC times the market, ETH does not; profit at 10
    bps, not at 30) and seed percentiles."""
    seed_complete_run(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE finetune_results SET perm_p_value = CASE crypto WHEN 'BTC' THEN 0.002 ELSE 0.6 END, "
            "perm_n_shifts = 999, profit_p_value = CASE cost_bps WHEN 10 THEN 0.001 ELSE 0.6 END, "
            "profit_vs_buy_and_hold_p_value = 0.3, matched_percentile = 0.97, random_percentile = 0.9 + 0.05 * fold_id"
        )


def test_build_report_prints_the_findings_first(migrated_db: str) -> None:
    _seed_tested_run(migrated_db)
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    text = report.build_report(migrated_db, RUN_ID, policy=SizingPolicy(), findings_state="success")

    findings_section, rest = text.split("\n\nModel vs same-basis baselines")
    title, headline, header, *found = findings_section.splitlines()
    assert title.startswith(f"Findings, run {RUN_ID}")
    assert headline.startswith("2 of 8 groups are findings at FDR 0.1 (timing and profit after costs")
    floor = findings.p_value_floor([999, 999])
    assert f"timing edge in 2 of 4 distinct models; p-value floor {floor:.3g}" in headline
    assert header.split()[:11] == [
        "factor",
        "crypto",
        "cost",
        "slip",
        "folds",
        "model",
        "edge",
        "b&h",
        "timing",
        "p",
        "timing",
    ]
    # the two findings (BTC at 10 bps), then BTC's timing edges that are not profitable at 30 bps
    assert len(found) == 4 and all(line.split()[1] == "BTC" for line in found)
    assert [line.split()[2] for line in found] == ["10", "10", "30", "30"]
    assert all("finding at 10 bps" in line for line in found[:2])
    assert all("timing edge, profit at 30 bps not significant" in line for line in found[2:])
    # Fisher over two folds of 0.002: P (1 - ln P) with P = 4e-6; matched percentile 97 %.
    assert found[0].split()[7] == f"{4e-6 * (1 - math.log(4e-6)):.2g}"
    assert found[0].split()[5:7] == ["+1.00%", "+0.50%"]
    assert "97%" in found[0].split()
    # The per-group table: the matched percentile (0.97), then the random one over the folds (0.90 and 0.95).
    model_lines = rest.split("\n\nSizing")[0].splitlines()[2:]
    assert all(line.split()[9:11] == ["97.0%", "92.5%"] for line in model_lines)


def test_build_report_with_no_finding_says_so(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    with psycopg.connect(migrated_db) as conn:
        conn.execute("UPDATE finetune_results SET perm_p_value = 0.5, perm_n_shifts = 999, profit_p_value = 0.5")
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    text = report.build_report(migrated_db, RUN_ID, policy=SizingPolicy(), findings_state="success")

    assert text.splitlines()[1].startswith("0 of 8 groups are findings at FDR 0.1: no finding in this run")
    assert text.splitlines()[2] == ""


def test_a_run_whose_shifts_could_not_find_anything_says_no_finding_was_possible(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    with psycopg.connect(migrated_db) as conn:
        conn.execute("UPDATE finetune_results SET perm_p_value = 0.1, perm_n_shifts = 9, profit_p_value = 0.01")
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    text = report.build_report(migrated_db, RUN_ID, policy=SizingPolicy(), findings_state="success")

    assert "NO FINDING WAS POSSIBLE, a lone edge is found among at most 1 models and this run has 4" in text


def test_stored_findings_are_not_shown_when_this_runs_step_did_not_succeed(migrated_db: str) -> None:
    _seed_tested_run(migrated_db)
    findings.run_findings(migrated_db, run_id=RUN_ID, fdr_q=0.1)

    text = report.build_report(migrated_db, RUN_ID, policy=SizingPolicy(), findings_state="upstream_failed")

    assert text.splitlines()[1] == (
        "no findings: the findings step did not succeed in this run (findings: upstream_failed); "
        "it runs only after check_baselines passed"
    )
    assert "groups are findings" not in text


def test_format_findings_shows_older_rows_as_not_tested_and_says_when_the_list_is_cut() -> None:
    # a findings row stored before V010: timing only, no profit test, no verdict
    row = {
        "factor": "btc_features",
        "crypto": "ETH",
        "cost_bps": 0,
        "slippage_bps": 0,
        "n_folds": 4,
        "mean_model_return": 0.0312,
        "mean_edge_vs_buy_and_hold": None,
        "p_value": 0.00012,
        "q_value": 0.0123,
        "verdict": "timing only (before V010): profit not tested",
    }

    text = report.format_findings([row], n_groups=36, n_discovered=3, fdr_q=0.05, combine_method="fisher")

    headline, _, line = text.splitlines()
    assert headline.startswith("3 of 36 groups are findings at FDR 0.05")
    assert line.split()[:9] == ["btc_features", "ETH", "0", "0", "4", "+3.12%", "-", "0.00012", "0.0123"]
    assert line.split()[9:13] == ["not", "tested", "not", "tested"]
    assert "timing only (before V010): profit not tested" in line and line.split()[-1] == "-"
    many = report.format_findings(
        [row] * report.MAX_LISTED_FINDINGS, n_groups=500, n_discovered=300, fdr_q=0.05, combine_method="fisher"
    )
    assert many.splitlines()[-1] == "... listed the first 100 (table finetune_findings has them all)"


def test_print_run_summary_finds_the_run_by_its_as_of(migrated_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_complete_run(migrated_db)

    report.print_run_summary(
        dsn=migrated_db,
        dag_id="finetune_sweep",
        logical_date="2026-06-07T00:00:00+00:00",
        profiles_json=None,
        sizing_json=None,
        policy=SizingPolicy(),
    )
    found = capsys.readouterr().out
    report.print_run_summary(
        dsn=migrated_db,
        dag_id="finetune_sweep",
        logical_date="2026-06-14T00:00:00+00:00",
        profiles_json=None,
        sizing_json=None,
        policy=SizingPolicy(),
    )
    missing = capsys.readouterr().out

    assert f"run {RUN_ID}" in found and "+1.00%" in found
    assert missing.startswith("no finetune run of finetune_sweep as of 2026-06-14")


def test_print_run_summary_on_an_empty_database(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    report.print_run_summary(
        dsn=empty_db,
        dag_id="finetune_sweep",
        logical_date="2026-06-07T00:00:00+00:00",
        profiles_json=None,
        sizing_json=None,
        policy=SizingPolicy(),
    )

    assert capsys.readouterr().out.startswith("no finetune run")


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param(
            {"run_factor_0": "success", "run_factor_1": "success", "check_baselines": "success"}, [], id="all-succeeded"
        ),
        pytest.param(
            {"run_factor_0": "success", "run_factor_1": "failed", "check_baselines": "failed"},
            ["check_baselines: failed", "run_factor_1: failed"],
            id="a-pod-and-the-gate-failed",
        ),
        pytest.param(
            {"run_factor": "upstream_failed", "check_baselines": "failed"},
            ["check_baselines: failed", "run_factor: upstream_failed"],
            id="plan-failed",
        ),
        pytest.param(
            {"run_factor_0": "success", "check_baselines": None}, ["check_baselines: None"], id="gate-never-ran"
        ),
        pytest.param(
            {"run_factor_0": "success", "check_baselines": "success", "findings": "failed"},
            ["findings: failed"],
            id="findings-failed",
        ),
    ],
)
def test_unsuccessful_tasks_decide_the_verdict(states: dict[str, str | None], expected: list[str]) -> None:
    assert report.unsuccessful_tasks(states) == expected
