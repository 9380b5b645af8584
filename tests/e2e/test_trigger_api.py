"""Triggering `finetune_sweep` through the REST API of a real, local Airflow api-server.

One api-server per module (a free port on 127.0.0.1, its own AIRFLOW_HOME with a migrated SQLite
metadata database and the DAG serialised into it). No scheduler runs: a valid trigger leaves a
`queued` run, which is all these tests need. They prove that the trigger accepts a valid conf on
the (paused) DAG, that invalid params are refused at trigger time with HTTP 400 naming the param
and no run is created, and that the DAG's params expose the factors pick list (the trigger form's
multi-select).

Auth: the simple auth manager with ``SIMPLE_AUTH_MANAGER_ALL_ADMINS=True`` hands out a JWT on
``GET /auth/token`` (HTTP 201, ``{"access_token": ...}``) without a login; the tests send it as a
Bearer token, as any REST client of such a deployment would.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from finetune_sweep.sizing.profiles import SIZING_MAP
from finetune_sweep.sweep.params import SYMBOL_PATTERN
from local_airflow import free_port as _free_port
from local_airflow import local_airflow_env
from local_airflow import stop_process_group as _stop

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "finetune_sweep"
RUNS_URL = f"/api/v2/dags/{DAG_ID}/dagRuns"
# Generous bounds for a loaded 2-core CI machine (unloaded: ~10 s to prepare, ~10 s to start).
PREPARE_TIMEOUT = 150
START_TIMEOUT = 120
# One Python process migrates the metadata database, then serialises the DAG into it (one Airflow
# import instead of two). It touches argv[1] between the two steps, so that the api-server can
# start while the DAG is being parsed.
PREPARE = """
import pathlib, sys
from airflow.__main__ import main
marker = pathlib.Path(sys.argv[1])
sys.argv = ["airflow", "db", "migrate"]
main()
marker.touch()
sys.argv = ["airflow", "dags", "reserialize"]
main()
"""


def _base_env(home: Path) -> dict[str, str]:
    env = local_airflow_env(home)
    env.update(
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        # A full-length key (the generated default is short enough to warn on every request).
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
    )
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"<no log: {err}>"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of this module's Airflow (its own AIRFLOW_HOME), for the server and the CLI."""
    return _base_env(tmp_path_factory.mktemp("airflow-api"))


@pytest.fixture(scope="module")
def api(airflow_env: dict[str, str]) -> Iterator[httpx.Client]:
    """An authenticated client of a real api-server serving the serialised `finetune_sweep`."""
    env = airflow_env
    home = Path(env["AIRFLOW_HOME"])
    marker = home / "migrated"
    prepare_log, server_log = home / "prepare.log", home / "api-server.log"
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    prepare = server = None
    try:
        with prepare_log.open("wb") as out:
            prepare = subprocess.Popen(
                [sys.executable, "-c", PREPARE, str(marker)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while not marker.exists():
            if prepare.poll() is not None:
                pytest.fail(f"`airflow db migrate` failed (exit {prepare.returncode}):\n{_tail(prepare_log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"`airflow db migrate` did not finish in {PREPARE_TIMEOUT} s:\n{_tail(prepare_log)}")
            time.sleep(0.2)

        with server_log.open("wb") as out:
            server = subprocess.Popen(
                [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        try:
            rc = prepare.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"`airflow dags reserialize` did not finish in {PREPARE_TIMEOUT} s:\n{_tail(prepare_log)}")
        assert rc == 0, f"`airflow dags reserialize` failed (exit {rc}):\n{_tail(prepare_log)}"

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"api-server exited with {server.returncode}:\n{_tail(server_log)}")
            try:
                if httpx.get(f"{base_url}/api/v2/monitor/health", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"api-server did not answer on {base_url} within {START_TIMEOUT} s:\n{_tail(server_log)}")
            time.sleep(0.5)

        token = httpx.get(f"{base_url}/auth/token", timeout=30, trust_env=False)
        assert token.status_code == 201, f"{token.status_code} {token.text}\n{_tail(server_log)}"
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        # trust_env=False: a proxy from the environment must not see requests to 127.0.0.1.
        with httpx.Client(base_url=base_url, headers=headers, timeout=60, trust_env=False) as client:
            yield client
    finally:
        _stop(server)
        _stop(prepare)


def _runs(api: httpx.Client) -> list[dict[str, Any]]:
    response = api.get(RUNS_URL, params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["dag_runs"]


def _trigger(api: httpx.Client, conf: dict[str, Any], logical_date: str) -> httpx.Response:
    return api.post(RUNS_URL, json={"logical_date": logical_date, "conf": conf})


def test_a_token_is_issued_and_a_forged_one_is_refused(api: httpx.Client) -> None:
    assert api.get(f"/api/v2/dags/{DAG_ID}").status_code == 200
    forged = httpx.get(
        f"{api.base_url}/api/v2/dags/{DAG_ID}",
        headers={"Authorization": "Bearer not-a-jwt"},
        timeout=30,
        trust_env=False,
    )
    assert forged.status_code in (401, 403), forged.text


def test_a_valid_conf_creates_a_queued_run_on_the_paused_dag(api: httpx.Client) -> None:
    dag = api.get(f"/api/v2/dags/{DAG_ID}").json()
    assert dag["is_paused"] is True, "the DAG starts paused; a manual trigger must not need it unpaused"
    conf = {"factors": ["base_features"], "cryptos": ["BTC"]}

    response = _trigger(api, conf, "2026-06-07T00:00:00Z")

    assert response.status_code == 200, response.text
    run = response.json()
    assert run["state"] == "queued"
    assert run["run_type"] == "manual"
    assert run["conf"] == conf
    assert run["logical_date"].startswith("2026-06-07T00:00:00")
    listed = {r["dag_run_id"]: r["state"] for r in _runs(api)}
    assert listed.get(run["dag_run_id"]) == "queued"


@pytest.mark.parametrize(
    ("conf", "param", "bad_value"),
    [
        pytest.param(
            {"factors": ["base_features", "no_such_factor"]}, "factors", "no_such_factor", id="unknown-factor"
        ),
        pytest.param({"cost_bps": [10, -5]}, "cost_bps", "-5", id="negative-cost"),
        pytest.param({"cryptos": ["btc-usd"]}, "cryptos", "btc-usd", id="malformed-symbol"),
        pytest.param({"cryptos": ["BTC'; DROP TABLE x;--"]}, "cryptos", "DROP TABLE x", id="injection"),
        pytest.param({"n_folds": 0}, "n_folds", "0", id="folds-below-minimum"),
        pytest.param({"factors": []}, "factors", "[]", id="no-factor"),
        pytest.param({"cryptos": ["BTC\n"]}, "cryptos", "'BTC\\n'", id="symbol-trailing-newline"),
        pytest.param({"image": "0.1.0\n"}, "image", "'0.1.0\\n'", id="tag-trailing-newline"),
        pytest.param({"image": "latest"}, "image", "latest", id="moving-tag"),
        pytest.param({"image": "dev-branch"}, "image", "dev-branch", id="tag-outside-the-release-pattern"),
    ],
)
def test_invalid_params_are_refused_at_trigger_time(
    api: httpx.Client, conf: dict[str, Any], param: str, bad_value: str
) -> None:
    before = {r["dag_run_id"] for r in _runs(api)}
    # A logical date of its own: a run created despite the refusal could not hide behind another.
    logical_date = f"2027-01-{len(before) + 10:02d}T00:00:00Z"

    response = _trigger(api, {"factors": ["base_features"], "cryptos": ["BTC"], **conf}, logical_date)

    assert response.status_code == 400, f"{response.status_code} {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, str), detail
    assert detail.startswith(f"Invalid input for param {param}:"), detail
    assert bad_value in detail, detail
    after = _runs(api)
    assert {r["dag_run_id"] for r in after} == before, "a refused trigger must not create a run"
    assert not [r for r in after if r["logical_date"] and r["logical_date"].startswith(logical_date[:10])]


def test_the_dag_details_expose_the_factors_pick_list(api: httpx.Client) -> None:
    response = api.get(f"/api/v2/dags/{DAG_ID}/details")

    assert response.status_code == 200, response.text
    params = response.json()["params"]
    factors = params["factors"]
    schema = factors["schema"]
    # The form's multi-select needs `examples`; REST/CLI validation needs `items.enum`: same list.
    assert schema["type"] == "array"
    assert schema["examples"] == schema["items"]["enum"] == factors["value"]
    assert schema["minItems"] == 1 and schema["uniqueItems"] is True
    assert params["cryptos"]["schema"]["items"]["pattern"] == SYMBOL_PATTERN
    assert schema["examples"] == list(SIZING_MAP)


def _plan_the_triggered_run(airflow_env: dict[str, str], run_id: str) -> subprocess.CompletedProcess[str]:
    """The run's ``plan`` task, as a worker would run it (``airflow tasks test``: no scheduler here)."""
    return subprocess.run(
        [AIRFLOW, "tasks", "test", DAG_ID, "plan", run_id],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=PREPARE_TIMEOUT,
        check=False,
    )


# Every param within its own cap, their product is not: the trigger's schema cannot see it, so
# the run is created and its first task refuses it, before any pod.
OVERSIZED_CONF = {
    "factors": list(SIZING_MAP),
    "cryptos": [f"C{i:02d}" for i in range(50)],
    "cost_bps": list(range(10)),
    "slippage_bps": list(range(10)),
    "n_folds": 24,
    "n_seeds": 10_000,
}


def test_an_oversized_run_triggered_over_rest_is_refused_by_plan(
    api: httpx.Client, airflow_env: dict[str, str]
) -> None:
    response = _trigger(api, OVERSIZED_CONF, "2027-03-01T00:00:00Z")
    assert response.status_code == 200, response.text

    done = _plan_the_triggered_run(airflow_env, response.json()["dag_run_id"])

    # `airflow tasks test` exits 0 whatever the task did: the task's state is in its log
    assert "new_state=failed" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert (
        "invalid sweep: the run is too large: 4 factors x 50 cryptos x 24 folds x 10 costs x 10 slippages = "
        "480,000 keys x (10000 seeds + 999 shifts) = 5,279,520,000, over FINETUNE_MAX_RUN_WORK=100,000,000;"
    ) in done.stdout + done.stderr


def test_a_long_run_triggered_over_rest_gets_the_deadline_ceiling(
    api: httpx.Client, airflow_env: dict[str, str]
) -> None:
    # 3 cryptos x 24 folds x 10 costs x 10 slippages = 7,200 keys per pod: sized at 60 s a key that
    # is 5 days; within the work limit (7,200 x (1 seed + 999 shifts)), so it plans, capped at 24 h
    # (24 folds of 23 shifts each: a lone edge stays findable)
    conf = {
        "factors": ["base_features"],
        "cryptos": ["BTC", "ETH", "SOL"],
        "cost_bps": list(range(10)),
        "slippage_bps": list(range(10)),
        "n_folds": 24,
        "test_bars": 24,
        "n_seeds": 1,
    }
    response = _trigger(api, conf, "2027-03-02T00:00:00Z")
    assert response.status_code == 200, response.text

    done = _plan_the_triggered_run(airflow_env, response.json()["dag_run_id"])

    assert "new_state=success" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert "planned base_features: profile STANDARD" in done.stdout + done.stderr
    assert "activeDeadlineSeconds 86400," in done.stdout + done.stderr
