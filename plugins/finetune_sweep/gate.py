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

The SQL binds ``run_id`` once (CTE ``arg``) and contains no other ``%``, so it runs unchanged under psycopg 2 and 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_LISTED_PROBLEMS = 20
RUN_ID_TEMPLATE = "{{ ti.xcom_pull(task_ids='register', key='run_id') or run_id }}"
BASELINE_TYPES = ("buy_and_hold", "random", "naive")

GATE_SQL = """
WITH arg AS (
    SELECT CAST(%(run_id)s AS text) AS run_id
),
run AS (
    SELECT r.run_id, r.strategy,
           CASE WHEN jsonb_typeof(r.params -> 'cryptos') = 'array' THEN r.params -> 'cryptos' END AS cryptos,
           CASE WHEN jsonb_typeof(r.params -> 'cost_bps') = 'array' THEN r.params -> 'cost_bps' END AS cost_bps,
           CASE WHEN jsonb_typeof(r.params -> 'slippage_bps') = 'array' THEN r.params -> 'slippage_bps' END
               AS slippage_bps,
           CASE WHEN jsonb_typeof(r.params -> 'n_folds') = 'number'
                THEN (r.params ->> 'n_folds')::numeric::integer END AS n_folds
    FROM finetune_runs AS r
    WHERE r.run_id = (SELECT run_id FROM arg)
),
planned AS (
    SELECT f.factor, f.status, f.profile, f.exit_reason
    FROM finetune_run_factors AS f
    WHERE f.run_id = (SELECT run_id FROM arg)
),
expected AS (
    SELECT p.factor, c.crypto, fold.fold_id, cost.value::integer AS cost_bps,
           slip.value::integer AS slippage_bps, run.strategy
    FROM run
    CROSS JOIN planned AS p
    CROSS JOIN LATERAL jsonb_array_elements_text(run.cryptos) AS c(crypto)
    CROSS JOIN LATERAL generate_series(0, run.n_folds - 1) AS fold(fold_id)
    CROSS JOIN LATERAL jsonb_array_elements_text(run.cost_bps) AS cost(value)
    CROSS JOIN LATERAL jsonb_array_elements_text(run.slippage_bps) AS slip(value)
),
model_keys AS (
    SELECT DISTINCT m.factor, m.strategy, m.crypto, m.fold_id, m.cost_bps, m.slippage_bps,
           m.test_start, m.test_end, m.n_bars
    FROM finetune_results AS m
    WHERE m.run_id = (SELECT run_id FROM arg)
),
problems AS (
    SELECT 1 AS rank, 'run ' || (SELECT run_id FROM arg) || ' is not registered (no finetune_runs row)' AS problem
    WHERE NOT EXISTS (SELECT 1 FROM run)
    UNION ALL
    SELECT 2, 'run ' || (SELECT run_id FROM arg) || ' has no planned factors (no finetune_run_factors rows)'
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
        SELECT 1 FROM finetune_results AS m
        WHERE m.run_id = (SELECT run_id FROM arg) AND m.factor = e.factor AND m.strategy = e.strategy
          AND m.crypto = e.crypto AND m.fold_id = e.fold_id
          AND m.cost_bps = e.cost_bps AND m.slippage_bps = e.slippage_bps
    )
    UNION ALL
    SELECT 6, 'missing baseline ' || bt.baseline_type || ': ' || k.factor || ' ' || k.crypto
              || ' fold ' || k.fold_id || ' cost ' || k.cost_bps || ' slippage ' || k.slippage_bps
              || ' bps, window ' || to_char(k.test_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
              || '..' || to_char(k.test_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
              || ' (' || k.n_bars || ' bars)'
              || CASE WHEN EXISTS (
                     SELECT 1 FROM finetune_baselines AS o
                     WHERE o.run_id = (SELECT run_id FROM arg) AND o.factor = k.factor AND o.strategy = k.strategy
                       AND o.baseline_type = bt.baseline_type AND o.crypto = k.crypto
                       AND o.fold_id = k.fold_id AND o.cost_bps = k.cost_bps
                       AND o.slippage_bps = k.slippage_bps
                 ) THEN ' -- found only on a different window (off-basis)' ELSE '' END
    FROM model_keys AS k
    CROSS JOIN (VALUES ('buy_and_hold'), ('random'), ('naive')) AS bt(baseline_type)
    WHERE NOT EXISTS (
        SELECT 1 FROM finetune_baselines AS b
        WHERE b.run_id = (SELECT run_id FROM arg) AND b.factor = k.factor AND b.strategy = k.strategy
          AND b.baseline_type = bt.baseline_type AND b.crypto = k.crypto
          AND b.fold_id = k.fold_id AND b.cost_bps = k.cost_bps AND b.slippage_bps = k.slippage_bps
          AND b.test_start = k.test_start AND b.test_end = k.test_end AND b.n_bars = k.n_bars
    )
)
SELECT count(*) = 0 AS ok,
       count(*)::integer AS n_problems,
       coalesce((array_agg(problem ORDER BY rank, problem))[1:20], ARRAY[]::text[]) AS problems
FROM problems
"""


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
