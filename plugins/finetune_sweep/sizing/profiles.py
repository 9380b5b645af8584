"""Pod sizing: profiles, the factor -> profile map, the OOM ladder and the VPA-style recommender.

Profiles (design section 6): memory request = limit (a pod is never scheduled on a node that
cannot hold its limit, so an OOM means the factor really needs more), a cpu request and no cpu
limit (throttling a numpy job only makes it slower, never safer).

Each profile also selects its node pool with the label ``finetune/pool=<profile in lower case>``
(``standard``, ``medium``, ``heavy``): label the node pools (or node groups) accordingly, or
override ``node_selector`` per profile with ``FINETUNE_PROFILES``, e.g.
``{"HEAVY": {"node_selector": {"cloud.google.com/gke-nodepool": "highmem"}}}``; an empty
``{}`` lets the profile run anywhere. A profile may also carry ``tolerations`` (a list of
Kubernetes tolerations, camelCase JSON) and ``affinity`` (a Kubernetes ``Affinity`` object) for
tainted or specially labelled high-memory pools, e.g.
``{"HEAVY": {"tolerations": [{"key": "highmem", "operator": "Exists", "effect": "NoSchedule"}]}}``.

The profiles are resolved once per run (by ``plan``) and travel with each factor's mapped kwargs
as JSON (:func:`profiles_to_json` / :func:`profiles_from_json`), so a worker never re-reads
``FINETUNE_PROFILES`` and every try of a run sees the sizes its manifest was planned with.

``python -m finetune_sweep.sizing recommend [--dsn DSN]`` prints the recommendation table from
the recorded pod attempts (``finetune_pod_attempts``).

Sizing that learns (design 6): at ``register`` each factor starts on the larger of its map profile
and the profile its recent history asks for (:func:`choose_start_profiles`), upward only; a
smaller recommendation stays advice. The history is bounded (:func:`fetch_history` with a window of
recent runs and days) so that a factor that got lighter is not held up forever.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

PROFILE_ORDER: tuple[str, ...] = ("STANDARD", "MEDIUM", "HEAVY")

# A peak above this share of its limit is flagged; the recommender keeps 1 - this as headroom.
FLAG_RATIO = 0.8
OOM_REASON = "OOMKilled"


class SizingError(ValueError):
    """A sizing input (override JSON, factor, profile, quantity) is unusable; the message says why."""


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]{0,2})\s*$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")


def parse_quantity(quantity: str | int) -> int:
    """Bytes of a Kubernetes memory quantity (``8Gi``, ``512Mi``, ``1.5G``, ``1000``).

    A fractional byte count is rounded up, as the kubelet does for a limit.

    :param quantity: the quantity; an ``int`` is taken as bytes.
    :raises ValueError: on anything else (unknown suffix, negative, empty, milli-bytes).
    """
    if isinstance(quantity, bool):
        raise ValueError(f"not a memory quantity: {quantity!r}")
    if isinstance(quantity, int):
        if quantity < 0:
            raise ValueError(f"negative memory quantity: {quantity}")
        return quantity
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r} (use e.g. 8Gi, 512Mi, 1.5G or bytes)")
    number, suffix = match.groups()
    if suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    elif suffix == "":
        factor = 1
    else:
        raise ValueError(
            f"not a memory quantity: {quantity!r} (suffix {suffix!r}; use Ki/Mi/Gi/Ti, k/M/G/T or bytes)"
        )
    try:
        return math.ceil(Decimal(number) * factor)
    except InvalidOperation as err:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"not a memory quantity: {quantity!r}") from err


def format_bytes(n_bytes: float | None) -> str:
    """Human-readable binary size (``7.68Gi``) for tables and messages.

    :param n_bytes: a byte count, or None (shown as ``-``).
    """
    if n_bytes is None:
        return "-"
    for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f}{suffix}"
    return f"{int(n_bytes)}B"


@dataclass(frozen=True)
class PodProfile:
    """A pod size: memory (request = limit), cpu request, and the node pool it runs on.

    :param name: the profile name, one of :data:`PROFILE_ORDER`.
    :param memory: memory request and limit, a Kubernetes quantity.
    :param cpu: cpu request (no cpu limit is set).
    :param node_selector: node labels the pod must match.
    :param tolerations: Kubernetes tolerations (camelCase JSON objects) the pod gets.
    :param affinity: a Kubernetes ``Affinity`` (camelCase JSON object), or None.
    """

    name: str
    memory: str
    cpu: str
    node_selector: dict[str, str] = field(default_factory=dict, hash=False)
    tolerations: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    affinity: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return parse_quantity(self.memory)


PROFILES: dict[str, PodProfile] = {
    "STANDARD": PodProfile("STANDARD", "8Gi", "2", {"finetune/pool": "standard"}),
    "MEDIUM": PodProfile("MEDIUM", "16Gi", "4", {"finetune/pool": "medium"}),
    "HEAVY": PodProfile("HEAVY", "24Gi", "6", {"finetune/pool": "heavy"}),
}

# The factors the pod image knows (finetune.factors.KNOWN_FACTORS) and their initial profile.
SIZING_MAP: dict[str, str] = {
    "base_features": "STANDARD",
    "n_features": "HEAVY",
    "btc_features": "HEAVY",
    "l2_features": "STANDARD",
}

_PROFILE_KEYS = ("memory", "cpu", "node_selector", "tolerations", "affinity")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


def _load_json_object(raw: str, variable: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SizingError(f"{variable} is not valid JSON ({err.msg} at char {err.pos}): {raw!r}") from None
    if not isinstance(value, dict):
        raise SizingError(f"{variable} must be a JSON object, got {type(value).__name__}")
    return value


def load_profiles(overrides_json: str | None = None) -> dict[str, PodProfile]:
    """:data:`PROFILES` with ``FINETUNE_PROFILES`` overrides applied.

    e.g. ``{"STANDARD": {"memory": "256Mi"}}``; keys per profile: ``memory``, ``cpu``,
    ``node_selector``, ``tolerations``, ``affinity``. The ladder must still grow: each profile's memory must be larger than the
    one below it, otherwise an OOM retry would not help.

    :param overrides_json: the JSON text, or None/empty for the defaults.
    :raises SizingError: bad JSON, unknown profile or key, bad quantity, or a ladder that shrinks.
    """
    profiles = dict(PROFILES)
    if not overrides_json or not overrides_json.strip():
        return profiles
    overrides = _load_json_object(overrides_json, "FINETUNE_PROFILES")
    for name, changes in overrides.items():
        if name not in profiles:
            raise SizingError(
                f"FINETUNE_PROFILES: unknown profile {name!r}; known profiles: {', '.join(PROFILE_ORDER)}"
            )
        if not isinstance(changes, dict):
            raise SizingError(f"FINETUNE_PROFILES[{name!r}] must be an object with {', '.join(_PROFILE_KEYS)}")
        unknown = sorted(set(changes) - set(_PROFILE_KEYS))
        if unknown:
            raise SizingError(
                f"FINETUNE_PROFILES[{name!r}]: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(_PROFILE_KEYS)}"
            )
        profiles[name] = _apply_profile_changes(profiles[name], changes)
    sizes = [profiles[name].memory_bytes for name in PROFILE_ORDER]
    if any(lower >= upper for lower, upper in zip(sizes, sizes[1:])):
        raise SizingError(
            "FINETUNE_PROFILES: memory must grow along "
            + " < ".join(f"{n} ({profiles[n].memory})" for n in PROFILE_ORDER)
        )
    return profiles


def _apply_profile_changes(profile: PodProfile, changes: Mapping[str, Any]) -> PodProfile:
    where = f"FINETUNE_PROFILES[{profile.name!r}]"
    if "memory" in changes:
        memory = changes["memory"]
        try:
            if not isinstance(memory, str) or parse_quantity(memory) <= 0:
                raise ValueError(f"{memory!r} is not a positive quantity")
        except ValueError as err:
            raise SizingError(f"{where}.memory: {err}") from None
        profile = replace(profile, memory=memory)
    if "cpu" in changes:
        cpu = changes["cpu"]
        if not isinstance(cpu, str) or not _CPU.match(cpu) or float(cpu.rstrip("m")) <= 0:
            raise SizingError(f"{where}.cpu: {cpu!r} is not a cpu quantity such as \"2\", \"0.5\" or \"500m\"")
        profile = replace(profile, cpu=cpu)
    if "node_selector" in changes:
        selector = changes["node_selector"]
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise SizingError(f"{where}.node_selector must be an object of string labels")
        profile = replace(profile, node_selector=dict(selector))
    if "tolerations" in changes:
        profile = replace(profile, tolerations=_checked_tolerations(changes["tolerations"], where))
    if "affinity" in changes:
        profile = replace(profile, affinity=_checked_affinity(changes["affinity"], where))
    return profile


def _checked_tolerations(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    """Tolerations as Kubernetes writes them; a typo would otherwise be dropped silently by the
    client model and the pod would never reach its tainted pool."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SizingError(f"{where}.tolerations must be a list of toleration objects")
    for index, item in enumerate(value):
        at = f"{where}.tolerations[{index}]"
        unknown = sorted(set(item) - set(_TOLERATION_KEYS))
        if unknown:
            raise SizingError(f"{at}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_TOLERATION_KEYS)}")
        operator = item.get("operator", "Equal")
        if operator not in _TOLERATION_OPERATORS:
            raise SizingError(f"{at}.operator: {operator!r} is not one of {', '.join(_TOLERATION_OPERATORS)}")
        effect = item.get("effect")
        if effect not in (None, "", *_TOLERATION_EFFECTS):
            raise SizingError(f"{at}.effect: {effect!r} is not one of {', '.join(_TOLERATION_EFFECTS)}")
        for key in ("key", "value"):
            if key in item and not isinstance(item[key], str):
                raise SizingError(f"{at}.{key} must be a string")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise SizingError(f"{at}.tolerationSeconds must be an integer")
    return tuple(dict(item) for item in value)


def _checked_affinity(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(part, dict) for part in value.values()):
        raise SizingError(f"{where}.affinity must be an object with {', '.join(_AFFINITY_KEYS)}")
    unknown = sorted(set(value) - set(_AFFINITY_KEYS))
    if unknown:
        raise SizingError(f"{where}.affinity: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_AFFINITY_KEYS)}")
    return dict(value) or None


def profiles_to_json(profiles: Mapping[str, PodProfile]) -> dict[str, dict[str, Any]]:
    """The resolved profiles as plain JSON (the ``profiles`` key of each plan entry).

    :param profiles: profile name -> profile (:func:`load_profiles`).
    """
    return {
        name: {
            "memory": profile.memory,
            "cpu": profile.cpu,
            "node_selector": dict(profile.node_selector),
            "tolerations": [dict(item) for item in profile.tolerations],
            "affinity": profile.affinity,
        }
        for name, profile in profiles.items()
    }


def profiles_from_json(value: Mapping[str, Any]) -> dict[str, PodProfile]:
    """The profiles a plan entry carries (:func:`profiles_to_json`), checked like an override.

    :param value: profile name -> ``{memory, cpu, node_selector, tolerations, affinity}``.
    :raises SizingError: a profile missing from the ladder or a malformed entry.
    """
    if not isinstance(value, Mapping) or set(value) != set(PROFILE_ORDER):
        raise SizingError(f"profiles must name exactly {', '.join(PROFILE_ORDER)}")
    profiles: dict[str, PodProfile] = {}
    for name in PROFILE_ORDER:
        entry = value[name]
        if not isinstance(entry, Mapping) or "memory" not in entry or "cpu" not in entry:
            raise SizingError(f"profiles[{name!r}] must carry memory and cpu")
        base = PodProfile(name, str(entry["memory"]), str(entry["cpu"]))
        profiles[name] = _apply_profile_changes(base, {k: v for k, v in entry.items() if k in _PROFILE_KEYS})
    return profiles


def load_sizing(overrides_json: str | None = None) -> dict[str, str]:
    """:data:`SIZING_MAP` with ``FINETUNE_SIZING`` overrides applied, e.g. ``{"l2_features": "MEDIUM"}``.

    Only known factors can be re-mapped: the pod image decides which factors exist.

    :param overrides_json: the JSON text, or None/empty for the defaults.
    :raises SizingError: bad JSON, unknown factor or unknown profile.
    """
    sizing = dict(SIZING_MAP)
    if not overrides_json or not overrides_json.strip():
        return sizing
    for factor, profile in _load_json_object(overrides_json, "FINETUNE_SIZING").items():
        if factor not in sizing:
            raise SizingError(f"FINETUNE_SIZING: unknown factor {factor!r}; known factors: {', '.join(sizing)}")
        if profile not in PROFILE_ORDER:
            raise SizingError(
                f"FINETUNE_SIZING[{factor!r}]: unknown profile {profile!r}; known profiles: {', '.join(PROFILE_ORDER)}"
            )
        sizing[factor] = profile
    return sizing


def profile_for(
    factor: str, *, sizing: Mapping[str, str] | None = None, profiles: Mapping[str, PodProfile] | None = None
) -> PodProfile:
    """The profile a factor starts on.

    :param factor: the factor name.
    :param sizing: factor -> profile name (default :data:`SIZING_MAP`).
    :param profiles: profile name -> profile (default :data:`PROFILES`).
    :raises SizingError: unknown factor (the known ones are listed).
    """
    sizing = SIZING_MAP if sizing is None else sizing
    profiles = PROFILES if profiles is None else profiles
    if factor not in sizing:
        raise SizingError(f"unknown factor {factor!r}; known factors: {', '.join(sizing)}")
    return profiles[sizing[factor]]


def next_profile(name: str, profiles: Mapping[str, PodProfile] | None = None) -> PodProfile | None:
    """The profile one step up the OOM ladder, or None at the top.

    :param name: the current profile name.
    :param profiles: profile name -> profile (default :data:`PROFILES`).
    :raises SizingError: unknown profile.
    """
    profiles = PROFILES if profiles is None else profiles
    if name not in PROFILE_ORDER:
        raise SizingError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILE_ORDER)}")
    index = PROFILE_ORDER.index(name)
    return profiles[PROFILE_ORDER[index + 1]] if index + 1 < len(PROFILE_ORDER) else None


# --------------------------------------------------------------------------- recommender


@dataclass(frozen=True)
class Recommendation:
    """The sizing verdict for one factor, from its recorded pod attempts.

    ``headroom`` is ``1 - p95 / current limit`` (negative when the p95 exceeds the limit).
    ``recommended`` is None when even the largest profile cannot keep the headroom.
    """

    factor: str
    runs_seen: int
    attempts: int
    ooms: int
    p50_peak: float | None
    p95_peak: float | None
    max_peak: float | None
    current: str
    current_limit: int
    headroom: float | None
    needed_bytes: float | None
    recommended: str | None
    flagged: bool
    reasons: tuple[str, ...] = ()
    # The OOM that asks for the most memory: "STANDARD in run R (attempt 1)", and its floor (bytes).
    oom_evidence: str | None = None
    oom_floor_bytes: int = 0


def _percentile(values: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile, ``q`` in [0, 100]."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _oom_floor(row: Mapping[str, Any], profiles: Mapping[str, PodProfile]) -> int:
    """Bytes an OOMKilled attempt proves necessary: more than the limit it was killed at.

    The recorded limit is what the kernel enforced; without it (an old row), one step above the
    attempt's profile means more than that profile's current size.
    """
    limit = row.get("memory_limit_bytes")
    if limit:
        return int(limit) + 1
    profile = profiles.get(row.get("profile") or "")
    return profile.memory_bytes + 1 if profile else 0


def recommend(
    rows: Iterable[Mapping[str, Any]],
    sizing: Mapping[str, str] | None = None,
    profiles: Mapping[str, PodProfile] | None = None,
) -> list[Recommendation]:
    """Recommend a profile per factor from recorded pod attempts (VPA-style, design section 6).

    A sample is an attempt's ``peak_memory_bytes``; an attempt with ``exit_reason = 'OOMKilled'``
    counts as a peak *above* its limit (the kernel stopped it there), so its sample is
    ``limit + 1`` and no profile at or below that limit can be recommended (an OOM row without a
    recorded limit: above its profile's current size, i.e. one step up). The needed limit is
    ``p95 / 0.8`` (20 % headroom over the p95 peak); the recommendation is the smallest profile
    whose limit is at least that. A factor is flagged when any attempt peaked above 80 % of its
    own limit (or was OOMKilled). Factors of ``sizing`` without history keep their profile.

    :param rows: mappings with ``run_id, factor, attempt, profile, memory_limit_bytes,
        peak_memory_bytes, exit_reason`` (extra keys ignored), e.g. ``finetune_pod_attempts`` rows.
    :param sizing: factor -> current profile name (default :data:`SIZING_MAP`).
    :param profiles: profile name -> profile (default :data:`PROFILES`).
    """
    sizing = SIZING_MAP if sizing is None else sizing
    profiles = PROFILES if profiles is None else profiles
    by_factor: dict[str, list[Mapping[str, Any]]] = {factor: [] for factor in sizing}
    for row in rows:
        by_factor.setdefault(row["factor"], []).append(row)

    result = []
    for factor, factor_rows in by_factor.items():
        current = profiles[sizing[factor]] if factor in sizing else None
        current_limit = current.memory_bytes if current else 0
        samples: list[float] = []
        reasons: list[str] = []
        ooms = 0
        oom_floor = 0
        oom_evidence = None
        for row in factor_rows:
            limit = row.get("memory_limit_bytes")
            peak = row.get("peak_memory_bytes")
            if row.get("exit_reason") == OOM_REASON:
                ooms += 1
                floor = _oom_floor(row, profiles)
                if floor:
                    samples.append(floor)
                    # rows come oldest first: ">=" keeps the latest of equal floors
                    if floor >= oom_floor:
                        oom_floor = floor
                        oom_evidence = f"{row.get('profile')} in run {row.get('run_id')} (attempt {row.get('attempt')})"
                    reasons.append(
                        f"run {row.get('run_id')} attempt {row.get('attempt')}: OOMKilled at "
                        f"{format_bytes(floor - 1)} ({row.get('profile')})"
                    )
                elif peak is not None:
                    samples.append(peak)
                continue
            if peak is None:
                continue
            samples.append(peak)
            if limit and peak > FLAG_RATIO * limit:
                reasons.append(
                    f"run {row.get('run_id')} attempt {row.get('attempt')}: peak {format_bytes(peak)} is "
                    f"{peak / limit:.0%} of its {format_bytes(limit)} limit ({row.get('profile')})"
                )
        common = {
            "factor": factor,
            "runs_seen": len({r.get("run_id") for r in factor_rows}),
            "attempts": len(factor_rows),
            "ooms": ooms,
            "current": current.name if current else "-",
            "current_limit": current_limit,
        }
        if not samples:
            result.append(
                Recommendation(
                    **common, p50_peak=None, p95_peak=None, max_peak=None, headroom=None, needed_bytes=None,
                    recommended=current.name if current else None, flagged=False, reasons=("no recorded peaks",),
                )
            )
            continue
        p95 = _percentile(samples, 95)
        needed = max(p95 / FLAG_RATIO, oom_floor)
        recommended = next((name for name in PROFILE_ORDER if profiles[name].memory_bytes >= needed), None)
        if recommended is None:
            reasons.append(
                f"needs {format_bytes(needed)}, more than the largest profile "
                f"{PROFILE_ORDER[-1]} ({profiles[PROFILE_ORDER[-1]].memory})"
            )
        result.append(
            Recommendation(
                **common,
                p50_peak=_percentile(samples, 50),
                p95_peak=p95,
                max_peak=max(samples),
                headroom=(1 - p95 / current_limit) if current_limit else None,
                needed_bytes=needed,
                recommended=recommended,
                flagged=bool(reasons),
                reasons=tuple(reasons),
                oom_evidence=oom_evidence,
                oom_floor_bytes=oom_floor,
            )
        )
    return result


# --------------------------------------------------------------------------- starting profile

MAP_REASON = "map"


@dataclass(frozen=True)
class StartChoice:
    """The profile a factor starts a run on, and why (stored on the manifest by ``register``).

    :param factor: the factor.
    :param map_profile: its profile in the sizing map (``FINETUNE_SIZING`` applied).
    :param profile: the profile it starts on: the map's, or a larger one its history asks for.
    :param reason: ``map``, ``history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM`` or
        ``history: OOM on STANDARD in run R (attempt 1) -> MEDIUM``.
    """

    factor: str
    map_profile: str
    profile: str
    reason: str


def choose_start_profile(
    recommendation: Recommendation, *, map_profile: str, profiles: Mapping[str, PodProfile]
) -> StartChoice:
    """The larger of the map profile and the profile the recorded history asks for.

    Upward only: a history that fits a smaller profile leaves the map's (downsizing is advice in
    the report and in ``recommend``, for a person to decide). A history that needs more than the
    largest profile starts on the largest: it is the best there is, and an OOM there fails naming
    the factor, profile, limit and peak as before.

    :param recommendation: the factor's :func:`recommend` result (from its windowed history).
    :param map_profile: the factor's profile in the sizing map.
    :param profiles: profile name -> profile (``FINETUNE_PROFILES`` applied).
    """
    rec = recommendation
    map_reason = StartChoice(factor=rec.factor, map_profile=map_profile, profile=map_profile, reason=MAP_REASON)
    if rec.needed_bytes is None:
        return map_reason
    asked = rec.recommended or PROFILE_ORDER[-1]
    if PROFILE_ORDER.index(asked) <= PROFILE_ORDER.index(map_profile):
        return map_reason
    map_limit = profiles[map_profile].memory_bytes
    if rec.oom_evidence and rec.oom_floor_bytes > map_limit:
        # An OOM at or above the map's size is the plainest evidence: the map cannot hold it.
        why = f"OOM on {rec.oom_evidence}"
    else:
        p95 = rec.p95_peak or 0.0
        why = f"p95 {format_bytes(p95)} on {map_profile} ({p95 / map_limit * 100:.0f} % of {format_bytes(map_limit)})"
    if rec.recommended is None:
        why += f", needs {format_bytes(rec.needed_bytes)}: more than the largest profile"
    return StartChoice(factor=rec.factor, map_profile=map_profile, profile=asked, reason=f"history: {why} -> {asked}")


def choose_start_profiles(
    map_profiles: Mapping[str, str],
    history: Iterable[Mapping[str, Any]],
    *,
    profiles: Mapping[str, PodProfile],
    mode: str = "history",
) -> dict[str, StartChoice]:
    """The starting profile of each planned factor (``register``; design 4.5 ``FINETUNE_SIZING_MODE``).

    :param map_profiles: factor -> map profile name, for the factors of this run (the plan's
        ``profile`` of each entry).
    :param history: the recorded attempts to learn from (:func:`fetch_history` with the window).
    :param profiles: profile name -> profile (``FINETUNE_PROFILES`` applied).
    :param mode: ``history`` or ``static`` (the map, history ignored).
    """
    if mode == "static":
        return {
            factor: StartChoice(factor=factor, map_profile=name, profile=name, reason=MAP_REASON)
            for factor, name in map_profiles.items()
        }
    wanted = [row for row in history if row["factor"] in map_profiles]
    recommendations = {rec.factor: rec for rec in recommend(wanted, map_profiles, profiles)}
    return {
        factor: choose_start_profile(recommendations[factor], map_profile=name, profiles=profiles)
        for factor, name in map_profiles.items()
    }


def format_recommendations(recommendations: Sequence[Recommendation], *, mode: str = "history") -> str:
    """A fixed-width table of recommendations, then one line per flag reason and per advice.

    :param recommendations: the output of :func:`recommend`.
    :param mode: ``FINETUNE_SIZING_MODE``: whether the next run follows an upward recommendation
        by itself (``history``) or a person must (``static``); downsizing is always a person's.
    """
    header = ("factor", "runs", "attempts", "ooms", "p50", "p95", "max", "current", "headroom", "recommended", "flag")
    lines = [header]
    for rec in recommendations:
        lines.append(
            (
                rec.factor,
                str(rec.runs_seen),
                str(rec.attempts),
                str(rec.ooms),
                format_bytes(rec.p50_peak),
                format_bytes(rec.p95_peak),
                format_bytes(rec.max_peak),
                f"{rec.current} ({format_bytes(rec.current_limit)})",
                "-" if rec.headroom is None else f"{rec.headroom:.0%}",
                rec.recommended or "none fits",
                "FLAG" if rec.flagged else "",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in lines]
    for rec in recommendations:
        if rec.flagged:
            out.extend(f"  {rec.factor}: {reason}" for reason in rec.reasons)
    out.extend(_advice(rec, mode=mode) for rec in recommendations if _advice(rec, mode=mode))
    return "\n".join(out)


def _advice(rec: Recommendation, *, mode: str) -> str:
    if rec.current not in PROFILE_ORDER or rec.needed_bytes is None:
        return ""
    asked = PROFILE_ORDER.index(rec.recommended) if rec.recommended else len(PROFILE_ORDER)
    current = PROFILE_ORDER.index(rec.current)
    if asked > current:
        target = rec.recommended or PROFILE_ORDER[-1]
        if mode == "static":
            return f"  advice: {rec.factor} needs {target}; FINETUNE_SIZING_MODE=static keeps {rec.current}"
        return f"  advice: {rec.factor} starts its next run on {target} (history; map {rec.current})"
    if asked < current:
        return (
            f"  advice: {rec.factor} fits {rec.recommended} with 20 % headroom: lower its map profile "
            f"{rec.current} with FINETUNE_SIZING to save memory (never lowered automatically)"
        )
    return ""


# Every pod attempt (V007 keys them by run, factor, Airflow run and attempt: reruns keep theirs).
HISTORY_SQL = """
SELECT run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
       duration_seconds, finished_at
FROM finetune_pod_attempts
"""

# V003 to V006: the attempts of an Airflow rerun of the same finetune run overwrote each other.
PRE_V007_HISTORY_SQL = HISTORY_SQL.replace("airflow_run_id,", "''::text AS airflow_run_id,")

# Before V003 only the latest attempt of each (run, factor) was kept: better than nothing.
FALLBACK_HISTORY_SQL = """
SELECT run_id, factor, ''::text AS airflow_run_id, attempt, profile, memory_limit_bytes, peak_memory_bytes,
       exit_reason, NULL::double precision AS duration_seconds, updated_at AS finished_at
FROM finetune_run_factors
WHERE peak_memory_bytes IS NOT NULL OR exit_reason IS NOT NULL
"""

# The window: a factor's attempts that finished within the last `days` days, in its last `runs`
# finetune runs (ranked by their latest attempt; every Airflow rerun of a run is that run). A NULL
# bound is no bound. The age is measured on the database clock, the clock that stamped
# finished_at: the run's as-of is market time, unrelated to when pods ran (a backfill of January
# runs today's code, and today's evidence about its memory is what counts).
WINDOWED_HISTORY_SQL = """
WITH history AS ({source}),
in_window AS (
    SELECT * FROM history
    WHERE (%(days)s::integer IS NULL OR finished_at >= now() - make_interval(days => %(days)s::integer))
      AND (%(factors)s::text[] IS NULL OR factor = ANY(%(factors)s::text[]))
),
recent_runs AS (
    SELECT factor, run_id,
           row_number() OVER (PARTITION BY factor ORDER BY max(finished_at) DESC, run_id DESC) AS recency
    FROM in_window
    GROUP BY factor, run_id
)
SELECT h.*
FROM in_window AS h
JOIN recent_runs AS r USING (factor, run_id)
WHERE %(runs)s::integer IS NULL OR r.recency <= %(runs)s::integer
ORDER BY h.factor, h.finished_at, h.run_id, h.airflow_run_id, h.attempt
"""


def fetch_history(
    dsn: str,
    *,
    history_runs: int | None = None,
    history_days: int | None = None,
    factors: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Recorded pod attempts, oldest first per factor, from ``finetune_pod_attempts``.

    (From ``finetune_run_factors`` on a database before V003: the latest attempt of each run.)

    :param dsn: libpq URI of the finetune database.
    :param history_runs: keep each factor's attempts in its last N finetune runs (None: all runs).
    :param history_days: keep attempts that finished within the last N days (None: any age).
    :param factors: only these factors (None: every factor).
    :raises SizingError: the database has neither table.
    """
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        found = conn.execute(
            "SELECT to_regclass('finetune_pod_attempts') IS NOT NULL AS attempts, "
            "to_regclass('finetune_run_factors') IS NOT NULL AS factors, "
            "EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'finetune_pod_attempts' AND column_name = 'airflow_run_id') AS per_airflow_run"
        ).fetchone()
        if not (found["attempts"] or found["factors"]):
            raise SizingError(
                "no finetune tables in this database (wrong database, or not migrated yet: python -m finetune migrate)"
            )
        if not found["attempts"]:
            source = FALLBACK_HISTORY_SQL
        else:
            source = HISTORY_SQL if found["per_airflow_run"] else PRE_V007_HISTORY_SQL
        window = {"runs": history_runs, "days": history_days, "factors": list(factors) if factors is not None else None}
        return list(conn.execute(WINDOWED_HISTORY_SQL.format(source=source), window).fetchall())


def describe_window(*, history_runs: int | None, history_days: int | None) -> str:
    """The history window in words, for table headings (``each factor's last 8 runs within 90 days``).

    :param history_runs: the runs bound, or None.
    :param history_days: the days bound, or None.
    """
    runs = f"each factor's last {history_runs} runs" if history_runs else "all runs"
    return runs + (f" within {history_days} days" if history_days else "")


# An unreachable host must fail in seconds, not after the operating system's TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


def database_error_line(exc: Exception, dsn: str) -> str:
    """One line for a failed database connection: refused settings or unreachable, no secret.

    Refused credentials or database name (the pod's own classification,
    ``finetune.connection.is_refused``) are a configuration error, never "unreachable".

    :param exc: the psycopg error.
    :param dsn: the DSN tried (its password is scrubbed from the line).
    """
    import psycopg
    from finetune.connection import is_refused
    from finetune.redaction import dsn_password

    from finetune_sweep.db.dsn import redact

    text = redact(" ".join(str(exc).split()), [dsn, dsn_password(dsn)])
    if isinstance(exc, psycopg.Error) and is_refused(exc):
        return f"the database refused the connection settings (a configuration error, not an outage): {text}"
    return f"database unreachable: {text}"


def _with_connect_timeout(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if "connect_timeout" in conninfo_to_dict(dsn):
        return dsn
    return make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finetune_sweep.sizing recommend [--dsn DSN]``.

    The database is ``--dsn``, else ``FINETUNE_DB_URL``, else the Airflow connection
    ``finetune_db``. ``FINETUNE_PROFILES`` / ``FINETUNE_SIZING`` give the current sizing,
    ``FINETUNE_SIZING_HISTORY_RUNS`` / ``_DAYS`` the history window (the one ``register`` uses).
    Any failure is one line on stderr and exit 2 (bad input or configuration) or 1 (the database
    is unreachable), never a traceback.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    import os

    import psycopg

    from finetune_sweep.settings import SettingsError, get_settings, sizing_overrides, sizing_policy

    parser = argparse.ArgumentParser(prog="python -m finetune_sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="recommend a profile per factor from the recorded peaks")
    rec.add_argument("--dsn", help="libpq URI (default: FINETUNE_DB_URL, else the finetune_db connection)")
    args = parser.parse_args(argv)

    try:
        profiles_json, sizing_json = sizing_overrides()
        profiles = load_profiles(profiles_json)
        sizing = load_sizing(sizing_json)
        policy = sizing_policy()
    except (SizingError, SettingsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dsn = args.dsn or os.environ.get("FINETUNE_DB_URL")
    if not dsn:
        from airflow.exceptions import AirflowNotFoundException

        from finetune_sweep.db.dsn import dsn_from_connection

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
        history = fetch_history(
            _with_connect_timeout(dsn), history_runs=policy.history_runs, history_days=policy.history_days
        )
    except SizingError as err:
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

