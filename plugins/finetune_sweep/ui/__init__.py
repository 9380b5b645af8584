"""The sweep's results in the Airflow UI: a FastAPI app mounted by the plugin, shown as tabs.

This module is what ``plugins/finetune_sweep_ui.py`` imports, and every Airflow process (the
scheduler, the dag-processor, each task) imports plugins: it only declares constants and a lazy
ASGI entry point. FastAPI, Jinja and psycopg are imported when the api-server serves the first
request (:mod:`finetune_sweep.ui.app` builds the app then).

Routes (under :data:`URL_PREFIX`; each requires read access to the DAG in its path):

* ``/dags/{dag_id}/runs/{airflow_run_id}`` -- the run tab (``external_views`` destination
  ``dag_run``): verdict, model vs baselines, cost curves, pods;
* ``.../folds``, ``.../rows.csv|json``, ``.../folds.csv|json`` -- per-fold detail and downloads;
* ``/dags/{dag_id}`` -- the DAG tab: per factor across runs, and the sizing advice;
* ``/static/{name}`` -- the page's script, style and plotly.js (no data; authenticated users).
"""

from __future__ import annotations

import threading
from typing import Any

PLUGIN_NAME = "finetune_sweep_ui"
# Mounted here in the api-server; a plugin prefix may not start with /api/v2, /ui, /execution,
# /auth or /pluginsv2.
URL_PREFIX = "/finetune"
RUN_TAB_ROUTE = "finetune-sweep"
DAG_TAB_ROUTE = "finetune-sweep-history"

# Relative hrefs: the UI resolves them against its <base href>, which follows [api] base_url, so
# the tabs work behind a path prefix too. The UI fills in {DAG_ID} and {RUN_ID} URL-encoded.
EXTERNAL_VIEWS: list[dict[str, Any]] = [
    {
        "name": "Sweep results",
        "href": f"{URL_PREFIX.lstrip('/')}/dags/{{DAG_ID}}/runs/{{RUN_ID}}",
        "destination": "dag_run",
        "url_route": RUN_TAB_ROUTE,
        "category": "finetune",
    },
    {
        "name": "Sweep history",
        "href": f"{URL_PREFIX.lstrip('/')}/dags/{{DAG_ID}}",
        "destination": "dag",
        "url_route": DAG_TAB_ROUTE,
        "category": "finetune",
    },
]


class LazyApp:
    """An ASGI app that builds the real FastAPI app on its first request.

    Plugins are imported by every Airflow process, but only the api-server serves them: building
    the app (FastAPI, Jinja, the routes) at import time would tax each task for nothing.
    """

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The FastAPI app (built once, thread-safe)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    # the one deliberate late import (see the class docstring)
                    from finetune_sweep.ui.app import create_app

                    self._app = create_app()
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.get()(scope, receive, send)


app = LazyApp()

FASTAPI_APPS: list[dict[str, Any]] = [{"app": app, "url_prefix": URL_PREFIX, "name": "finetune sweep results"}]
