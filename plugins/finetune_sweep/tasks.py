"""The bodies of the DAG's TaskFlow tasks: ``plan``, ``register``, ``findings`` and ``report``.

The only place (with the operators' ``execute``) that reads the Airflow context and the settings:
everything below takes them as arguments. The finetune run id is computed once, by ``plan``
(:func:`finetune_sweep.sweep.identity.finetune_run_id`), and travels on: in each planned entry's
``--run-id`` to ``register``, which pushes it as the XCom ``run_id`` that the gate, ``findings``
and ``report`` read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from finetune_sweep.db.connect import NotMigrated, database_error_line
from finetune_sweep.db.dsn import dsn_from_connection
from finetune_sweep.db.runs import register_run
from finetune_sweep.findings import run_findings
from finetune_sweep.gate import REGISTER_TASK_ID, RUN_ID_XCOM
from finetune_sweep.pods.spec import argument_value
from finetune_sweep.pods.template import PodTemplateError, check_pod_template
from finetune_sweep.report import VERDICT_TASKS, build_report, unsuccessful_tasks
from finetune_sweep.settings import SettingsError, get_settings, sizing_overrides, sizing_policy
from finetune_sweep.sizing.profiles import SizingError, load_sizing
from finetune_sweep.sizing.recommend import describe_window
from finetune_sweep.sweep.identity import as_of_from_context, finetune_run_id
from finetune_sweep.sweep.params import PlanError, validate_params
from finetune_sweep.sweep.plan import choose_profiles, plan_pods

if TYPE_CHECKING:
    from airflow.sdk import Context


def _fail_on_a_bound(exc: Exception, task: str) -> None:
    """Fail the task in one line when ``exc`` is a database bound that fired (or no connection)."""
    line = database_error_line(exc)
    if line is not None:
        raise AirflowException(f"{task}: {line}") from None


def valid_params(context: Mapping[str, Any]) -> dict[str, Any]:
    """The run's params validated as ``plan`` validated them: the factors of the sizing map with
    ``FINETUNE_SIZING``'s additions, the models of ``FINETUNE_MODELS``.

    :raises PlanError: invalid params or a bad ``FINETUNE_SIZING``.
    """
    try:
        sizing = load_sizing(sizing_overrides()[1])
    except SizingError as err:
        raise PlanError(str(err)) from None
    return validate_params(dict(context["params"]), known_factors=tuple(sizing), known_models=get_settings().models)


def sweep_run_id(context: Mapping[str, Any], *, data_uri: str | None) -> str:
    """The finetune run id of a DAG run: its DAG, as-of and validated params (and the data).

    ``plan`` calls it once; every later task takes the id from there (:func:`registered_run_id`).

    :param context: the task context.
    :param data_uri: ``FINETUNE_DATA_URI`` (part of the sweep's identity when set).
    :raises PlanError: invalid params or no as-of.
    """
    return finetune_run_id(
        dag_id=context["dag"].dag_id,
        as_of=as_of_from_context(context),
        params=valid_params(context),
        data_uri=data_uri,
    )


def plan(context: Context) -> list[dict[str, Any]]:
    """Validate, resolve profiles (overrides read now), one ``expand_kwargs`` entry per factor.

    :param context: the task context.
    :raises AirflowFailException: bad params or overrides (no retry can fix them).
    """
    settings = get_settings()
    profiles_json, sizing_json = sizing_overrides()
    try:
        # register applies the sizing policy; a bad value fails here, before any pod.
        sizing_policy()
    except SettingsError as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    try:
        check_pod_template(settings.pod_template_file)
        as_of = as_of_from_context(context)
        run_id = sweep_run_id(context, data_uri=settings.data_uri)
        entries = plan_pods(
            dict(context["params"]),
            run_id=run_id,
            as_of=as_of,
            profiles_json=profiles_json,
            sizing_json=sizing_json,
            data_uri=settings.data_uri,
            settings=settings,
        )
    except (PlanError, PodTemplateError) as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    for entry in entries:
        print(
            f"planned {entry['factor']}: profile {entry['profile']}, "
            f"memory {entry['container_resources']['limits']['memory']}, "
            f"activeDeadlineSeconds {entry.get('active_deadline_seconds')}, args {' '.join(entry['arguments'])}"
        )
    return entries


def planned_run_id(entries: Sequence[Mapping[str, Any]]) -> str:
    """The finetune run id ``plan`` gave its entries (each pod's ``--run-id``).

    :param entries: the output of ``plan``.
    :raises AirflowFailException: no entry, or entries of different runs.
    """
    run_ids = {argument_value([str(a) for a in entry.get("arguments") or []], "--run-id") for entry in entries}
    if len(run_ids) != 1 or None in run_ids:
        raise AirflowFailException(f"the plan's entries name no single run id ({sorted(map(str, run_ids))})")
    return str(run_ids.pop())


def register(entries: Sequence[Mapping[str, Any]], context: Context) -> list[dict[str, Any]]:
    """Choose each factor's starting profile, upsert the run and its manifest.

    Logs one line per factor (profile, map profile, reason) and pushes the finetune run id as the
    XCom ``run_id`` (the gate binds it; findings and report read it).

    :param entries: the output of ``plan``.
    :param context: the task context.
    :returns: the plan's entries on their starting profiles (what ``run_factor`` expands over).
    :raises AirflowFailException: a bad sizing setting (no retry can fix it).
    :raises AirflowException: the database hung or could not be reached (one line naming the bound).
    """
    import psycopg  # not at the top: the DAG file imports this module at parse time

    settings = get_settings()
    try:
        policy = sizing_policy()
    except SettingsError as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    run_id = planned_run_id(entries)
    params = valid_params(context)
    as_of = as_of_from_context(context)
    dsn = dsn_from_connection(settings.conn_id)
    try:
        started, choices = choose_profiles(dsn, entries, policy=policy, profiles_json=sizing_overrides()[0])
        register_run(
            dsn,
            run_id=run_id,
            dag_id=context["dag"].dag_id,
            as_of=as_of,
            # which data the rows come from (None: the built-in synthetic market), as the pod records it
            params={**params, "data_uri": settings.data_uri},
            strategy=params["model"],
            entries=started,
            choices=choices,
            airflow_run_id=str(context["run_id"]),
        )
    except psycopg.Error as exc:
        _fail_on_a_bound(exc, "register")
        raise
    window = describe_window(history_runs=policy.history_runs, history_days=policy.history_days)
    print(
        f"registered run {run_id} (Airflow run {context['run_id']}, as of {as_of}); sizing mode {policy.mode}"
        + (f", history: {window}" if policy.mode == "history" else "")
    )
    for entry in started:
        choice = choices[entry["factor"]]
        print(
            f"sizing {choice.factor}: starts on {choice.profile} "
            f"(memory {entry['container_resources']['limits']['memory']}, map {choice.map_profile}): {choice.reason}"
        )
    context["ti"].xcom_push(key=RUN_ID_XCOM, value=run_id)
    return started


def registered_run_id(context: Context) -> str | None:
    """The finetune run id ``register`` pushed for this DAG run (None: it never registered).

    :param context: the task context.
    """
    run_id = context["ti"].xcom_pull(task_ids=REGISTER_TASK_ID, key=RUN_ID_XCOM)
    return str(run_id) if run_id else None


def findings(context: Context) -> dict[str, Any]:
    """The ``findings`` task (runs only after the gate passed): compute, store, print the answer.

    :param context: the task context.
    :returns: a small summary for XCom (run id, counts, fdr_q).
    """
    try:
        params = valid_params(context)
    except PlanError as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    run_id = registered_run_id(context)
    if run_id is None:
        raise AirflowFailException("no finetune run id: register did not run for this DAG run")
    result = run_findings(dsn_from_connection(get_settings().conn_id), run_id=run_id, fdr_q=params["fdr_q"])
    print(result.summary())
    return {
        "run_id": run_id,
        "fdr_q": result.fdr_q,
        "combine_method": result.combine_method,
        "n_groups": result.n_groups,
        "n_discovered": result.n_discovered,
        "n_untested": len(result.untested),
    }


def report(context: Context) -> None:
    """Print the report of this run, then fail if the sweep did not succeed.

    It runs whatever happened upstream (``trigger_rule=all_done``), so that the sizing table of a
    run whose pod was OOMKilled or crashed is in the log too. Being the DAG's only leaf, it then
    carries the verdict: the run fails unless every factor pod, the gate and the findings step
    succeeded (a failed task that is not a leaf would not fail the run by itself).

    :param context: the task context.
    :raises AirflowException: the database hung or could not be reached (one line naming the bound).
    """
    import psycopg  # not at the top: the DAG file imports this module at parse time

    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=list(VERDICT_TASKS))
    run_states = states.get(ti.run_id, {})
    failed = unsuccessful_tasks(run_states)
    run_id = registered_run_id(context)
    profiles_json, sizing_json = sizing_overrides()
    try:
        if run_id is None:
            text = "no report: the sweep was never registered (plan or register failed; their logs say why)"
        else:
            text = build_report(
                dsn_from_connection(get_settings().conn_id),
                run_id,
                profiles_json=profiles_json,
                sizing_json=sizing_json,
                policy=sizing_policy(),
                findings_state=run_states.get("findings") or "none",
            )
    except psycopg.Error as exc:
        # A hung or unreachable database fails the report at the bound, in one line ...
        _fail_on_a_bound(exc, "report")
        # ... while a run that failed before `migrate` has no tables to report on; the verdict still stands.
        text = f"no report: the finetune database could not be read ({type(exc).__name__})"
    except (NotMigrated, SettingsError, SizingError) as exc:
        # A bad sizing setting already failed `plan`; say it again here instead of a traceback.
        text = f"no report: {exc}"
    print(text)
    if failed or run_id is None:
        raise AirflowFailException(
            f"the sweep did not succeed: {', '.join(failed) or 'not registered'} (check_baselines lists the "
            "missing keys; a failed findings task says why in its log)"
        )
