"""The sweep's params (schema, run-time validation), the plan (one pod per factor) and registration.

``plan`` (no I/O) puts each factor on its map profile; ``register`` (which has the database) moves
a factor up to what its recorded history asks for (``sizing.choose_start_profiles``; upward only,
``FINETUNE_SIZING_MODE=static`` pins the map), records the choice on the manifest, and returns the
entries the pods are expanded over.

The same JSON schemas serve twice: as ``Param`` objects for the trigger form (and the trigger-time
check of REST/CLI conf), and again inside ``plan`` at run time, because a run can start with conf
that never met the form (an old REST client, ``dags test --conf``, a cleared run). ``plan`` also
refuses unknown conf keys, which Airflow accepts silently, and turns 10.0 into 10.

Run identity: the finetune ``run_id`` is ``<dag_id>__<as_of>__<hash of the validated params>``,
e.g. ``finetune_sweep__2026-06-07T00:00:00Z__1a2b3c4d``. It is stable across task retries and
clears, and a rerun of the same sweep (same as-of, same params: a cleared run, or a second
``airflow dags test`` at the same logical date, whose Airflow run id embeds the wall clock) is the
same finetune run, so its writes upsert instead of piling up. Different params give a different
run. Pod labels carry a label-safe form of it (``pods.label_value``). ``as_of`` is the run's data
interval end (design section 5: never the wall clock).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from finetune_sweep.pods import spec as pods

from finetune_sweep.sizing import profiles as sizing
from finetune_sweep.findings import DEFAULT_FDR_Q

if TYPE_CHECKING:
    from airflow.sdk import Context, Param

    from finetune_sweep.settings import Settings, SizingPolicy

STRATEGY = "ridge_long_flat"
SYMBOL_PATTERN = r"^[A-Z0-9]{2,10}$"
# Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
IMAGE_TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
DEFAULT_IMAGE_TAG = "0.1.0"
# Pod-side defaults of finetune.folds (DEFAULT_TRAIN_BARS / DEFAULT_TEST_BARS): hourly bars.
DEFAULT_TRAIN_BARS = 24 * 180
DEFAULT_TEST_BARS = 24 * 30


def _bps_list(default: list[int], title: str, description: str) -> dict[str, Any]:
    return {
        "default": default,
        "title": title,
        "description": description,
        "schema": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 1000},
            "minItems": 1,
            "maxItems": 10,
            "uniqueItems": True,
        },
        "allowed": "a non-empty list of distinct integers from 0 to 1000 (basis points)",
    }


def _integer(default: int, minimum: int, maximum: int, title: str, description: str) -> dict[str, Any]:
    return {
        "default": default,
        "title": title,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum, "maximum": maximum},
        "allowed": f"an integer from {minimum} to {maximum}",
    }


def _param_specs(known_factors: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Name -> default, title, description, JSON schema and an "allowed" text for error messages."""
    factors = list(known_factors)
    return {
        "factors": {
            "default": factors,
            "title": "Factors",
            "description": "Feature families to fine-tune: one pod per factor, sized by the sizing map.",
            "schema": {
                "type": "array",
                "items": {"type": "string", "enum": factors},
                "minItems": 1,
                "uniqueItems": True,
            },
            # The trigger form renders a multi-select only with examples (its pick list).
            "form": {"examples": factors},
            "allowed": f"a non-empty list of distinct factors from: {', '.join(factors)}",
        },
        "cryptos": {
            "default": ["BTC", "ETH", "SOL"],
            "title": "Cryptos",
            "description": "Symbols, 2-10 upper-case letters or digits (one per line).",
            "schema": {
                "type": "array",
                "items": {"type": "string", "pattern": SYMBOL_PATTERN},
                "minItems": 1,
                "maxItems": 50,
                "uniqueItems": True,
            },
            "allowed": "a non-empty list of distinct symbols matching ^[A-Z0-9]{2,10}$",
        },
        "cost_bps": _bps_list([10, 15, 30], "Cost (bps)", "Trading cost levels per side, in basis points."),
        "slippage_bps": _bps_list([0], "Slippage (bps)", "Slippage levels per side, in basis points."),
        "n_folds": _integer(4, 1, 24, "Walk-forward folds", "Number of walk-forward folds (fold 0 is the oldest)."),
        "n_seeds": _integer(100, 1, 10_000, "Random-baseline seeds", "Seeds of the random baseline."),
        "hold_bars": _integer(24, 1, 24 * 30, "Hold bars", "Holding period of the random baseline and label horizon."),
        "train_bars": _integer(DEFAULT_TRAIN_BARS, 48, 24 * 365 * 5, "Train bars", "Training window per fold (bars)."),
        "test_bars": _integer(DEFAULT_TEST_BARS, 24, 24 * 365, "Test bars", "Test window per fold (bars)."),
        "image": {
            "default": DEFAULT_IMAGE_TAG,
            "title": "Image tag",
            "description": "Tag of the pinned finetune image (the repository is fixed by the deployment).",
            "schema": {"type": "string", "pattern": IMAGE_TAG_PATTERN},
            "allowed": "an image tag matching " + IMAGE_TAG_PATTERN,
        },
        "fdr_q": {
            "default": DEFAULT_FDR_Q,
            "title": "Findings FDR (q)",
            "description": "False discovery rate of the findings step (Benjamini-Hochberg over the run's groups).",
            "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "allowed": "a number strictly between 0 and 1, e.g. 0.1",
        },
    }


# Params that only read the stored rows afterwards (the findings step), never what a pod computes:
# left out of the run id, so a sweep keeps the id it had before the param existed, and asking
# for another FDR reruns onto the same rows (the findings step replaces the run's findings).
NOT_IN_RUN_IDENTITY = ("fdr_q",)


PARAM_NAMES: tuple[str, ...] = tuple(_param_specs(tuple(sizing.SIZING_MAP)))


class PlanError(ValueError):
    """Params or sizing overrides that cannot be planned; the message names the param."""


def default_params(*, image_tag: str | None = None) -> dict[str, Any]:
    """The default value of every param (a fresh copy).

    :param image_tag: the default image tag (default: :data:`DEFAULT_IMAGE_TAG`).
    """
    params = {name: copy.deepcopy(spec["default"]) for name, spec in _param_specs(tuple(sizing.SIZING_MAP)).items()}
    if image_tag:
        params["image"] = image_tag
    return params


def build_params(*, image_tag: str | None = None) -> dict[str, Param]:
    """The DAG's ``Param`` objects (trigger form + trigger-time validation).

    :param image_tag: the default image tag, e.g. ``Settings.image_tag``.
    """
    from airflow.sdk import Param

    params = {}
    for name, spec in _param_specs(tuple(sizing.SIZING_MAP)).items():
        default = copy.deepcopy(spec["default"])
        if name == "image" and image_tag:
            default = image_tag
        params[name] = Param(
            default,
            description=spec["description"],
            title=spec["title"],
            **spec["schema"],
            **spec.get("form", {}),
        )
    return params


def validate_params(params: Mapping[str, Any], *, known_factors: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate run params at run time and return them normalised (defaults filled, ints as int).

    :param params: the run's params (declared params plus any conf keys).
    :param known_factors: factors that may be planned (default: the sizing map's).
    :raises PlanError: naming the first bad param and what is allowed.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    specs = _param_specs(tuple(known_factors or sizing.SIZING_MAP))
    unknown = sorted(str(key) for key in params if key not in specs)
    if unknown:
        raise PlanError(f"unknown param(s) {', '.join(map(repr, unknown))}; allowed params: {', '.join(specs)}")
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        value = params[name] if name in params else copy.deepcopy(spec["default"])
        error = best_match(Draft202012Validator(spec["schema"]).iter_errors(value))
        if error is not None:
            where = "".join(f"[{p}]" for p in error.absolute_path)
            raise PlanError(f"param {name!r}{where}: {error.message}; allowed: {spec['allowed']}")
        # NaN passes every JSON Schema bound (each comparison with it is false).
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanError(f"param {name!r}: {value!r} is not a finite number; allowed: {spec['allowed']}")
        result[name] = _normalise(value)
    return result


def _normalise(value: Any) -> Any:
    # JSON Schema counts 10.0 as an integer; the pod's argument parser does not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def format_as_of(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (whole seconds: bars are far coarser).

    :param moment: an aware datetime.
    """
    if moment.tzinfo is None:
        raise PlanError(f"as_of must be timezone-aware, got {moment!r}")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_of_from_context(context: Mapping[str, Any]) -> str:
    """The run's as-of: its data interval end, else its logical date, else its ``run_after``.

    Never the wall clock: a scheduled run ends its interval at the schedule tick, ``dags test``
    at the logical date it is given, and a manual trigger at its recorded trigger time, so every
    task of a run (and any re-run of it) sees the same as-of.

    :param context: the task context.
    """
    dag_run = context.get("dag_run")
    for moment in (
        context.get("data_interval_end"),
        context.get("logical_date"),
        getattr(dag_run, "run_after", None),
    ):
        if moment is not None:
            return format_as_of(moment)
    raise PlanError("the dag run has no data interval end, logical date or run_after to take as_of from")


def finetune_run_id(*, dag_id: str, as_of: str, params: Mapping[str, Any], data_uri: str | None = None) -> str:
    """The finetune run id of a sweep: DAG, as-of and a hash of its validated params and data.

    :param dag_id: the DAG id.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param params: the validated params (:func:`validate_params`; defaults filled, so an omitted
        param and its default give the same id). :data:`NOT_IN_RUN_IDENTITY` are left out.
    :param data_uri: the data the pods read (``FINETUNE_DATA_URI``), as given: the same params on
        other data are another sweep, never an upsert over its rows. None (the built-in synthetic
        market) leaves it out, so the ids of such sweeps are those from before it counted.
    """
    identity = {key: value for key, value in params.items() if key not in NOT_IN_RUN_IDENTITY}
    if data_uri is not None:
        identity["data_uri"] = data_uri
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return f"{dag_id}__{as_of}__{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def run_id_from_context(context: Mapping[str, Any]) -> str:
    """The finetune run id of the running DAG run (``plan``, ``register`` and ``report`` agree).

    :param context: the task context.
    :raises PlanError: invalid params or no as-of.
    """
    from finetune_sweep.settings import get_settings

    return finetune_run_id(
        dag_id=context["dag"].dag_id,
        as_of=as_of_from_context(context),
        params=validate_params(dict(context["params"])),
        data_uri=get_settings().data_uri,
    )


DATA_URI_FORMS = "synthetic://, file:///absolute/dir, s3://bucket/prefix, gs://bucket/prefix"


def check_data_uri(data_uri: str | None) -> None:
    """Refuse a ``FINETUNE_DATA_URI`` no pod could read, before any pod (the pod checks it again).

    Only its form: scheme, an absolute folder, a bucket, no credentials (the message never shows
    them). Whether the data is there is for the pod to find.

    :raises PlanError: one line naming the URI (without credentials) and the allowed forms.
    """
    from urllib.parse import urlsplit, urlunsplit

    if data_uri is None:
        return
    parts = urlsplit(data_uri)
    shown = urlunsplit(parts._replace(netloc=parts.hostname or "")) if "@" in parts.netloc else data_uri
    if parts.username is not None or parts.password is not None:
        raise PlanError(f"FINETUNE_DATA_URI={shown!r} holds credentials: use the pods' environment or "
                        "workload identity instead")
    if parts.scheme == "synthetic":
        return
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return
    if parts.scheme in ("s3", "gs") and parts.hostname:
        return
    raise PlanError(f"FINETUNE_DATA_URI={shown!r} is not a data location; allowed: {DATA_URI_FORMS}")


def check_fits_synthetic_market(valid: Mapping[str, Any], *, as_of: str, data_uri: str | None) -> None:
    """Refuse params that cannot fit the built-in synthetic market (its length is known here).

    With a file or object-store URI the data's length is unknown before the pod reads it: then
    the pod exits 2 with the fold that does not fit, and that line reaches the task log.
    This check only refuses what is certain to fail (feature warm-up may need a few bars more).
    The market's extent comes from the pod package (installed beside Airflow for the local
    backend); where it is not installed, the pod alone decides.

    :param valid: validated params.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param data_uri: ``--data-uri`` of the pods (None: the synthetic market).
    :raises PlanError: naming what does not fit and what is available.
    """
    try:
        from finetune import synthetic
    except ImportError:
        return
    if data_uri is not None:
        if not synthetic.is_synthetic_uri(data_uri):
            return
        try:
            synthetic.parse_synthetic_uri(data_uri)
        except ValueError as err:
            raise PlanError(f"FINETUNE_DATA_URI: {err}") from None
    # the synthetic market extends block by block to any as-of: only its start bounds the folds
    start = synthetic.SYNTHETIC_START.to_pydatetime()
    symbols = synthetic.SYNTHETIC_SYMBOLS
    unknown = [crypto for crypto in valid["cryptos"] if crypto not in symbols]
    if unknown:
        raise PlanError(
            f"param 'cryptos': {', '.join(unknown)} not in the synthetic market; allowed: {', '.join(symbols)}"
        )
    cutoff = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    # hourly bars from the first one up to as-of (an upper bound: a bar is used once it closed)
    available = max(0, int((cutoff - start).total_seconds() // 3600) + 1)
    needed = valid["train_bars"] + valid["hold_bars"] + valid["n_folds"] * valid["test_bars"]
    if needed > available:
        raise PlanError(
            f"params cannot fit the data: n_folds {valid['n_folds']} x test_bars {valid['test_bars']} "
            f"+ train_bars {valid['train_bars']} + hold_bars {valid['hold_bars']} (embargo) = {needed} bars, "
            f"but the synthetic market has {available} hourly bars up to as-of {as_of} "
            f"(from {start:%Y-%m-%dT%H:%MZ}); lower n_folds, test_bars or train_bars"
        )


def plan_pods(
    params: Mapping[str, Any],
    *,
    run_id: str,
    as_of: str,
    profiles_json: str | None = None,
    sizing_json: str | None = None,
    data_uri: str | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """One ``expand_kwargs`` entry per requested factor (see ``pods.factor_pod_kwargs``).

    :param params: the run params (validated here).
    :param run_id: the finetune run id.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param profiles_json: ``FINETUNE_PROFILES`` (read at run time by the caller).
    :param sizing_json: ``FINETUNE_SIZING`` (read at run time by the caller).
    :param data_uri: ``--data-uri`` for every pod, or None for the pod's default.
    :param settings: the deadline allowances (default: the process settings).
    :raises PlanError: bad params, params that cannot fit the synthetic market, bad overrides, a
        data URI no pod could read.
    """
    from finetune_sweep.settings import get_settings

    settings = settings or get_settings()
    try:
        profiles = sizing.load_profiles(profiles_json)
        sizing_map = sizing.load_sizing(sizing_json)
    except sizing.SizingError as err:
        raise PlanError(str(err)) from None
    valid = validate_params(params, known_factors=tuple(sizing_map))
    check_data_uri(data_uri)
    check_fits_synthetic_market(valid, as_of=as_of, data_uri=data_uri)
    run_args = {
        "cryptos": valid["cryptos"],
        "cost_bps": valid["cost_bps"],
        "slippage_bps": valid["slippage_bps"],
        "as_of": as_of,
        "n_folds": valid["n_folds"],
        "n_seeds": valid["n_seeds"],
        "hold_bars": valid["hold_bars"],
        "train_bars": valid["train_bars"],
        "test_bars": valid["test_bars"],
        "data_uri": data_uri,
    }
    deadline = pods.pod_deadline_seconds(
        n_keys=pods.n_pod_keys(run_args),
        per_key_seconds=settings.pod_deadline_per_key_seconds,
        startup_seconds=settings.pod_deadline_startup_seconds,
        fixed=settings.pod_deadline_seconds,
    )
    return [
        pods.factor_pod_kwargs(
            factor=factor,
            profile=sizing.profile_for(factor, sizing=sizing_map, profiles=profiles),
            run_id=run_id,
            run_args=run_args,
            profiles=profiles,
            active_deadline_seconds=deadline,
        )
        for factor in valid["factors"]
    ]


def plan_from_context(context: Context) -> list[dict[str, Any]]:
    """The ``plan`` task: validate, resolve profiles (overrides read now), one entry per factor.

    :param context: the task context.
    :raises AirflowFailException: bad params or overrides (no retry can fix them).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from finetune_sweep.pods.template import PodTemplateError, check_pod_template
    from finetune_sweep.settings import SettingsError, get_settings, sizing_overrides, sizing_policy

    profiles_json, sizing_json = sizing_overrides()
    settings = get_settings()
    try:
        # register applies the sizing policy; a bad value fails here, before any pod.
        sizing_policy()
    except SettingsError as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    try:
        check_pod_template(settings.pod_template_file, db_secret=(settings.db_secret_name, settings.db_secret_key))
        entries = plan_pods(
            dict(context["params"]),
            run_id=run_id_from_context(context),
            as_of=as_of_from_context(context),
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


UPSERT_RUN_SQL = """
INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params)
VALUES (%(run_id)s, %(dag_id)s, %(strategy)s, %(as_of)s, %(params)s)
ON CONFLICT (run_id) DO UPDATE
SET dag_id = EXCLUDED.dag_id, strategy = EXCLUDED.strategy, as_of = EXCLUDED.as_of, params = EXCLUDED.params
"""

# A re-registration (the run was cleared) starts the factor afresh: the manifest says "planned"
# until its pod reports again, so the gate cannot pass on a previous attempt's status.
UPSERT_FACTOR_SQL = """
INSERT INTO finetune_run_factors
    (run_id, factor, profile, status, memory_limit_bytes, attempt, map_profile, profile_reason)
VALUES (%(run_id)s, %(factor)s, %(profile)s, 'planned', %(memory_limit_bytes)s, 1, %(map_profile)s,
        %(profile_reason)s)
ON CONFLICT (run_id, factor) DO UPDATE
SET profile = EXCLUDED.profile, status = 'planned', memory_limit_bytes = EXCLUDED.memory_limit_bytes,
    attempt = 1, peak_memory_bytes = NULL, exit_reason = NULL, updated_at = now(),
    map_profile = EXCLUDED.map_profile, profile_reason = EXCLUDED.profile_reason
"""

# The UI resolves an Airflow run to its finetune run here (several Airflow runs may rerun one
# finetune run). registered_at is the latest registration: a cleared run registers again, and the
# report finds the attempts of this registration as the ones that finished after it.
UPSERT_AIRFLOW_RUN_SQL = """
INSERT INTO finetune_airflow_runs (dag_id, airflow_run_id, run_id)
VALUES (%(dag_id)s, %(airflow_run_id)s, %(run_id)s)
ON CONFLICT (dag_id, airflow_run_id) DO UPDATE
SET run_id = EXCLUDED.run_id, registered_at = now()
"""


def register_run(
    dsn: str,
    *,
    run_id: str,
    dag_id: str,
    as_of: str,
    params: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    choices: Mapping[str, sizing.StartChoice] | None = None,
    airflow_run_id: str | None = None,
) -> None:
    """Upsert the run, its manifest (one ``planned`` row per factor) and the Airflow-run link, in one transaction.

    :param dsn: libpq URI of the finetune database.
    :param run_id: the finetune run id.
    :param dag_id: the DAG id.
    :param as_of: the as-of, ``YYYY-MM-DDTHH:MM:SSZ``.
    :param params: the validated params (stored as jsonb; the gate derives the expected keys).
    :param entries: the entries the pods start from (factor, profile, container_resources).
    :param choices: factor -> the starting-profile choice (map profile and reason on the manifest);
        a factor without one started on its map profile.
    :param airflow_run_id: the Airflow run being registered (``finetune_airflow_runs``), if any.
    """
    import psycopg
    from psycopg.types.json import Jsonb

    as_of_dt = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    choices = choices or {}
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(
            UPSERT_RUN_SQL,
            {
                "run_id": run_id,
                "dag_id": dag_id,
                "strategy": STRATEGY,
                "as_of": as_of_dt,
                "params": Jsonb(dict(params)),
            },
        )
        with conn.cursor() as cur:
            cur.executemany(
                UPSERT_FACTOR_SQL,
                [
                    {
                        "run_id": run_id,
                        "factor": entry["factor"],
                        "profile": entry["profile"],
                        "memory_limit_bytes": sizing.parse_quantity(entry["container_resources"]["limits"]["memory"]),
                        "map_profile": choice.map_profile if choice else entry["profile"],
                        "profile_reason": choice.reason if choice else sizing.MAP_REASON,
                    }
                    for entry in entries
                    for choice in [choices.get(entry["factor"])]
                ],
            )
        if airflow_run_id is not None:
            conn.execute(UPSERT_AIRFLOW_RUN_SQL, {"dag_id": dag_id, "airflow_run_id": airflow_run_id, "run_id": run_id})


def _entry_profiles(entries: Sequence[Mapping[str, Any]]) -> dict[str, sizing.PodProfile]:
    """The profile ladder the plan resolved (an entry's ``profiles``), else ``FINETUNE_PROFILES`` now."""
    from finetune_sweep.settings import sizing_overrides

    resolved = next((entry["profiles"] for entry in entries if entry.get("profiles")), None)
    if resolved is None:
        return sizing.load_profiles(sizing_overrides()[0])
    if isinstance(resolved, str):
        resolved = json.loads(resolved)
    # the same decoding as the operator's, so tolerations and affinity survive the move
    return sizing.profiles_from_json(resolved)


def choose_profiles(
    dsn: str, entries: Sequence[Mapping[str, Any]], *, policy: SizingPolicy
) -> tuple[list[dict[str, Any]], dict[str, sizing.StartChoice]]:
    """Each entry on its starting profile: the larger of the plan's (the map's) and its history's.

    :param dsn: libpq URI of the finetune database (the recorded attempts).
    :param entries: the plan's entries; their ``profile`` is the map profile.
    :param policy: the sizing mode and history window (``settings.sizing_policy``).
    :returns: the entries resized (see ``pods.with_profile``) and factor -> choice.
    """
    profiles = _entry_profiles(entries)
    map_profiles = {entry["factor"]: entry["profile"] for entry in entries}
    history = []
    if policy.mode == "history":
        history = sizing.fetch_history(
            dsn, history_runs=policy.history_runs, history_days=policy.history_days, factors=list(map_profiles)
        )
    choices = sizing.choose_start_profiles(map_profiles, history, profiles=profiles, mode=policy.mode)
    resized = [
        pods.with_profile(entry, profile=profiles[choices[entry["factor"]].profile])
        if choices[entry["factor"]].profile != entry["profile"]
        else dict(entry)
        for entry in entries
    ]
    return resized, choices


def register_from_context(entries: Sequence[Mapping[str, Any]], context: Context) -> list[dict[str, Any]]:
    """The ``register`` task: choose each factor's starting profile, upsert the run and manifest.

    Logs one line per factor (profile, map profile, reason) and pushes the finetune run id as the
    XCom ``run_id`` (the gate binds it).

    :param entries: the output of ``plan``.
    :param context: the task context.
    :returns: the plan's entries on their starting profiles (what ``run_factor`` expands over).
    :raises AirflowFailException: a bad sizing setting (no retry can fix it).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from finetune_sweep.db.dsn import dsn_from_connection
    from finetune_sweep.settings import SettingsError, get_settings, sizing_policy

    try:
        policy = sizing_policy()
    except SettingsError as err:
        raise AirflowFailException(f"invalid sweep: {err}") from None
    params = validate_params(dict(context["params"]))
    run_id = run_id_from_context(context)
    as_of = as_of_from_context(context)
    dsn = dsn_from_connection(get_settings().conn_id)
    started, choices = choose_profiles(dsn, entries, policy=policy)
    register_run(
        dsn,
        run_id=run_id,
        dag_id=context["dag"].dag_id,
        as_of=as_of,
        # which data the rows come from (None: the built-in synthetic market), as the pod records it
        params={**params, "data_uri": get_settings().data_uri},
        entries=started,
        choices=choices,
        airflow_run_id=str(context["run_id"]),
    )
    window = sizing.describe_window(history_runs=policy.history_runs, history_days=policy.history_days)
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
    context["ti"].xcom_push(key="run_id", value=run_id)
    return started
