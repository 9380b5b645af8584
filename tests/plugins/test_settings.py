"""Tests of finetune_sweep.settings: defaults, environment, refusals."""

from __future__ import annotations

import pytest

from finetune_sweep.settings import (
    DEFAULT_IMAGE,
    Settings,
    SettingsError,
    SizingPolicy,
    get_settings,
    sizing_overrides,
    sizing_policy,
    split_image,
)


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.pod_backend == "kubernetes"
    assert settings.image == DEFAULT_IMAGE
    assert (settings.image_repository, settings.image_tag) == ("ghcr.io/finetune-sweep/finetune", "0.1.0")
    assert settings.conn_id == "finetune_db"
    assert settings.retry_delay_seconds == 10.0


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "FINETUNE_POD_BACKEND": "LOCAL",
            "FINETUNE_NAMESPACE": "quant",
            "FINETUNE_IMAGE": "registry.local:5000/ft/finetune:2.0",
            "FINETUNE_DB_SECRET": "pg",
            "FINETUNE_DB_SECRET_KEY": "dsn",
            "FINETUNE_SERVICE_ACCOUNT": "finetune-runner",
            "FINETUNE_DATA_URI": "file:///data",
            "FINETUNE_RETRY_DELAY_SECONDS": "1",
            "FINETUNE_STARTUP_TIMEOUT_SECONDS": "60",
            "FINETUNE_SCHEDULE_TIMEOUT_SECONDS": "1800",
            "FINETUNE_KEEP_FAILED_PODS": "True",
            "FINETUNE_DISRUPTION_RETRIES": "0",
            "FINETUNE_CONFIG_ERROR_GRACE_SECONDS": "0",
        }
    )

    assert settings.pod_backend == "local"
    assert settings.namespace == "quant"
    assert settings.image_repository == "registry.local:5000/ft/finetune"
    assert settings.image_with_tag("2.1") == "registry.local:5000/ft/finetune:2.1"
    assert (settings.db_secret_name, settings.db_secret_key) == ("pg", "dsn")
    assert settings.service_account == "finetune-runner"
    assert settings.data_uri == "file:///data"
    assert settings.retry_delay_seconds == 1.0
    assert (settings.startup_timeout_seconds, settings.schedule_timeout_seconds) == (60, 1800)
    assert settings.keep_failed_pods is True
    assert settings.disruption_retries == 0
    assert settings.config_error_grace_seconds == 0
    assert Settings.from_env({}).config_error_grace_seconds == 30


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param({"FINETUNE_POD_BACKEND": "docker"}, "FINETUNE_POD_BACKEND", id="unknown-backend"),
        pytest.param({"FINETUNE_IMAGE": "x/y:1@sha256:abc"}, "no digest", id="digest"),
        pytest.param({"FINETUNE_IMAGE": ":1.0"}, "repository", id="no-repository"),
        pytest.param({"FINETUNE_IMAGE": "x/y:"}, "repository", id="empty-tag"),
        pytest.param({"FINETUNE_RETRY_DELAY_SECONDS": "soon"}, "RETRY_DELAY", id="bad-delay"),
        pytest.param({"FINETUNE_RETRY_DELAY_SECONDS": "-1"}, "RETRY_DELAY", id="negative-delay"),
        pytest.param(
            {"FINETUNE_STARTUP_TIMEOUT_SECONDS": "2m"},
            "FINETUNE_STARTUP_TIMEOUT_SECONDS='2m' must be an integer",
            id="bad-startup",
        ),
        pytest.param(
            {"FINETUNE_CONFIG_ERROR_GRACE_SECONDS": "-1"},
            "FINETUNE_CONFIG_ERROR_GRACE_SECONDS",
            id="negative-config-error-grace",
        ),
        pytest.param({"FINETUNE_DISRUPTION_RETRIES": "11"}, "from 0 to 10", id="too-many-disruption-retries"),
        pytest.param(
            {"FINETUNE_IMAGE_TAG_PATTERN": "[0-9"},
            r"FINETUNE_IMAGE_TAG_PATTERN='\[0-9' is not a regular expression",
            id="bad-tag-pattern",
        ),
        pytest.param(
            {"FINETUNE_MAX_RUN_WORK": "1e9"}, r"FINETUNE_MAX_RUN_WORK='1e9' must be an integer", id="bad-max-work"
        ),
        pytest.param(
            {"FINETUNE_POD_DEADLINE_MAX_SECONDS": "59"},
            r"FINETUNE_POD_DEADLINE_MAX_SECONDS='59' must be an integer from 60",
            id="deadline-ceiling-too-low",
        ),
        pytest.param(
            {"FINETUNE_KEEP_FAILED_PODS": "maybe"}, "KEEP_FAILED_PODS='maybe' must be true or false", id="bad-keep"
        ),
        pytest.param({"FINETUNE_MODELS": "Team-GBM"}, "FINETUNE_MODELS='Team-GBM' must be", id="bad-model-name"),
        pytest.param({"FINETUNE_MODELS": ", ,"}, "FINETUNE_MODELS=', ,' must be", id="no-model"),
    ],
)
def test_refuses_bad_values(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "models", "default"),
    [
        pytest.param(None, ("ridge_long_flat",), "ridge_long_flat", id="unset"),
        pytest.param("team_logit, ridge_long_flat,team_logit", ("team_logit", "ridge_long_flat"), "ridge_long_flat"),
        pytest.param("team_logit", ("team_logit",), "team_logit", id="without-the-built-in"),
    ],
)
def test_finetune_models(text: str | None, models: tuple[str, ...], default: str) -> None:
    settings = Settings.from_env({} if text is None else {"FINETUNE_MODELS": text})
    assert settings.models == models
    assert settings.default_model == default


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param("a/b:c", ("a/b", "c"), id="tagged"),
        pytest.param("ghcr.io/x/finetune", ("ghcr.io/x/finetune", "0.1.0"), id="untagged-gets-the-default"),
        pytest.param("registry:5000/finetune", ("registry:5000/finetune", "0.1.0"), id="port-is-not-a-tag"),
        pytest.param("registry:5000/finetune:2", ("registry:5000/finetune", "2"), id="port-and-tag"),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_get_settings_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("FINETUNE_NAMESPACE", "first")
    first = get_settings()
    monkeypatch.setenv("FINETUNE_NAMESPACE", "second")
    try:
        assert get_settings() is first
        assert first.namespace == "first"
    finally:
        get_settings.cache_clear()


def test_sizing_overrides_are_read_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PROFILES", '{"STANDARD": {"memory": "1Gi"}}')
    monkeypatch.delenv("FINETUNE_SIZING", raising=False)
    assert sizing_overrides() == ('{"STANDARD": {"memory": "1Gi"}}', None)
    monkeypatch.setenv("FINETUNE_SIZING", '{"l2_features": "MEDIUM"}')
    assert sizing_overrides()[1] == '{"l2_features": "MEDIUM"}'


def test_sizing_policy_defaults_to_history_over_8_runs_and_90_days() -> None:
    assert sizing_policy({}) == SizingPolicy(mode="history", history_runs=8, history_days=90)
    assert sizing_policy({"FINETUNE_SIZING_MODE": " "}).mode == "history", "blank is the default"


def test_sizing_policy_reads_the_environment_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_SIZING_MODE", "Static")
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_RUNS", "3")
    monkeypatch.setenv("FINETUNE_SIZING_HISTORY_DAYS", "14")
    assert sizing_policy() == SizingPolicy(mode="static", history_runs=3, history_days=14)
    monkeypatch.setenv("FINETUNE_SIZING_MODE", "history")
    assert sizing_policy().mode == "history"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param(
            {"FINETUNE_SIZING_MODE": "learned"},
            r"FINETUNE_SIZING_MODE='learned' is not one of history, static",
            id="unknown-mode",
        ),
        pytest.param(
            {"FINETUNE_SIZING_HISTORY_RUNS": "0"},
            r"FINETUNE_SIZING_HISTORY_RUNS='0' must be an integer from 1 to 1000",
            id="zero-runs",
        ),
        pytest.param({"FINETUNE_SIZING_HISTORY_RUNS": "eight"}, r"FINETUNE_SIZING_HISTORY_RUNS='eight'", id="words"),
        pytest.param(
            {"FINETUNE_SIZING_HISTORY_DAYS": "7.5"},
            r"FINETUNE_SIZING_HISTORY_DAYS='7.5' must be an integer from 1 to 3650",
            id="fractional-days",
        ),
        pytest.param({"FINETUNE_SIZING_HISTORY_DAYS": "-1"}, r"FINETUNE_SIZING_HISTORY_DAYS='-1'", id="negative-days"),
    ],
)
def test_sizing_policy_refuses_bad_values(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        sizing_policy(env)


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        pytest.param({}, r"[0-9]+\.[0-9]+\.[0-9]+", id="pinned-release-shape"),
        pytest.param({"FINETUNE_IMAGE": "r/f:v2.3-rc1"}, r"v[0-9]+\.[0-9]+-rc[0-9]+", id="other-shape"),
        pytest.param({"FINETUNE_IMAGE_TAG_PATTERN": "[0-9]+\\.[0-9]+"}, r"[0-9]+\.[0-9]+", id="set"),
    ],
)
def test_the_image_tag_pattern_defaults_to_the_pinned_tags_release_shape(env: dict[str, str], pattern: str) -> None:
    assert Settings.from_env(env).image_tag_pattern == pattern
