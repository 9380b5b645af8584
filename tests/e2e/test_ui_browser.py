"""The run tab in a real browser: a sweep through `airflow dags test`, a real api-server, chromium.

What a user does: run a small sweep (local pods, a fresh finetune database), open the DAG run's
page in the Airflow UI at ``/dags/finetune_sweep/runs/<run_id>/plugin/finetune-sweep`` as a
*viewer* (simple auth manager, password login through ``POST /auth/token``), and read the tab's
frame: the verdict, the factors and cryptos, the model and its three baselines, the percentile,
and a drawn chart. A screenshot of the page is saved under the test's tmp dir.

Needs Debian's chromium at ``/usr/bin/chromium`` (``.ci/run`` installs it); without it this test
alone is skipped with the install command. Playwright drives it; never ``playwright install``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from test_dags_test import SMALL_CONF as CONF  # the e2e sweep of every test: 2 x 2 x 2 folds x 2 costs
from test_dags_test import SMALL_PROFILES

from finetune_sweep.db.dsn import connection_json_from_dsn
from finetune_sweep.ui import RUN_TAB_ROUTE
from local_airflow import free_port, local_airflow_env, stop_process_group, wait_for_api_server

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
CHROMIUM = os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
DAG_ID = "finetune_sweep"
LOGICAL_DATE = "2026-06-07T00:00:00+00:00"
# Bounds for a loaded 2-core CI machine, not expectations.
SWEEP_TIMEOUT = 900
START_TIMEOUT = 180
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: {INSTALL_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing: make venv (it is in requirements.txt)")


def _run(args: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            [AIRFLOW, *args], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if done.returncode != 0:
        pytest.fail(f"`airflow {' '.join(args[:2])}` exited {done.returncode}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ui_after_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished sweep and an api-server serving it; yields its URL, a viewer's token and the run id."""
    _require_browser()
    import psycopg
    from databases import ADMIN_URL, dsn_for

    home = tmp_path_factory.mktemp("airflow-ui")
    database = f"ft_ui_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({"viewer": password}))
    env = local_airflow_env(home)
    env.update(
        AIRFLOW_CONN_FINETUNE_DB=connection_json_from_dsn(dsn_for(database)),
        FINETUNE_POD_BACKEND="local",
        FINETUNE_PROFILES=json.dumps(SMALL_PROFILES),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="viewer:viewer",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
        # a loaded 2-core machine can take longer than the default 30 s to import the DAG file
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="300",
        PYTHONPATH=os.pathsep.join([str(Path(env["AIRFLOW__CORE__PLUGINS_FOLDER"])), env.get("PYTHONPATH", "")]),
    )
    log = home / "airflow.log"
    server = None
    try:
        _run(["db", "migrate"], env, log, START_TIMEOUT)
        _run(["dags", "test", DAG_ID, LOGICAL_DATE, "-c", json.dumps(CONF)], env, log, SWEEP_TIMEOUT)
        # lets a freshly started api-server show the run's page (DESIGN 8)
        _run(["dags", "reserialize"], env, log, START_TIMEOUT)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        with (home / "api-server.log").open("wb") as out:
            server = subprocess.Popen(
                [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_api_server(base_url, server, timeout=START_TIMEOUT)
        except RuntimeError as err:
            pytest.fail(f"{err}:\n{(home / 'api-server.log').read_text()[-4000:]}")
        token = httpx.post(
            f"{base_url}/auth/token", json={"username": "viewer", "password": password}, timeout=60, trust_env=False
        )
        assert token.status_code == 201, token.text
        jwt = token.json()["access_token"]
        runs = httpx.get(
            f"{base_url}/api/v2/dags/{DAG_ID}/dagRuns",
            headers={"Authorization": f"Bearer {jwt}"},
            timeout=60,
            trust_env=False,
        ).json()["dag_runs"]
        assert len(runs) == 1 and runs[0]["state"] == "success", runs
        yield {"base_url": base_url, "jwt": jwt, "run_id": runs[0]["dag_run_id"], "home": home}
    finally:
        stop_process_group(server)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_the_run_tab_shows_the_sweep_in_the_airflow_ui(ui_after_sweep: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base_url, run_id = ui_after_sweep["base_url"], ui_after_sweep["run_id"]
    # the Airflow run id holds ':' and '+' (dags test names it manual__<logical date>)
    assert ":" in run_id and "+" in run_id, run_id
    url = f"{base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/{RUN_TAB_ROUTE}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1800})
            # What the login page does: Airflow's session cookie holds the JWT.
            context.add_cookies([{"name": "_token", "value": ui_after_sweep["jwt"], "url": base_url}])
            page = context.new_page()
            # The plugin's Content-Security-Policy must not block what draws the charts: any
            # violation is reported on the console ("Refused to ...").
            refused = []
            page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
            policies = {}
            page.on(
                "response",
                lambda resp: (
                    policies.__setitem__(resp.url, resp.headers.get("content-security-policy"))
                    if "/finetune/dags/" in resp.url
                    else None
                ),
            )
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            frame = page.frame_locator("iframe")
            frame.locator("#results tbody tr").first.wait_for()
            # plotly draws into an SVG once its script ran
            frame.locator(".chart .main-svg").first.wait_for()
            verdict = frame.locator("#verdict").inner_text()
            headers = frame.locator("#results thead th").all_inner_texts()
            rows = [
                [cell.strip() for cell in row.split("\t")]
                for row in frame.locator("#results tbody tr").all_inner_texts()
            ]
            n_charts = frame.locator(".chart .plot-container").count()
            pods = frame.locator("#pods tbody tr").all_inner_texts()
            shot = tmp_path / "run_tab.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    if os.environ.get("FINETUNE_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["FINETUNE_UI_SCREENSHOT"])
    assert shot.stat().st_size > 10_000
    assert policies and all(policy and "script-src 'self'" in policy for policy in policies.values()), policies
    assert refused == [], refused
    assert "Verdict: complete" in verdict, verdict
    assert "Recorded by check_baselines of Airflow run" in verdict, verdict  # the gate's own verdict, kept
    assert [h.strip() for h in headers[:12]] == [
        "factor",
        "crypto",
        "cost",
        "slip",
        "model",
        "buy & hold",
        "random",
        "random p05–p95",
        "naive",
        "percentile",
        "random pctl",
        "folds won",
    ], headers
    assert {(row[0], row[1], row[2]) for row in rows} == {
        (factor, crypto, str(cost))
        for factor in CONF["factors"]
        for crypto in CONF["cryptos"]
        for cost in CONF["cost_bps"]
    }
    percent = re.compile(r"^[+-]\d+\.\d{2}%$")
    for row in rows:
        assert all(percent.match(cell) for cell in (row[4], row[5], row[6], row[8])), row
        assert re.match(r"^[+-]\d+\.\d%\s…\s[+-]\d+\.\d%$", row[7]), row  # the seeds' p05-p95
        assert re.match(r"^\d{1,3}%$", row[9]), row  # the model's percentile among its own shifted copies
        assert re.match(r"^\d{1,3}%$", row[10]), row  # and among the random seeds
        assert re.match(r"^\d/2$", row[11]), row
        assert row[8] == "+0.00%"  # naive stays flat
    assert n_charts == len(CONF["factors"])
    assert len(pods) == len(CONF["factors"]) and all("done" in pod for pod in pods), pods
