"""`make demo`'s task lines, from lines of a real `airflow dags test` run (Airflow 3.3.2, trimmed)."""

from __future__ import annotations

from demo_progress import TAIL_LINES, DagTestProgress

RUN = "manual__2026-11-28T07:53:12.072068+00:00"
STDOUT = "[airflow.task.operators.finetune_sweep.operators.factor_pod.FactorPodOperator] loc=local_pod.py:697"


def _fold(i: int, factor: str) -> str:
    return (
        f'2026-11-28T07:54:0{i}.5Z [info     ] [stdout] {{"event": "fold_done", "run_id": "r", '
        f'"factor": "{factor}", "i": {i}, "n": 4, "crypto": "BTC", "fold_id": 0}} {STDOUT}'
    )


def _task(task_id: str, map_index: int, start: str, end: str, state: str, body: list[str]) -> list[str]:
    return [
        f"{start} [info     ] [DAG TEST] starting task_id={task_id} map_index={map_index} [airflow.sdk] loc=dag.py:1501",
        *body,
        f"{end} [info     ] Task instance state updated    [airflow.api_fastapi] new_state={state} rows_affected=1",
        f"{end} [info     ] [DAG TEST] end task task_id={task_id} map_index={map_index} [airflow.sdk] loc=dag.py:1563",
    ]


def _printed(lines: list[str]) -> tuple[list[str], DagTestProgress]:
    progress = DagTestProgress()
    return [out for line in lines for out in progress.feed(line + "\n")], progress


def test_one_line_per_finished_task_with_the_factor_and_its_folds() -> None:
    lines = [
        "2026-11-28T07:52:00.0Z [info     ] Performing upgrade to the metadata database",
        *_task(
            "plan",
            -1,
            "2026-11-28T07:53:14.0Z",
            "2026-11-28T07:53:43.5Z",
            "success",
            ["planned base_features: profile STANDARD, memory 2Gi"],
        ),
        *_task(
            "run_factor",
            0,
            "2026-11-28T07:53:56.5Z",
            "2026-11-28T07:54:01.6Z",
            "success",
            [_fold(1, "base_features"), _fold(4, "base_features")],
        ),
        f"2026-11-28T07:54:12.8Z [info     ] DagRun Finished: dag_id=finetune_sweep, run_id={RUN}, state=success, "
        "run_type=manual",
    ]

    printed, progress = _printed(lines)

    assert printed == [
        "  ok plan: success (29.5 s)",
        "  ok run_factor[base_features]: success (4/4 folds, 5.1 s)",
        "  run: success",
    ]
    assert progress.failure_tails() == []


def test_a_failed_pod_is_named_and_its_last_lines_kept() -> None:
    noise = [f"2026-11-28T07:54:03.0Z [info     ] line {n}" for n in range(40)]
    finished = (
        '2026-11-28T07:54:04.0Z [info     ] [stdout] {"event": "run_finished", "factor": "l2_features", '
        '"status": "failed", "exit_reason": "OOMKilled"} ' + STDOUT
    )
    lines = _task(
        "run_factor",
        1,
        "2026-11-28T07:54:01.0Z",
        "2026-11-28T07:54:05.0Z",
        "failed",
        [_fold(2, "l2_features"), *noise, finished],
    )

    printed, progress = _printed(lines)

    assert printed == ["  !! run_factor[l2_features]: failed (2/4 folds, OOMKilled, 4.0 s)"]
    tails = progress.failure_tails()
    assert tails[0] == "last lines of run_factor[l2_features] (failed):"
    assert len(tails) == 1 + TAIL_LINES
    assert "new_state=failed" in tails[-2] and "end task" in tails[-1]


def test_a_mapped_task_without_events_is_named_by_its_index() -> None:
    printed, _ = _printed(
        _task("run_factor", 3, "2026-11-28T07:54:01.0Z", "2026-11-28T07:54:02.0Z", "up_for_retry", [])
    )

    assert printed == ["  !! run_factor[3]: up_for_retry (1.0 s)"]
