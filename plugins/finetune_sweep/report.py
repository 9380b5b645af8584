"""End-of-run report: the findings, model vs same-basis baselines per factor/crypto/cost, sizing.

Printed to the task log (the ``report`` task), in the order a research lead reads it: first
"N of M groups are findings at FDR q" and the table of the findings (``finetune_findings``, see
``finetune_sweep.findings``), then the per-group model-vs-baselines table (with the model's
percentile among the random seeds), then the run's sizing (per factor the map profile, the profile
the run started on and why: ``register`` chose it from the history) and the recommender's advice
over the same history window -- so "which factor really carries an edge, on which crypto, at which
cost?", "did fine-tuning beat buy-and-hold at 30 bps?" and "is any factor close to its memory
limit?" are one click away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from finetune_sweep import findings
from finetune_sweep.db.attempts import fetch_history
from finetune_sweep.db.connect import connect
from finetune_sweep.gate import same_basis_join
from finetune_sweep.sizing.profiles import load_profiles, load_sizing
from finetune_sweep.sizing.quantities import format_bytes
from finetune_sweep.sizing.recommend import describe_window, format_recommendations, recommend

if TYPE_CHECKING:
    import psycopg

    from finetune_sweep.settings import SizingPolicy

# A model row's three baselines, joined on its full basis: key, strategy and identical window.
SAME_BASIS_JOINS = "\n".join(
    (same_basis_join("bh", "buy_and_hold"), same_basis_join("rnd", "random"), same_basis_join("nv", "naive"))
)
# A fold is "won" when the model beats every baseline of its basis.
MODEL_WON = "m.net_return > bh.net_return AND m.net_return > rnd.net_return AND m.net_return > nv.net_return"

# Every (factor, crypto, cost basis) of a run: means over its folds. The report's table and the
# UI's run tab (``ui.queries.GROUPS_SQL``) and its rows.csv/json read this one query.
SUMMARY_SQL = f"""
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps,
       count(*)::integer AS folds,
       avg(m.net_return) AS model,
       avg(bh.net_return) AS buy_and_hold,
       avg(rnd.net_return) AS random,
       avg(rnd.seed_p05) AS random_p05,
       avg(rnd.seed_p95) AS random_p95,
       avg(nv.net_return) AS naive,
       avg(m.matched_percentile) AS percentile,
       avg(m.random_percentile) AS random_percentile,
       avg(m.exposure) AS exposure,
       count(*) FILTER (WHERE m.net_return > bh.net_return)::integer AS beats_buy_and_hold,
       count(*) FILTER (WHERE {MODEL_WON})::integer AS folds_won,
       count(*) FILTER (WHERE bh.id IS NULL OR rnd.id IS NULL OR nv.id IS NULL)::integer AS missing_baselines
FROM finetune_results AS m
{SAME_BASIS_JOINS}
WHERE m.run_id = %(run_id)s
GROUP BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
"""

_COLUMNS = (
    ("factor", "factor"),
    ("crypto", "crypto"),
    ("cost_bps", "cost"),
    ("slippage_bps", "slip"),
    ("folds", "rows"),
    ("model", "model"),
    ("buy_and_hold", "buy&hold"),
    ("random", "random"),
    ("naive", "naive"),
    ("percentile", "matched pctl"),
    ("random_percentile", "rnd pctl"),
    ("beats_buy_and_hold", "beats b&h"),
)


def _cell(key: str, value: Any, row: Mapping[str, Any]) -> str:
    if value is None:
        return "not tested" if key == "percentile" else "-"
    if key in ("model", "buy_and_hold", "random", "naive"):
        return "nan" if math.isnan(value) else f"{value:+.2%}"
    if key in ("percentile", "random_percentile"):
        # mean over the folds of the share of the model's own shifted copies (matched), or of the
        # random seeds, whose net return is below the model's (ties half)
        return f"{value:.1%}"
    if key == "beats_buy_and_hold":
        return f"{value}/{row['folds']}"
    return str(value)


def fixed_width(table: Sequence[Sequence[str]], *, left: int = 2) -> list[str]:
    """Lines of a text table: the first ``left`` columns left-aligned, the others right-aligned.

    :param table: header row then body rows, all of the same length.
    :param left: how many leading columns are names (left-aligned).
    """
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i >= left else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        )
        for line in table
    ]


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width model-vs-baselines table (mean net returns over folds), one line per group.

    :param rows: rows of :data:`SUMMARY_SQL` (as mappings).
    """
    if not rows:
        return "no model rows for this run"
    lines = fixed_width(
        [tuple(title for _, title in _COLUMNS)]
        + [tuple(_cell(key, row.get(key), row) for key, _ in _COLUMNS) for row in rows]
    )
    missing = sum(int(row.get("missing_baselines") or 0) for row in rows)
    if missing:
        lines.append(f"{missing} model row(s) lack a same-basis baseline (see check_baselines)")
    return "\n".join(line.rstrip() for line in lines)


def fetch_summary(dsn: str, run_id: str) -> list[dict[str, Any]]:
    """The summary rows of one run.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    """
    from psycopg.rows import dict_row

    with connect(dsn, row_factory=dict_row) as conn:
        return list(conn.execute(SUMMARY_SQL, {"run_id": run_id}).fetchall())


# The run's sizing: per factor the map profile, the profile register chose and why, and what this
# registration's attempts ran on. The chosen profile is the first attempt's of the latest
# registration (the manifest's `profile` follows the ladder), else the manifest's (no pod yet).
RUN_SIZING_SQL = """
WITH registration AS (
    SELECT airflow_run_id, registered_at
    FROM finetune_airflow_runs
    WHERE run_id = %(run_id)s
    ORDER BY registered_at DESC, airflow_run_id DESC
    LIMIT 1
),
this_round AS (
    SELECT a.factor, a.attempt, a.profile, a.exit_reason
    FROM finetune_pod_attempts AS a
    JOIN registration AS r ON a.airflow_run_id = r.airflow_run_id AND a.finished_at >= r.registered_at
    WHERE a.run_id = %(run_id)s
),
first_attempt AS (
    SELECT DISTINCT ON (factor) factor, profile
    FROM this_round
    ORDER BY factor, attempt
),
attempts AS (
    SELECT factor,
           string_agg(coalesce(profile, '?') || ' ' || coalesce(exit_reason, '?'), ', ' ORDER BY attempt) AS attempts
    FROM this_round
    GROUP BY factor
)
SELECT f.factor, f.map_profile, coalesce(fa.profile, f.profile) AS chosen_profile, f.profile_reason,
       f.status, f.peak_memory_bytes, f.memory_limit_bytes, a.attempts
FROM finetune_run_factors AS f
LEFT JOIN first_attempt AS fa USING (factor)
LEFT JOIN attempts AS a USING (factor)
WHERE f.run_id = %(run_id)s
ORDER BY f.factor
"""


def format_run_sizing(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of the run's sizing: map profile, chosen profile, reason, attempts.

    :param rows: rows of :data:`RUN_SIZING_SQL` (as mappings).
    """
    if not rows:
        return "no factors registered for this run"
    table = [("factor", "map", "chosen", "status", "peak", "limit", "attempts", "reason")]
    for row in rows:
        table.append(
            (
                row["factor"],
                row.get("map_profile") or "-",
                row.get("chosen_profile") or "-",
                row.get("status") or "-",
                format_bytes(row.get("peak_memory_bytes")),
                format_bytes(row.get("memory_limit_bytes")),
                row.get("attempts") or "-",
                row.get("profile_reason") or "-",
            )
        )
    return "\n".join(line.rstrip() for line in fixed_width(table, left=len(table[0])))


def fetch_run_sizing(dsn: str, run_id: str) -> list[dict[str, Any]]:
    """The sizing rows of one run (:data:`RUN_SIZING_SQL`).

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    """
    from psycopg.rows import dict_row

    with connect(dsn, row_factory=dict_row) as conn:
        return list(conn.execute(RUN_SIZING_SQL, {"run_id": run_id}).fetchall())


MAX_LISTED_FINDINGS = 100

# A model is counted once: its groups share it with the factors in same_model_as (V010), so it is
# named by its crypto and the first of those factors.
FINDINGS_COUNT_SQL = """
WITH f AS (
    SELECT *, crypto || ' ' || (SELECT min(x) FROM unnest(array_append(coalesce(same_model_as, '{}'), factor)) AS x)
              AS model
    FROM finetune_findings
    WHERE run_id = %(run_id)s
)
SELECT count(*)::integer AS n_groups,
       count(*) FILTER (WHERE discovered)::integer AS n_discovered,
       max(fdr_q) AS fdr_q,
       max(combine_method) AS combine_method,
       count(timing_discovered)::integer AS n_v010_rows,
       count(DISTINCT model)::integer AS n_models,
       count(DISTINCT model) FILTER (WHERE timing_discovered)::integer AS n_timing_discovered,
       min(p_value_floor) AS p_value_floor
FROM f
"""

# The findings, then the timing edges that are not findings at a cost (and say why).
DISCOVERED_SQL = """
SELECT factor, crypto, cost_bps, slippage_bps, n_folds, mean_model_return, mean_edge_vs_buy_and_hold,
       mean_edge_vs_random, p_value, q_value, profit_p_value, profit_q_value, profit_vs_buy_and_hold_p_value,
       mean_matched_percentile, deflated_sharpe, n_folds_profitable, same_model_as,
       coalesce(verdict, CASE WHEN discovered THEN 'timing only (before V010): profit not tested' END) AS verdict
FROM finetune_findings
WHERE run_id = %(run_id)s AND (discovered OR timing_discovered)
ORDER BY discovered DESC, q_value, profit_q_value, factor, crypto, cost_bps, slippage_bps
LIMIT %(limit)s
"""

_FINDING_COLUMNS = (
    ("factor", "factor"),
    ("crypto", "crypto"),
    ("cost_bps", "cost"),
    ("slippage_bps", "slip"),
    ("n_folds", "folds"),
    ("mean_model_return", "model"),
    ("mean_edge_vs_buy_and_hold", "edge b&h"),
    ("p_value", "timing p"),
    ("q_value", "timing q"),
    ("profit_p_value", "profit p"),
    ("profit_q_value", "profit q"),
    ("profit_vs_buy_and_hold_p_value", "vs b&h p"),
    ("mean_matched_percentile", "matched pctl"),
    ("deflated_sharpe", "DSR"),
    ("n_folds_profitable", "folds > 0"),
    ("verdict", "verdict"),
    ("same_model_as", "same model as"),
)


def _finding_cell(key: str, value: Any) -> str:
    if value is None:
        return "not tested" if key.startswith("profit_") or key == "deflated_sharpe" else "-"
    if key == "same_model_as":
        return ", ".join(value) or "-"
    if key == "mean_matched_percentile":
        return f"{value:.0%}"
    if key.startswith("mean_"):
        return "nan" if math.isnan(value) else f"{value:+.2%}"
    if key.endswith("p_value") or key.endswith("q_value") or key == "deflated_sharpe":
        return f"{value:.2g}" if value < 0.001 else f"{value:.4f}"
    return str(value)


def format_findings(
    discovered: Sequence[Mapping[str, Any]],
    *,
    n_groups: int,
    n_discovered: int,
    fdr_q: float | None,
    combine_method: str | None,
    untested: Sequence[Any] = (),
    n_models: int | None = None,
    n_timing_discovered: int | None = None,
    p_value_floor: float | None = None,
) -> str:
    """The findings section: the one-line answer, then the findings and the timing edges that are
    not findings at a cost (smallest q first).

    :param discovered: discovered rows of ``finetune_findings`` (:data:`DISCOVERED_SQL`).
    :param n_groups: tested groups of the run.
    :param n_discovered: how many of them are findings (may exceed the rows listed).
    :param fdr_q: the run's FDR (None when no group was tested).
    :param combine_method: the fold combination method (None when no group was tested).
    :param untested: groups left out for lack of p-values (``findings.GroupInput``).
    :param n_models: distinct models tested for timing (None: findings stored before V010).
    :param n_timing_discovered: how many of them time the market.
    :param p_value_floor: the smallest combined timing p-value the run could reach.
    """
    lines = [
        findings.headline(
            n_discovered=n_discovered,
            n_groups=n_groups,
            fdr_q=fdr_q if fdr_q is not None else findings.DEFAULT_FDR_Q,
            combine_method=combine_method or findings.DEFAULT_COMBINE_METHOD,
            n_models=n_models,
            n_timing_discovered=n_timing_discovered,
            p_value_floor=p_value_floor,
        )
    ]
    if discovered:
        lines += fixed_width(
            [tuple(title for _, title in _FINDING_COLUMNS)]
            + [tuple(_finding_cell(key, row.get(key)) for key, _ in _FINDING_COLUMNS) for row in discovered]
        )
        if len(discovered) == MAX_LISTED_FINDINGS:
            lines.append(f"... listed the first {MAX_LISTED_FINDINGS} (table finetune_findings has them all)")
    if untested:
        lines.append(findings.untested_note(untested))
    return "\n".join(line.rstrip() for line in lines)


def fetch_findings_section(dsn: str, run_id: str) -> str:
    """The findings section of one run, from ``finetune_findings`` (and the untested groups).

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    """
    from psycopg.rows import dict_row

    with connect(dsn, row_factory=dict_row) as conn:
        arguments = fetch_headline_arguments(conn, run_id)
        discovered = conn.execute(DISCOVERED_SQL, {"run_id": run_id, "limit": MAX_LISTED_FINDINGS}).fetchall()
    with connect(dsn) as conn:
        untested = findings.fetch_untested(conn, run_id)
    return format_findings(discovered, untested=untested, **arguments)


def fetch_headline_arguments(conn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """The stored findings of a run as :func:`findings.headline`'s arguments (the report's and the
    run tab's headline); findings stored before V010 leave out what they do not have.

    :param conn: an open connection with ``dict_row`` rows.
    :param run_id: the finetune run id.
    """
    counts = conn.execute(FINDINGS_COUNT_SQL, {"run_id": run_id}).fetchone()
    v010 = bool(counts["n_v010_rows"])
    return {
        "n_groups": counts["n_groups"],
        "n_discovered": counts["n_discovered"],
        "fdr_q": counts["fdr_q"] if counts["fdr_q"] is not None else findings.DEFAULT_FDR_Q,
        "combine_method": counts["combine_method"] or findings.DEFAULT_COMBINE_METHOD,
        "n_models": counts["n_models"] if v010 else None,
        "n_timing_discovered": counts["n_timing_discovered"] if v010 else None,
        "p_value_floor": counts["p_value_floor"],
    }


def build_report(
    dsn: str,
    run_id: str,
    *,
    profiles_json: str | None = None,
    sizing_json: str | None = None,
    policy: SizingPolicy,
    findings_state: str | None = None,
) -> str:
    """The report as text: findings, model vs baselines, the run's sizing, and the sizing advice.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param profiles_json: ``FINETUNE_PROFILES`` (current sizing of the recommendation table).
    :param sizing_json: ``FINETUNE_SIZING``.
    :param policy: the sizing mode and history window (``settings.sizing_policy()``).
    :param findings_state: the state of this DAG run's ``findings`` task; None when unknown
        (outside a DAG run: whatever is stored is shown). When it did not succeed, stored rows
        (of an earlier attempt of the same sweep) are not shown as this run's findings.
    """
    if findings_state is None or findings_state == "success":
        findings_text = fetch_findings_section(dsn, run_id)
    else:
        findings_text = (
            f"no findings: the findings step did not succeed in this run (findings: {findings_state}); "
            "it runs only after check_baselines passed"
        )
    summary = format_summary(fetch_summary(dsn, run_id))
    history = fetch_history(dsn, history_runs=policy.history_runs, history_days=policy.history_days)
    recommendations = recommend(history, load_sizing(sizing_json), load_profiles(profiles_json))
    window = describe_window(history_runs=policy.history_runs, history_days=policy.history_days)
    return (
        f"Findings, run {run_id} (timing against sign flips of its bars, profit after costs per cost basis)\n{findings_text}\n\n"
        f"Model vs same-basis baselines, run {run_id} (mean net return over folds; matched pctl: the model "
        f"among its own shifted copies at that cost, rnd pctl: among the random seeds)\n{summary}\n\n"
        f"Sizing of this run (map profile, the profile it started on and why, sizing mode {policy.mode})\n"
        f"{format_run_sizing(fetch_run_sizing(dsn, run_id))}\n\n"
        f"Sizing advice (recorded pod attempts: {window}; flag = a peak above 80 % of its limit)\n"
        f"{format_recommendations(recommendations, mode=policy.mode)}"
    )


# The tasks whose outcome decides the run: every factor pod, the gate and the findings step.
VERDICT_TASKS = ("run_factor", "check_baselines", "findings")


def unsuccessful_tasks(task_states: Mapping[str, str | None]) -> list[str]:
    """``"task: state"`` for every task instance that did not succeed, sorted.

    :param task_states: task instance key (``run_factor_0`` for a mapped one) -> state, as
        ``RuntimeTaskInstance.get_task_states`` returns them for one run.
    """
    return sorted(f"{key}: {state}" for key, state in task_states.items() if state != "success")


FIND_RUN_SQL = """
SELECT run_id FROM finetune_runs
WHERE dag_id = %(dag_id)s AND as_of = %(as_of)s
ORDER BY created_at DESC, run_id
LIMIT 1
"""


def print_run_summary(
    *,
    dsn: str,
    dag_id: str,
    logical_date: str,
    profiles_json: str | None,
    sizing_json: str | None,
    policy: SizingPolicy,
) -> None:
    """Print the report of the run of ``dag_id`` whose as-of is ``logical_date`` (``make demo``).

    ``dags test`` anchors a run at its logical date (the data interval end), so the as-of finds
    the run without knowing Airflow's run id.

    :param dsn: libpq URI of the finetune database.
    :param dag_id: the DAG id.
    :param logical_date: ISO time, e.g. ``2026-06-07T00:00:00+00:00``.
    :param profiles_json: ``FINETUNE_PROFILES``; :param sizing_json: ``FINETUNE_SIZING``.
    :param policy: the sizing mode and history window.
    """
    as_of = datetime.fromisoformat(logical_date.replace("Z", "+00:00"))
    with connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('finetune_runs') IS NOT NULL").fetchone()
        row = conn.execute(FIND_RUN_SQL, {"dag_id": dag_id, "as_of": as_of}).fetchone() if exists[0] else None
    if row is None:
        print(f"no finetune run of {dag_id} as of {logical_date} in the database")
        return
    print(build_report(dsn, row[0], profiles_json=profiles_json, sizing_json=sizing_json, policy=policy))
