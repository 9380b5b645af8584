"""What the plugin asks Airflow's own metadata database about a DAG run (the api-server's session).

Two questions: does the Airflow run exist (an unknown run is a 404; a known run that never
reached ``register`` has no finetune run, and the page says so with its task states), and which
finetune run id its conf and as-of give (the same :func:`finetune_sweep.sweep.plan.finetune_run_id`
that ``plan`` and ``register`` compute), for runs registered before the Airflow-run link existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_sweep.settings import get_settings
from finetune_sweep.sweep.identity import as_of_from_context, finetune_run_id
from finetune_sweep.sweep.params import PlanError, default_params, validate_params


@dataclass(frozen=True)
class AirflowRun:
    """One Airflow DAG run as the pages need it."""

    dag_id: str
    run_id: str
    state: str | None
    conf: dict[str, Any]
    context: dict[str, Any]
    task_states: tuple[tuple[str, str | None], ...]


def dag_exists(dag_id: str) -> bool:
    """Whether Airflow's metadata database knows the DAG ``dag_id`` (``~`` is no DAG).

    :param dag_id: the DAG id of a plugin path.
    """
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id)) is not None


def find_airflow_run(dag_id: str, run_id: str) -> AirflowRun | None:
    """The DAG run ``run_id`` of ``dag_id`` from Airflow's metadata database, or None.

    :param dag_id: the DAG id.
    :param run_id: Airflow's run id.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        tasks = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.rendered_map_index, TaskInstance.state)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.start_date, TaskInstance.task_id, TaskInstance.map_index)
        ).all()
        return AirflowRun(
            dag_id=dag_id,
            run_id=run_id,
            state=str(run.state) if run.state is not None else None,
            conf=dict(run.conf or {}),
            context={
                "data_interval_end": run.data_interval_end,
                "logical_date": run.logical_date,
                "dag_run": run,
            },
            task_states=tuple(
                (
                    task_id + (f"[{rendered or map_index}]" if map_index is not None and map_index >= 0 else ""),
                    str(state) if state is not None else None,
                )
                for task_id, map_index, rendered, state in tasks
            ),
        )


def expected_finetune_run_id(run: AirflowRun) -> str | None:
    """The finetune run id that ``plan``/``register`` give this DAG run (None: its conf is invalid).

    :param run: from :func:`find_airflow_run`.
    """
    params = {**default_params(image_tag=get_settings().image_tag), **run.conf}
    try:
        return finetune_run_id(
            dag_id=run.dag_id,
            as_of=as_of_from_context(run.context),
            params=validate_params(params),
            data_uri=get_settings().data_uri,
        )
    except PlanError:
        return None
