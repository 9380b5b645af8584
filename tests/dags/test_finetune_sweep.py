"""Integrity of dags/finetune_sweep.py: imports cleanly and offline, wiring, retries, params."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.common.sql.sensors.sql import SqlSensor
from airflow.sdk.exceptions import ParamValidationError

from finetune_sweep import gate
from finetune_sweep.operators.factor_pod import FactorPodOperator
from finetune_sweep.sizing.profiles import PROFILE_ORDER, SIZING_MAP

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS = REPO_ROOT / "dags"
DAG_FILE = DAGS / "finetune_sweep.py"
INJECTION = "BTC'; DROP TABLE x;--"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag: DagBag) -> Any:
    return dagbag.dags["finetune_sweep"]


def _validated(dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """What a trigger does with conf: merge it into (a copy of) the DAG params and validate."""
    params = copy.deepcopy(dag.params)
    for key, value in conf.items():
        params[key] = value
    return params.validate()


def test_dagbag_has_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["finetune_sweep"]


def test_dag_settings(dag: Any) -> None:
    assert dag.schedule == "@weekly"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert set(dag.tags) >= {"finetune", "kubernetes"}
    assert dag.doc_md and "check_baselines" in dag.doc_md
    assert dag.fileloc == str(DAG_FILE)


def test_task_graph(dag: Any) -> None:
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}

    assert upstream == {
        "plan": set(),
        "migrate": {"plan"},
        "register": {"plan", "migrate"},
        "run_factor": {"register"},
        "check_baselines": {"run_factor"},
        "findings": {"check_baselines"},
        "report": {"run_factor", "check_baselines", "findings"},
    }
    # One leaf that needs every factor pod, the gate and the findings: any failure fails the run.
    assert [task.task_id for task in dag.leaves] == ["report"]
    assert dag.get_task("report").trigger_rule == "all_done"
    # Findings only after the gate passed.
    assert dag.get_task("findings").trigger_rule == "all_success"


def test_retries_as_designed(dag: Any) -> None:
    run_factor = dag.get_task("run_factor")

    # one retry per step up the OOM ladder, plus the same-profile retries of disrupted pods
    assert run_factor.retries == len(PROFILE_ORDER) - 1 + 2
    assert all(
        dag.get_task(t).retries == 0 for t in ("plan", "migrate", "register", "check_baselines", "findings", "report")
    )


def test_run_factor_is_mapped_per_factor(dag: Any) -> None:
    run_factor = dag.get_task("run_factor")

    assert run_factor.operator_class is FactorPodOperator
    assert type(run_factor.expand_input).__name__ == "ListOfDictsExpandInput"
    # The pods start on register's choice (map profile raised by the history), not plan's.
    assert run_factor.expand_input.value.operator.task_id == "register"
    assert run_factor.partial_kwargs["map_index_template"] == "{{ task.factor }}"
    assert run_factor.partial_kwargs["on_finish_action"] == "delete_succeeded_pod"
    assert run_factor.partial_kwargs["image"].endswith(":{{ params.image }}")


def test_migrate_is_a_pod_without_ladder(dag: Any) -> None:
    migrate = dag.get_task("migrate")

    assert isinstance(migrate, FactorPodOperator)
    assert migrate.arguments == ["migrate"]
    assert migrate.ladder is False
    assert migrate.cmds == ["python", "-m", "finetune"]


def test_gate_is_a_strict_sql_sensor(dag: Any) -> None:
    sensor = dag.get_task("check_baselines")

    assert isinstance(sensor, SqlSensor)
    assert sensor.retries == 0
    assert sensor.trigger_rule == "all_done"
    assert sensor.conn_id == "finetune_db"
    assert sensor.sql == gate.GATE_SQL
    assert sensor.parameters == {"run_id": gate.RUN_ID_TEMPLATE}
    assert sensor.failure is gate.gate_failed and sensor.success is gate.gate_passed


def test_dag_serialises(dag: Any) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))

    factors = restored.params.get_param("factors").schema
    assert factors["examples"] == list(SIZING_MAP) and factors["items"]["enum"] == list(SIZING_MAP)


def test_default_params_validate(dag: Any) -> None:
    params = _validated(dag, {})

    assert params["factors"] == list(SIZING_MAP)
    assert params["cryptos"] == ["BTC", "ETH", "SOL"]
    assert params["cost_bps"] == [10, 15, 30]
    assert params["slippage_bps"] == [0]
    assert params["fdr_q"] == 0.1


def test_good_conf_is_accepted(dag: Any) -> None:
    conf = {
        "factors": ["btc_features"],
        "cryptos": ["BTC", "DOGE"],
        "cost_bps": [0, 25],
        "n_folds": 2,
        "image": "0.2.0",
        "fdr_q": 0.05,
    }

    assert _validated(dag, conf)["cryptos"] == ["BTC", "DOGE"]
    assert _validated(dag, conf)["fdr_q"] == 0.05


@pytest.mark.parametrize(
    "conf",
    [
        pytest.param({"factors": ["eth_features"]}, id="unknown-factor"),
        pytest.param({"factors": []}, id="no-factor"),
        pytest.param({"cost_bps": [10, -1]}, id="negative-cost"),
        pytest.param({"slippage_bps": [-5]}, id="negative-slippage"),
        pytest.param({"cryptos": ["btc"]}, id="bad-symbol"),
        pytest.param({"cryptos": [INJECTION]}, id="injection-crypto"),
        pytest.param({"factors": [INJECTION]}, id="injection-factor"),
        pytest.param({"image": "latest; rm -rf /"}, id="injection-image"),
        # Python's `$` matched before a trailing newline: the trigger let these through
        pytest.param({"cryptos": ["BTC\n"]}, id="symbol-trailing-newline"),
        pytest.param({"image": "0.1.0\n"}, id="tag-trailing-newline"),
        pytest.param({"image": "latest"}, id="moving-tag"),
        # the default FINETUNE_IMAGE_TAG_PATTERN: the pinned tag's release shape only
        pytest.param({"image": "0.2.0-rc1"}, id="pre-release-tag"),
        pytest.param({"image": "dev-branch"}, id="branch-tag"),
        pytest.param({"n_folds": 0}, id="too-few-folds"),
        pytest.param({"n_seeds": "100"}, id="wrong-type"),
        pytest.param({"fdr_q": 0}, id="fdr-zero"),
        pytest.param({"fdr_q": 1}, id="fdr-one"),
        pytest.param({"fdr_q": "0.1"}, id="fdr-string"),
    ],
)
def test_bad_conf_is_rejected_by_the_schema(dag: Any, conf: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError, match=next(iter(conf))):
        _validated(dag, conf)


def test_parsing_needs_no_database_network_or_heavy_imports() -> None:
    """Parse the DAG file in a clean interpreter with the network cut and no connection defined."""
    probe = f"""
import socket, sys
def _refuse(*args, **kwargs):
    raise RuntimeError("network access at parse time")
socket.socket.connect = _refuse
socket.create_connection = _refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(DAGS)!r})
assert bag.import_errors == {{}}, bag.import_errors
assert "finetune_sweep" in bag.dags
heavy = sorted(m for m in ("psycopg", "psycopg2", "pandas", "numpy", "finetune") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "FINETUNE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "plugins"), str(DAGS)])

    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "heavy: \n" in done.stdout or done.stdout.strip().endswith("heavy:"), done.stdout
