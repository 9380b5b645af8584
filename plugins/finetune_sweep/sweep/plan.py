"""The plan of a sweep: one pod per factor, each on its map profile, and each factor's starting
profile at ``register`` (the larger of its map profile and what its recorded history asks for,
upward only; ``FINETUNE_SIZING_MODE=static`` pins the map).

``plan`` has no I/O (the data URI is checked for its form, the synthetic market for its length);
``register`` reads the attempt history and records its choice on the manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from finetune_sweep.db.attempts import fetch_history
from finetune_sweep.findings import lone_edge_capacity, p_value_floor, shifts_needed
from finetune_sweep.pods.spec import factor_pod_kwargs, n_pod_keys, pod_deadline_seconds, with_profile
from finetune_sweep.settings import Settings
from finetune_sweep.sizing.profiles import (
    PodProfile,
    SizingError,
    load_profiles,
    load_sizing,
    pod_workers,
    profile_for,
    profiles_from_json,
)
from finetune_sweep.sizing.recommend import StartChoice, choose_start_profiles
from finetune_sweep.sweep.params import PlanError, validate_params

if TYPE_CHECKING:
    from finetune_sweep.settings import SizingPolicy

DATA_URI_FORMS = "synthetic://, file:///absolute/dir, s3://bucket/prefix, gs://bucket/prefix"


def check_data_uri(data_uri: str | None) -> None:
    """Refuse a ``FINETUNE_DATA_URI`` no pod could read, before any pod (the pod checks it again).

    Only its form: scheme, an absolute folder, a bucket, no credentials (the message never shows
    them). Whether the data is there is for the pod to find.

    :raises PlanError: one line naming the URI (without credentials) and the allowed forms.
    """
    if data_uri is None:
        return
    parts = urlsplit(data_uri)
    shown = urlunsplit(parts._replace(netloc=parts.hostname or "")) if "@" in parts.netloc else data_uri
    if parts.username is not None or parts.password is not None:
        raise PlanError(
            f"FINETUNE_DATA_URI={shown!r} holds credentials: use the pods' environment or workload identity instead"
        )
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
    spec = synthetic.SyntheticSpec()
    if data_uri is not None:
        if not synthetic.is_synthetic_uri(data_uri):
            return
        try:
            spec = synthetic.parse_synthetic_uri(data_uri)
        except ValueError as err:
            raise PlanError(f"FINETUNE_DATA_URI: {err}") from None
    # the synthetic market extends block by block to any as-of: only its start bounds the folds
    start = synthetic.SYNTHETIC_START.to_pydatetime()
    unknown = [crypto for crypto in valid["cryptos"] if crypto not in spec.symbols]
    if unknown:
        raise PlanError(
            f"param 'cryptos': {', '.join(unknown)} not in the synthetic market; allowed: {synthetic.describe(spec)}"
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


def check_p_value_floor(valid: Mapping[str, Any]) -> None:
    """Refuse a sweep in which no lone edge could be found: its folds' smallest p-values, combined,
    must pass Benjamini-Hochberg at ``fdr_q`` among the sweep's hypotheses (``findings``).

    Timing: ``factors x cryptos`` models; profit: every (model, cost basis); each fold's p-value at
    least ``1 / (1 + n_shifts)`` (sign flips and bootstrap resamples: the window's length does not
    cap them; the report prints the floor the pods reached).

    :param valid: validated params.
    :raises PlanError: naming the floor, the hypotheses and the n_shifts needed.
    """
    n_shifts, n_folds, fdr_q = int(valid["n_shifts"]), int(valid["n_folds"]), float(valid["fdr_q"])
    models = len(valid["factors"]) * len(valid["cryptos"])
    pairs = models * len(valid["cost_bps"]) * len(valid["slippage_bps"])
    floor = p_value_floor([n_shifts] * n_folds)
    for what, hypotheses in (("timing models", models), ("profit groups (model x cost basis)", pairs)):
        if lone_edge_capacity(floor, fdr_q=fdr_q) >= hypotheses:
            continue
        raise PlanError(
            f"no finding would be possible: {n_folds} fold(s) at {n_shifts} shifts reach a p-value of "
            f"{floor:.3g} at best, and Benjamini-Hochberg at fdr_q {fdr_q:g} over this sweep's {hypotheses} "
            f"{what} needs {fdr_q / hypotheses:.3g} for a lone edge; use n_shifts >= "
            f"{shifts_needed(hypotheses, n_folds=n_folds, fdr_q=fdr_q)}"
        )


def run_work(valid: Mapping[str, Any]) -> tuple[int, str]:
    """The run's work, keys x (n_seeds + n_shifts) over all factors, and the product spelt out.

    A key is (factor, crypto, fold, cost, slippage); per key the pod draws ``n_seeds`` random
    baseline seeds, and per model ``n_shifts`` sign flips (timing) and shifted copies of its
    positions (matched percentile) and per cost basis ``n_shifts`` bootstrap resamples of its P&L,
    which dominate its time.

    :param valid: validated params.
    """
    n_shifts = int(valid.get("n_shifts", valid["n_seeds"]))
    sizes = {
        "factors": len(valid["factors"]),
        "cryptos": len(valid["cryptos"]),
        "folds": int(valid["n_folds"]),
        "costs": len(valid["cost_bps"]),
        "slippages": len(valid["slippage_bps"]),
    }
    keys = math.prod(sizes.values())
    work = keys * (int(valid["n_seeds"]) + n_shifts)
    product = " x ".join(f"{n} {name}" for name, n in sizes.items())
    return work, f"{product} = {keys:,} keys x ({valid['n_seeds']} seeds + {n_shifts} shifts) = {work:,}"


def check_run_size(valid: Mapping[str, Any], *, max_run_work: int) -> None:
    """Refuse a run larger than ``FINETUNE_MAX_RUN_WORK``: each param is capped, their product is not.

    :param valid: validated params.
    :param max_run_work: the setting.
    :raises PlanError: one line with the product and the setting.
    """
    work, spelt = run_work(valid)
    if work > max_run_work:
        raise PlanError(
            f"the run is too large: {spelt}, over FINETUNE_MAX_RUN_WORK={max_run_work:,}; "
            "lower cryptos, folds, costs, slippages, seeds or shifts, or split the sweep into several runs"
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
    :param settings: the deadline allowances and ceiling, the run size limit (default: their
        defaults, ``Settings()``).
    :raises PlanError: bad params, a run over ``FINETUNE_MAX_RUN_WORK``, params that cannot fit the
        synthetic market, bad overrides, a data URI no pod could read.
    """
    settings = settings or Settings()
    try:
        profiles = load_profiles(profiles_json)
        sizing_map = load_sizing(sizing_json)
    except SizingError as err:
        raise PlanError(str(err)) from None
    valid = validate_params(
        params, known_factors=tuple(sizing_map), known_models=settings.models, tag_pattern=settings.image_tag_pattern
    )
    check_run_size(valid, max_run_work=settings.max_run_work)
    check_p_value_floor(valid)
    check_data_uri(data_uri)
    check_fits_synthetic_market(valid, as_of=as_of, data_uri=data_uri)
    run_args = {
        "cryptos": valid["cryptos"],
        "cost_bps": valid["cost_bps"],
        "slippage_bps": valid["slippage_bps"],
        "as_of": as_of,
        "n_folds": valid["n_folds"],
        "n_seeds": valid["n_seeds"],
        "n_shifts": valid["n_shifts"],
        "hold_bars": valid["hold_bars"],
        "train_bars": valid["train_bars"],
        "test_bars": valid["test_bars"],
        "data_uri": data_uri,
        "model": valid["model"],
    }
    # The ceiling bounds how long one trigger can hold a node; the per-key allowance is generous
    # (a key takes seconds), so a large admitted run still fits under it.
    deadline = min(
        pod_deadline_seconds(
            n_keys=n_pod_keys(run_args),
            per_key_seconds=settings.pod_deadline_per_key_seconds,
            startup_seconds=settings.pod_deadline_startup_seconds,
            fixed=settings.pod_deadline_seconds,
        ),
        settings.pod_deadline_max_seconds,
    )
    entries = []
    for factor in valid["factors"]:
        profile = profile_for(factor, sizing=sizing_map, profiles=profiles)
        entries.append(
            factor_pod_kwargs(
                factor=factor,
                profile=profile,
                run_id=run_id,
                run_args=run_args,
                profiles=profiles,
                active_deadline_seconds=deadline,
                workers=pod_workers(profile, len(valid["cryptos"])),
            )
        )
    return entries


def _entry_profiles(entries: Sequence[Mapping[str, Any]], *, profiles_json: str | None) -> dict[str, PodProfile]:
    """The profile ladder the plan resolved (an entry's ``profiles``), else ``profiles_json``."""
    resolved = next((entry["profiles"] for entry in entries if entry.get("profiles")), None)
    if resolved is None:
        return load_profiles(profiles_json)
    if isinstance(resolved, str):
        resolved = json.loads(resolved)
    # the same decoding as the operator's, so tolerations and affinity survive the move
    return profiles_from_json(resolved)


def choose_profiles(
    dsn: str, entries: Sequence[Mapping[str, Any]], *, policy: SizingPolicy, profiles_json: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, StartChoice]]:
    """Each entry on its starting profile: the larger of the plan's (the map's) and its history's.

    :param dsn: libpq URI of the finetune database (the recorded attempts).
    :param entries: the plan's entries; their ``profile`` is the map profile.
    :param policy: the sizing mode and history window (``settings.sizing_policy``).
    :param profiles_json: ``FINETUNE_PROFILES``, for entries planned without their ``profiles``.
    :returns: the entries resized (see ``pods.with_profile``) and factor -> choice.
    """
    profiles = _entry_profiles(entries, profiles_json=profiles_json)
    map_profiles = {entry["factor"]: entry["profile"] for entry in entries}
    history = []
    if policy.mode == "history":
        history = fetch_history(
            dsn, history_runs=policy.history_runs, history_days=policy.history_days, factors=list(map_profiles)
        )
    # the worker count is the map profile's, whatever profile the history starts a factor on
    workers = {entry["factor"]: entry["workers"] for entry in entries if entry.get("workers")}
    choices = choose_start_profiles(map_profiles, history, profiles=profiles, mode=policy.mode, workers=workers)
    resized = [
        with_profile(entry, profile=profiles[choices[entry["factor"]].profile])
        if choices[entry["factor"]].profile != entry["profile"]
        else dict(entry)
        for entry in entries
    ]
    return resized, choices
