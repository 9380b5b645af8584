"""``python -m finetune migrate | run ...``: the container's command line (DESIGN 4.1).

Exit codes: 0 success; 1 the run (or migration) started and failed, or the database is
unreachable after the retry budget; 2 refused before anything was written (bad arguments, missing
or refused configuration such as credentials the server rejects, input data that cannot make the
run). A refusal is one line on stderr; once a run starts, stdout carries
only JSON events (:mod:`finetune.events`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import pandas as pd
import psycopg

from finetune.bars import (
    BAR_LABELS,
    DEFAULT_MAX_GAP_BARS,
    DEFAULT_MAX_STALE_BARS,
    GAP_MODES,
    BarOptions,
    parse_interval,
)
from finetune.connection import DatabaseRefused, DatabaseSettings, DatabaseSettingsError, timeout_error
from finetune.data import to_utc, validate_symbol
from finetune.events import EventLog, print_error
from finetune.folds import DEFAULT_TEST_BARS, DEFAULT_TRAIN_BARS
from finetune.migrate import MigrationError, apply_migrations
from finetune.persistence import DatabaseUnavailable, dsn_password, error_line
from finetune.plugins import DEFAULT_MODEL, check_all
from finetune.runner import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    Plan,
    PodContext,
    RunConfig,
    Terminated,
    execute,
    prepare,
    sigterm_raises,
)
from finetune.significance import DEFAULT_N_SHIFTS
from finetune.workers import limit_blas_threads, pod_workers

DB_URL_ENV = "FINETUNE_DB_URL"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that refuses with one line (no usage block): the task log shows just the cause."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _csv(item: Callable[[str], object]) -> Callable[[str], tuple]:
    """A comma-separated list of ``item``, non-empty, duplicates dropped (first kept)."""

    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",")]
        if not text.strip() or any(part == "" for part in parts):
            raise argparse.ArgumentTypeError(f"expected a non-empty comma-separated list, got {text!r}")
        return tuple(dict.fromkeys(item(part) for part in parts))

    return parse


def _bps(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"basis points must be integers >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _interval(text: str) -> pd.Timedelta:
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _symbol(text: str) -> str:
    try:
        return validate_symbol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _as_of(text: str) -> pd.Timestamp:
    try:
        return to_utc(text)
    except ValueError as exc:
        # to_utc names the refused wall-clock words ('now', 'today') itself.
        message = str(exc) if str(exc).startswith("not an ISO timestamp") else f"not an ISO timestamp: {text!r}"
        raise argparse.ArgumentTypeError(message) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="finetune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{migrate,run,plugins}")
    migrate = commands.add_parser("migrate", help="apply the sql/ migrations to FINETUNE_DB_URL")
    migrate.add_argument("--dir", default=None, help="migrations directory (default: FINETUNE_MIGRATIONS_DIR, sql/)")
    migrate.add_argument("--target", default=None, help="stop after this version, e.g. V002")

    commands.add_parser("plugins", help="import every installed factor and model; exit 2 if any cannot be used")
    run = commands.add_parser("run", help="fine-tune one factor and persist its rows and baselines")
    run.add_argument("--run-id", required=True)
    run.add_argument("--factor", required=True, help="an installed factor (entry point group finetune.factors)")
    run.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"an installed model (entry point group finetune.models; default {DEFAULT_MODEL}): every row's strategy",
    )
    run.add_argument("--cryptos", required=True, type=_csv(_symbol), help="e.g. BTC,ETH,SOL")
    run.add_argument("--cost-bps", required=True, type=_csv(_bps), help="e.g. 10,15,30")
    run.add_argument("--slippage-bps", type=_csv(_bps), default=(0,), help="e.g. 0 (default)")
    run.add_argument("--as-of", required=True, type=_as_of, help="UTC timestamp anchoring the folds")
    run.add_argument("--n-folds", required=True, type=_positive)
    run.add_argument("--n-seeds", required=True, type=_positive)
    run.add_argument(
        "--n-shifts",
        type=_positive,
        default=DEFAULT_N_SHIFTS,
        help=f"sign-flip draws per model in the timing test, bootstrap resamples per cost in the profit "
        f"test and shifted copies for the matched percentile (default {DEFAULT_N_SHIFTS}, independent of "
        "--n-seeds); a fold's p-values are never below 1/(n_shifts + 1)",
    )
    run.add_argument("--hold-bars", required=True, type=_positive)
    run.add_argument("--train-bars", type=_positive, default=DEFAULT_TRAIN_BARS)
    run.add_argument("--test-bars", type=_positive, default=DEFAULT_TEST_BARS)
    run.add_argument(
        "--data-uri",
        default=None,
        help="synthetic://, file:///dir, s3://bucket/prefix or gs://bucket/prefix (default: FINETUNE_DATA_URI)",
    )
    # Data options (DESIGN 4.1): how the data's rows become calendar bars (finetune.bars).
    run.add_argument("--gaps", choices=GAP_MODES, default="fill", help="fill (default), refuse or rows")
    run.add_argument(
        "--max-gap-bars",
        type=_non_negative,
        default=DEFAULT_MAX_GAP_BARS,
        help=f"longest gap --gaps fill fills (default {DEFAULT_MAX_GAP_BARS})",
    )
    run.add_argument(
        "--bar-label", choices=BAR_LABELS, default="open", help="a stamp is the bar's open (default) or close"
    )
    run.add_argument(
        "--max-stale-bars",
        type=_non_negative,
        default=DEFAULT_MAX_STALE_BARS,
        help=f"the last bar closes at most this many bars before as-of (default {DEFAULT_MAX_STALE_BARS})",
    )
    run.add_argument("--bar-interval", type=_interval, default=None, help="e.g. 1h, 15min, 1d (default: detected)")
    return parser


def _refuse(message: str, code: int) -> int:
    print_error(message)
    return code


def _pod_context(environ: Mapping[str, str]) -> PodContext:
    attempt = environ.get("FINETUNE_ATTEMPT", "1").strip() or "1"
    if not attempt.isdigit() or int(attempt) < 1:
        raise InputError(f"FINETUNE_ATTEMPT must be an integer >= 1, got {attempt!r}")
    try:
        database = DatabaseSettings.from_env(environ)
        workers = pod_workers(environ)
    except (DatabaseSettingsError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    return PodContext(
        attempt=int(attempt),
        profile=environ.get("FINETUNE_PROFILE") or None,
        environ=environ,
        airflow_run_id=environ.get("FINETUNE_AIRFLOW_RUN_ID", "").strip(),
        database=database,
        workers=workers,
    )


def _run(args: argparse.Namespace, dsn: str, environ: Mapping[str, str]) -> int:
    config = RunConfig(
        run_id=args.run_id,
        factor=args.factor,
        cryptos=args.cryptos,
        cost_bps=args.cost_bps,
        slippage_bps=args.slippage_bps,
        as_of=args.as_of,
        n_folds=args.n_folds,
        n_seeds=args.n_seeds,
        n_shifts=args.n_shifts,
        model=args.model,
        hold_bars=args.hold_bars,
        train_bars=args.train_bars,
        test_bars=args.test_bars,
        data_uri=args.data_uri or environ.get("FINETUNE_DATA_URI") or None,
        bars=BarOptions(
            gaps=args.gaps,
            max_gap_bars=args.max_gap_bars,
            bar_label=args.bar_label,
            max_stale_bars=args.max_stale_bars,
            bar_interval=args.bar_interval,
        ),
    )
    limit_blas_threads()
    with sigterm_raises():
        try:
            pod = _pod_context(environ)
            plan = prepare(config, workers=pod.workers)  # never more processes than cryptos
        except InputError as exc:
            return _refuse(str(exc), EXIT_USAGE)
        except Terminated as exc:
            return _refuse(f"stopped before the run started: {exc}", EXIT_FAILED)
        return _execute(config, plan, dsn, pod)


def _execute(config: RunConfig, plan: Plan, dsn: str, pod: PodContext) -> int:
    try:
        return execute(config, plan, dsn=dsn, pod=pod)
    except InputError as exc:  # the run's row says it holds other data: nothing was written
        return _refuse(str(exc), EXIT_USAGE)
    except DatabaseRefused as exc:
        return _refuse(str(exc), EXIT_USAGE)  # configuration: retrying or rescheduling cannot help
    except DatabaseUnavailable as exc:
        return _refuse(str(exc), EXIT_FAILED)
    except Terminated as exc:
        # Outside the run's own failure path (registering, or recording the outcome).
        return _refuse(f"stopped: {exc}", EXIT_FAILED)
    except psycopg.Error as exc:
        # Registering the run failed (e.g. the schema is missing: `migrate` did not run).
        return _refuse(f"database error before the run started: {error_line(exc, dsn)}", EXIT_FAILED)


def _migrate(args: argparse.Namespace, dsn: str, environ: Mapping[str, str]) -> int:
    try:
        settings = DatabaseSettings.from_env(environ)
    except DatabaseSettingsError as exc:
        return _refuse(str(exc), EXIT_USAGE)
    try:
        applied = apply_migrations(dsn, args.dir, target=args.target, settings=settings)
    except DatabaseRefused as exc:
        return _refuse(str(exc), EXIT_USAGE)
    except psycopg.Error as exc:
        # Outside a migration's own transaction: e.g. the lock_timeout while another migrate
        # holds the advisory lock for longer than that.
        return _refuse(f"migrate failed: {timeout_error(exc, settings) or error_line(exc, dsn)}", EXIT_FAILED)
    except (MigrationError, DatabaseUnavailable) as exc:
        return _refuse(str(exc), EXIT_FAILED)
    EventLog(secrets=[dsn_password(dsn)]).emit("migrate_finished", applied=applied)
    return EXIT_OK


def _plugins() -> int:
    """One line per installed plug-in: ``factor NAME ok`` or its error; exit 2 when any fails."""
    failed = False
    for kind, name, error in check_all():
        print(f"{kind} {name} " + ("ok" if error is None else f"FAILED: {error}"))
        failed = failed or error is not None
    return EXIT_USAGE if failed else EXIT_OK


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (never raises SystemExit)."""
    env = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's refusal (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "plugins":  # needs no database
        return _plugins()
    dsn = env.get(DB_URL_ENV, "").strip()
    if not dsn:
        return _refuse(f"{DB_URL_ENV} is not set: it must hold the database's libpq URI", EXIT_USAGE)
    if args.command == "migrate":
        return _migrate(args, dsn, env)
    return _run(args, dsn, env)
