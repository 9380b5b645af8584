"""The completeness gate: one SQL query, one verdict row, explicit predicates for the SqlSensor.

``SqlSensor`` looks at the first row only and, without predicates, passes on any truthy first
cell (even the string ``"0"``). So the query always returns exactly one row
``(ok boolean, n_problems integer, problems text[])`` and the sensor gets a ``selector`` that
turns it into a :class:`GateVerdict`, plus ``failure``/``success`` predicates that test
``ok is True`` explicitly. ``failure`` is evaluated first and the gate runs after every factor
pod is done (``trigger_rule=all_done``), so there is nothing to wait for: a verdict with problems
fails the task on the first poke, and ``retries=0`` keeps it from going up_for_retry instead.

What the query checks for one run (``run_id`` is a bound parameter, never formatted in):

1. the run is registered and has planned factors;
2. every planned factor (``finetune_run_factors``) is ``done`` -- a pod that crashed before
   writing anything leaves its factor ``planned``/``running``/``failed``;
3. every planned key (factor x crypto x fold x cost_bps x slippage_bps, expanded in SQL from the
   run's params and its manifest) has a model row of the run's strategy;
4. every model row has its three baselines (buy_and_hold, random, naive) with the same key,
   strategy and the identical window (test_start, test_end, n_bars); a baseline found on another
   window is reported as off-basis.

``run_id`` is bound where it filters (never formatted in) and the SQL contains no other ``%``
(``mod()``, not the operator), so it runs unchanged under psycopg 2 and 3.

Cost follows the run, not the database (issue 7 item 7). Three things make that so:

- the filters compare ``run_id`` with the bound value itself, not with a CTE's output: the
  planner sees the value and estimates the run's rows from the column's statistics;
- the expected keys come from *one* ``generate_series`` over the key numbers, decoded into
  (factor, crypto, fold, cost, slippage) by integer division: its default estimate (1,000 rows)
  is the order of a real run, where five nested expansions (jsonb arrays estimated at 100 rows
  each, a series at 1,000) multiplied to billions of rows and made PostgreSQL JIT-compile the
  plan, ~0.6 s (2 s on a busy machine) before the first row, even for a 960-key run;
- the run's model rows and baselines are read once, grouped per key and window (``windows``):
  the missing model rows are a hash anti-join of the expected keys against it, the missing
  baselines its rows lacking a type; the off-basis probe (one unique-index lookup) runs for
  problem rows only. Before, two anti-joins merged sorts of the whole run spilled to disk.

``benchmarks/bench_gate.py`` measures it on 300,000 stored keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_LISTED_PROBLEMS = 20
# ``register`` pushes the finetune run id as this XCom; the gate, findings and report read it.
REGISTER_TASK_ID = "register"
RUN_ID_XCOM = "run_id"
RUN_ID_TEMPLATE = f"{{{{ ti.xcom_pull(task_ids='{REGISTER_TASK_ID}', key='{RUN_ID_XCOM}') or run_id }}}}"
BASELINE_TYPES = ("buy_and_hold", "random", "naive")

GATE_SQL = """
WITH run AS (
    SELECT r.run_id, r.strategy,
           CASE WHEN jsonb_typeof(r.params -> 'cryptos') = 'array' THEN r.params -> 'cryptos' END AS cryptos,
           CASE WHEN jsonb_typeof(r.params -> 'cost_bps') = 'array' THEN r.params -> 'cost_bps' END AS cost_bps,
           CASE WHEN jsonb_typeof(r.params -> 'slippage_bps') = 'array' THEN r.params -> 'slippage_bps' END
               AS slippage_bps,
           CASE WHEN jsonb_typeof(r.params -> 'n_folds') = 'number'
                THEN (r.params ->> 'n_folds')::numeric::integer END AS n_folds
    FROM finetune_runs AS r
    WHERE r.run_id = CAST(%(run_id)s AS text)
),
planned AS (
    SELECT f.factor, f.status, f.profile, f.exit_reason
    FROM finetune_run_factors AS f
    WHERE f.run_id = CAST(%(run_id)s AS text)
),
grid AS (
    SELECT run.strategy, run.cryptos, run.cost_bps, run.slippage_bps,
           (SELECT array_agg(p.factor ORDER BY p.factor) FROM planned AS p) AS factors,
           jsonb_array_length(run.cryptos)::bigint AS n_cryptos,
           greatest(run.n_folds, 0)::bigint AS n_folds,
           jsonb_array_length(run.cost_bps)::bigint AS n_costs,
           jsonb_array_length(run.slippage_bps)::bigint AS n_slippages
    FROM run
),
expected AS (
    SELECT g.factors[(k / (g.n_cryptos * g.n_folds * g.n_costs * g.n_slippages))::integer + 1] AS factor,
           g.cryptos ->> mod(k / (g.n_folds * g.n_costs * g.n_slippages), g.n_cryptos)::integer AS crypto,
           mod(k / (g.n_costs * g.n_slippages), g.n_folds)::integer AS fold_id,
           (g.cost_bps ->> mod(k / g.n_slippages, g.n_costs)::integer)::integer AS cost_bps,
           (g.slippage_bps ->> mod(k, g.n_slippages)::integer)::integer AS slippage_bps,
           g.strategy
    FROM grid AS g
    CROSS JOIN LATERAL generate_series(
        0::bigint, coalesce(cardinality(g.factors), 0) * g.n_cryptos * g.n_folds * g.n_costs * g.n_slippages - 1
    ) AS key(k)
),
windows AS (
    -- one pass over the run's model rows and baselines: per key and window, what is there
    SELECT s.factor, s.strategy, s.crypto, s.fold_id, s.cost_bps, s.slippage_bps, s.test_start, s.test_end,
           s.n_bars,
           bool_or(s.kind = 'model') AS has_model,
           bool_or(s.kind = 'buy_and_hold') AS has_buy_and_hold,
           bool_or(s.kind = 'random') AS has_random,
           bool_or(s.kind = 'naive') AS has_naive
    FROM (
        SELECT m.factor, m.strategy, m.crypto, m.fold_id, m.cost_bps, m.slippage_bps, m.test_start, m.test_end,
               m.n_bars, 'model' AS kind
        FROM finetune_results AS m
        WHERE m.run_id = CAST(%(run_id)s AS text)
        UNION ALL
        SELECT b.factor, b.strategy, b.crypto, b.fold_id, b.cost_bps, b.slippage_bps, b.test_start, b.test_end,
               b.n_bars, b.baseline_type
        FROM finetune_baselines AS b
        WHERE b.run_id = CAST(%(run_id)s AS text)
    ) AS s
    GROUP BY s.factor, s.strategy, s.crypto, s.fold_id, s.cost_bps, s.slippage_bps, s.test_start, s.test_end,
             s.n_bars
),
problems AS (
    SELECT 1 AS rank, 'run ' || CAST(%(run_id)s AS text) || ' is not registered (no finetune_runs row)' AS problem
    WHERE NOT EXISTS (SELECT 1 FROM run)
    UNION ALL
    SELECT 2, 'run ' || CAST(%(run_id)s AS text) || ' has no planned factors (no finetune_run_factors rows)'
    WHERE EXISTS (SELECT 1 FROM run) AND NOT EXISTS (SELECT 1 FROM planned)
    UNION ALL
    SELECT 3, 'run params lack a valid ' || missing.name || ': the planned keys cannot be derived'
    FROM run
    CROSS JOIN LATERAL (
        VALUES ('cryptos', run.cryptos IS NULL), ('cost_bps', run.cost_bps IS NULL),
               ('slippage_bps', run.slippage_bps IS NULL), ('n_folds', run.n_folds IS NULL)
    ) AS missing(name, is_missing)
    WHERE missing.is_missing
    UNION ALL
    SELECT 4, 'factor ' || p.factor || ' is ' || p.status || ', not done'
              || coalesce(' (profile ' || p.profile || ')', '') || coalesce(': ' || p.exit_reason, '')
    FROM planned AS p
    WHERE p.status IS DISTINCT FROM 'done'
    UNION ALL
    SELECT 5, 'missing model row: ' || e.factor || ' ' || e.crypto || ' fold ' || e.fold_id
              || ' cost ' || e.cost_bps || ' slippage ' || e.slippage_bps || ' bps'
    FROM expected AS e
    WHERE NOT EXISTS (
        SELECT 1 FROM windows AS w
        WHERE w.has_model AND w.factor = e.factor AND w.strategy = e.strategy AND w.crypto = e.crypto
          AND w.fold_id = e.fold_id AND w.cost_bps = e.cost_bps AND w.slippage_bps = e.slippage_bps
    )
    UNION ALL
    SELECT 6, 'missing baseline ' || bt.baseline_type || ': ' || w.factor || ' ' || w.crypto
              || ' fold ' || w.fold_id || ' cost ' || w.cost_bps || ' slippage ' || w.slippage_bps
              || ' bps, window ' || to_char(w.test_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
              || '..' || to_char(w.test_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
              || ' (' || w.n_bars || ' bars)'
              -- evaluated for problem rows only: one probe of the baselines' unique key each
              || CASE WHEN EXISTS (
                     SELECT 1 FROM finetune_baselines AS o
                     WHERE o.run_id = CAST(%(run_id)s AS text) AND o.factor = w.factor AND o.strategy = w.strategy
                       AND o.baseline_type = bt.baseline_type AND o.crypto = w.crypto
                       AND o.fold_id = w.fold_id AND o.cost_bps = w.cost_bps
                       AND o.slippage_bps = w.slippage_bps
                 ) THEN ' -- found only on a different window (off-basis)' ELSE '' END
    FROM windows AS w
    CROSS JOIN LATERAL (
        VALUES ('buy_and_hold', w.has_buy_and_hold), ('random', w.has_random), ('naive', w.has_naive)
    ) AS bt(baseline_type, on_window)
    WHERE w.has_model AND NOT bt.on_window
)
SELECT count(*) = 0 AS ok,
       count(*)::integer AS n_problems,
       coalesce((array_agg(problem ORDER BY rank, problem))[1:20], ARRAY[]::text[]) AS problems
FROM problems
"""


# The verdict ``check_baselines`` decided, kept per run (V008). The newer check wins; a run that
# was never registered has nothing to keep (its verdict says so).
RECORD_VERDICT_SQL = """
INSERT INTO finetune_gate_verdicts (run_id, ok, n_problems, problems, dag_id, airflow_run_id, checked_at)
SELECT r.run_id, %(ok)s, %(n_problems)s, CAST(%(problems)s AS text[]), %(dag_id)s, %(airflow_run_id)s,
       CAST(%(checked_at)s AS timestamptz)
FROM finetune_runs AS r
WHERE r.run_id = CAST(%(run_id)s AS text)
ON CONFLICT (run_id) DO UPDATE SET
    ok = EXCLUDED.ok, n_problems = EXCLUDED.n_problems, problems = EXCLUDED.problems,
    dag_id = EXCLUDED.dag_id, airflow_run_id = EXCLUDED.airflow_run_id, checked_at = EXCLUDED.checked_at
WHERE finetune_gate_verdicts.checked_at <= EXCLUDED.checked_at
"""

# The recorded verdict, while it still holds: no model row, baseline or factor of the run was
# written at or after the moment the gate's query started (every write sets ``updated_at``).
# One probe of the run's rows per table (~30 ms on a 60,000-key run, against ~0.35 s for GATE_SQL).
RECORDED_VERDICT_SQL = """
SELECT v.ok, v.n_problems, v.problems, v.dag_id, v.airflow_run_id, v.checked_at
FROM finetune_gate_verdicts AS v
WHERE v.run_id = CAST(%(run_id)s AS text)
  AND NOT EXISTS (SELECT 1 FROM finetune_results AS m
                  WHERE m.run_id = v.run_id AND m.updated_at >= v.checked_at)
  AND NOT EXISTS (SELECT 1 FROM finetune_baselines AS b
                  WHERE b.run_id = v.run_id AND b.updated_at >= v.checked_at)
  AND NOT EXISTS (SELECT 1 FROM finetune_run_factors AS f
                  WHERE f.run_id = v.run_id AND f.updated_at >= v.checked_at)
"""


def same_basis_join(alias: str, baseline_type: str) -> str:
    """SQL: LEFT JOIN of a model row ``m``'s baseline on its full basis (key, strategy, identical window).

    One definition of "same basis" for every reader of the results (findings, UI); the gate's own
    completeness query checks the same columns.

    :param alias: the baseline table's alias in the query (an SQL identifier).
    :param baseline_type: one of :data:`BASELINE_TYPES` (a constant, never user input).
    :raises ValueError: anything else: both are written into the SQL text, so they are checked
        whether or not Python runs with ``-O`` (which drops asserts).
    """
    if baseline_type not in BASELINE_TYPES or not alias.isidentifier():
        raise ValueError(f"same_basis_join: {alias!r} / {baseline_type!r} is not an alias and one of {BASELINE_TYPES}")
    return f"""LEFT JOIN finetune_baselines AS {alias}
    ON {alias}.baseline_type = '{baseline_type}' AND {alias}.run_id = m.run_id AND {alias}.factor = m.factor
   AND {alias}.strategy = m.strategy AND {alias}.crypto = m.crypto AND {alias}.fold_id = m.fold_id
   AND {alias}.cost_bps = m.cost_bps AND {alias}.slippage_bps = m.slippage_bps
   AND {alias}.test_start = m.test_start AND {alias}.test_end = m.test_end AND {alias}.n_bars = m.n_bars"""


@dataclass(frozen=True)
class GateVerdict:
    """The gate's verdict on one run; ``str()`` is the message the failed sensor shows."""

    ok: bool
    n_problems: int
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.ok is True:
            return "complete: every planned factor done, every key has its model row and three baselines"
        lines = [f"{self.n_problems} problem(s):"]
        lines += [f"  - {problem}" for problem in self.problems[:MAX_LISTED_PROBLEMS]]
        more = self.n_problems - min(len(self.problems), MAX_LISTED_PROBLEMS)
        if more > 0:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


def select_verdict(row: Sequence[Any]) -> GateVerdict:
    """The sensor's ``selector``: the query's single row as a :class:`GateVerdict`.

    :param row: ``(ok, n_problems, problems)``.
    """
    ok, n_problems, problems = row
    return GateVerdict(ok=ok is True, n_problems=int(n_problems), problems=tuple(problems or ()))


def gate_failed(verdict: GateVerdict) -> bool:
    """The sensor's ``failure`` predicate: any problem fails the run (checked before success).

    :param verdict: from :func:`select_verdict`.
    """
    return verdict.ok is not True


def gate_passed(verdict: GateVerdict) -> bool:
    """The sensor's ``success`` predicate: explicitly ``ok is True``, never truthiness.

    :param verdict: from :func:`select_verdict`.
    """
    return verdict.ok is True


def gate_sensor_kwargs(*, conn_id: str) -> dict[str, Any]:
    """Keyword arguments of the ``check_baselines`` SqlSensor (the DAG and the tests share them).

    :param conn_id: the Airflow connection of the finetune database.
    """
    return {
        "conn_id": conn_id,
        "sql": GATE_SQL,
        # The finetune run id as ``register`` recorded it, rendered per run and then bound by the
        # driver (it never becomes SQL text). Without it (register never ran) the Airflow run id
        # is bound: no such run is registered, which the query reports as the problem.
        "parameters": {"run_id": RUN_ID_TEMPLATE},
        "selector": select_verdict,
        "failure": gate_failed,
        "success": gate_passed,
        "fail_on_empty": True,
        # Every upstream is finished when the gate runs: one poke decides. The timeout only
        # bounds a database that does not answer.
        "mode": "poke",
        "poke_interval": 30,
        "timeout": 600,
        "retries": 0,
        "trigger_rule": "all_done",
    }
