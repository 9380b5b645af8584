"""`airflow dags test finetune_sweep` end to end, on the local pod backend and real PostgreSQL.

Each test runs the real CLI in a subprocess (a fresh DagBag each time: `dag.test()` keeps params
between calls on one DAG object) against its own fresh database, then reads the tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from finetune_sweep.db.dsn import connection_json_from_dsn
from local_airflow import local_airflow_env

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
LOGICAL_DATE = "2026-06-07T00:00:00+00:00"
SMALL_CONF = {
    "factors": ["base_features", "l2_features"],
    "cryptos": ["BTC", "ETH"],
    "cost_bps": [10, 30],
    "slippage_bps": [0],
    "n_folds": 2,
    "n_seeds": 20,
    "hold_bars": 24,
    "train_bars": 24 * 60,
    "test_bars": 24 * 7,
}
# Local pods get modest limits (the cluster sizes are 8-24 GiB).
SMALL_PROFILES = {"STANDARD": {"memory": "1536Mi"}, "MEDIUM": {"memory": "2Gi"}, "HEAVY": {"memory": "3Gi"}}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated Airflow metadata database (SQLite) for every end-to-end run of the session."""
    home = tmp_path_factory.mktemp("airflow-e2e")
    env = _base_env(home)
    done = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def _base_env(home: Path) -> dict[str, str]:
    env = local_airflow_env(home)
    env.update(
        FINETUNE_POD_BACKEND="local",
        FINETUNE_PROFILES=json.dumps(SMALL_PROFILES),
        FINETUNE_RETRY_DELAY_SECONDS="1",
        # On a shared 2-core machine under load, importing Airflow and the providers while parsing
        # the DAG file took longer than the default 30 s DagBag import timeout.
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="300",
    )
    return env


def _dags_test(airflow_home: Path, dsn: str, conf: dict, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = _base_env(airflow_home)
    env["AIRFLOW_CONN_FINETUNE_DB"] = connection_json_from_dsn(dsn)
    env.update(extra_env)
    return subprocess.run(
        [AIRFLOW, "dags", "test", "finetune_sweep", LOGICAL_DATE, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _rows(dsn: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        # No parameters: pass None so that a literal % in the SQL is not read as a placeholder.
        return conn.execute(sql, params or None).fetchall()


def _scalar(dsn: str, sql: str, *params) -> object:
    return _rows(dsn, sql, *params)[0][0]


def _expected_keys(conf: dict) -> int:
    return (
        len(conf["factors"])
        * len(conf["cryptos"])
        * conf["n_folds"]
        * len(conf["cost_bps"])
        * len(conf["slippage_bps"])
    )


def test_complete_sweep_on_an_empty_database_succeeds(airflow_home: Path, empty_db: str) -> None:
    done = _dags_test(airflow_home, empty_db, SMALL_CONF)
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-6000:]
    keys = _expected_keys(SMALL_CONF)
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_results") == keys
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_baselines") == 3 * keys
    statuses = _rows(empty_db, "SELECT factor, status FROM finetune_run_factors ORDER BY factor")
    assert statuses == [("base_features", "done"), ("l2_features", "done")]
    # The sweep is anchored at the run's data interval end, not at the wall clock.
    as_of = _scalar(empty_db, "SELECT as_of FROM finetune_runs")
    assert as_of.isoformat().startswith("2026-06-07T00:00:00")
    # The gate passed, so the findings step ran: one row per factor x crypto x cost basis, and
    # the report's first lines say how many are findings.
    groups = len(SMALL_CONF["factors"]) * len(SMALL_CONF["cryptos"]) * len(SMALL_CONF["cost_bps"])
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_findings") == groups
    assert f"of {groups} groups are findings at FDR 0.1" in output
    # check_baselines kept its verdict for the UI, naming the Airflow run whose gate decided.
    assert _rows(empty_db, "SELECT ok, n_problems, problems, dag_id FROM finetune_gate_verdicts") == [
        (True, 0, [], "finetune_sweep")
    ]
    assert "postgres@" not in output or "host=" not in output.split("postgres@", 1)[1][:80], "DSN leaked"


def test_rerun_of_the_same_run_is_idempotent(airflow_home: Path, empty_db: str) -> None:
    conf = {**SMALL_CONF, "factors": ["base_features"], "cryptos": ["SOL"]}
    first = _dags_test(airflow_home, empty_db, conf)
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    counts = _scalar(
        empty_db, "SELECT (SELECT count(*) FROM finetune_results) * 1000 + count(*) FROM finetune_baselines"
    )
    findings = _rows(
        empty_db, "SELECT run_id, factor, crypto, cost_bps, fdr_q FROM finetune_findings ORDER BY cost_bps"
    )

    # Another FDR is the same sweep (fdr_q is not part of the run id): the rows upsert and the
    # findings are replaced at the new rate.
    second = _dags_test(airflow_home, empty_db, {**conf, "fdr_q": 0.05})

    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    again = _scalar(
        empty_db, "SELECT (SELECT count(*) FROM finetune_results) * 1000 + count(*) FROM finetune_baselines"
    )
    assert again == counts
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_runs") == 1
    replaced = _rows(
        empty_db, "SELECT run_id, factor, crypto, cost_bps, fdr_q FROM finetune_findings ORDER BY cost_bps"
    )
    assert [row[:4] for row in replaced] == [row[:4] for row in findings] and len(findings) == 2
    assert {row[4] for row in findings} == {0.1} and {row[4] for row in replaced} == {0.05}


def test_a_failed_factor_pod_fails_the_run_and_the_gate_names_it(airflow_home: Path, migrated_db: str) -> None:
    # Injected database fault: every write of l2_features' model rows is refused, so its pod exits
    # non-zero having persisted nothing for that factor.
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_l2() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.factor = 'l2_features' THEN RAISE EXCEPTION 'injected fault for l2_features'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_l2 BEFORE INSERT ON finetune_results FOR EACH ROW EXECUTE FUNCTION refuse_l2();
            """
        )

    done = _dags_test(airflow_home, migrated_db, SMALL_CONF)
    output = done.stdout + done.stderr

    assert done.returncode != 0, output[-6000:]
    assert "DagRun failed" in output
    # The report still runs after the failure (sizing table in the log), and carries the verdict.
    assert "Sizing of this run" in output and "Sizing advice" in output
    assert "the sweep did not succeed" in output
    gate_lines = [line for line in output.splitlines() if "l2_features" in line and "check_baselines" in output]
    assert gate_lines, output[-6000:]
    statuses = dict(_rows(migrated_db, "SELECT factor, status FROM finetune_run_factors"))
    assert statuses["base_features"] == "done"
    assert statuses["l2_features"] != "done"
    # The healthy factor's keys are complete; the failed one's are absent, never half-written.
    assert _scalar(migrated_db, "SELECT count(*) FROM finetune_results WHERE factor = 'l2_features'") == 0
    assert _scalar(migrated_db, "SELECT count(*) FROM finetune_baselines WHERE factor = 'l2_features'") == 0
    # The failed verdict is kept too, with the problem the gate named.
    [(ok, n_problems, problems)] = _rows(migrated_db, "SELECT ok, n_problems, problems FROM finetune_gate_verdicts")
    assert ok is False and n_problems >= 1 and any("l2_features" in problem for problem in problems)
    # A failed gate writes no findings, and the report says why there are none.
    assert _scalar(migrated_db, "SELECT count(*) FROM finetune_findings") == 0
    assert "no findings: the findings step did not succeed in this run (findings: upstream_failed)" in output


def test_bad_params_fail_before_any_pod_and_write_nothing(airflow_home: Path, empty_db: str) -> None:
    conf = {**SMALL_CONF, "cryptos": ["BTC'; DROP TABLE finetune_runs;--"]}

    done = _dags_test(airflow_home, empty_db, conf)

    assert done.returncode != 0
    assert "cryptos" in (done.stdout + done.stderr)
    tables = _scalar(empty_db, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'finetune_%'")
    assert tables == 0, "no pod (not even migrate) may run on bad params"


def test_oom_climbs_one_profile_and_the_run_succeeds(airflow_home: Path, empty_db: str) -> None:
    # STANDARD shrunk below what a runner needs: the first attempt is OOMKilled by the enforced
    # limit, the retry runs on MEDIUM and completes.
    profiles = {"STANDARD": {"memory": "40Mi"}, "MEDIUM": {"memory": "2Gi"}, "HEAVY": {"memory": "3Gi"}}
    conf = {**SMALL_CONF, "factors": ["base_features"], "cryptos": ["BTC"]}

    done = _dags_test(airflow_home, empty_db, conf, FINETUNE_PROFILES=json.dumps(profiles))
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-6000:]
    assert "OOMKilled" in output
    attempts = _rows(
        empty_db,
        "SELECT attempt, profile, exit_reason FROM finetune_pod_attempts WHERE factor = 'base_features' ORDER BY attempt",
    )
    assert [(a[1], a[2]) for a in attempts][:1] == [("STANDARD", "OOMKilled")]
    assert attempts[-1][1] == "MEDIUM"
    row = _rows(empty_db, "SELECT status, profile, attempt FROM finetune_run_factors WHERE factor = 'base_features'")
    assert row[0][0] == "done" and row[0][1] == "MEDIUM"


MI = 2**20
# Every factor on STANDARD in the map, so that only the history can move one.
ALL_STANDARD = json.dumps(
    {"base_features": "STANDARD", "n_features": "STANDARD", "btc_features": "STANDARD", "l2_features": "STANDARD"}
)


def _record_last_week(dsn: str, attempts: list[tuple[str, int, str, int, int | None, str]]) -> None:
    """Past attempts of a finetune run 'last-week': (factor, attempt, profile, limit, peak, exit reason)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
            "VALUES ('last-week', 'finetune_sweep', 'ridge_long_flat', '2026-05-31T00:00:00Z', '{}')"
        )
        for factor in sorted({a[0] for a in attempts}):
            conn.execute(
                "INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES ('last-week', %s, 'STANDARD', 'done')",
                (factor,),
            )
        for factor, attempt, profile, limit, peak, reason in attempts:
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, airflow_run_id, attempt, profile, memory_limit_bytes, "
                "peak_memory_bytes, exit_reason, duration_seconds, finished_at) "
                "VALUES ('last-week', %s, 'scheduled__2026-05-31T00:00:00+00:00', %s, %s, %s, %s, %s, 60, now() - interval '7 days')",
                (factor, attempt, profile, limit, peak, reason),
            )


def test_history_starts_factors_one_step_up_without_an_oom(airflow_home: Path, migrated_db: str) -> None:
    # The incident, on the small local profiles: btc_features peaked at 95 % of STANDARD (1.425Gi) and
    # n_features was OOMKilled on STANDARD last week; base_features stays far below its limit.
    standard = 1536 * MI
    _record_last_week(
        migrated_db,
        [
            ("btc_features", 1, "STANDARD", standard, int(0.95 * standard), "completed"),
            ("n_features", 1, "STANDARD", standard, None, "OOMKilled"),
            ("n_features", 2, "MEDIUM", 2048 * MI, 1600 * MI, "completed"),
            ("base_features", 1, "STANDARD", standard, 200 * MI, "completed"),
        ],
    )
    conf = {
        **SMALL_CONF,
        "factors": ["base_features", "btc_features", "n_features"],
        "cryptos": ["BTC"],
        "cost_bps": [10],
    }

    done = _dags_test(airflow_home, migrated_db, conf, FINETUNE_SIZING=ALL_STANDARD)
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-6000:]
    attempts = _rows(
        migrated_db,
        "SELECT factor, attempt, profile, exit_reason FROM finetune_pod_attempts WHERE run_id <> 'last-week' ORDER BY factor",
    )
    assert attempts == [
        ("base_features", 1, "STANDARD", "completed"),
        ("btc_features", 1, "MEDIUM", "completed"),
        ("n_features", 1, "MEDIUM", "completed"),
    ], "each factor started on its chosen profile and ran once: no OOM on this run"
    manifest = _rows(
        migrated_db,
        "SELECT factor, map_profile, profile, status, profile_reason FROM finetune_run_factors "
        "WHERE run_id <> 'last-week' ORDER BY factor",
    )
    assert manifest == [
        ("base_features", "STANDARD", "STANDARD", "done", "map"),
        ("btc_features", "STANDARD", "MEDIUM", "done", "history: p95 1.42Gi on STANDARD (95 % of 1.50Gi) -> MEDIUM"),
        ("n_features", "STANDARD", "MEDIUM", "done", "history: OOM on STANDARD in run last-week (attempt 1) -> MEDIUM"),
    ]
    (link,) = _rows(migrated_db, "SELECT dag_id, run_id FROM finetune_airflow_runs")
    assert link == (
        "finetune_sweep",
        _scalar(migrated_db, "SELECT run_id FROM finetune_runs WHERE run_id <> 'last-week'"),
    )
    assert "sizing btc_features: starts on MEDIUM (memory 2Gi, map STANDARD): history: p95" in output
    assert "sizing base_features: starts on STANDARD (memory 1536Mi, map STANDARD): map" in output


def test_the_oom_ladder_climbs_from_the_profile_history_chose(airflow_home: Path, migrated_db: str) -> None:
    # History (an OOM on STANDARD) starts base_features on MEDIUM; MEDIUM is shrunk below what a
    # runner needs, so this run's OOM climbs from MEDIUM to HEAVY (STANDARD is never tried).
    profiles = {"STANDARD": {"memory": "30Mi"}, "MEDIUM": {"memory": "40Mi"}, "HEAVY": {"memory": "2Gi"}}
    _record_last_week(migrated_db, [("base_features", 1, "STANDARD", 30 * MI, None, "OOMKilled")])
    conf = {**SMALL_CONF, "factors": ["base_features"], "cryptos": ["BTC"], "cost_bps": [10]}

    done = _dags_test(
        airflow_home, migrated_db, conf, FINETUNE_PROFILES=json.dumps(profiles), FINETUNE_SIZING=ALL_STANDARD
    )
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-6000:]
    attempts = _rows(
        migrated_db,
        "SELECT profile, exit_reason FROM finetune_pod_attempts WHERE run_id <> 'last-week' ORDER BY attempt",
    )
    assert attempts == [("MEDIUM", "OOMKilled"), ("HEAVY", "completed")]
    assert _rows(
        migrated_db, "SELECT map_profile, profile, status FROM finetune_run_factors WHERE run_id <> 'last-week'"
    ) == [("STANDARD", "HEAVY", "done")]


def test_planted_market_btc_features_on_eth_and_sol_at_0_bps_are_findings(airflow_home: Path, empty_db: str) -> None:
    # The default data is the planted lead-lag market: each alt follows BTC's previous bar, which
    # only btc_features can see. Default windows (180-day train, 30-day test), 4 folds.
    conf = {
        "factors": ["base_features", "btc_features"],
        "cryptos": ["BTC", "ETH", "SOL"],
        "cost_bps": [0, 30],
        "slippage_bps": [0],
        "n_folds": 4,
        "n_seeds": 100,
        "hold_bars": 24,
    }

    done = _dags_test(airflow_home, empty_db, conf)
    output = done.stdout + done.stderr

    assert done.returncode == 0, output[-6000:]
    discovered = _rows(
        empty_db,
        "SELECT factor, crypto, cost_bps FROM finetune_findings WHERE discovered ORDER BY factor, crypto, cost_bps",
    )
    assert {("btc_features", "ETH", 0), ("btc_features", "SOL", 0)} <= set(discovered), discovered
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_findings") == 12
    headline = f"{len(discovered)} of 12 groups are findings at FDR 0.1"
    assert headline in output, output[-6000:]
    # The report prints the findings first: the headline comes before the per-group table.
    assert output.index(headline) < output.index("Model vs same-basis baselines")
    lines = output[output.index(headline) : output.index("Model vs same-basis baselines")].splitlines()
    assert any(line.split()[:3] == ["btc_features", "ETH", "0"] for line in lines if line.strip())


def test_the_same_sweep_on_other_data_is_another_run(airflow_home: Path, empty_db: str) -> None:
    conf = {**SMALL_CONF, "factors": ["btc_features"], "cryptos": ["ETH"]}
    keys = _expected_keys(conf)
    planted = _dags_test(airflow_home, empty_db, conf)
    assert planted.returncode == 0, (planted.stdout + planted.stderr)[-6000:]

    walk = _dags_test(airflow_home, empty_db, conf, FINETUNE_DATA_URI="synthetic://random-walk")

    assert walk.returncode == 0, (walk.stdout + walk.stderr)[-6000:]
    runs = _rows(
        empty_db,
        "SELECT params ->> 'data_uri', (SELECT count(*) FROM finetune_results AS m "
        "WHERE m.run_id = r.run_id) FROM finetune_runs AS r ORDER BY 1 NULLS FIRST",
    )
    # two sweeps side by side, each complete: the random walk did not upsert over the planted rows
    assert runs == [(None, keys), ("synthetic://random-walk", keys)]
    assert _scalar(empty_db, "SELECT count(DISTINCT run_id) FROM finetune_findings") == 2
    assert _scalar(empty_db, "SELECT count(*) FROM finetune_gate_verdicts WHERE ok") == 2
