"""How the pod meets database faults, timed on a real PostgreSQL with real pod processes.

    .venv/bin/python benchmarks/bench_db_faults.py [--outage-seconds 20] [--lock-timeout 5]

On a scratch database (created, migrated, dropped; the server keeps running), each scenario runs
``python -m finetune run`` as a subprocess, as the pod does:

- SIGTERM while the pod's INSERT waits on a table lock held by another session: seconds from the
  signal to the pod's exit, and whether the factor was recorded ``failed``.
- A lock never released: seconds from the pod blocking to its exit with ``FINETUNE_DB_LOCK_TIMEOUT_SECONDS``.
- A failover: mid-run, the database refuses connections (``ALLOW_CONNECTIONS false``) and the pod's
  sessions are terminated for ``--outage-seconds``, with the default retry budget; the pod's exit
  code, seconds from the outage's start to the pod's exit, and whether every stored value equals
  an undisturbed run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg

from finetune.migrate import apply_migrations

ARGV = [
    "run",
    "--factor",
    "base_features",
    "--cryptos",
    "BTC,ETH",
    "--cost-bps",
    "10,30",
    "--slippage-bps",
    "0",
    "--as-of",
    "2026-06-07T00:00:00Z",
    "--n-folds",
    "3",
    "--n-seeds",
    "20",
    "--hold-bars",
    "4",
    "--train-bars",
    "400",
    "--test-bars",
    "60",
]


def _pod(dsn: str, run_id: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", *ARGV, "--run-id", run_id],
        env={**os.environ, "FINETUNE_DB_URL": dsn, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _query(dsn: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _wait_blocked(dsn: str) -> None:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    while not _query(dsn, sql)[0][0]:
        time.sleep(0.02)


def _rows(dsn: str, table: str, run_id: str) -> list[tuple]:
    columns = [
        name
        for (name,) in _query(
            dsn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND is_identity = 'NO' "
            "AND column_name NOT IN ('run_id', 'created_at', 'updated_at') ORDER BY ordinal_position",
            table,
        )
    ]
    listed = ", ".join(columns)
    return _query(dsn, f"SELECT {listed} FROM {table} WHERE run_id = %s ORDER BY {listed}", run_id)


def sigterm_in_blocked_insert(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE finetune_baselines IN ACCESS EXCLUSIVE MODE")
        proc = _pod(dsn, "sigterm")
        _wait_blocked(dsn)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate()
        seconds = time.monotonic() - sent
        status = _query(dsn, "SELECT status FROM finetune_run_factors WHERE run_id = 'sigterm'")
    return {
        "exit_code": proc.returncode,
        "sigterm_to_exit_s": round(seconds, 2),
        "recorded": status,
        "stderr": err.strip(),
    }


def lock_never_released(dsn: str, lock_timeout: float) -> dict[str, object]:
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE finetune_baselines IN ACCESS EXCLUSIVE MODE")
        proc = _pod(dsn, "locked", FINETUNE_DB_LOCK_TIMEOUT_SECONDS=str(lock_timeout))
        _wait_blocked(dsn)
        blocked = time.monotonic()
        _, err = proc.communicate()
        seconds = time.monotonic() - blocked
    return {"exit_code": proc.returncode, "blocked_to_exit_s": round(seconds, 2), "stderr": err.strip()}


def failover(dsn: str, admin_url: str, database: str, outage_seconds: float) -> dict[str, object]:
    calm = _pod(dsn, "calm")
    calm.communicate()
    proc = _pod(dsn, "failover")
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "fold_done":
            break
    proc.send_signal(signal.SIGSTOP)  # hold the pod mid-run while the database goes away
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        started = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        time.sleep(outage_seconds)
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    out, err = proc.communicate()
    seconds = time.monotonic() - started
    same = all(_rows(dsn, t, "failover") == _rows(dsn, t, "calm") for t in ("finetune_results", "finetune_baselines"))
    retries = sum(json.loads(line)["event"] == "database_retry" for line in out.splitlines())
    return {
        "calm_exit_code": calm.returncode,
        "exit_code": proc.returncode,
        "outage_s": outage_seconds,
        "outage_start_to_exit_s": round(seconds, 2),
        "retries": retries,
        "values_equal_undisturbed_run": same,
        "stderr": err.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("FINETUNE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--lock-timeout", type=float, default=5.0)
    args = parser.parse_args()
    database = f"ft_bench_faults_{uuid.uuid4().hex[:8]}"
    # The admin URI with the scratch database in place of its own (query string kept).
    base, sep, query = args.admin_url.partition("?")
    dsn = f"{base.rsplit('/', 1)[0]}/{database}{sep}{query}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        apply_migrations(dsn)
        for name, result in (
            ("sigterm_in_blocked_insert", sigterm_in_blocked_insert(dsn)),
            ("lock_never_released", lock_never_released(dsn, args.lock_timeout)),
            ("failover", failover(dsn, args.admin_url, database, args.outage_seconds)),
        ):
            print(json.dumps({"scenario": name, **result}), flush=True)
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
