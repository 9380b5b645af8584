"""Pod profiles, the factor -> profile map and the OOM ladder (DESIGN 6).

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

The recommender that learns from recorded peaks is :mod:`finetune_sweep.sizing.recommend`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from finetune_sweep.settings import PLUGIN_NAME
from finetune_sweep.sizing.quantities import cpu_millis, parse_quantity

PROFILE_ORDER: tuple[str, ...] = ("STANDARD", "MEDIUM", "HEAVY")

# A peak above this share of its limit is flagged; the recommender keeps 1 - this as headroom.
FLAG_RATIO = 0.8


class SizingError(ValueError):
    """A sizing input (override JSON, factor, profile, quantity) is unusable; the message says why."""


_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")


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

# The factors the pod image knows (finetune.factors.KNOWN_FACTORS) and their initial profile;
# FINETUNE_SIZING adds a team's factor plug-ins (finetune.plugins) with theirs.
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
                f"FINETUNE_PROFILES[{name!r}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_PROFILE_KEYS)}"
            )
        profiles[name] = _apply_profile_changes(profiles[name], changes)
    sizes = [profiles[name].memory_bytes for name in PROFILE_ORDER]
    if any(lower >= upper for lower, upper in zip(sizes, sizes[1:], strict=False)):
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
            raise SizingError(f'{where}.cpu: {cpu!r} is not a cpu quantity such as "2", "0.5" or "500m"')
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
        raise SizingError(
            f"{where}.affinity: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_AFFINITY_KEYS)}"
        )
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

    A name that is not in the map adds a factor: a team's plug-in (entry point group
    ``finetune.factors`` of the pod image) with the profile it starts on, e.g.
    ``{"range_features": "STANDARD"}``. The map's keys are the factors a run may plan; the pod
    checks again that its image has the factor (exit 2 naming the installed ones).

    :param overrides_json: the JSON text, or None/empty for the defaults.
    :raises SizingError: bad JSON, a malformed factor name or an unknown profile.
    """
    sizing = dict(SIZING_MAP)
    if not overrides_json or not overrides_json.strip():
        return sizing
    for factor, profile in _load_json_object(overrides_json, "FINETUNE_SIZING").items():
        if not PLUGIN_NAME.match(factor):
            raise SizingError(
                f"FINETUNE_SIZING: factor {factor!r} is not a factor name (lower-case letters, digits and _, "
                f"starting with a letter); known factors: {', '.join(sizing)}"
            )
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


def pod_workers(profile: PodProfile, n_cryptos: int) -> int:
    """Worker processes a factor pod on ``profile`` runs (``FINETUNE_POD_WORKERS``): one per
    requested cpu, rounded up as the downward API rounds it, never more than its cryptos.

    The operator fixes this count from the planned profile for every try of the OOM ladder: the
    peak grows with the workers, so a try one profile up keeps them and gains memory per worker.
    """
    return max(1, min(-(-cpu_millis(profile.cpu) // 1000), n_cryptos))


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
