"""examples/factor-plugin installed into a temporary venv beside the project, and run through
`airflow dags test` on the local pod backend: its factor and model, planned through
FINETUNE_SIZING and FINETUNE_MODELS, store rows whose strategy is the model's name, each with its
three same-basis baselines; the gate passes, the findings are written, and the sizing story (map
profile, recorded peak, the report's sizing lines) names the factor like any other.

The venv is real but small: no pip (``--without-pip``), the project's own venv on its path
through a ``.pth`` (``site.addsitedir``, so that the project's own ``.pth`` files apply), and the
example installed with ``uv pip install`` from a copy of its folder (the build leaves nothing in
the repository). ``airflow`` and the pods then run on the temporary venv's interpreter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg
import pytest
from test_dags_test import LOGICAL_DATE, SMALL_CONF, SMALL_PROFILES

from finetune_sweep.db.dsn import connection_json_from_dsn
from local_airflow import REPO_ROOT, local_airflow_env
from plugin_packages import write_package

pytestmark = pytest.mark.e2e

UV = str(Path(sys.executable).with_name("uv"))
# the small sweep of test_dags_test, on the team's factor and model
CONF = {**SMALL_CONF, "factors": ["range_features"], "model": "logistic_long_flat", "cryptos": ["BTC", "ETH"]}


@pytest.fixture(scope="module")
def team_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the example plug-in, with the project's venv on its path; its python."""
    root = tmp_path_factory.mktemp("team")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    project = sysconfig.get_paths()["purelib"]
    Path(purelib, "finetune_project.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    source = shutil.copytree(REPO_ROOT / "examples" / "factor-plugin", root / "factor-plugin")
    done = subprocess.run(
        [UV, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_installed_example_is_discovered_beside_the_builtins(team_venv: Path) -> None:
    done = subprocess.run([str(team_venv), "-m", "finetune", "plugins"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "factor range_features ok" in done.stdout.splitlines()
    assert "model logistic_long_flat ok" in done.stdout.splitlines()
    assert "model ridge_long_flat ok" in done.stdout.splitlines()


def _dags_test(team_venv: Path, dsn: str, home: Path, conf: dict, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``airflow dags test`` on the team's venv (a fresh metadata database in ``home``)."""
    env = local_airflow_env(home)
    env.update(
        FINETUNE_POD_BACKEND="local",
        FINETUNE_PROFILES=json.dumps(SMALL_PROFILES),
        FINETUNE_SIZING=json.dumps({"range_features": "STANDARD"}),
        FINETUNE_MODELS="ridge_long_flat,logistic_long_flat",
        AIRFLOW_CONN_FINETUNE_DB=connection_json_from_dsn(dsn),
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="300",
    )
    env.update(extra_env)
    airflow = [str(team_venv), "-m", "airflow"]
    migrated = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return subprocess.run(
        [*airflow, "dags", "test", "finetune_sweep", LOGICAL_DATE, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_the_example_runs_through_the_dag_to_a_passing_gate_and_findings(
    team_venv: Path, empty_db: str, tmp_path: Path
) -> None:
    done = _dags_test(team_venv, empty_db, tmp_path, CONF)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    with psycopg.connect(empty_db) as conn:

        def rows(sql: str) -> list[tuple]:
            return conn.execute(sql).fetchall()

        keys = len(CONF["cryptos"]) * CONF["n_folds"] * len(CONF["cost_bps"])
        assert rows("SELECT strategy, factor, count(*) FROM finetune_results GROUP BY 1, 2") == [
            ("logistic_long_flat", "range_features", keys)
        ]
        assert rows("SELECT DISTINCT strategy FROM finetune_runs") == [("logistic_long_flat",)]
        assert rows("SELECT DISTINCT model_hyperparams ->> 'model' FROM finetune_results") == [("logistic_long_flat",)]
        # three baselines per model row, on its key and identical window
        assert rows(
            """SELECT count(*) FROM finetune_results AS m JOIN finetune_baselines AS b
               ON (b.run_id, b.factor, b.strategy, b.crypto, b.fold_id, b.cost_bps, b.slippage_bps, b.test_start,
                   b.test_end, b.n_bars)
                = (m.run_id, m.factor, m.strategy, m.crypto, m.fold_id, m.cost_bps, m.slippage_bps, m.test_start,
                   m.test_end, m.n_bars)"""
        ) == [(3 * keys,)]
        assert rows("SELECT ok, n_problems FROM finetune_gate_verdicts") == [(True, 0)]
        assert rows("SELECT count(*) FROM finetune_findings") == [(len(CONF["cryptos"]) * len(CONF["cost_bps"]),)]
        # the memory story: the map profile it started on, its peak recorded per attempt
        ((profile, map_profile, status, peak),) = rows(
            "SELECT profile, map_profile, status, peak_memory_bytes FROM finetune_run_factors"
        )
        assert (profile, map_profile, status) == ("STANDARD", "STANDARD", "done") and peak > 0
        assert rows("SELECT factor, profile FROM finetune_pod_attempts") == [("range_features", "STANDARD")]
    assert "sizing range_features: starts on STANDARD" in output
    # the report's sizing advice names the factor among its rows
    assert any("range_features" in line and "STANDARD" in line and "sizing" not in line for line in output.splitlines())


def test_a_model_that_breaks_its_interface_fails_the_gate_naming_the_factor(
    team_venv: Path, empty_db: str, tmp_path: Path
) -> None:
    """Another team package (on PYTHONPATH, which the local pods inherit) whose model's positions
    are 0.5: the pod exits 2 naming it, the factor is recorded failed, the gate fails the run."""
    site = write_package(tmp_path / "site", factors={}, models={"half_long": "test_plugins_pkg:NotZeroOne"})
    conf = {**CONF, "model": "half_long"}
    done = _dags_test(
        team_venv,
        empty_db,
        tmp_path / "home",
        conf,
        PYTHONPATH=str(site),
        FINETUNE_MODELS="ridge_long_flat,half_long",
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-6000:]
    assert "baselines_incomplete" in output
    with psycopg.connect(empty_db) as conn:
        ((ok, problems),) = conn.execute("SELECT ok, problems FROM finetune_gate_verdicts").fetchall()
        assert conn.execute("SELECT count(*) FROM finetune_findings").fetchone() == (0,)
    assert ok is False
    assert re.fullmatch(
        r"factor range_features is failed, not done \(profile STANDARD\): plug-in error: model half_long on "
        r"(BTC|ETH) fold 0: positions must be 0 \(flat\) or 1 \(long\), got 0\.5",
        problems[0],
    ), problems
