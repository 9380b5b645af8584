"""The environment of a throw-away Airflow on this checkout: `make demo`, the end-to-end tests and
the UI acceptance script all run `airflow ...` processes against this repository's dags/ and
plugins/, with a SQLite metadata database in their own AIRFLOW_HOME.

Not used by the DAG itself: a real deployment configures its Airflow as it does any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def local_airflow_env(
    home: Path, *, inherit_settings: bool = False, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for ``airflow`` processes of this checkout, rooted at ``home``.

    :param home: the AIRFLOW_HOME (its ``airflow.db`` is the SQLite metadata database).
    :param inherit_settings: keep the caller's ``AIRFLOW*`` / ``FINETUNE_*`` variables (the demo
        honours a user's ``FINETUNE_DB_URL``); tests drop them, so that a developer's own settings
        cannot change what they check.
    :param environ: the environment to start from (default: ``os.environ``).
    """
    source = os.environ if environ is None else environ
    env = {
        key: value
        for key, value in source.items()
        if inherit_settings or not key.startswith(("AIRFLOW", "FINETUNE_"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
    )
    return env
