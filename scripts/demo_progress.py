"""One readable line per task of an ``airflow dags test`` run, from its ~400 lines of logging.

``make demo`` pipes the run's output through :class:`DagTestProgress`: the full log goes to a
file, the terminal gets one line per finished task (the factor of a mapped pod and its fold
progress, from the pod's ``fold_done`` events) and, for a task that failed, its last lines.

It reads the markers ``airflow dags test`` prints in Airflow 3.3 (``[DAG TEST] starting
task_id=... map_index=...``, ``... new_state=...``, ``[DAG TEST] end task ...``, ``DagRun
Finished: ... state=...``) and the pod's JSON events (DESIGN 4.4); a line it does not know is
only kept for the failure tail.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?)")
_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_STATE = re.compile(r"\bnew_state=(?P<state>[a-z_]+)")
_RUN_DONE = re.compile(r"DagRun Finished: .*?\bstate=(?P<state>[a-z_]+)")
_EVENT = re.compile(r"(\{\"event\": .*\})")
# Lines of a task kept for its failure tail.
TAIL_LINES = 15


@dataclass
class _Task:
    task_id: str
    map_index: int
    started: datetime | None
    state: str | None = None
    factor: str | None = None
    folds: tuple[int, int] | None = None
    exit_reason: str | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def name(self) -> str:
        if self.map_index < 0:
            return self.task_id
        return f"{self.task_id}[{self.factor or self.map_index}]"


def _stamp(line: str) -> datetime | None:
    match = _STAMP.match(line)
    if not match:
        return None
    return datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))


class DagTestProgress:
    """Feed it the run's output line by line; it returns what to print."""

    def __init__(self) -> None:
        self.task: _Task | None = None
        self.failed: list[_Task] = []
        self.run_state: str | None = None

    def feed(self, line: str) -> list[str]:
        """The lines to print for one line of output (usually none).

        :param line: one line of ``airflow dags test`` output, without its newline.
        """
        line = line.rstrip("\n")
        if match := _START.search(line):
            self.task = _Task(match["task"], int(match["index"]), _stamp(line))
            return []
        if match := _RUN_DONE.search(line):
            self.run_state = match["state"]
            return [f"  run: {self.run_state}"]
        task = self.task
        if task is None:
            return []
        task.lines.append(line)
        if match := _END.search(line):
            self.task = None
            return self._finished(task, _stamp(line))
        if match := _STATE.search(line):
            task.state = match["state"]
        elif match := _EVENT.search(line):
            self._event(task, match.group(1))
        return []

    @staticmethod
    def _event(task: _Task, text: str) -> None:
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            return
        task.factor = event.get("factor") or task.factor
        if event.get("event") == "fold_done" and isinstance(event.get("i"), int) and isinstance(event.get("n"), int):
            task.folds = (event["i"], event["n"])
        if event.get("exit_reason"):
            task.exit_reason = event["exit_reason"]

    def _finished(self, task: _Task, ended: datetime | None) -> list[str]:
        state = task.state or "unknown"
        details = []
        if task.folds:
            details.append(f"{task.folds[0]}/{task.folds[1]} folds")
        if task.exit_reason and task.exit_reason != "completed":
            details.append(task.exit_reason)
        if task.started and ended:
            details.append(f"{(ended - task.started).total_seconds():.1f} s")
        mark = "ok " if state == "success" else "!! "
        out = [f"  {mark}{task.name}: {state}" + (f" ({', '.join(details)})" if details else "")]
        if state not in ("success", "skipped"):
            self.failed.append(task)
        return out

    def failure_tails(self) -> list[str]:
        """The last lines of every task that did not succeed (for the end of a failed run)."""
        out = []
        for task in self.failed:
            out.append(f"last lines of {task.name} ({task.state}):")
            out += [f"  | {tail}" for tail in task.lines]
        return out
