"""The plugin entry (plugins/finetune_sweep_ui.py): cheap to import, valid entry shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from local_airflow import REPO_ROOT

# Every Airflow process imports plugins: the entry must not pull in the web stack or a driver.
_PROBE = """
import json, sys
import airflow.plugins_manager
before = set(sys.modules)
import finetune_sweep_ui
plugin = finetune_sweep_ui.FinetuneSweepUIPlugin
print(json.dumps({
    "new": sorted(set(sys.modules) - before),
    "heavy": sorted(m for m in ("fastapi", "psycopg", "finetune_sweep.ui.app") if m in sys.modules),
    "apps": [{k: v for k, v in app.items() if k != "app"} for app in plugin.fastapi_apps],
    "views": plugin.external_views,
}))
"""


def test_the_entry_imports_nothing_heavy_and_declares_both_tabs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "plugins")},
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert set(result["new"]) == {"finetune_sweep", "finetune_sweep.ui", "finetune_sweep_ui"}
    assert result["apps"] == [{"url_prefix": "/finetune", "name": "finetune sweep results"}]
    assert {(v["destination"], v["url_route"]) for v in result["views"]} == {
        ("dag_run", "finetune-sweep"),
        ("dag", "finetune-sweep-history"),
    }
    # the UI fills these in; a tab without a url_route would not appear
    assert {v["href"] for v in result["views"]} == {"finetune/dags/{DAG_ID}/runs/{RUN_ID}", "finetune/dags/{DAG_ID}"}
