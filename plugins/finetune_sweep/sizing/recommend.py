"""The VPA-style recommender (DESIGN 6): a profile per factor from its recorded peaks, and the
profile each factor starts a run on.

A sample is one recorded pod attempt (``finetune_pod_attempts``, read by
:func:`finetune_sweep.db.attempts.fetch_history`); the recommendation keeps 20 % headroom over the
p95 peak. At ``register`` each factor starts on the larger of its map profile and the profile its
recent history asks for (:func:`choose_start_profiles`), upward only; a smaller recommendation
stays advice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_sweep.outcomes import OOM_REASON
from finetune_sweep.sizing.profiles import FLAG_RATIO, PROFILE_ORDER, PROFILES, SIZING_MAP, PodProfile
from finetune_sweep.sizing.quantities import format_bytes


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


def _worker_scale(row: Mapping[str, Any], workers: Mapping[str, int] | None) -> float:
    """How much larger ``row``'s peak would be at the worker count the factor runs with now.

    A pod's peak is about its own process plus one crypto's store per worker, so a peak recorded
    with fewer workers is scaled up in proportion (an upper bound: the shared part is counted
    again); a peak recorded with more workers is kept as it is, never scaled down on a guess. A
    peak recorded before workers existed (NULL) is kept too: that pod held every crypto's store
    at once, more than a worker's one.
    """
    target = (workers or {}).get(row["factor"])
    recorded = row.get("workers")
    return max(1.0, target / recorded) if target and recorded else 1.0


def recommend(
    rows: Iterable[Mapping[str, Any]],
    sizing: Mapping[str, str] | None = None,
    profiles: Mapping[str, PodProfile] | None = None,
    workers: Mapping[str, int] | None = None,
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
    :param workers: factor -> the worker processes its pods run now; a row recorded with fewer
        (its ``workers``) counts as its peak and OOM floor scaled up in proportion, so that history
        compares like with like (:func:`_worker_scale`; a NULL row as recorded). None: peaks as recorded.
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
            scale = _worker_scale(row, workers)
            limit = row.get("memory_limit_bytes")
            peak = row.get("peak_memory_bytes")
            peak = peak * scale if peak is not None and scale != 1.0 else peak
            if row.get("exit_reason") == OOM_REASON:
                ooms += 1
                floor = int(_oom_floor(row, profiles) * scale)
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
                    **common,
                    p50_peak=None,
                    p95_peak=None,
                    max_peak=None,
                    headroom=None,
                    needed_bytes=None,
                    recommended=current.name if current else None,
                    flagged=False,
                    reasons=("no recorded peaks",),
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
    workers: Mapping[str, int] | None = None,
) -> dict[str, StartChoice]:
    """The starting profile of each planned factor (``register``; design 4.5 ``FINETUNE_SIZING_MODE``).

    :param map_profiles: factor -> map profile name, for the factors of this run (the plan's
        ``profile`` of each entry).
    :param history: the recorded attempts to learn from (:func:`fetch_history` with the window).
    :param profiles: profile name -> profile (``FINETUNE_PROFILES`` applied).
    :param mode: ``history`` or ``static`` (the map, history ignored).
    :param workers: factor -> the worker processes its pods will run (see :func:`recommend`).
    """
    if mode == "static":
        return {
            factor: StartChoice(factor=factor, map_profile=name, profile=name, reason=MAP_REASON)
            for factor, name in map_profiles.items()
        }
    wanted = [row for row in history if row["factor"] in map_profiles]
    recommendations = {rec.factor: rec for rec in recommend(wanted, map_profiles, profiles, workers)}
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
    out = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in lines]
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


def describe_window(*, history_runs: int | None, history_days: int | None) -> str:
    """The history window in words, for table headings (``each factor's last 8 runs within 90 days``).

    :param history_runs: the runs bound, or None.
    :param history_days: the days bound, or None.
    """
    runs = f"each factor's last {history_runs} runs" if history_runs else "all runs"
    return runs + (f" within {history_days} days" if history_days else "")
