"""``python -m finetune_sweep render|recommend|findings``: the operator's commands, one entry point.

- ``render --factor F [--model M] [--run-id R] [--as-of T] [--image-tag T] [--output json|yaml]``: the pod
  manifest that would be submitted for a factor (DESIGN 4.5), built offline.
- ``recommend [--dsn DSN]``: per factor the recorded peaks, the headroom of its current profile
  and the recommended profile (DESIGN 6).
- ``findings --dsn DSN --run-id R [--fdr-q Q] [--method M]``: recompute the findings of a stored
  run (e.g. at another FDR) and print the answer.

The older spellings ``python -m finetune_sweep.pods render``, ``python -m finetune_sweep.sizing
recommend`` and ``python -m finetune_sweep.findings`` run this same entry point.

Any failure is one line on stderr and exit 2 (bad input or configuration) or 1 (the database is
unreachable), never a traceback; a secret never reaches the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from finetune_sweep.db.attempts import fetch_history
from finetune_sweep.db.connect import NotMigrated
from finetune_sweep.db.dsn import dsn_from_connection, redact
from finetune_sweep.findings import COMBINE_METHODS, DEFAULT_COMBINE_METHOD, DEFAULT_FDR_Q, run_findings
from finetune_sweep.pods.render import render_manifest
from finetune_sweep.pods.template import PodTemplateError, check_pod_template
from finetune_sweep.settings import SettingsError, database_url, get_settings, sizing_overrides, sizing_policy
from finetune_sweep.sizing.profiles import SizingError, load_profiles, load_sizing
from finetune_sweep.sizing.recommend import describe_window, format_recommendations, recommend
from finetune_sweep.sweep.params import PlanError, default_params
from finetune_sweep.sweep.plan import plan_pods

PROG = "python -m finetune_sweep"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="finetune-sweep: the Airflow side's commands")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="print the pod manifest of one factor (offline dry run)")
    render.add_argument("--factor", required=True)
    render.add_argument("--run-id", default="manual__render")
    render.add_argument("--as-of", default="2026-01-04T00:00:00Z", help="ISO time (the run's data interval end)")
    render.add_argument("--image-tag", help="tag instead of the pinned one (the DAG param image)")
    render.add_argument("--model", help="the DAG param model (default: the param's, from FINETUNE_MODELS)")
    render.add_argument("--output", choices=("json", "yaml"), default="yaml")
    rec = sub.add_parser("recommend", help="recommend a profile per factor from the recorded peaks")
    rec.add_argument("--dsn", help="libpq URI (default: FINETUNE_DB_URL, else the finetune_db connection)")
    found = sub.add_parser(
        "findings", help="recompute the findings of a stored run (e.g. at another FDR) and print the answer"
    )
    found.add_argument("--dsn", required=True, help="libpq URI of the finetune database")
    found.add_argument("--run-id", required=True, help="the finetune run id")
    found.add_argument("--fdr-q", type=float, default=DEFAULT_FDR_Q, help="false discovery rate, 0 < q < 1")
    found.add_argument("--method", default=DEFAULT_COMBINE_METHOD, help=f"one of {', '.join(COMBINE_METHODS)}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = _parser().parse_args(argv)
    return {"render": render, "recommend": recommend_profiles, "findings": findings}[args.command](args)


def render(args: argparse.Namespace) -> int:
    """Print the manifest of ``--factor``: the DAG's default params, ``FINETUNE_PROFILES`` /
    ``FINETUNE_SIZING`` and the settings, exactly as ``plan`` and the operator would build it."""
    settings = get_settings()
    # The DAG's default tag is FINETUNE_IMAGE's own (build_params(image_tag=...)): the same here.
    params = default_params(image_tag=settings.image_tag)
    params["factors"] = [args.factor]
    params["model"] = args.model or settings.default_model
    if args.image_tag:
        params["image"] = args.image_tag
    profiles_json, sizing_json = sizing_overrides()
    try:
        check_pod_template(settings.pod_template_file)
        (entry,) = plan_pods(
            params,
            run_id=args.run_id,
            as_of=args.as_of,
            profiles_json=profiles_json,
            sizing_json=sizing_json,
            data_uri=settings.data_uri,
            settings=settings,
        )
    except (PlanError, PodTemplateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = render_manifest(factor_kwargs=entry, image=settings.image_with_tag(params["image"]), settings=settings)
    if args.output == "json":
        print(json.dumps(manifest, indent=2, sort_keys=False))
    else:
        import yaml

        print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def recommend_profiles(args: argparse.Namespace) -> int:
    """Print the recommendation table. The database is ``--dsn``, else ``FINETUNE_DB_URL``, else
    the Airflow connection ``finetune_db``; ``FINETUNE_SIZING_HISTORY_RUNS`` / ``_DAYS`` give the
    history window (the one ``register`` uses)."""
    import psycopg
    from airflow.exceptions import AirflowNotFoundException

    try:
        profiles_json, sizing_json = sizing_overrides()
        profiles = load_profiles(profiles_json)
        sizing = load_sizing(sizing_json)
        policy = sizing_policy()
    except (SizingError, SettingsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dsn = args.dsn or database_url()
    if not dsn:
        conn_id = get_settings().conn_id
        try:
            dsn = dsn_from_connection(conn_id)
        except AirflowNotFoundException:
            print(
                f"error: no database given: pass --dsn, set FINETUNE_DB_URL or define the Airflow connection {conn_id}",
                file=sys.stderr,
            )
            return 2
    try:
        # db.connect bounds the connection (10 s unless the DSN says otherwise): a down host fails fast
        history = fetch_history(dsn, history_runs=policy.history_runs, history_days=policy.history_days)
    except NotMigrated as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except psycopg.ProgrammingError as err:  # a malformed DSN
        print(f"error: invalid database DSN: {database_error_line(err, dsn)}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as err:
        line = database_error_line(err, dsn)
        print(f"error: {line}", file=sys.stderr)
        return 1 if line.startswith("database unreachable") else 2
    print(f"history: {describe_window(history_runs=policy.history_runs, history_days=policy.history_days)}")
    print(format_recommendations(recommend(history, sizing, profiles), mode=policy.mode))
    return 0


def findings(args: argparse.Namespace) -> int:
    """Recompute and store the findings of ``--run-id``, then print them."""
    import psycopg

    try:
        result = run_findings(args.dsn, run_id=args.run_id, fdr_q=args.fdr_q, method=args.method)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except psycopg.Error as err:
        print(f"error: the finetune database: {redact(str(err).splitlines()[0], [args.dsn])}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def database_error_line(exc: Exception, dsn: str) -> str:
    """One line for a failed database connection: refused settings or unreachable, no secret.

    Refused credentials or database name (the pod's own classification,
    ``finetune.connection.is_refused``) are a configuration error, never "unreachable".

    :param exc: the psycopg error.
    :param dsn: the DSN tried (its password is scrubbed from the line).
    """
    import psycopg

    # The pod package's own classification: installed beside Airflow for the local backend, and
    # imported only here, so that a worker image without it can still run the other commands.
    from finetune.connection import is_refused
    from finetune.redaction import dsn_password

    text = redact(" ".join(str(exc).split()), [dsn, dsn_password(dsn)])
    if isinstance(exc, psycopg.Error) and is_refused(exc):
        return f"the database refused the connection settings (a configuration error, not an outage): {text}"
    return f"database unreachable: {text}"
