"""Pod sizing: profiles, the factor -> profile map, the OOM ladder and the VPA-style recommender.

Profiles (design section 6): memory request = limit (a pod is never scheduled on a node that
cannot hold its limit, so an OOM means the factor really needs more), a cpu request and no cpu
limit (throttling a numpy job only makes it slower, never safer).

Each profile also selects its node pool with the label ``finetune/pool=<profile in lower case>``
(``standard``, ``medium``, ``heavy``): label the node pools (or node groups) accordingly, or
override ``node_selector`` per profile with ``FINETUNE_PROFILES``, e.g.
``{"HEAVY": {"node_selector": {"cloud.google.com/gke-nodepool": "highmem"}}}``; an empty
``{}`` lets the profile run anywhere.

``python -m finetune_sweep.sizing recommend [--dsn DSN]`` prints the recommendation table from
the recorded pod attempts (``finetune_pod_attempts``).
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
    """

    name: str
    memory: str
    cpu: str
    node_selector: dict[str, str] = field(default_factory=dict, hash=False)

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

_PROFILE_KEYS = ("memory", "cpu", "node_selector")


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
    ``node_selector``. The ladder must still grow: each profile's memory must be larger than the
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
    return profile


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


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def recommend(
    rows: Iterable[Mapping[str, Any]],
    sizing: Mapping[str, str] | None = None,
    profiles: Mapping[str, PodProfile] | None = None,
) -> list[Recommendation]:
    """Recommend a profile per factor from recorded pod attempts (VPA-style, design section 6).

    A sample is an attempt's ``peak_memory_bytes``; an attempt with ``exit_reason = 'OOMKilled'``
    counts as a peak *above* its limit (the kernel stopped it there), so its sample is
    ``limit + 1`` and no profile at or below that limit can be recommended. The needed limit is
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
        for row in factor_rows:
            limit = row.get("memory_limit_bytes")
            peak = row.get("peak_memory_bytes")
            if row.get("exit_reason") == OOM_REASON:
                ooms += 1
                if limit:
                    samples.append(limit + 1)
                    oom_floor = max(oom_floor, limit + 1)
                    reasons.append(
                        f"run {row.get('run_id')} attempt {row.get('attempt')}: OOMKilled at "
                        f"{format_bytes(limit)} ({row.get('profile')})"
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
            )
        )
    return result


def format_recommendations(recommendations: Sequence[Recommendation]) -> str:
    """A fixed-width table of recommendations, then one line per flag reason.

    :param recommendations: the output of :func:`recommend`.
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
    return "\n".join(out)


HISTORY_SQL = """
SELECT run_id, factor, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
       duration_seconds, finished_at
FROM finetune_pod_attempts
ORDER BY factor, finished_at, run_id, attempt
"""

# Before V003 only the latest attempt of each (run, factor) was kept: better than nothing.
FALLBACK_HISTORY_SQL = """
SELECT run_id, factor, attempt, profile, memory_limit_bytes, peak_memory_bytes, exit_reason,
       NULL::double precision AS duration_seconds, updated_at AS finished_at
FROM finetune_run_factors
WHERE peak_memory_bytes IS NOT NULL OR exit_reason IS NOT NULL
ORDER BY factor, updated_at, run_id
"""


def fetch_history(dsn: str) -> list[dict[str, Any]]:
    """Recorded pod attempts, from ``finetune_pod_attempts`` (or ``finetune_run_factors`` before V003).

    :param dsn: libpq URI of the finetune database.
    :raises SizingError: the database has neither table.
    """
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        found = conn.execute(
            "SELECT to_regclass('finetune_pod_attempts') IS NOT NULL AS attempts, "
            "to_regclass('finetune_run_factors') IS NOT NULL AS factors"
        ).fetchone()
        if not (found["attempts"] or found["factors"]):
            raise SizingError(
                "no finetune tables in this database (wrong database, or not migrated yet: python -m finetune migrate)"
            )
        return list(conn.execute(HISTORY_SQL if found["attempts"] else FALLBACK_HISTORY_SQL).fetchall())


# libpq's words when the server answered but refused who we are or what we asked for: a
# configuration error (fix the DSN or the role), never "unreachable", and no use retrying.
_REFUSED_CONNECTION = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    "does not exist",
)
# An unreachable host must fail in seconds, not after the operating system's TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


def database_error_line(exc: Exception, dsn: str) -> str:
    """One line for a failed database connection: refused settings or unreachable, no secret.

    :param exc: the psycopg error.
    :param dsn: the DSN tried (its password is scrubbed from the line).
    """
    from finetune.persistence import dsn_password

    from finetune_sweep.db import redact

    text = redact(" ".join(str(exc).split()), [dsn, dsn_password(dsn)])
    if any(words in text for words in _REFUSED_CONNECTION):
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
    ``finetune_db``. ``FINETUNE_PROFILES`` / ``FINETUNE_SIZING`` give the current sizing. Any
    failure is one line on stderr and exit 2 (bad input or configuration) or 1 (the database is
    unreachable), never a traceback.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    import os

    import psycopg

    from finetune_sweep.settings import get_settings, sizing_overrides

    parser = argparse.ArgumentParser(prog="python -m finetune_sweep.sizing")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="recommend a profile per factor from the recorded peaks")
    rec.add_argument("--dsn", help="libpq URI (default: FINETUNE_DB_URL, else the finetune_db connection)")
    args = parser.parse_args(argv)

    try:
        profiles_json, sizing_json = sizing_overrides()
        profiles = load_profiles(profiles_json)
        sizing = load_sizing(sizing_json)
    except SizingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dsn = args.dsn or os.environ.get("FINETUNE_DB_URL")
    if not dsn:
        from airflow.exceptions import AirflowNotFoundException

        from finetune_sweep.db import dsn_from_connection

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
        history = fetch_history(_with_connect_timeout(dsn))
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
    print(format_recommendations(recommend(history, sizing, profiles)))
    return 0


if __name__ == "__main__":
    # Run through the package module, so its classes are the ones every other module imports.
    from finetune_sweep.sizing import main as _main

    sys.exit(_main())
