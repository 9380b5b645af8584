"""The environment of a throw-away Airflow on this checkout: `make demo`, the end-to-end tests and
the UI acceptance script all run `airflow ...` processes against this repository's dags/ and
plugins/, with a SQLite metadata database in their own AIRFLOW_HOME.

Not used by the DAG itself: a real deployment configures its Airflow as it does any other.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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
        key: value for key, value in source.items() if inherit_settings or not key.startswith(("AIRFLOW", "FINETUNE_"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
    )
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a throw-away api-server)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen | None, *, grace: float = 20.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), then SIGKILL.

    :param proc: the group leader, or None.
    :param grace: seconds to wait after each signal.
    """
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_api_server(base_url: str, proc: subprocess.Popen, *, timeout: float) -> None:
    """Poll ``/api/v2/monitor/health`` until it answers 200.

    :param base_url: e.g. ``http://127.0.0.1:8080``.
    :param proc: the api-server process (its exit ends the wait).
    :param timeout: seconds.
    :raises RuntimeError: the process exited, or no answer in time.
    """
    import time
    from urllib.error import URLError
    from urllib.request import ProxyHandler, build_opener

    # Requests to 127.0.0.1 never go through a proxy from the environment.
    opener = build_opener(ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the api-server exited with {proc.returncode}")
        try:
            with opener.open(f"{base_url}/api/v2/monitor/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the api-server did not answer on {base_url} within {timeout:.0f} s")
