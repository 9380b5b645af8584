"""The ``check_baselines`` task: the SqlSensor that runs the gate's query, and keeps its verdict.

It is a plain :class:`SqlSensor` (same query, parameters, selector and predicates, from
:func:`finetune_sweep.gate.gate_sensor_kwargs`) that, once it has decided, records the verdict in
``finetune_gate_verdicts``: the UI's run tab then shows the gate's own verdict without running
the query again over every model row and baseline (~0.35 s on a 60,000-key run). Recording is
best effort: a failure to record is logged and never changes what the gate decided.

This module imports the common-sql provider, so it is kept apart from :mod:`finetune_sweep.gate`
(which the UI, the report and the findings step import for its SQL only).
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime
from typing import Any

from airflow.providers.common.sql.sensors.sql import SqlSensor

from finetune_sweep.db.connect import session_options
from finetune_sweep.gate import RECORD_VERDICT_SQL, GateVerdict
from finetune_sweep.settings import get_settings

# Bound on waiting for a lock on finetune_gate_verdicts (milliseconds; statements get twice that).
RECORD_TIMEOUT_MS = 5_000


class BaselineGateSensor(SqlSensor):
    """``SqlSensor`` over ``GATE_SQL`` that records each verdict it decides on."""

    def _get_hook(self) -> Any:
        hook = super()._get_hook()
        # The provider's hook opens its own connection: give its session the statement and lock
        # timeouts of db.connect's policy (FINETUNE_DB_*_TIMEOUT_SECONDS), so a locked table or a
        # hung server fails the gate in one line after the bound instead of holding the task.
        if getattr(hook, "options", "") is None:  # PostgresHook without options of its own
            hook.options = session_options(get_settings().database)
        return hook

    def poke(self, context: Any) -> bool:
        # Rows written from here on are newer than the verdict (RECORDED_VERDICT_SQL compares
        # them with this moment); taken before the query, so the race errs towards recomputing.
        checked_at = self._database_clock()
        decided: list[GateVerdict] = []
        select = self.selector

        def select_and_keep(row: Any) -> Any:
            verdict = select(row)
            decided.append(verdict)
            return verdict

        self.selector = select_and_keep
        try:
            return super().poke(context)
        finally:
            self.selector = select
            if decided and checked_at is not None:
                self._record(decided[-1], checked_at, context)

    def _database_clock(self) -> datetime | None:
        try:
            return self._get_hook().get_first("SELECT clock_timestamp()")[0]
        except Exception as err:  # noqa: BLE001 - the gate's own query reports a broken database
            self.log.warning("check_baselines: the verdict will not be recorded (%s)", type(err).__name__)
            return None

    def _record(self, verdict: GateVerdict, checked_at: datetime, context: Any) -> None:
        dag_run = context.get("dag_run")
        values = {
            "run_id": (self.parameters or {}).get("run_id"),
            "ok": verdict.ok is True,
            "n_problems": verdict.n_problems,
            "problems": list(verdict.problems),
            "dag_id": getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", "") or "",
            "airflow_run_id": getattr(dag_run, "run_id", None) or context.get("run_id") or "",
            "checked_at": checked_at,
        }
        try:
            # Through the hook's DB-API connection, not hook.run(): one log line instead of the statement.
            with closing(self._get_hook().get_conn()) as conn:
                with closing(conn.cursor()) as cursor:
                    # A locked verdicts table must not hold the gate's decision: give up soon.
                    cursor.execute(
                        f"SET LOCAL lock_timeout = {RECORD_TIMEOUT_MS}; "
                        f"SET LOCAL statement_timeout = {2 * RECORD_TIMEOUT_MS}"
                    )
                    cursor.execute(RECORD_VERDICT_SQL, values)
                conn.commit()
        except Exception as err:  # noqa: BLE001 - never let bookkeeping change the gate's decision
            self.log.warning(
                "check_baselines: could not record the verdict (%s: %s)",
                type(err).__name__,
                str(err).strip().splitlines()[0] if str(err).strip() else "",
            )
        else:
            self.log.info(
                "check_baselines: verdict recorded for run %s (ok=%s, %d problem(s))",
                values["run_id"],
                values["ok"],
                verdict.n_problems,
            )
