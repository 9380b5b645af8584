"""
# finetune_sweep

Fine-tunes one model per **factor** on Kubernetes (one pod per factor, sized by the sizing map)
and guarantees that every model row has its three **same-basis baselines** (buy-and-hold, random,
naive: same crypto, fold window and cost basis).

`plan` (validate params, resolve map profiles; no I/O) -> `migrate` (pod: `python -m finetune migrate`)
-> `register` (each factor starts on the larger of its map profile and what its recorded history
asks for; upsert the run and its factor manifest) -> `run_factor` (one pod per factor; an
OOMKilled pod is retried one profile up) -> `check_baselines` (SQL gate: fails the run, listing
the problems, when a factor is not done or a model row or baseline is missing or off-basis;
its verdict is kept for the UI)
-> `findings` (only when the gate passed: folds' shift-test p-values combined per factor, crypto
and cost, Benjamini-Hochberg over the run at the param `fdr_q`) -> `report` (findings first, then
model vs baselines, sizing recommendations).

`as_of` is the run's data interval end (scheduled: the weekly tick; `dags test`: the logical
date; manual: the trigger time recorded on the run), so every retry sees the same windows. The
finetune run id is `finetune_sweep__<as_of>__<params hash>`: rerunning the same sweep upserts.
Settings: `FINETUNE_POD_BACKEND` (`kubernetes`|`local`), `FINETUNE_PROFILES` / `FINETUNE_SIZING`
(JSON, read by `plan` at run time; `FINETUNE_SIZING` also adds a team's factor plug-in with its
profile), `FINETUNE_MODELS` (the models the param `model` offers), `FINETUNE_SIZING_MODE`
(`history`|`static`), connection `finetune_db`. The param `model` names the model every row is
fine-tuned with (its `strategy`); the built-in `ridge_long_flat` is left out of the run id's hash.
"""

from __future__ import annotations

# This file shares its name with the finetune_sweep package in plugins/. Airflow puts plugins/ on
# sys.path when it starts and the DAG folder only later (and imports DAG files under a private
# module name), so `import finetune_sweep` finds the package; never put dags/ ahead of plugins/.
from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from finetune_sweep import tasks
from finetune_sweep.gate import gate_sensor_kwargs
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.operators.gate_sensor import BaselineGateSensor
from finetune_sweep.pods.spec import common_pod_kwargs, resources_for, to_resource_requirements
from finetune_sweep.settings import get_settings, sizing_overrides
from finetune_sweep.sizing.profiles import PROFILE_ORDER, PodProfile
from finetune_sweep.sweep.params import build_params, form_factors

SETTINGS = get_settings()
# Partial arguments are rendered (mapped XCom values are not): the tag comes from the param.
IMAGE = SETTINGS.image_repository + ":{{ params.image }}"
# One retry per step up the profile ladder, plus the same-profile retries of pods the cluster
# disrupts (eviction, preemption, node shutdown); the operator counts both itself (task state
# store) and fails any other error without retry.
OOM_RETRIES = len(PROFILE_ORDER) - 1
RUN_FACTOR_RETRIES = OOM_RETRIES + SETTINGS.disruption_retries
MIGRATE_PROFILE = PodProfile("MIGRATE", "512Mi", "250m")


@dag(
    dag_id="finetune_sweep",
    description="Fine-tune one pod per factor; a SQL gate guarantees every model row its same-basis baselines",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["finetune", "kubernetes", "ml"],
    params=build_params(
        image_tag=SETTINGS.image_tag,
        tag_pattern=SETTINGS.image_tag_pattern,
        known_factors=form_factors(sizing_overrides()[1]),
        known_models=SETTINGS.models,
    ),
    default_args={"owner": "quant-ml", "retries": 0},
)
def finetune_sweep():
    @task
    def plan() -> list[dict]:
        return tasks.plan(get_current_context())

    # register starts each factor on the larger of its map profile and its history's (it has the
    # database; plan has none), so the pods are expanded over its output.
    @task
    def register(entries: list[dict]) -> list[dict]:
        return tasks.register(entries, get_current_context())

    # Default trigger rule: only after the gate passed (a failed gate writes no findings).
    @task
    def findings() -> dict:
        return tasks.findings(get_current_context())

    # all_done: the report (sizing table included) is printed after a failed run too; the task
    # itself fails unless every factor pod and the gate succeeded.
    @task(trigger_rule="all_done")
    def report() -> None:
        tasks.report(get_current_context())

    common = common_pod_kwargs(image=IMAGE, settings=SETTINGS)
    planned = plan()
    migrate = FactorPodOperator(
        task_id="migrate",
        name="finetune-migrate",
        arguments=["migrate"],
        labels={"app.kubernetes.io/name": "finetune-sweep", "app.kubernetes.io/component": "migrate"},
        container_resources=to_resource_requirements(resources_for(MIGRATE_PROFILE)),
        ladder=False,
        **common,
    )
    registered = register(planned)
    run_factor = FactorPodOperator.partial(
        task_id="run_factor",
        retries=RUN_FACTOR_RETRIES,
        retry_delay=timedelta(seconds=SETTINGS.retry_delay_seconds),
        map_index_template="{{ task.factor }}",
        **common,
    ).expand_kwargs(registered)
    check_baselines = BaselineGateSensor(task_id="check_baselines", **gate_sensor_kwargs(conn_id=SETTINGS.conn_id))
    discoveries = findings()
    summary = report()

    planned >> migrate >> registered >> run_factor >> check_baselines >> discoveries
    # report is the only leaf and carries the verdict: a failed gate, a failed factor pod *or* a
    # failed findings step makes it fail, which fails the run (a failed non-leaf task alone would not).
    [run_factor, check_baselines, discoveries] >> summary


finetune_sweep()
