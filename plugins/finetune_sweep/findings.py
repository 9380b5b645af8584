"""Findings of a run: which (factor, crypto, cost basis) carry an edge after every comparison made.

A sweep tests many model rows at once (4 factors x 3 cryptos x 4 folds x 3 costs is 144), so at
the 5 % level several "beat random" by chance alone. This step (DESIGN 5, "Findings") answers
the research lead's question with two standard, citable procedures, both from scipy:

1. per group (factor, crypto, cost_bps, slippage_bps) the folds' exposure-matched shift-test
   p-values (``finetune_results.perm_p_value``, DESIGN 5 "Shift test") are combined into one
   p-value with ``scipy.stats.combine_pvalues`` -- Fisher's method by default
   (``-2 * sum(log p)`` is chi-square with ``2k`` degrees of freedom under the null; the folds
   are disjoint test windows);
2. over every group of the run, the Benjamini-Hochberg step-up procedure
   (``scipy.stats.false_discovery_control``, method ``bh``) turns the combined p-values into
   q-values; a group is a finding when its q-value is <= ``fdr_q``. That is exactly BH's
   rejection rule (reject the ``k`` smallest p-values, ``k`` the largest rank with
   ``p_(k) <= k * q / m``), and it controls the expected share of false findings at ``fdr_q``
   for independent or positively dependent tests (Benjamini & Hochberg 1995; Benjamini &
   Yekutieli 2001) -- the cost levels of one (factor, crypto) share their positions, which is
   positive dependence.

A group whose model rows lack a p-value on some fold (rows written before migration V004, or by
a pod image without the shift test) is **not tested**: it gets no row, is not counted among the
``m`` hypotheses, and is listed as such. No p-value is ever invented.

The run's rows are replaced in one transaction (delete + copy under a per-run advisory lock), so
a rerun -- also with another ``fdr_q`` -- leaves exactly one row per tested group.

Airflow side only: psycopg and scipy, never the pod package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune_sweep.db.connect import connect
from finetune_sweep.gate import same_basis_join

if TYPE_CHECKING:
    import numpy as np
    import psycopg

DEFAULT_FDR_Q = 0.10
DEFAULT_COMBINE_METHOD = "fisher"
# scipy.stats.combine_pvalues' methods; the name is stored in finetune_findings.combine_method.
COMBINE_METHODS = ("fisher", "pearson", "tippett", "stouffer", "mudholkar_george")
MAX_LISTED_UNTESTED = 10


# One row per group of the run, over the factors of its manifest (the findings table references
# it). Edges are taken against the baselines on the model row's full basis, as in the report.
# p-values come in fold order (for the record; the combination does not depend on it).
GROUPS_SQL = f"""
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps,
       count(*)::integer AS n_folds,
       count(m.perm_p_value)::integer AS n_p_values,
       array_agg(m.perm_p_value ORDER BY m.fold_id) AS p_values,
       avg(m.net_return) AS mean_model_return,
       avg(m.net_return - bh.net_return) AS mean_edge_vs_buy_and_hold,
       avg(m.net_return - rnd.net_return) AS mean_edge_vs_random
FROM finetune_results AS m
JOIN finetune_run_factors AS f ON f.run_id = m.run_id AND f.factor = m.factor
{same_basis_join("bh", "buy_and_hold")}
{same_basis_join("rnd", "random")}
WHERE m.run_id = %(run_id)s
GROUP BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
"""

# The groups the step leaves out (for the report): one scan of the run's model rows, no joins.
UNTESTED_SQL = """
SELECT m.factor, m.crypto, m.cost_bps, m.slippage_bps,
       count(*)::integer AS n_folds,
       count(m.perm_p_value)::integer AS n_p_values,
       array_agg(m.perm_p_value ORDER BY m.fold_id) AS p_values,
       avg(m.net_return) AS mean_model_return,
       NULL::double precision AS mean_edge_vs_buy_and_hold,
       NULL::double precision AS mean_edge_vs_random
FROM finetune_results AS m
JOIN finetune_run_factors AS f ON f.run_id = m.run_id AND f.factor = m.factor
WHERE m.run_id = %(run_id)s
GROUP BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
HAVING count(m.perm_p_value) < count(*)
ORDER BY m.factor, m.crypto, m.cost_bps, m.slippage_bps
"""

FINDING_COLUMNS = (
    "run_id",
    "factor",
    "crypto",
    "cost_bps",
    "slippage_bps",
    "n_folds",
    "mean_model_return",
    "mean_edge_vs_buy_and_hold",
    "mean_edge_vs_random",
    "p_value",
    "q_value",
    "discovered",
    "fdr_q",
    "combine_method",
)


@dataclass(frozen=True)
class GroupInput:
    """One (factor, crypto, cost basis) of a run, as :data:`GROUPS_SQL` returns it."""

    factor: str
    crypto: str
    cost_bps: int
    slippage_bps: int
    n_folds: int
    n_p_values: int
    p_values: tuple[float | None, ...]
    mean_model_return: float
    mean_edge_vs_buy_and_hold: float | None = None
    mean_edge_vs_random: float | None = None

    @property
    def label(self) -> str:
        return f"{self.factor} {self.crypto} {self.cost_bps}/{self.slippage_bps} bps"

    @property
    def testable(self) -> bool:
        """Every fold has its shift-test p-value (nothing is combined from a part of the folds)."""
        return self.n_folds >= 1 and self.n_p_values == self.n_folds


@dataclass(frozen=True)
class Finding:
    """One row of ``finetune_findings`` (without the run id, fdr_q and method)."""

    factor: str
    crypto: str
    cost_bps: int
    slippage_bps: int
    n_folds: int
    mean_model_return: float
    mean_edge_vs_buy_and_hold: float | None
    mean_edge_vs_random: float | None
    p_value: float
    q_value: float
    discovered: bool


@dataclass(frozen=True)
class FindingsResult:
    """The findings of one run, and the groups that could not be tested."""

    run_id: str
    fdr_q: float
    combine_method: str
    findings: tuple[Finding, ...]
    untested: tuple[GroupInput, ...] = ()

    @property
    def n_groups(self) -> int:
        return len(self.findings)

    @property
    def n_discovered(self) -> int:
        return sum(finding.discovered for finding in self.findings)

    def summary(self) -> str:
        """The one-line answer, plus a clear note on any untested group."""
        lines = [
            headline(
                n_discovered=self.n_discovered,
                n_groups=self.n_groups,
                fdr_q=self.fdr_q,
                combine_method=self.combine_method,
            )
        ]
        if self.untested:
            lines.append(untested_note(self.untested))
        return "\n".join(lines)


def headline(*, n_discovered: int, n_groups: int, fdr_q: float, combine_method: str) -> str:
    """``N of M groups are findings at FDR q`` (the report prints this line first).

    :param n_discovered: groups with ``q_value <= fdr_q``.
    :param n_groups: tested groups (the ``m`` of Benjamini-Hochberg).
    :param fdr_q: the false discovery rate.
    :param combine_method: how the folds' p-values were combined.
    """
    how = f"folds combined by {combine_method}, Benjamini-Hochberg over the run's groups"
    if n_groups == 0:
        return f"0 of 0 groups are findings at FDR {fdr_q:g}: no group has shift-test p-values to test"
    if n_discovered == 0:
        return f"0 of {n_groups} groups are findings at FDR {fdr_q:g}: no finding in this run ({how})"
    return f"{n_discovered} of {n_groups} groups are findings at FDR {fdr_q:g} ({how})"


def untested_note(untested: Sequence[GroupInput]) -> str:
    """Which groups lack p-values and why they are left out (never filled in).

    :param untested: the groups without a p-value on every fold.
    """
    listed = ", ".join(f"{g.label} ({g.n_p_values} of {g.n_folds} folds)" for g in untested[:MAX_LISTED_UNTESTED])
    more = len(untested) - MAX_LISTED_UNTESTED
    return (
        f"{len(untested)} group(s) NOT TESTED: their model rows lack the shift-test p-value "
        f"(written before migration V004 or by a pod image without the shift test); they are not "
        f"counted among the groups: {listed}" + (f" and {more} more" if more > 0 else "")
    )


def validate_fdr_q(fdr_q: Any) -> float:
    """``fdr_q`` as a float if ``0 < fdr_q < 1``, else ValueError naming it.

    :param fdr_q: the false discovery rate.
    """
    if isinstance(fdr_q, bool) or not isinstance(fdr_q, (int, float)) or not (0 < fdr_q < 1):
        raise ValueError(f"fdr_q must be a number strictly between 0 and 1, got {fdr_q!r}")
    return float(fdr_q)


def validate_combine_method(method: Any) -> str:
    """``method`` if scipy's ``combine_pvalues`` has it, else ValueError listing the allowed ones.

    :param method: the combination method.
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"combine method must be one of {', '.join(COMBINE_METHODS)}, got {method!r}")
    return str(method)


def combine_fold_p_values(p_values: np.ndarray, *, method: str = DEFAULT_COMBINE_METHOD) -> np.ndarray:
    """One combined p-value per row of ``p_values`` (groups x folds), by scipy.

    :param p_values: 2-D array, one row per group, one column per fold, every value in (0, 1].
    :param method: one of :data:`COMBINE_METHODS`.
    """
    import numpy as np
    from scipy.stats import combine_pvalues

    method = validate_combine_method(method)
    values = np.asarray(p_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"p_values must be groups x folds with at least one fold, got shape {values.shape}")
    if values.shape[0] == 0:
        return np.empty(0)
    if not np.all((values > 0) & (values <= 1)):
        raise ValueError("every fold p-value must be in (0, 1]")
    combined = combine_pvalues(values, method=method, axis=1).pvalue
    # Floating point may leave a hair outside [0, 1]; the table's CHECK holds the exact range.
    return np.clip(np.atleast_1d(combined), 0.0, 1.0)


def benjamini_hochberg(p_values: np.ndarray, *, fdr_q: float) -> tuple[np.ndarray, np.ndarray]:
    """BH-adjusted q-values (scipy) and the discoveries ``q <= fdr_q``.

    :param p_values: one p-value per hypothesis (the run's groups).
    :param fdr_q: the false discovery rate, ``0 < fdr_q < 1``.
    """
    import numpy as np
    from scipy.stats import false_discovery_control

    fdr_q = validate_fdr_q(fdr_q)
    values = np.asarray(p_values, dtype=np.float64)
    if values.size == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    q_values = np.atleast_1d(false_discovery_control(values, method="bh"))
    return q_values, q_values <= fdr_q


def compute_findings(
    groups: Sequence[GroupInput], *, fdr_q: float = DEFAULT_FDR_Q, method: str = DEFAULT_COMBINE_METHOD
) -> tuple[list[Finding], list[GroupInput]]:
    """Combine each testable group's folds, then BH over all of them (no database).

    Groups with the same number of folds are combined in one vectorised scipy call, so a run of
    tens of thousands of groups costs a handful of calls.

    :param groups: the run's groups.
    :param fdr_q: the false discovery rate.
    :param method: the fold combination method.
    :returns: (findings in the order of ``groups``, untested groups).
    """
    import numpy as np

    fdr_q = validate_fdr_q(fdr_q)
    method = validate_combine_method(method)
    tested = [group for group in groups if group.testable]
    untested = [group for group in groups if not group.testable]
    combined = np.empty(len(tested))
    by_folds: dict[int, list[int]] = {}
    for position, group in enumerate(tested):
        by_folds.setdefault(group.n_folds, []).append(position)
    for positions in by_folds.values():
        matrix = np.array([tested[i].p_values for i in positions], dtype=np.float64)
        combined[positions] = combine_fold_p_values(matrix, method=method)
    q_values, discovered = benjamini_hochberg(combined, fdr_q=fdr_q)
    findings = [
        Finding(
            factor=group.factor,
            crypto=group.crypto,
            cost_bps=group.cost_bps,
            slippage_bps=group.slippage_bps,
            n_folds=group.n_folds,
            mean_model_return=group.mean_model_return,
            mean_edge_vs_buy_and_hold=group.mean_edge_vs_buy_and_hold,
            mean_edge_vs_random=group.mean_edge_vs_random,
            p_value=float(p),
            q_value=float(q),
            discovered=bool(d),
        )
        for group, p, q, d in zip(tested, combined, q_values, discovered, strict=True)
    ]
    return findings, untested


def fetch_groups(conn: psycopg.Connection, run_id: str) -> list[GroupInput]:
    """The run's groups (:data:`GROUPS_SQL`).

    :param conn: an open connection, not in autocommit mode (its transaction is used).
    :param run_id: the finetune run id.
    """
    # The step runs right after the pods wrote the run: the planner has no statistics for this
    # run_id and estimates a few rows, then picks a merge join on `factor` alone with the rest as
    # a join filter, quadratic in the run (a 60,000-key run did not finish in 60 s). The query
    # reads the whole run once, which hash joins do in linear time whatever the estimates; the
    # sort of 60,000 rows fits in 64 MB instead of spilling. JIT would add ~0.6 s of fixed cost
    # (DESIGN 8). LOCAL: this transaction only (psycopg opens one implicitly).
    for setting in ("jit = off", "enable_nestloop = off", "enable_mergejoin = off", "work_mem = '64MB'"):
        conn.execute(f"SET LOCAL {setting}")
    return _groups(conn.execute(GROUPS_SQL, {"run_id": run_id}).fetchall())


def fetch_untested(conn: psycopg.Connection, run_id: str) -> list[GroupInput]:
    """The run's groups that lack a shift-test p-value on some fold (:data:`UNTESTED_SQL`).

    :param conn: an open connection.
    :param run_id: the finetune run id.
    """
    return _groups(conn.execute(UNTESTED_SQL, {"run_id": run_id}).fetchall())


def _groups(rows: Sequence[Sequence[Any]]) -> list[GroupInput]:
    return [
        GroupInput(
            factor=factor,
            crypto=crypto,
            cost_bps=cost_bps,
            slippage_bps=slippage_bps,
            n_folds=n_folds,
            n_p_values=n_p_values,
            p_values=tuple(p_values),
            mean_model_return=mean_model_return,
            mean_edge_vs_buy_and_hold=edge_bh,
            mean_edge_vs_random=edge_random,
        )
        for factor, crypto, cost_bps, slippage_bps, n_folds, n_p_values, p_values, mean_model_return, edge_bh, edge_random in rows
    ]


def replace_findings(
    conn: psycopg.Connection, run_id: str, findings: Sequence[Finding], *, fdr_q: float, method: str
) -> None:
    """Delete the run's findings and copy the new ones in (inside the caller's transaction).

    :param conn: an open connection, in a transaction.
    :param run_id: the finetune run id.
    :param findings: the rows to write.
    :param fdr_q: stored on every row.
    :param method: stored on every row.
    """
    conn.execute("DELETE FROM finetune_findings WHERE run_id = %(run_id)s", {"run_id": run_id})
    with conn.cursor() as cur, cur.copy(f"COPY finetune_findings ({', '.join(FINDING_COLUMNS)}) FROM STDIN") as copy:
        for f in findings:
            copy.write_row(
                (
                    run_id,
                    f.factor,
                    f.crypto,
                    f.cost_bps,
                    f.slippage_bps,
                    f.n_folds,
                    f.mean_model_return,
                    f.mean_edge_vs_buy_and_hold,
                    f.mean_edge_vs_random,
                    f.p_value,
                    f.q_value,
                    f.discovered,
                    fdr_q,
                    method,
                )
            )


def run_findings(
    dsn: str,
    *,
    run_id: str,
    fdr_q: float = DEFAULT_FDR_Q,
    method: str = DEFAULT_COMBINE_METHOD,
) -> FindingsResult:
    """Compute and store the findings of one run, replacing its previous ones, in one transaction.

    Bad ``fdr_q`` or ``method`` raise ValueError before the database is touched.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param fdr_q: the false discovery rate, ``0 < fdr_q < 1``.
    :param method: the fold combination method (:data:`COMBINE_METHODS`).
    """
    fdr_q = validate_fdr_q(fdr_q)
    method = validate_combine_method(method)
    # db.connect bounds every statement and lock wait (the settings'): a database that hangs fails the task
    with connect(dsn) as conn, conn.transaction():
        # Two findings steps of one run (a cleared task beside a running one) take turns, so
        # the delete + copy of one never interleaves with the other's.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))", {"key": f"findings:{run_id}"})
        findings, untested = compute_findings(fetch_groups(conn, run_id), fdr_q=fdr_q, method=method)
        replace_findings(conn, run_id, findings, fdr_q=fdr_q, method=method)
    return FindingsResult(
        run_id=run_id, fdr_q=fdr_q, combine_method=method, findings=tuple(findings), untested=tuple(untested)
    )


if __name__ == "__main__":
    # The older spelling of `python -m finetune_sweep findings ...`, kept working: run the one CLI.
    import runpy

    sys.argv[0:1] = ["python -m finetune_sweep", "findings"]
    runpy.run_module("finetune_sweep", run_name="__main__", alter_sys=True)
