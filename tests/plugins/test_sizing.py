"""Tests of finetune_sweep.sizing.profiles: quantities, profiles and overrides, the ladder, the recommender."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import pytest
from finetune_rows import record_attempt

from finetune_sweep.sizing import profiles as sizing
from finetune_sweep.sizing.profiles import (
    PROFILE_ORDER,
    PROFILES,
    SIZING_MAP,
    SizingError,
    load_profiles,
    load_sizing,
    next_profile,
    parse_quantity,
    profile_for,
    recommend,
)

GI = 2**30


def _make_attempt(**overrides: Any) -> dict[str, Any]:
    row = {
        "run_id": "scheduled__2026-06-07T00:00:00+00:00",
        "factor": "base_features",
        "attempt": 1,
        "profile": "STANDARD",
        "memory_limit_bytes": 8 * GI,
        "peak_memory_bytes": 3 * GI,
        "exit_reason": None,
        "duration_seconds": 120.0,
        "finished_at": None,
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        pytest.param("8Gi", 8 * GI, id="gibibytes"),
        pytest.param("512Mi", 512 * 2**20, id="mebibytes"),
        pytest.param("1Ti", 2**40, id="tebibytes"),
        pytest.param("64Ki", 64 * 1024, id="kibibytes"),
        pytest.param("1.5Gi", 3 * GI // 2, id="decimal-binary"),
        pytest.param("2G", 2 * 10**9, id="gigabytes"),
        pytest.param("100M", 10**8, id="megabytes"),
        pytest.param("10k", 10_000, id="kilobytes"),
        pytest.param("1000", 1000, id="plain-bytes"),
        pytest.param(4096, 4096, id="int-bytes"),
        pytest.param("0.5k", 500, id="decimal-decimal"),
    ],
)
def test_parse_quantity(quantity: str | int, expected: int) -> None:
    assert parse_quantity(quantity) == expected


@pytest.mark.parametrize(
    "quantity",
    [
        pytest.param("8GB", id="wrong-suffix"),
        pytest.param("8 gigs", id="words"),
        pytest.param("", id="empty"),
        pytest.param("-1Gi", id="negative"),
        pytest.param("100m", id="milli-bytes"),
        pytest.param("Gi", id="no-number"),
        pytest.param(True, id="bool"),
    ],
)
def test_parse_quantity_refuses(quantity: Any) -> None:
    with pytest.raises(ValueError, match="memory quantity"):
        parse_quantity(quantity)


def test_profiles_match_the_design() -> None:
    assert [PROFILES[name].memory for name in PROFILE_ORDER] == ["8Gi", "16Gi", "24Gi"]
    assert [PROFILES[name].memory_bytes for name in PROFILE_ORDER] == [8 * GI, 16 * GI, 24 * GI]
    assert all(PROFILES[name].node_selector == {"finetune/pool": name.lower()} for name in PROFILE_ORDER)
    assert SIZING_MAP == {
        "base_features": "STANDARD",
        "n_features": "HEAVY",
        "btc_features": "HEAVY",
        "l2_features": "STANDARD",
    }


def test_load_profiles_applies_overrides() -> None:
    profiles = load_profiles(json.dumps({"STANDARD": {"memory": "256Mi"}, "HEAVY": {"cpu": "500m", "node_selector": {}}}))

    assert profiles["STANDARD"].memory_bytes == 256 * 2**20
    assert profiles["STANDARD"].cpu == PROFILES["STANDARD"].cpu
    assert profiles["HEAVY"].cpu == "500m"
    assert profiles["HEAVY"].node_selector == {}
    assert profiles["MEDIUM"] == PROFILES["MEDIUM"]
    assert PROFILES["STANDARD"].memory == "8Gi", "the defaults are never mutated"


@pytest.mark.parametrize("raw", [pytest.param(None, id="none"), pytest.param("", id="empty"), pytest.param("  ", id="blank")])
def test_load_profiles_without_overrides(raw: str | None) -> None:
    assert load_profiles(raw) == PROFILES


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param("[1]", "JSON object", id="not-object"),
        pytest.param('{"HUGE": {"memory": "1Ti"}}', "unknown profile 'HUGE'.*STANDARD, MEDIUM, HEAVY", id="unknown-profile"),
        pytest.param('{"STANDARD": {"mem": "1Gi"}}', "unknown key.*mem.*memory, cpu, node_selector, tolerations, affinity", id="unknown-key"),
        pytest.param('{"HEAVY": {"tolerations": {"key": "x"}}}', "tolerations must be a list", id="tolerations-not-list"),
        pytest.param(
            '{"HEAVY": {"tolerations": [{"key": "x", "effect": "NoSchedul"}]}}',
            r"tolerations\[0\]\.effect: 'NoSchedul' is not one of NoSchedule",
            id="toleration-effect-typo",
        ),
        pytest.param(
            '{"HEAVY": {"tolerations": [{"key": "x", "tolerationSecs": 5}]}}',
            "unknown key.*tolerationSecs",
            id="toleration-unknown-key",
        ),
        pytest.param(
            '{"HEAVY": {"tolerations": [{"key": "x", "operator": "In"}]}}', "operator: 'In' is not one of Exists, Equal", id="toleration-operator"
        ),
        pytest.param('{"HEAVY": {"affinity": {"nodeAfinity": {}}}}', "affinity: unknown key.*nodeAfinity", id="affinity-typo"),
        pytest.param('{"HEAVY": {"affinity": ["x"]}}', "affinity must be an object", id="affinity-not-object"),
        pytest.param('{"STANDARD": {"memory": "lots"}}', "STANDARD.*memory", id="bad-memory"),
        pytest.param('{"STANDARD": {"memory": 5}}', "STANDARD.*memory", id="memory-not-string"),
        pytest.param('{"STANDARD": {"cpu": "two"}}', "cpu", id="bad-cpu"),
        pytest.param('{"STANDARD": {"node_selector": {"a": 1}}}', "node_selector", id="bad-selector"),
        pytest.param('{"STANDARD": {"memory": "32Gi"}}', "must grow", id="ladder-shrinks"),
        pytest.param('{"STANDARD": "8Gi"}', "must be an object", id="profile-not-object"),
    ],
)
def test_load_profiles_refuses(raw: str, match: str) -> None:
    with pytest.raises(SizingError, match=match):
        load_profiles(raw)


def test_load_sizing_applies_overrides() -> None:
    assert load_sizing('{"l2_features": "MEDIUM"}')["l2_features"] == "MEDIUM"
    assert load_sizing(None) == SIZING_MAP


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param('{"x_features": "HEAVY"}', "unknown factor 'x_features'.*base_features", id="unknown-factor"),
        pytest.param('{"l2_features": "XL"}', "unknown profile 'XL'", id="unknown-profile"),
        pytest.param("nope", "FINETUNE_SIZING is not valid JSON", id="bad-json"),
    ],
)
def test_load_sizing_refuses(raw: str, match: str) -> None:
    with pytest.raises(SizingError, match=match):
        load_sizing(raw)


def test_profile_for_and_unknown_factor() -> None:
    assert profile_for("btc_features").name == "HEAVY"
    assert profile_for("l2_features", sizing={"l2_features": "MEDIUM"}).name == "MEDIUM"
    with pytest.raises(SizingError, match="unknown factor 'eth_features'; known factors: base_features"):
        profile_for("eth_features")


def test_next_profile_climbs_then_stops() -> None:
    assert next_profile("STANDARD").name == "MEDIUM"
    assert next_profile("MEDIUM").name == "HEAVY"
    assert next_profile("HEAVY") is None
    small = load_profiles('{"MEDIUM": {"memory": "9Gi"}}')
    assert next_profile("STANDARD", small).memory == "9Gi"
    with pytest.raises(SizingError, match="unknown profile"):
        next_profile("TINY")


# ------------------------------------------------------------------ recommender

# Recorded history, including the incident: btc_features (then on STANDARD) peaked at 7.68Gi of 8Gi.
INCIDENT_ROWS = [
    _make_attempt(run_id="r1", factor="base_features", peak_memory_bytes=int(2.0 * GI)),
    _make_attempt(run_id="r2", factor="base_features", peak_memory_bytes=int(2.5 * GI)),
    _make_attempt(run_id="r3", factor="base_features", peak_memory_bytes=int(3.0 * GI)),
    _make_attempt(run_id="r1", factor="btc_features", peak_memory_bytes=int(6.9 * GI)),
    _make_attempt(run_id="r2", factor="btc_features", peak_memory_bytes=int(7.68 * GI)),
    _make_attempt(run_id="r3", factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=11 * GI),
]
INCIDENT_SIZING = {**SIZING_MAP, "btc_features": "STANDARD"}


def _by_factor(rows: list[dict[str, Any]], sizing_map: dict[str, str] | None = None) -> dict[str, sizing.Recommendation]:
    return {rec.factor: rec for rec in recommend(rows, sizing_map or INCIDENT_SIZING, PROFILES)}


def test_recommend_flags_the_incident_and_moves_it_up() -> None:
    recs = _by_factor(INCIDENT_ROWS)

    btc = recs["btc_features"]
    assert btc.flagged
    assert btc.current == "STANDARD"
    assert btc.recommended in ("MEDIUM", "HEAVY")
    assert btc.recommended == "MEDIUM"  # p95 ~7.6Gi needs 9.5Gi: the smallest fit is 16Gi
    assert btc.max_peak == int(7.68 * GI)
    assert btc.headroom is not None and btc.headroom < 0.2
    assert any("96%" in reason for reason in btc.reasons)


def test_recommend_keeps_a_comfortable_factor_and_can_shrink() -> None:
    recs = _by_factor(INCIDENT_ROWS)

    base = recs["base_features"]
    assert not base.flagged
    assert (base.runs_seen, base.attempts, base.ooms) == (3, 3, 0)
    assert base.p50_peak == 2.5 * GI
    assert base.recommended == "STANDARD"
    # 11Gi of 24Gi: 20 % headroom needs 13.75Gi, so MEDIUM (16Gi) would do.
    assert recs["n_features"].recommended == "MEDIUM"
    assert not recs["n_features"].flagged


def test_recommend_counts_an_oom_as_a_peak_above_its_limit() -> None:
    rows = [
        _make_attempt(run_id="r1", factor="l2_features", peak_memory_bytes=7 * GI, exit_reason="OOMKilled"),
        _make_attempt(run_id="r1", factor="l2_features", attempt=2, profile="MEDIUM", memory_limit_bytes=16 * GI,
                      peak_memory_bytes=int(8.5 * GI)),
    ]

    rec = _by_factor(rows)["l2_features"]

    assert rec.ooms == 1
    assert rec.flagged
    assert rec.recommended in ("MEDIUM", "HEAVY")
    assert rec.needed_bytes > 8 * GI
    assert any("OOMKilled" in reason for reason in rec.reasons)


def test_recommend_when_nothing_fits() -> None:
    rows = [_make_attempt(factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=None,
                          exit_reason="OOMKilled")]

    rec = _by_factor(rows)["n_features"]

    assert rec.recommended is None
    assert rec.flagged
    assert "none fits" in sizing.format_recommendations([rec])


def test_recommend_without_history_keeps_the_current_profile() -> None:
    recs = _by_factor([])

    assert set(recs) == set(SIZING_MAP)
    assert all(rec.recommended == rec.current and not rec.flagged and rec.p95_peak is None for rec in recs.values())


def test_format_recommendations_lists_every_factor_and_the_flags() -> None:
    text = sizing.format_recommendations(recommend(INCIDENT_ROWS, INCIDENT_SIZING, PROFILES))

    lines = text.splitlines()
    assert lines[0].split()[:4] == ["factor", "runs", "attempts", "ooms"]
    assert any(line.startswith("btc_features") and "FLAG" in line and "MEDIUM" in line for line in lines)
    assert any(line.strip().startswith("btc_features: run r2") for line in lines)
    assert "7.68Gi" in text


def test_recommend_cli_reads_the_history(migrated_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.setenv("FINETUNE_SIZING", '{"btc_features": "STANDARD"}')
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('r2', 'finetune_sweep', 'ridge_long_flat', '2026-06-07T00:00:00Z', '{}')"
        )
        conn.execute("INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES ('r2', 'btc_features', 'STANDARD', 'done')")
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes, peak_memory_bytes, "
            "exit_reason, duration_seconds) VALUES ('r2', 'btc_features', 1, 'STANDARD', %s, %s, NULL, 60)",
            (8 * GI, int(7.68 * GI)),
        )

    assert sizing.main(["recommend", "--dsn", migrated_db]) == 0

    out = capsys.readouterr().out
    btc = next(line for line in out.splitlines() if line.startswith("btc_features"))
    assert "FLAG" in btc and "MEDIUM" in btc and "7.68Gi" in btc


def test_recommend_cli_on_a_database_without_tables(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sizing.main(["recommend", "--dsn", empty_db]) == 2
    assert "no finetune tables" in capsys.readouterr().err


def _recommend_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m finetune_sweep.sizing recommend ...`` as a user runs it (a real process)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_DB_URL", "AIRFLOW_CONN_FINETUNE_DB")}
    return subprocess.run(
        [sys.executable, "-m", "finetune_sweep.sizing", "recommend", *args],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=600,
    )


def test_recommend_cli_with_the_database_down_says_so_in_one_line() -> None:
    # nothing listens on port 1: the server is down (connection refused)
    dsn = "postgresql://finetune:hunter2@127.0.0.1:1/finetune"

    done = _recommend_process("--dsn", dsn)

    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: database unreachable: ")
    assert "Connection refused" in line
    assert "hunter2" not in done.stderr


def test_recommend_cli_on_a_database_refusing_connections(migrated_db: str) -> None:
    import psycopg

    # the test's own database, altered from the server's admin database
    name = migrated_db.rsplit("/", 1)[1]
    admin = os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        done = _recommend_process("--dsn", migrated_db)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: database unreachable: ")
    assert "not currently accepting connections" in line


def test_recommend_cli_with_an_unknown_role_says_configuration_error(migrated_db: str) -> None:
    dsn = migrated_db.replace("postgresql://postgres@", "postgresql://no_such_role:pw-4711@", 1)
    assert dsn != migrated_db

    done = _recommend_process(env={"FINETUNE_DB_URL": dsn})

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: the database refused the connection settings (a configuration error, not an outage): ")
    assert 'role "no_such_role" does not exist' in line
    assert "pw-4711" not in done.stderr


def test_recommend_cli_without_any_database_configured() -> None:
    done = _recommend_process()

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: no database given: pass --dsn, set FINETUNE_DB_URL or define the Airflow connection finetune_db"
    )


def test_fetch_history_falls_back_to_the_manifest(migrated_db: str) -> None:
    import psycopg

    with psycopg.connect(migrated_db) as conn:
        conn.execute("DROP TABLE finetune_pod_attempts")
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('r1', 'finetune_sweep', 'ridge_long_flat', '2026-06-07T00:00:00Z', '{}')"
        )
        conn.execute(
            "INSERT INTO finetune_run_factors (run_id, factor, profile, status, memory_limit_bytes, peak_memory_bytes) "
            "VALUES ('r1', 'l2_features', 'STANDARD', 'done', %s, %s)",
            (8 * GI, 2 * GI),
        )

    (row,) = sizing.fetch_history(migrated_db)

    assert (row["factor"], row["peak_memory_bytes"], row["duration_seconds"]) == ("l2_features", 2 * GI, None)


def test_profiles_carry_tolerations_and_affinity_through_json() -> None:
    from finetune_sweep.sizing.profiles import profiles_from_json, profiles_to_json

    raw = json.dumps(
        {
            "HEAVY": {
                "tolerations": [{"key": "highmem", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            }
        }
    )
    profiles = load_profiles(raw)

    assert profiles["HEAVY"].tolerations == ({"key": "highmem", "operator": "Equal", "value": "true", "effect": "NoSchedule"},)
    assert profiles["STANDARD"].tolerations == () and profiles["STANDARD"].affinity is None
    carried = json.loads(json.dumps(profiles_to_json(profiles)))
    assert profiles_from_json(carried) == profiles
    assert profiles_from_json(carried)["HEAVY"].affinity == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}


@pytest.mark.parametrize(
    "carried",
    [
        pytest.param({"STANDARD": {"memory": "8Gi", "cpu": "2"}}, id="missing-profiles"),
        pytest.param({name: {"cpu": "2"} for name in ("STANDARD", "MEDIUM", "HEAVY")}, id="missing-memory"),
    ],
)
def test_profiles_from_json_refuses_an_incomplete_ladder(carried: dict[str, Any]) -> None:
    from finetune_sweep.sizing.profiles import profiles_from_json

    with pytest.raises(SizingError, match="profiles"):
        profiles_from_json(carried)
def test_percentile_is_numpys_linear_one_checked_by_hand() -> None:
    # Five peaks: position (5 - 1) * 0.95 = 3.8, so 7.6 + 0.8 * (7.68 - 7.6) = 7.664 (GiB).
    peaks = [7.0, 7.2, 7.4, 7.6, 7.68]

    assert sizing._percentile(peaks, 95) == pytest.approx(7.664)
    assert sizing._percentile(peaks, 95) == pytest.approx(statistics.quantiles(peaks, n=20, method="inclusive")[18])
    assert sizing._percentile([3.0], 95) == 3.0


# ------------------------------------------------------------------ starting profile (register)

STANDARD_MAP = {factor: "STANDARD" for factor in SIZING_MAP}


def _start(rows: list[dict[str, Any]], factor: str, *, mode: str = "history",
           map_profiles: dict[str, str] | None = None) -> sizing.StartChoice:
    choices = sizing.choose_start_profiles(map_profiles or STANDARD_MAP, rows, profiles=PROFILES, mode=mode)
    assert set(choices) == set(map_profiles or STANDARD_MAP), "one choice per planned factor"
    return choices[factor]


def test_near_limit_peaks_start_one_step_up_with_the_p95_as_reason() -> None:
    # p95 7.664Gi (worked above) needs 7.664 / 0.8 = 9.58Gi: more than STANDARD's 8Gi, within MEDIUM's 16Gi.
    rows = [_make_attempt(run_id=f"r{i}", factor="btc_features", peak_memory_bytes=int(p * GI))
            for i, p in enumerate([7.0, 7.2, 7.4, 7.6, 7.68])]

    choice = _start(rows, "btc_features")

    assert (choice.map_profile, choice.profile) == ("STANDARD", "MEDIUM")
    assert choice.reason == "history: p95 7.66Gi on STANDARD (96 % of 8.00Gi) -> MEDIUM"


def test_one_peak_at_95_percent_of_standard_is_the_incident_line() -> None:
    choice = _start([_make_attempt(factor="btc_features", peak_memory_bytes=int(0.95 * 8 * GI))], "btc_features")

    assert choice.profile == "MEDIUM"
    assert choice.reason == "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM"


def test_an_oom_last_week_starts_one_step_above_the_profile_it_killed() -> None:
    rows = [_make_attempt(run_id="last-week", factor="n_features", peak_memory_bytes=int(7.9 * GI), exit_reason="OOMKilled")]

    choice = _start(rows, "n_features")

    assert choice.profile == "MEDIUM"
    assert choice.reason == "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM"


def test_an_oom_without_a_recorded_limit_still_means_one_step_up() -> None:
    rows = [_make_attempt(factor="n_features", memory_limit_bytes=None, peak_memory_bytes=None, exit_reason="OOMKilled")]

    assert _start(rows, "n_features").profile == "MEDIUM"


def test_the_oom_reason_names_the_latest_of_the_largest_kills() -> None:
    rows = [
        _make_attempt(run_id="old", factor="l2_features", exit_reason="OOMKilled"),
        _make_attempt(run_id="old", attempt=2, factor="l2_features", profile="MEDIUM", memory_limit_bytes=16 * GI,
                      peak_memory_bytes=int(9 * GI)),
        _make_attempt(run_id="new", factor="l2_features", exit_reason="OOMKilled"),
    ]

    choice = _start(rows, "l2_features")

    assert choice.profile == "MEDIUM"
    assert choice.reason == "history: OOM on STANDARD in run new (attempt 1) -> MEDIUM"


@pytest.mark.parametrize(
    ("rows", "map_profiles"),
    [
        pytest.param([_make_attempt(factor="base_features", peak_memory_bytes=GI)], None, id="far-below-its-limit"),
        pytest.param([], None, id="no-history"),
        pytest.param([_make_attempt(factor="base_features", peak_memory_bytes=None, exit_reason="Error")], None,
                     id="no-recorded-peak"),
        # 2Gi of HEAVY fits STANDARD: that is advice, never an automatic downsizing.
        pytest.param([_make_attempt(factor="base_features", profile="HEAVY", memory_limit_bytes=24 * GI,
                                    peak_memory_bytes=2 * GI)], {"base_features": "HEAVY"}, id="never-below-the-map"),
        # An OOM on STANDARD asks for MEDIUM: a map already at HEAVY stays.
        pytest.param([_make_attempt(factor="base_features", exit_reason="OOMKilled")], {"base_features": "HEAVY"},
                     id="history-below-the-map"),
    ],
)
def test_the_map_stands_when_history_asks_for_no_more(rows: list[dict[str, Any]], map_profiles: dict[str, str] | None) -> None:
    choice = _start(rows, "base_features", map_profiles=map_profiles)

    expected = (map_profiles or STANDARD_MAP)["base_features"]
    assert (choice.map_profile, choice.profile, choice.reason) == (expected, expected, "map")


def test_a_history_beyond_the_largest_profile_starts_on_the_largest() -> None:
    rows = [_make_attempt(run_id="r7", attempt=3, factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI,
                          exit_reason="OOMKilled")]

    choice = _start(rows, "n_features")

    # The kill counts as a peak just above 24Gi; with 20 % headroom that needs 24 / 0.8 = 30Gi.
    assert choice.profile == "HEAVY"
    assert choice.reason == (
        "history: OOM on HEAVY in run r7 (attempt 3), needs 30.00Gi: more than the largest profile -> HEAVY"
    )


def test_static_mode_pins_the_map_whatever_the_history() -> None:
    rows = [_make_attempt(factor="n_features", exit_reason="OOMKilled"),
            _make_attempt(factor="btc_features", peak_memory_bytes=int(7.6 * GI))]

    for factor in ("n_features", "btc_features"):
        assert _start(rows, factor, mode="static") == sizing.StartChoice(factor, "STANDARD", "STANDARD", "map")


def test_other_factors_history_does_not_leak_into_a_choice() -> None:
    rows = [_make_attempt(factor="n_features", exit_reason="OOMKilled")]

    assert _start(rows, "base_features", map_profiles={"base_features": "STANDARD"}).profile == "STANDARD"


def test_advice_says_what_the_next_run_does_and_what_a_person_may_lower() -> None:
    rows = [_make_attempt(factor="btc_features", peak_memory_bytes=int(7.6 * GI)),
            _make_attempt(factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=2 * GI)]
    recs = recommend(rows, {**SIZING_MAP, "btc_features": "STANDARD"}, PROFILES)

    history = sizing.format_recommendations(recs)
    static = sizing.format_recommendations(recs, mode="static")

    assert "advice: btc_features starts its next run on MEDIUM (history; map STANDARD)" in history
    assert "advice: btc_features needs MEDIUM; FINETUNE_SIZING_MODE=static keeps STANDARD" in static
    lower = "advice: n_features fits STANDARD with 20 % headroom: lower its map profile HEAVY with FINETUNE_SIZING"
    assert lower in history and lower in static
    assert "base_features" not in "".join(line for line in history.splitlines() if "advice" in line)


# ------------------------------------------------------------------ the history window (real PostgreSQL)


def _windowed(dsn: str, **window: Any) -> list[tuple[str, str, str, int]]:
    return [(r["factor"], r["run_id"], r["airflow_run_id"], r["attempt"]) for r in sizing.fetch_history(dsn, **window)]


def test_history_older_than_the_window_is_left_out(migrated_db: str) -> None:
    record_attempt(migrated_db, run_id="spring", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=None, exit_reason="OOMKilled", days_ago=100)
    record_attempt(migrated_db, run_id="autumn", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=GI, days_ago=89)

    assert _windowed(migrated_db, history_days=90) == [("btc_features", "autumn", "", 1)]
    assert [row[1] for row in _windowed(migrated_db)] == ["spring", "autumn"], "no bound: all history, oldest first"
    history = sizing.fetch_history(migrated_db, history_days=90)
    assert _start(history, "btc_features").reason == "map", "the old OOM no longer holds the factor up"


def test_history_keeps_each_factors_last_runs_counting_every_airflow_rerun(migrated_db: str) -> None:
    # r9 (the oldest) was OOMKilled; r1 was run by two Airflow runs, each with its attempt 1.
    record_attempt(migrated_db, run_id="r9", factor="l2_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=None, exit_reason="OOMKilled", days_ago=10)
    for i in range(2, 9):
        record_attempt(migrated_db, run_id=f"r{i}", factor="l2_features", memory_limit_bytes=8 * GI,
                       peak_memory_bytes=2 * GI, days_ago=i)
    for airflow_run_id, days_ago in (("manual__a", 1.0), ("manual__b", 0.5)):
        record_attempt(migrated_db, run_id="r1", factor="l2_features", memory_limit_bytes=8 * GI,
                       peak_memory_bytes=2 * GI, airflow_run_id=airflow_run_id, days_ago=days_ago)
    # Another factor's runs do not use up l2_features' window.
    for i in range(10):
        record_attempt(migrated_db, run_id=f"b{i}", factor="base_features", memory_limit_bytes=8 * GI,
                       peak_memory_bytes=GI, days_ago=0.1)

    last_8 = _windowed(migrated_db, history_runs=8, factors=["l2_features"])
    last_9 = sizing.fetch_history(migrated_db, history_runs=9, factors=["l2_features"])

    assert len(last_8) == 9 and {row[1] for row in last_8} == {f"r{i}" for i in range(1, 9)}
    assert [row[2] for row in last_8 if row[1] == "r1"] == ["manual__a", "manual__b"]
    assert _start(sizing.fetch_history(migrated_db, history_runs=8), "l2_features").profile == "STANDARD"
    assert _start(last_9, "l2_features").reason == "history: OOM on STANDARD in run r9 (attempt 1) -> MEDIUM"
    assert len(_windowed(migrated_db, history_runs=8, factors=["base_features"])) == 8


def test_recommend_cli_reads_the_window_register_uses(migrated_db: str, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINETUNE_PROFILES", raising=False)
    monkeypatch.setenv("FINETUNE_SIZING", '{"btc_features": "STANDARD"}')
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "30")
    monkeypatch.delenv("FINETUNE_SIZING_HISTORY_RUNS", raising=False)
    monkeypatch.delenv("FINETUNE_SIZING_MODE", raising=False)
    record_attempt(migrated_db, run_id="old", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(7.9 * GI), days_ago=31)
    record_attempt(migrated_db, run_id="new", factor="btc_features", memory_limit_bytes=8 * GI,
                   peak_memory_bytes=int(7.6 * GI), days_ago=1)

    assert sizing.main(["recommend", "--dsn", migrated_db]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[0] == "history: each factor's last 8 runs within 30 days"
    btc = next(line for line in out.splitlines() if line.startswith("btc_features"))
    assert btc.split()[1:3] == ["1", "1"], "one run, one attempt: the 31-day-old one is outside the window"
    assert "7.60Gi" in btc and "7.90Gi" not in out
    assert "advice: btc_features starts its next run on MEDIUM (history; map STANDARD)" in out


def test_recommend_cli_refuses_a_bad_sizing_setting(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_RUNS", "all")

    assert sizing.main(["recommend", "--dsn", "postgresql://nowhere.invalid/x"]) == 2

    err = capsys.readouterr().err
    assert err == "error: FINETUNE_SIZING_HISTORY_RUNS='all' must be an integer from 1 to 1000\n"


def test_fetch_history_before_v007_has_no_airflow_run(migrated_db: str) -> None:
    import psycopg

    record_attempt(migrated_db, run_id="r1", factor="l2_features", memory_limit_bytes=8 * GI, peak_memory_bytes=2 * GI,
                   airflow_run_id="manual__x")
    with psycopg.connect(migrated_db) as conn:
        conn.execute("ALTER TABLE finetune_pod_attempts DROP COLUMN airflow_run_id")

    (row,) = sizing.fetch_history(migrated_db, history_runs=8, history_days=90)

    assert (row["run_id"], row["airflow_run_id"], row["peak_memory_bytes"]) == ("r1", "", 2 * GI)
