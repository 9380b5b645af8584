"""Airflow plugin: the finetune sweep's results as tabs of the DAG-run and DAG pages.

Thin on purpose: every Airflow process imports plugins, so this declares the entries and
nothing else. The app, its routes and pages live in ``finetune_sweep.ui`` (that package is not
a plugin: ``.airflowignore`` hides it from the plugin loader).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from finetune_sweep.ui import EXTERNAL_VIEWS, FASTAPI_APPS, PLUGIN_NAME


class FinetuneSweepUIPlugin(AirflowPlugin):
    """A FastAPI app at ``/finetune`` and its two tabs (``external_views``)."""

    name = PLUGIN_NAME
    fastapi_apps = FASTAPI_APPS
    external_views = EXTERNAL_VIEWS
