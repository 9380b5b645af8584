"""Tests of finetune_sweep.sizing.profiles: profiles and their overrides, the map, the ladder, JSON transport."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_rows import GI
from finetune_sweep.sizing.profiles import (
    PROFILE_ORDER,
    PROFILES,
    SIZING_MAP,
    SizingError,
    load_profiles,
    load_sizing,
    next_profile,
    profile_for,
)


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
    profiles = load_profiles(
        json.dumps({"STANDARD": {"memory": "256Mi"}, "HEAVY": {"cpu": "500m", "node_selector": {}}})
    )

    assert profiles["STANDARD"].memory_bytes == 256 * 2**20
    assert profiles["STANDARD"].cpu == PROFILES["STANDARD"].cpu
    assert profiles["HEAVY"].cpu == "500m"
    assert profiles["HEAVY"].node_selector == {}
    assert profiles["MEDIUM"] == PROFILES["MEDIUM"]
    assert PROFILES["STANDARD"].memory == "8Gi", "the defaults are never mutated"


@pytest.mark.parametrize(
    "raw", [pytest.param(None, id="none"), pytest.param("", id="empty"), pytest.param("  ", id="blank")]
)
def test_load_profiles_without_overrides(raw: str | None) -> None:
    assert load_profiles(raw) == PROFILES


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param("[1]", "JSON object", id="not-object"),
        pytest.param(
            '{"HUGE": {"memory": "1Ti"}}', "unknown profile 'HUGE'.*STANDARD, MEDIUM, HEAVY", id="unknown-profile"
        ),
        pytest.param(
            '{"STANDARD": {"mem": "1Gi"}}',
            "unknown key.*mem.*memory, cpu, node_selector, tolerations, affinity",
            id="unknown-key",
        ),
        pytest.param(
            '{"HEAVY": {"tolerations": {"key": "x"}}}', "tolerations must be a list", id="tolerations-not-list"
        ),
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
            '{"HEAVY": {"tolerations": [{"key": "x", "operator": "In"}]}}',
            "operator: 'In' is not one of Exists, Equal",
            id="toleration-operator",
        ),
        pytest.param(
            '{"HEAVY": {"affinity": {"nodeAfinity": {}}}}', "affinity: unknown key.*nodeAfinity", id="affinity-typo"
        ),
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


def test_load_sizing_adds_a_team_factor_with_its_profile() -> None:
    sizing = load_sizing('{"range_features": "MEDIUM"}')
    assert sizing == {**SIZING_MAP, "range_features": "MEDIUM"}
    assert profile_for("range_features", sizing=sizing).name == "MEDIUM"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(
            '{"X-features": "HEAVY"}', "factor 'X-features' is not a factor name.*base_features", id="bad-factor-name"
        ),
        pytest.param('{"x_features": "XL"}', "unknown profile 'XL'", id="new-factor-unknown-profile"),
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

    assert profiles["HEAVY"].tolerations == (
        {"key": "highmem", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    )
    assert profiles["STANDARD"].tolerations == () and profiles["STANDARD"].affinity is None
    carried = json.loads(json.dumps(profiles_to_json(profiles)))
    assert profiles_from_json(carried) == profiles
    assert profiles_from_json(carried)["HEAVY"].affinity == {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }


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


@pytest.mark.parametrize(
    ("cpu", "n_cryptos", "expected"),
    [("2", 8, 2), ("2", 1, 1), ("500m", 8, 1), ("1.5", 8, 2), ("6", 50, 6)],
)
def test_a_pod_runs_one_worker_per_requested_cpu_rounded_up_at_most_one_per_crypto(
    cpu: str, n_cryptos: int, expected: int
) -> None:
    from finetune_sweep.sizing.profiles import PodProfile, pod_workers

    assert pod_workers(PodProfile("P", "1Gi", cpu), n_cryptos) == expected
