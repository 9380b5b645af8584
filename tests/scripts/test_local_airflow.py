"""local_airflow: the environment of a throw-away Airflow on this checkout."""

from __future__ import annotations

from pathlib import Path

from local_airflow import REPO_ROOT, local_airflow_env

CALLER = {"PATH": "/usr/bin", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "FINETUNE_DB_URL": "postgresql://x@/y"}


def test_points_airflow_at_this_checkout_with_its_own_metadata_database(tmp_path: Path) -> None:
    env = local_airflow_env(tmp_path, environ=CALLER)

    assert env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert (Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "finetune_sweep.py").is_file()
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path}/airflow.db"


def test_drops_the_callers_settings_unless_asked_to_keep_them(tmp_path: Path) -> None:
    clean = local_airflow_env(tmp_path, environ=CALLER)
    kept = local_airflow_env(tmp_path, inherit_settings=True, environ=CALLER)

    assert clean["PATH"] == kept["PATH"] == "/usr/bin"
    assert "AIRFLOW__CORE__EXECUTOR" not in clean and "FINETUNE_DB_URL" not in clean
    assert kept["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and kept["FINETUNE_DB_URL"] == "postgresql://x@/y"
