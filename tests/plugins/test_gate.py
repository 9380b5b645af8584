"""Tests of finetune_sweep.gate on real PostgreSQL: the completeness SQL, the predicates, and the
real SqlSensor poking a migrated database through the finetune_db connection."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from airflow.providers.common.sql.sensors.sql import SqlSensor

from finetune_rows import (
    PLAN,
    RUN_ID,
    WINDOW_START,
    insert,
    make_baseline_row,
    make_model_row,
    seed_complete_run,
    window,
)
from finetune_sweep import gate
from finetune_sweep.db.dsn import connection_json_from_dsn


def _verdict(dsn: str, run_id: str = RUN_ID) -> gate.GateVerdict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(gate.GATE_SQL, {"run_id": run_id}).fetchall()
    assert len(rows) == 1, "the gate always returns exactly one row"
    return gate.select_verdict(rows[0])


def test_complete_run_passes(migrated_db: str) -> None:
    seed_complete_run(migrated_db)

    verdict = _verdict(migrated_db)

    assert verdict == gate.GateVerdict(ok=True, n_problems=0, problems=())
    assert gate.gate_passed(verdict) and not gate.gate_failed(verdict)


@pytest.mark.parametrize("status", ["planned", "running", "failed"])
def test_factor_not_done_fails(migrated_db: str, status: str) -> None:
    seed_complete_run(migrated_db, statuses={"l2_features": status})

    verdict = _verdict(migrated_db)

    assert not verdict.ok and verdict.n_problems == 1
    assert verdict.problems[0].startswith(f"factor l2_features is {status}, not done")


def test_pod_crashed_before_writing(migrated_db: str) -> None:
    skipped = set(itertools.product(["l2_features"], PLAN["cryptos"], range(2), PLAN["cost_bps"], [0]))
    seed_complete_run(migrated_db, skip_model=skipped, statuses={"l2_features": "running"})

    verdict = _verdict(migrated_db)

    assert gate.gate_failed(verdict)
    assert verdict.n_problems == 1 + len(skipped)
    assert verdict.problems[0] == "factor l2_features is running, not done (profile STANDARD)"
    assert "missing model row: l2_features BTC fold 0 cost 10 slippage 0 bps" in verdict.problems


def test_missing_model_row_fails_even_when_the_factor_says_done(migrated_db: str) -> None:
    seed_complete_run(migrated_db, skip_model={("base_features", "ETH", 1, 30, 0)})

    verdict = _verdict(migrated_db)

    assert verdict.problems == ("missing model row: base_features ETH fold 1 cost 30 slippage 0 bps",)


def test_missing_baseline_fails(migrated_db: str) -> None:
    seed_complete_run(migrated_db, skip_baseline={("base_features", "BTC", 0, 10, 0, "random")})

    verdict = _verdict(migrated_db)

    assert verdict.n_problems == 1
    assert verdict.problems[0].startswith("missing baseline random: base_features BTC fold 0 cost 10 slippage 0 bps")
    assert "2026-05-01T00:00Z..2026-05-07T23:00Z (168 bars)" in verdict.problems[0]
    assert "different window" not in verdict.problems[0]


@pytest.mark.parametrize(
    "window_change",
    [
        pytest.param({"test_start": WINDOW_START - timedelta(hours=1)}, id="other-start"),
        pytest.param({"n_bars": 167}, id="other-n-bars"),
    ],
)
def test_baseline_on_a_different_window_fails(migrated_db: str, window_change: dict[str, Any]) -> None:
    key = ("l2_features", "ETH", 0, 30, 0)
    seed_complete_run(migrated_db, skip_baseline={(*key, "buy_and_hold")})
    with psycopg.connect(migrated_db) as conn:
        model = make_model_row(factor="l2_features", crypto="ETH", fold_id=0, cost_bps=30)
        insert(conn, "finetune_baselines", make_baseline_row("buy_and_hold", model, **window_change))

    verdict = _verdict(migrated_db)

    assert verdict.n_problems == 1
    assert verdict.problems[0].startswith("missing baseline buy_and_hold: l2_features ETH fold 0 cost 30")
    assert verdict.problems[0].endswith("found only on a different window (off-basis)")


def test_baseline_of_another_cost_basis_does_not_count(migrated_db: str) -> None:
    seed_complete_run(migrated_db, slippage_bps=[0], skip_baseline={("base_features", "BTC", 1, 30, 0, "naive")})
    with psycopg.connect(migrated_db) as conn:
        model = make_model_row(fold_id=1, cost_bps=30)
        insert(conn, "finetune_baselines", make_baseline_row("naive", model, cost_bps=31))

    verdict = _verdict(migrated_db)

    assert verdict.problems == (verdict.problems[0],) and "missing baseline naive" in verdict.problems[0]


def test_unregistered_run_fails(migrated_db: str) -> None:
    verdict = _verdict(migrated_db, "manual__never")

    assert verdict.problems == ("run manual__never is not registered (no finetune_runs row)",)


def test_run_id_is_bound_never_interpolated(migrated_db: str) -> None:
    seed_complete_run(migrated_db)
    hostile = "x'; DROP TABLE finetune_results;--"

    verdict = _verdict(migrated_db, hostile)

    assert verdict.problems == (f"run {hostile} is not registered (no finetune_runs row)",)
    assert _verdict(migrated_db).ok, "the tables are intact"


def test_many_problems_are_capped_in_the_message(migrated_db: str) -> None:
    seed_complete_run(
        migrated_db,
        cryptos=["BTC", "ETH", "SOL"],
        n_folds=4,
        statuses={"base_features": "failed"},
        skip_model=set(itertools.product(["base_features"], ["BTC", "ETH", "SOL"], range(4), [10, 30], [0])),
    )

    verdict = _verdict(migrated_db)

    assert verdict.n_problems == 1 + 24
    assert len(verdict.problems) == gate.MAX_LISTED_PROBLEMS
    message = str(verdict)
    assert message.startswith("25 problem(s):\n  - factor base_features is failed")
    assert message.endswith("... and 5 more")


@pytest.mark.parametrize(
    ("row", "failed"),
    [
        pytest.param((True, 0, []), False, id="ok"),
        pytest.param((False, 2, ["a", "b"]), True, id="problems"),
        pytest.param((None, 0, None), True, id="null-is-not-ok"),
        pytest.param(("0", 0, None), True, id="string-zero-is-not-ok"),
        pytest.param((1, 0, None), True, id="truthy-int-is-not-ok"),
    ],
)
def test_predicates_are_explicit(row: tuple, failed: bool) -> None:
    verdict = gate.select_verdict(row)

    assert gate.gate_failed(verdict) is failed
    assert gate.gate_passed(verdict) is (not failed)


def _make_sensor(**overrides: Any) -> SqlSensor:
    return SqlSensor(task_id="check_baselines", **{**gate.gate_sensor_kwargs(conn_id="finetune_db"), **overrides})


def test_sensor_kwargs_make_a_strict_gate() -> None:
    sensor = _make_sensor()

    assert sensor.retries == 0
    assert sensor.trigger_rule == "all_done"
    assert sensor.fail_on_empty is True
    assert sensor.failure is gate.gate_failed and sensor.success is gate.gate_passed
    assert sensor.parameters == {"run_id": gate.RUN_ID_TEMPLATE}
    assert "{{" not in sensor.sql and "{%" not in sensor.sql, "no Jinja in the SQL: only bound parameters"


@pytest.mark.parametrize(
    ("registered", "expected"),
    [
        pytest.param(
            "finetune_sweep__2026-06-07T00:00:00Z__1a2b3c4d",
            "finetune_sweep__2026-06-07T00:00:00Z__1a2b3c4d",
            id="from-register",
        ),
        pytest.param(None, RUN_ID, id="register-never-ran"),
    ],
)
def test_run_id_template_renders_the_registered_run(registered: str | None, expected: str) -> None:
    import jinja2

    class _TaskInstance:
        # register returns the pods' entries and pushes the finetune run id under the key run_id.
        def xcom_pull(self, *, task_ids: str, key: str) -> str | None:
            assert (task_ids, key) == ("register", "run_id")
            return registered

    rendered = jinja2.Template(gate.RUN_ID_TEMPLATE).render(ti=_TaskInstance(), run_id=RUN_ID)

    assert rendered == expected


@pytest.fixture
def finetune_db_connection(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    return migrated_db


def test_real_sensor_passes_a_complete_run(finetune_db_connection: str) -> None:
    seed_complete_run(finetune_db_connection)
    sensor = _make_sensor(parameters={"run_id": RUN_ID})

    assert sensor.poke({"run_id": RUN_ID}) is True


def test_real_sensor_fails_at_once_listing_the_problems(finetune_db_connection: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    seed_complete_run(
        finetune_db_connection,
        statuses={"l2_features": "failed"},
        skip_baseline={("base_features", "ETH", 1, 10, 0, "naive")},
    )
    sensor = _make_sensor(parameters={"run_id": RUN_ID})

    with pytest.raises(AirflowException) as raised:
        sensor.poke({"run_id": RUN_ID})

    message = str(raised.value)
    assert "Failure criteria met" in message
    assert "factor l2_features is failed, not done" in message
    assert "missing baseline naive: base_features ETH fold 1 cost 10" in message


def test_every_missing_key_of_a_many_dimensioned_sweep_is_named_exactly(migrated_db: str) -> None:
    # the expected keys are decoded from one series of key numbers: every dimension (factor,
    # crypto, fold, cost, slippage) must come out right, at every position of the grid
    plan = {"cryptos": ["BTC", "ETH", "SOL"], "n_folds": 3, "cost_bps": [10, 30], "slippage_bps": [0, 5]}
    grid = list(itertools.product(PLAN["factors"], plan["cryptos"], range(3), plan["cost_bps"], plan["slippage_bps"]))
    skipped = set(grid[::5])
    seed_complete_run(migrated_db, skip_model=skipped, **plan)

    verdict = _verdict(migrated_db)

    assert len(grid) == 72 and len(skipped) == 15
    assert verdict.n_problems == 15
    assert sorted(verdict.problems) == sorted(
        f"missing model row: {f} {c} fold {fold} cost {cost} slippage {slip} bps" for f, c, fold, cost, slip in skipped
    )


def test_a_baseline_missing_on_one_window_but_present_on_the_key_is_off_basis_only_there(migrated_db: str) -> None:
    # two variants of one key on different windows; its baselines exist on the first window only
    seed_complete_run(migrated_db, skip_model={("base_features", "BTC", 0, 10, 0)})
    first = {**make_model_row(), "variant": "a"}
    second = {**make_model_row(), **window(1), "variant": "b"}
    with psycopg.connect(migrated_db) as conn:
        insert(conn, "finetune_results", first)
        insert(conn, "finetune_results", second)
        for baseline_type in gate.BASELINE_TYPES:
            insert(conn, "finetune_baselines", make_baseline_row(baseline_type, first))

    verdict = _verdict(migrated_db)

    # buy_and_hold, random and naive all exist for the key, but not on the second window
    assert verdict.n_problems == 3
    assert all(problem.endswith("-- found only on a different window (off-basis)") for problem in verdict.problems)
    assert all("window 2026-05-08T00:00Z..2026-05-14T23:00Z (168 bars)" in p for p in verdict.problems)


@pytest.mark.parametrize(
    ("alias", "baseline_type"),
    [
        pytest.param("bh", "buy_and_hold'; DROP TABLE finetune_results; --", id="injected-type"),
        pytest.param("bh ON true; --", "buy_and_hold", id="injected-alias"),
        pytest.param("bh", "flat", id="unknown-type"),
    ],
)
def test_same_basis_join_refuses_anything_but_an_alias_and_a_known_baseline(alias: str, baseline_type: str) -> None:
    # Both go into the SQL text: checked even under python -O, where an assert would vanish.
    with pytest.raises(ValueError, match="same_basis_join"):
        gate.same_basis_join(alias, baseline_type)


def test_same_basis_join_joins_on_the_whole_basis() -> None:
    sql = gate.same_basis_join("rnd", "random")

    assert "rnd.baseline_type = 'random'" in sql
    for column in (
        "run_id",
        "factor",
        "strategy",
        "crypto",
        "fold_id",
        "cost_bps",
        "slippage_bps",
        "test_start",
        "test_end",
        "n_bars",
    ):
        assert f"rnd.{column} = m.{column}" in sql
