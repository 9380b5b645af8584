"""`make ui`: a local Airflow on this checkout, on the demo's database, until Ctrl-C.

Starts the api-server, the scheduler (``--skip-serve-logs``) and the dag-processor with the
LocalExecutor and the local pod backend, every process bound to 127.0.0.1, on the same
databases as ``make demo`` (the finetune database: ``FINETUNE_DB_URL`` or the embedded
PostgreSQL under ``.demo/pgdata``; Airflow's metadata: ``.demo/airflow``), so the demo's runs
are there. The simple auth manager lets everyone in as admin (loopback only).

It prints the URL of the latest run's "Sweep results" tab and of the DAG's "Sweep history"
tab, then waits; Ctrl-C stops every process it started. Logs: ``.demo/ui/*.log``.

    .venv/bin/python scripts/ui.py [--port 8080]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent / "plugins")]

import demo  # noqa: E402
from finetune_sweep.db.dsn import redact_dsn  # noqa: E402
from finetune_sweep.ui import DAG_TAB_ROUTE, RUN_TAB_ROUTE  # noqa: E402
from local_airflow import free_port  # noqa: E402
from ui_acceptance import AIRFLOW, DAG_ID, OUT_DIR, Deployment, deployment_settings, log  # noqa: E402


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _env(dsn: str, port: int) -> dict[str, str]:
    env = demo.airflow_env(dsn)
    env.update(deployment_settings(port))
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="api-server port on 127.0.0.1 (default 8080)")
    args = parser.parse_args()

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    port = args.port if _port_is_free(args.port) else free_port()
    server = None
    dsn = os.environ.get("FINETUNE_DB_URL")
    if dsn:
        log(f"finetune database: FINETUNE_DB_URL ({redact_dsn(dsn)})")
    else:
        server, dsn = demo.start_embedded_postgres()
        log(f"finetune database: embedded PostgreSQL ({redact_dsn(dsn)})")
    env = _env(dsn, port)
    deployment = Deployment(env, port)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
        if migrate.returncode != 0:
            print(migrate.stdout[-3000:] + migrate.stderr[-3000:], file=sys.stderr)
            return 1
        deployment.start("dag-processor", ["dag-processor"])
        deployment.start("scheduler", ["scheduler", "--skip-serve-logs"])
        deployment.start("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
        deployment.wait_ready(timeout=300)
        status, body = deployment.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1")
        runs = body.get("dag_runs", []) if status == 200 and isinstance(body, dict) else []
        print(f"\nAirflow UI:     {deployment.base_url}/dags/{DAG_ID}")
        print(f"Sweep history:  {deployment.base_url}/dags/{DAG_ID}/plugin/{DAG_TAB_ROUTE}")
        if runs:
            run_id = runs[0]["dag_run_id"]
            print(
                f"Latest run tab: {deployment.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/{RUN_TAB_ROUTE}"
            )
        else:
            print("No run yet: `make demo` runs one, or trigger the DAG in the UI.")
        print("Ctrl-C stops everything.\n", flush=True)
        while True:
            deployment.check_alive()
            time.sleep(5)
    except KeyboardInterrupt:
        return 0
    finally:
        deployment.stop()
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
