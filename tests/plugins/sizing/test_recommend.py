"""Tests of finetune_sweep.sizing.recommend: the VPA-style recommender and each factor's starting profile."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from finetune_rows import GI, record_attempt
from finetune_sweep.db.attempts import fetch_history
from finetune_sweep.sizing.profiles import (
    PROFILES,
    SIZING_MAP,
    load_sizing,
    next_profile,
    profile_for,
)
from finetune_sweep.sizing.recommend import (
    Recommendation,
    StartChoice,
    _percentile,
    choose_start_profiles,
    format_recommendations,
    recommend,
)


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


# Recorded history, including the incident: btc_features (then on STANDARD) peaked at 7.68Gi of 8Gi.
INCIDENT_ROWS = [
    _make_attempt(run_id="r1", factor="base_features", peak_memory_bytes=int(2.0 * GI)),
    _make_attempt(run_id="r2", factor="base_features", peak_memory_bytes=int(2.5 * GI)),
    _make_attempt(run_id="r3", factor="base_features", peak_memory_bytes=int(3.0 * GI)),
    _make_attempt(run_id="r1", factor="btc_features", peak_memory_bytes=int(6.9 * GI)),
    _make_attempt(run_id="r2", factor="btc_features", peak_memory_bytes=int(7.68 * GI)),
    _make_attempt(
        run_id="r3", factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=11 * GI
    ),
]


INCIDENT_SIZING = {**SIZING_MAP, "btc_features": "STANDARD"}


def _by_factor(rows: list[dict[str, Any]], sizing_map: dict[str, str] | None = None) -> dict[str, Recommendation]:
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
        _make_attempt(
            run_id="r1",
            factor="l2_features",
            attempt=2,
            profile="MEDIUM",
            memory_limit_bytes=16 * GI,
            peak_memory_bytes=int(8.5 * GI),
        ),
    ]

    rec = _by_factor(rows)["l2_features"]

    assert rec.ooms == 1
    assert rec.flagged
    assert rec.recommended in ("MEDIUM", "HEAVY")
    assert rec.needed_bytes > 8 * GI
    assert any("OOMKilled" in reason for reason in rec.reasons)


def test_recommend_when_nothing_fits() -> None:
    rows = [
        _make_attempt(
            factor="n_features",
            profile="HEAVY",
            memory_limit_bytes=24 * GI,
            peak_memory_bytes=None,
            exit_reason="OOMKilled",
        )
    ]

    rec = _by_factor(rows)["n_features"]

    assert rec.recommended is None
    assert rec.flagged
    assert "none fits" in format_recommendations([rec])


def test_recommend_without_history_keeps_the_current_profile() -> None:
    recs = _by_factor([])

    assert set(recs) == set(SIZING_MAP)
    assert all(rec.recommended == rec.current and not rec.flagged and rec.p95_peak is None for rec in recs.values())


def test_format_recommendations_lists_every_factor_and_the_flags() -> None:
    text = format_recommendations(recommend(INCIDENT_ROWS, INCIDENT_SIZING, PROFILES))

    lines = text.splitlines()
    assert lines[0].split()[:4] == ["factor", "runs", "attempts", "ooms"]
    assert any(line.startswith("btc_features") and "FLAG" in line and "MEDIUM" in line for line in lines)
    assert any(line.strip().startswith("btc_features: run r2") for line in lines)
    assert "7.68Gi" in text


def test_percentile_is_numpys_linear_one_checked_by_hand() -> None:
    # Five peaks: position (5 - 1) * 0.95 = 3.8, so 7.6 + 0.8 * (7.68 - 7.6) = 7.664 (GiB).
    peaks = [7.0, 7.2, 7.4, 7.6, 7.68]

    assert _percentile(peaks, 95) == pytest.approx(7.664)
    assert _percentile(peaks, 95) == pytest.approx(statistics.quantiles(peaks, n=20, method="inclusive")[18])
    assert _percentile([3.0], 95) == 3.0


STANDARD_MAP = {factor: "STANDARD" for factor in SIZING_MAP}


def _start(
    rows: list[dict[str, Any]], factor: str, *, mode: str = "history", map_profiles: dict[str, str] | None = None
) -> StartChoice:
    choices = choose_start_profiles(map_profiles or STANDARD_MAP, rows, profiles=PROFILES, mode=mode)
    assert set(choices) == set(map_profiles or STANDARD_MAP), "one choice per planned factor"
    return choices[factor]


def test_near_limit_peaks_start_one_step_up_with_the_p95_as_reason() -> None:
    # p95 7.664Gi (worked above) needs 7.664 / 0.8 = 9.58Gi: more than STANDARD's 8Gi, within MEDIUM's 16Gi.
    rows = [
        _make_attempt(run_id=f"r{i}", factor="btc_features", peak_memory_bytes=int(p * GI))
        for i, p in enumerate([7.0, 7.2, 7.4, 7.6, 7.68])
    ]

    choice = _start(rows, "btc_features")

    assert (choice.map_profile, choice.profile) == ("STANDARD", "MEDIUM")
    assert choice.reason == "history: p95 7.66Gi on STANDARD (96 % of 8.00Gi) -> MEDIUM"


def test_one_peak_at_95_percent_of_standard_is_the_incident_line() -> None:
    choice = _start([_make_attempt(factor="btc_features", peak_memory_bytes=int(0.95 * 8 * GI))], "btc_features")

    assert choice.profile == "MEDIUM"
    assert choice.reason == "history: p95 7.60Gi on STANDARD (95 % of 8.00Gi) -> MEDIUM"


def test_an_oom_last_week_starts_one_step_above_the_profile_it_killed() -> None:
    rows = [
        _make_attempt(run_id="last-week", factor="n_features", peak_memory_bytes=int(7.9 * GI), exit_reason="OOMKilled")
    ]

    choice = _start(rows, "n_features")

    assert choice.profile == "MEDIUM"
    assert choice.reason == "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM"


def test_an_oom_without_a_recorded_limit_still_means_one_step_up() -> None:
    rows = [
        _make_attempt(factor="n_features", memory_limit_bytes=None, peak_memory_bytes=None, exit_reason="OOMKilled")
    ]

    assert _start(rows, "n_features").profile == "MEDIUM"


def test_the_oom_reason_names_the_latest_of_the_largest_kills() -> None:
    rows = [
        _make_attempt(run_id="old", factor="l2_features", exit_reason="OOMKilled"),
        _make_attempt(
            run_id="old",
            attempt=2,
            factor="l2_features",
            profile="MEDIUM",
            memory_limit_bytes=16 * GI,
            peak_memory_bytes=int(9 * GI),
        ),
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
        pytest.param(
            [_make_attempt(factor="base_features", peak_memory_bytes=None, exit_reason="Error")],
            None,
            id="no-recorded-peak",
        ),
        # 2Gi of HEAVY fits STANDARD: that is advice, never an automatic downsizing.
        pytest.param(
            [
                _make_attempt(
                    factor="base_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=2 * GI
                )
            ],
            {"base_features": "HEAVY"},
            id="never-below-the-map",
        ),
        # An OOM on STANDARD asks for MEDIUM: a map already at HEAVY stays.
        pytest.param(
            [_make_attempt(factor="base_features", exit_reason="OOMKilled")],
            {"base_features": "HEAVY"},
            id="history-below-the-map",
        ),
    ],
)
def test_the_map_stands_when_history_asks_for_no_more(
    rows: list[dict[str, Any]], map_profiles: dict[str, str] | None
) -> None:
    choice = _start(rows, "base_features", map_profiles=map_profiles)

    expected = (map_profiles or STANDARD_MAP)["base_features"]
    assert (choice.map_profile, choice.profile, choice.reason) == (expected, expected, "map")


def test_a_history_beyond_the_largest_profile_starts_on_the_largest() -> None:
    rows = [
        _make_attempt(
            run_id="r7",
            attempt=3,
            factor="n_features",
            profile="HEAVY",
            memory_limit_bytes=24 * GI,
            exit_reason="OOMKilled",
        )
    ]

    choice = _start(rows, "n_features")

    # The kill counts as a peak just above 24Gi; with 20 % headroom that needs 24 / 0.8 = 30Gi.
    assert choice.profile == "HEAVY"
    assert choice.reason == (
        "history: OOM on HEAVY in run r7 (attempt 3), needs 30.00Gi: more than the largest profile -> HEAVY"
    )


def test_static_mode_pins_the_map_whatever_the_history() -> None:
    rows = [
        _make_attempt(factor="n_features", exit_reason="OOMKilled"),
        _make_attempt(factor="btc_features", peak_memory_bytes=int(7.6 * GI)),
    ]

    for factor in ("n_features", "btc_features"):
        assert _start(rows, factor, mode="static") == StartChoice(factor, "STANDARD", "STANDARD", "map")


def test_other_factors_history_does_not_leak_into_a_choice() -> None:
    rows = [_make_attempt(factor="n_features", exit_reason="OOMKilled")]

    assert _start(rows, "base_features", map_profiles={"base_features": "STANDARD"}).profile == "STANDARD"


def test_advice_says_what_the_next_run_does_and_what_a_person_may_lower() -> None:
    rows = [
        _make_attempt(factor="btc_features", peak_memory_bytes=int(7.6 * GI)),
        _make_attempt(factor="n_features", profile="HEAVY", memory_limit_bytes=24 * GI, peak_memory_bytes=2 * GI),
    ]
    recs = recommend(rows, {**SIZING_MAP, "btc_features": "STANDARD"}, PROFILES)

    history = format_recommendations(recs)
    static = format_recommendations(recs, mode="static")

    assert "advice: btc_features starts its next run on MEDIUM (history; map STANDARD)" in history
    assert "advice: btc_features needs MEDIUM; FINETUNE_SIZING_MODE=static keeps STANDARD" in static
    lower = "advice: n_features fits STANDARD with 20 % headroom: lower its map profile HEAVY with FINETUNE_SIZING"
    assert lower in history and lower in static
    assert "base_features" not in "".join(line for line in history.splitlines() if "advice" in line)


def test_history_keeps_each_factors_last_runs_counting_every_airflow_rerun(migrated_db: str) -> None:
    # r9 (the oldest) was OOMKilled; r1 was run by two Airflow runs, each with its attempt 1.
    record_attempt(
        migrated_db,
        run_id="r9",
        factor="l2_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=None,
        exit_reason="OOMKilled",
        days_ago=10,
    )
    for i in range(2, 9):
        record_attempt(
            migrated_db,
            run_id=f"r{i}",
            factor="l2_features",
            memory_limit_bytes=8 * GI,
            peak_memory_bytes=2 * GI,
            days_ago=i,
        )
    for airflow_run_id, days_ago in (("manual__a", 1.0), ("manual__b", 0.5)):
        record_attempt(
            migrated_db,
            run_id="r1",
            factor="l2_features",
            memory_limit_bytes=8 * GI,
            peak_memory_bytes=2 * GI,
            airflow_run_id=airflow_run_id,
            days_ago=days_ago,
        )
    # Another factor's runs do not use up l2_features' window.
    for i in range(10):
        record_attempt(
            migrated_db,
            run_id=f"b{i}",
            factor="base_features",
            memory_limit_bytes=8 * GI,
            peak_memory_bytes=GI,
            days_ago=0.1,
        )

    last_8 = _windowed(migrated_db, history_runs=8, factors=["l2_features"])
    last_9 = fetch_history(migrated_db, history_runs=9, factors=["l2_features"])

    assert len(last_8) == 9 and {row[1] for row in last_8} == {f"r{i}" for i in range(1, 9)}
    assert [row[2] for row in last_8 if row[1] == "r1"] == ["manual__a", "manual__b"]
    assert _start(fetch_history(migrated_db, history_runs=8), "l2_features").profile == "STANDARD"
    assert _start(last_9, "l2_features").reason == "history: OOM on STANDARD in run r9 (attempt 1) -> MEDIUM"
    assert len(_windowed(migrated_db, history_runs=8, factors=["base_features"])) == 8


def _windowed(dsn: str, **window: Any) -> list[tuple[str, str, str, int]]:
    return [(r["factor"], r["run_id"], r["airflow_run_id"], r["attempt"]) for r in fetch_history(dsn, **window)]


def test_history_older_than_the_window_is_left_out(migrated_db: str) -> None:
    record_attempt(
        migrated_db,
        run_id="spring",
        factor="btc_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=None,
        exit_reason="OOMKilled",
        days_ago=100,
    )
    record_attempt(
        migrated_db,
        run_id="autumn",
        factor="btc_features",
        memory_limit_bytes=8 * GI,
        peak_memory_bytes=GI,
        days_ago=89,
    )

    assert _windowed(migrated_db, history_days=90) == [("btc_features", "autumn", "", 1)]
    assert [row[1] for row in _windowed(migrated_db)] == ["spring", "autumn"], "no bound: all history, oldest first"
    history = fetch_history(migrated_db, history_days=90)
    assert _start(history, "btc_features").reason == "map", "the old OOM no longer holds the factor up"


def test_peaks_recorded_with_fewer_workers_are_scaled_to_the_workers_a_run_will_use() -> None:
    # 3 GiB with one worker; the factor now runs 4: about four crypto stores at once.
    rows = [_make_attempt(factor="base_features", peak_memory_bytes=3 * GI, workers=1)]

    (as_recorded,) = recommend(rows, {"base_features": "STANDARD"}, PROFILES)
    (scaled,) = recommend(rows, {"base_features": "STANDARD"}, PROFILES, workers={"base_features": 4})

    assert as_recorded.p95_peak == 3 * GI and as_recorded.recommended == "STANDARD"
    assert scaled.p95_peak == 12 * GI and scaled.recommended == "MEDIUM"


def test_peaks_recorded_before_workers_are_kept_as_they_are() -> None:
    # NULL workers: a pod that held every crypto's store at once, more than any worker holds
    rows = [_make_attempt(factor="base_features", peak_memory_bytes=3 * GI, workers=None)]

    (rec,) = recommend(rows, {"base_features": "STANDARD"}, PROFILES, workers={"base_features": 4})

    assert rec.p95_peak == 3 * GI and rec.recommended == "STANDARD"


def test_peaks_recorded_with_more_workers_are_never_scaled_down() -> None:
    rows = [_make_attempt(factor="base_features", peak_memory_bytes=7 * GI, workers=6)]

    (rec,) = recommend(rows, {"base_features": "STANDARD"}, PROFILES, workers={"base_features": 2})

    assert rec.p95_peak == 7 * GI and rec.recommended == "MEDIUM"


def test_an_oom_with_one_worker_asks_for_proportionally_more_with_two() -> None:
    rows = [_make_attempt(factor="base_features", exit_reason="OOMKilled", peak_memory_bytes=None, workers=1)]

    (rec,) = recommend(rows, {"base_features": "STANDARD"}, PROFILES, workers={"base_features": 2})

    assert rec.oom_floor_bytes == 2 * (8 * GI + 1) and rec.recommended == "HEAVY"


def test_a_team_factor_from_finetune_sizing_is_sized_like_any_other() -> None:
    """A plug-in factor that FINETUNE_SIZING added: its history raises its start, an OOM moves it
    up, and the advice names it."""
    sizing = load_sizing('{"range_features": "STANDARD"}')
    near_limit = [
        _make_attempt(run_id=f"r{i}", factor="range_features", peak_memory_bytes=int(p * GI))
        for i, p in enumerate([7.2, 7.5, 7.6])
    ]
    choice = _start(near_limit, "range_features", map_profiles=sizing)
    assert (choice.map_profile, choice.profile) == ("STANDARD", "MEDIUM")
    oom = [_make_attempt(run_id="last-week", factor="range_features", exit_reason="OOMKilled")]
    assert _start(oom, "range_features", map_profiles=sizing).profile == "MEDIUM"
    assert next_profile(profile_for("range_features", sizing=sizing).name).name == "MEDIUM"
    (advice,) = [rec for rec in recommend(near_limit, sizing, PROFILES) if rec.factor == "range_features"]
    assert advice.flagged and advice.recommended == "MEDIUM"
    assert "range_features" in format_recommendations(recommend(near_limit, sizing, PROFILES))
