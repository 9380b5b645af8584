"""The plugin's pages through Airflow's own app: ``create_app()``, the simple auth manager, real JWTs.

Real stack, nothing mocked: the FastAPI app Airflow builds from ``plugins/`` (so the plugin is
mounted exactly as the api-server mounts it), a migrated SQLite metadata database holding the
serialised ``finetune_sweep`` DAG and two of its runs, and a fresh PostgreSQL finetune database
per test (``migrated_db``) reached through the ``finetune_db`` connection.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from finetune_rows import RUN_ID, seed_complete_run
from finetune_sweep.db.dsn import connection_json_from_dsn

DAG_ID = "finetune_sweep"
# The Airflow run of the seeded finetune run: an id with ':' and '+', as Airflow makes them.
AIRFLOW_RUN = "scheduled__2026-06-07T00:00:00+00:00"
# An Airflow run whose `plan` failed: it never reached `register`.
FAILED_EARLY_RUN = "manual__2026-06-14T00:00:00+00:00"


def _url(run: str, suffix: str = "") -> str:
    # The UI fills {RUN_ID} URL-encoded (encodeURIComponent), so ':' and '+' arrive as %3A, %2B.
    return f"/finetune/dags/{DAG_ID}/runs/{quote(run, safe='')}{suffix}"


ROUTES = [
    pytest.param(_url(AIRFLOW_RUN), id="run-tab"),
    pytest.param(_url(AIRFLOW_RUN, "/folds?factor=base_features&crypto=BTC&cost_bps=10&slippage_bps=0"), id="folds"),
    pytest.param(_url(AIRFLOW_RUN, "/rows.csv"), id="rows-csv"),
    pytest.param(_url(AIRFLOW_RUN, "/rows.json"), id="rows-json"),
    pytest.param(_url(AIRFLOW_RUN, "/folds.csv"), id="folds-csv"),
    pytest.param(_url(AIRFLOW_RUN, "/folds.json"), id="folds-json"),
    pytest.param(f"/finetune/dags/{DAG_ID}", id="dag-tab"),
]
STATIC = ["/finetune/static/finetune_ui.js", "/finetune/static/finetune_ui.css", "/finetune/static/plotly.min.js"]


def _serialise_dag_with_runs() -> None:
    """The DAG in the metadata database, plus the run whose `plan` failed (every later task upstream_failed)."""
    import pendulum
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    from local_airflow import REPO_ROOT

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        if session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == FAILED_EARLY_RUN)) is None:
            when = pendulum.datetime(2026, 6, 14, tz="UTC")
            run = dag.create_dagrun(
                run_id=FAILED_EARLY_RUN,
                logical_date=when,
                data_interval=(when, when),
                run_after=when,
                conf={"factors": ["base_features"], "cryptos": ["BTC"]},
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST,
                state=DagRunState.FAILED,
                session=session,
            )
            for ti in run.get_task_instances(session=session):
                ti.state = TaskInstanceState.FAILED if ti.task_id == "plan" else TaskInstanceState.UPSTREAM_FAILED


@pytest.fixture(scope="module")
def airflow_app() -> Iterator[dict[str, Any]]:
    """Airflow's api-server app (with this repository's plugins) and JWTs of three users."""
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
        from airflow.utils import db

        db.initdb()
        _serialise_dag_with_runs()
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        app = create_app()
        manager = get_auth_manager()

        def token(role: str | None) -> dict[str, str]:
            jwt = manager.generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))
            return {"Authorization": f"Bearer {jwt}"}

        with TestClient(app) as client:
            yield {"client": client, "viewer": token("viewer"), "no_access": token(None)}


@pytest.fixture
def finetune_db(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated finetune database behind the ``finetune_db`` connection."""
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(migrated_db))
    return migrated_db


def _link(dsn: str, airflow_run_id: str = AIRFLOW_RUN, run_id: str = RUN_ID) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO finetune_airflow_runs (dag_id, airflow_run_id, run_id) VALUES (%s, %s, %s)",
            (DAG_ID, airflow_run_id, run_id),
        )


@pytest.fixture
def seeded(finetune_db: str) -> str:
    """A complete run (2 factors x 2 cryptos x 2 folds x 2 costs) linked to :data:`AIRFLOW_RUN`."""
    seed_complete_run(finetune_db)
    _link(finetune_db)
    return finetune_db


def _get(app: dict[str, Any], path: str, who: str | None = "viewer") -> Any:
    return app["client"].get(path, headers=app[who] if who else {})


# --------------------------------------------------------------------------- auth and registration


@pytest.mark.parametrize("path", [*ROUTES, *STATIC])
def test_anonymous_is_refused_everywhere(airflow_app: dict[str, Any], seeded: str, path: str) -> None:
    response = _get(airflow_app, path, who=None)

    assert response.status_code == 401, response.text


@pytest.mark.parametrize("path", ROUTES)
def test_a_user_without_dag_access_is_forbidden(airflow_app: dict[str, Any], seeded: str, path: str) -> None:
    response = _get(airflow_app, path, who="no_access")

    assert response.status_code == 403, response.text
    assert "base_features" not in response.text


@pytest.mark.parametrize("path", [*ROUTES, *STATIC])
def test_a_viewer_is_served_everywhere(airflow_app: dict[str, Any], seeded: str, path: str) -> None:
    response = _get(airflow_app, path)

    assert response.status_code == 200, response.text[:2000]
    assert response.content


@pytest.mark.parametrize("path", [*ROUTES, *STATIC, pytest.param(_url("no-such-run"), id="error-page")])
def test_every_response_carries_the_policy_headers(airflow_app: dict[str, Any], seeded: str, path: str) -> None:
    headers = _get(airflow_app, path).headers

    assert headers["content-security-policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'self'"
    )
    assert headers["x-content-type-options"] == "nosniff"
    # results are never cached; the assets (no data) may be, privately
    expected = "private, max-age=86400" if path in STATIC else "no-store"
    assert headers["cache-control"] == expected


def test_the_plugin_is_listed_with_its_app_and_both_tabs(airflow_app: dict[str, Any]) -> None:
    response = _get(airflow_app, "/api/v2/plugins")

    assert response.status_code == 200, response.text
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "finetune_sweep_ui")
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/finetune"]
    views = {view["destination"]: view for view in plugin["external_views"]}
    assert views["dag_run"]["href"] == "finetune/dags/{DAG_ID}/runs/{RUN_ID}"
    assert views["dag"]["href"] == "finetune/dags/{DAG_ID}"
    # a tab needs a url_route; a relative href follows [api] base_url
    assert all(view["url_route"] and not view["href"].startswith(("/", "http")) for view in views.values())


# --------------------------------------------------------------------------- the run tab


def test_the_run_tab_shows_the_verdict_the_table_the_charts_and_the_pods(
    airflow_app: dict[str, Any], seeded: str
) -> None:
    with psycopg.connect(seeded) as conn:
        # base_features BTC 10 bps: model 2 % and 4 % over the two folds, matched percentile 0.9
        # and 0.7, random percentile 0.6 and 0.5, the random seeds' p05 -1 % and -3 %, p95 5 % and 7 %.
        for fold_id, (model, percentile, random_percentile) in enumerate([(0.02, 0.9, 0.6), (0.04, 0.7, 0.5)]):
            conn.execute(
                "UPDATE finetune_results SET net_return = %s, matched_percentile = %s, random_percentile = %s"
                " WHERE factor = 'base_features' AND crypto = 'BTC' AND cost_bps = 10 AND fold_id = %s",
                (model, percentile, random_percentile, fold_id),
            )
        for fold_id, (p05, p95) in enumerate([(-0.01, 0.05), (-0.03, 0.07)]):
            conn.execute(
                "UPDATE finetune_baselines SET seed_p05 = %s, seed_p95 = %s WHERE baseline_type = 'random'"
                " AND factor = 'base_features' AND crypto = 'BTC' AND cost_bps = 10 AND fold_id = %s",
                (p05, p95, fold_id),
            )
        conn.execute(
            "UPDATE finetune_run_factors SET memory_limit_bytes = 1073741824, peak_memory_bytes = 912680550,"
            " map_profile = 'STANDARD', profile_reason = 'map' WHERE factor = 'base_features'"
        )
        for attempt, reason in ((1, "OOMKilled"), (2, None)):
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes,"
                " peak_memory_bytes, exit_reason, airflow_run_id) VALUES (%s, 'base_features', %s, 'STANDARD',"
                " 1073741824, 912680550, %s, %s)",
                (RUN_ID, attempt, reason, AIRFLOW_RUN),
            )

    response = _get(airflow_app, _url(AIRFLOW_RUN))

    assert response.status_code == 200, response.text
    html = response.text
    assert "Verdict: complete" in html
    row = _table_row(html, "results", ["base_features", "BTC", "10", "0"])
    # model, b&h, random, p05-p95, naive, matched percentile, random percentile, folds won
    assert row[4:12] == ["+3.00%", "+0.50%", "+0.50%", "-2.0% … +6.0%", "+0.00%", "80%", "55%", "2/2"]
    # rows without the V010 columns: the matched percentile is "not tested", never made up
    assert _table_row(html, "results", ["l2_features", "ETH", "30", "0"])[7:11] == ["–", "+0.00%", "not tested", "–"]
    pod = _table_row(html, "pods", ["base_features"])
    # 870.4 MiB of 1 GiB: 15 % headroom; two attempts of this Airflow run, one OOM
    assert pod[4:9] == ["1.00Gi", "870.40Mi", "15%", "2", "1"]
    curves = json.loads(html.split('<script type="application/json" id="chart-data">')[1].split("</script>")[0])
    assert [c["id"] for c in curves] == ["cost-curve-base_features", "cost-curve-l2_features"]
    assert "plotly.min.js" in html and "https://" not in html


def test_an_incomplete_run_shows_the_gates_problems(airflow_app: dict[str, Any], finetune_db: str) -> None:
    seed_complete_run(finetune_db, skip_baseline={("l2_features", "ETH", 1, 30, 0, "random")})
    _link(finetune_db)

    html = _get(airflow_app, _url(AIRFLOW_RUN)).text

    assert "Verdict: 1 problem" in html
    assert "missing baseline random: l2_features ETH fold 1 cost 30 slippage 0 bps" in html
    assert "Computed now from the rows in the database" in html


def test_the_run_tab_shows_both_tests_the_verdicts_and_the_floor(airflow_app: dict[str, Any], seeded: str) -> None:
    from finetune_sweep.findings import p_value_floor, run_findings

    with psycopg.connect(seeded) as conn:
        # BTC times the market on both folds, ETH does not; profit discovered at 10 bps only
        conn.execute(
            "UPDATE finetune_results SET perm_p_value = CASE crypto WHEN 'BTC' THEN 0.002 ELSE 0.6 END,"
            " perm_n_shifts = 999, profit_p_value = CASE cost_bps WHEN 10 THEN 0.001 ELSE 0.6 END,"
            " profit_vs_buy_and_hold_p_value = 0.3, matched_percentile = 0.97"
        )
    run_findings(seeded, run_id=RUN_ID, fdr_q=0.1)

    response = _get(airflow_app, _url(AIRFLOW_RUN))

    assert response.status_code == 200, response.text
    html = unescape(response.text)
    floor = p_value_floor([999, 999])
    assert "2 of 8 groups are findings at FDR 0.1 (timing and profit after costs" in html
    assert f"timing edge in 2 of 4 distinct models; p-value floor {floor:.3g}" in html
    found = _table_row(html, "findings", ["base_features", "BTC", "10"])
    # edge b&h, timing p/q, profit p/q, vs b&h p, matched pctl, DSR, folds > 0, verdict, same model as
    fisher = f"{4e-6 * (1 - math.log(4e-6)):.2g}"  # two folds of 0.002: P (1 - ln P), P = 4e-6
    assert found[4:6] == ["+0.50%", fisher]
    # vs b&h p (Fisher of 0.3, 0.3), matched pctl, DSR (no bar moments stored here), folds > 0, verdict, same model
    assert found[9:] == ["0.3067", "97%", "–", "2/2", "finding at 10 bps", "–"]
    eaten = _table_row(html, "findings", ["base_features", "BTC", "30"])
    assert eaten[-2] == "timing edge, profit at 30 bps not significant"
    assert _table_row(html, "findings", ["base_features", "ETH", "10"])[-2] == "no timing edge"


def test_the_run_tab_shows_the_verdict_check_baselines_kept(airflow_app: dict[str, Any], finetune_db: str) -> None:
    from finetune_sweep.gate import RECORD_VERDICT_SQL

    seed_complete_run(finetune_db, skip_baseline={("l2_features", "ETH", 1, 30, 0, "random")})
    _link(finetune_db)
    with psycopg.connect(finetune_db) as conn:
        conn.execute(
            RECORD_VERDICT_SQL,
            {
                "run_id": RUN_ID,
                "ok": False,
                "n_problems": 1,
                "problems": ["the problem the gate named"],
                "dag_id": "finetune_sweep",
                "airflow_run_id": "scheduled__y",
                "checked_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
            },
        )

    html = _get(airflow_app, _url(AIRFLOW_RUN)).text

    assert "Verdict: 1 problem" in html and "the problem the gate named" in html
    assert "Recorded by <code>check_baselines</code> of Airflow run scheduled__y at 2030-01-02 03:04:05 UTC" in html


def _table_row(html: str, table_id: str, first_cells: list[str]) -> list[str]:
    """The text of the cells of the first row of table ``table_id`` that starts with ``first_cells``."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.inside = self.cell = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "table":
                self.inside = dict(attrs).get("id") == table_id
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag == "td":
                self.cell = True
                self.rows[-1].append("")

        def handle_endtag(self, tag: str) -> None:
            if tag == "td":
                self.cell = False
            elif tag == "table":
                self.inside = False

        def handle_data(self, data: str) -> None:
            if self.inside and self.cell:
                self.rows[-1][-1] += data.strip()

    parser = Rows()
    parser.feed(html)
    matches = [row for row in parser.rows if row[: len(first_cells)] == first_cells]
    assert matches, f"no row {first_cells} in #{table_id}"
    return matches[0]


@pytest.mark.parametrize(
    "airflow_run_id", ["manual__2026-06-07T00:00:00+00:00", "a:b+c d"], ids=["colon-plus", "space"]
)
def test_run_ids_with_colons_and_pluses_resolve(
    airflow_app: dict[str, Any], finetune_db: str, airflow_run_id: str
) -> None:
    seed_complete_run(finetune_db)
    _link(finetune_db, airflow_run_id=airflow_run_id)

    encoded = _get(airflow_app, _url(airflow_run_id))
    download = _get(airflow_app, _url(airflow_run_id, "/rows.json"))

    assert encoded.status_code == 200, encoded.text
    assert f"Sweep results <small>{RUN_ID}</small>" in encoded.text
    assert download.status_code == 200 and len(download.json()) == 8


def test_the_finetune_run_id_itself_resolves_too(airflow_app: dict[str, Any], finetune_db: str) -> None:
    seed_complete_run(finetune_db)

    response = _get(airflow_app, _url(RUN_ID))

    assert response.status_code == 200, response.text
    assert "Verdict: complete" in response.text


@pytest.mark.parametrize("run", ["no_such_run", "x'; DROP TABLE finetune_runs; --"], ids=["unknown", "injection"])
def test_an_unknown_run_is_a_404_naming_it(airflow_app: dict[str, Any], seeded: str, run: str) -> None:
    response = _get(airflow_app, _url(run))

    assert response.status_code == 404
    assert "Unknown run" in response.text
    assert f"no run {run!r} of DAG 'finetune_sweep'" in unescape(response.text)
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*) FROM finetune_runs").fetchone()[0] == 1


@pytest.mark.parametrize("schema", ["migrated", "empty"])
def test_a_run_that_failed_before_register_shows_its_verdict_and_no_traceback(
    airflow_app: dict[str, Any], migrated_db: str, empty_db: str, monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    # "empty": the run failed in `migrate`, so the finetune database has no tables at all
    dsn = migrated_db if schema == "migrated" else empty_db
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DB", connection_json_from_dsn(dsn))

    response = _get(airflow_app, _url(FAILED_EARLY_RUN))

    assert response.status_code == 200, response.text
    assert "Verdict: not registered" in response.text
    assert _table_row(response.text, "tasks", ["plan"]) == ["plan", "failed"]
    assert _table_row(response.text, "tasks", ["register"]) == ["register", "upstream_failed"]
    assert "Traceback" not in response.text
    assert _get(airflow_app, _url(FAILED_EARLY_RUN, "/rows.csv")).status_code == 404


def test_an_unreachable_database_is_a_503_without_its_password(
    airflow_app: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FINETUNE_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 1,
                "login": "u",
                "password": "s3cret-pw",
                "schema": "x",
                "extra": {"connect_timeout": "2"},
            }
        ),
    )

    with caplog.at_level(logging.WARNING, logger="finetune_sweep.ui.app"):
        response = _get(airflow_app, _url(AIRFLOW_RUN))

    assert response.status_code == 503
    assert "the results database is unavailable" in response.text
    # host, port and the driver's message are for the server's log, not for viewers
    assert "127.0.0.1" not in response.text and "port 1" not in response.text
    assert "s3cret-pw" not in response.text
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "127.0.0.1" in logged and "s3cret-pw" not in logged


def test_a_bad_cost_filter_names_the_value(airflow_app: dict[str, Any], seeded: str) -> None:
    response = _get(airflow_app, _url(AIRFLOW_RUN, "/folds?cost_bps=ten"))

    assert response.status_code == 400
    assert "cost_bps=&#39;ten&#39; is not an integer" in response.text


# --------------------------------------------------------------------------- detail and downloads


def test_the_fold_detail_lists_the_groups_folds(airflow_app: dict[str, Any], seeded: str) -> None:
    html = _get(airflow_app, _url(AIRFLOW_RUN, "/folds?factor=l2_features&crypto=ETH&cost_bps=30&slippage_bps=0")).text

    assert _table_row(html, "folds", ["l2_features", "ETH", "30", "0", "0"])[7] == "+1.00%"
    assert _table_row(html, "folds", ["l2_features", "ETH", "30", "0", "1"])
    assert "base_features" not in html.split('id="folds"')[1]


def test_downloads_carry_the_tables_rows(airflow_app: dict[str, Any], seeded: str) -> None:
    rows_csv = _get(airflow_app, _url(AIRFLOW_RUN, "/rows.csv"))
    rows_json = _get(airflow_app, _url(AIRFLOW_RUN, "/rows.json")).json()
    folds_json = _get(airflow_app, _url(AIRFLOW_RUN, "/folds.json")).json()

    parsed = list(csv.DictReader(io.StringIO(rows_csv.text, newline="")))
    assert rows_csv.headers["content-type"].startswith("text/csv")
    assert rows_csv.text.count("\r\n") == len(parsed) + 1 and "\n" not in rows_csv.text.replace("\r\n", "")
    assert "attachment" in rows_csv.headers["content-disposition"]
    assert len(parsed) == len(rows_json) == 8 and len(folds_json) == 16
    first = rows_json[0]
    assert (first["factor"], first["crypto"], first["cost_bps"], first["folds"]) == ("base_features", "BTC", 10, 2)
    assert first["model"] == pytest.approx(0.01) and first["buy_and_hold"] == pytest.approx(0.005)
    assert first["percentile"] is None and parsed[0]["percentile"] == ""
    assert float(parsed[0]["model"]) == pytest.approx(first["model"])
    assert {row["fold_id"] for row in folds_json} == {0, 1}


def test_the_dag_tab_shows_each_factor_across_runs(airflow_app: dict[str, Any], seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.execute("UPDATE finetune_run_factors SET memory_limit_bytes = 1000, peak_memory_bytes = 900")
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes,"
            " peak_memory_bytes) VALUES (%s, 'l2_features', 1, 'STANDARD', 8589934592, 7516192768)",
            (RUN_ID,),
        )

    response = _get(airflow_app, f"/finetune/dags/{DAG_ID}")

    assert response.status_code == 200, response.text
    html = response.text
    row = _table_row(html, "history", ["2026-06-07 00:00", RUN_ID, "base_features"])
    # model 1 %, b&h 0.5 %, random 0.5 %: edges +0.50 % each; peak 900 of 1000 bytes
    assert row[3:9] == ["done", "8", "+1.00%", "+0.50%", "+0.50%", "–"]
    assert row[10] == "900B / 1000B"
    advice = _table_row(html, "sizing", ["l2_features"])
    assert advice[-2] == "MEDIUM" and "88%" in advice[-1]
    assert '"history-edge"' in html and '"history-memory"' in html


def test_the_dag_tabs_sizing_advice_counts_only_that_dags_runs(airflow_app: dict[str, Any], seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        # another DAG's run (and a by-hand one) with n_features near its limit: not this DAG's advice
        for other, dag_id in (("other-run", "other_dag"), ("by-hand", None)):
            conn.execute(
                "INSERT INTO finetune_runs (run_id, dag_id, strategy, as_of, params) "
                "VALUES (%s, %s, 'ridge_long_flat', '2026-06-07T00:00:00Z', '{}')",
                (other, dag_id),
            )
            conn.execute(
                "INSERT INTO finetune_run_factors (run_id, factor, profile, status) VALUES (%s, 'n_features', 'HEAVY', 'done')",
                (other,),
            )
            conn.execute(
                "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes,"
                " peak_memory_bytes) VALUES (%s, 'n_features', 1, 'HEAVY', 25769803776, 25000000000)",
                (other,),
            )
        conn.execute(
            "INSERT INTO finetune_pod_attempts (run_id, factor, attempt, profile, memory_limit_bytes,"
            " peak_memory_bytes) VALUES (%s, 'l2_features', 1, 'STANDARD', 8589934592, 7516192768)",
            (RUN_ID,),
        )

    html = _get(airflow_app, f"/finetune/dags/{DAG_ID}").text

    assert _table_row(html, "sizing", ["l2_features"])[1] == "1"
    # every factor of the map has its row; n_features has no attempt of this DAG
    n_features = _table_row(html, "sizing", ["n_features"])
    assert n_features[1:4] == ["0", "0", "0"] and "25" not in " ".join(n_features)


@pytest.mark.parametrize("dag_id", ["~", "no_such_dag", "other_dag"])
@pytest.mark.parametrize("suffix", ["", "/runs/{run}", "/runs/{run}/folds", "/runs/{run}/rows.csv"])
def test_a_path_that_names_no_dag_of_this_airflow_is_a_404(
    airflow_app: dict[str, Any], seeded: str, dag_id: str, suffix: str
) -> None:
    with psycopg.connect(seeded) as conn:
        # a finetune run claiming a DAG this Airflow does not have
        conn.execute("UPDATE finetune_runs SET dag_id = 'other_dag'")
    path = f"/finetune/dags/{quote(dag_id, safe='')}" + suffix.format(run=quote(RUN_ID, safe=""))

    response = _get(airflow_app, path)

    assert response.status_code == 404, response.text
    assert "base_features" not in response.text
    assert f"no DAG {dag_id!r} in this Airflow".replace("'", "&#39;") in response.text


def test_an_anonymous_request_for_an_unknown_dag_learns_nothing(airflow_app: dict[str, Any], seeded: str) -> None:
    assert _get(airflow_app, "/finetune/dags/no_such_dag", who=None).status_code == 401


def test_a_run_registered_by_hand_is_shown_under_no_dag(airflow_app: dict[str, Any], seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        # `python -m finetune run` without Airflow: the run has no DAG
        conn.execute("UPDATE finetune_runs SET dag_id = NULL")

    for suffix in ("", "/folds?factor=base_features&crypto=BTC", "/rows.csv", "/folds.json"):
        by_run_id = _get(airflow_app, _url(RUN_ID, suffix))
        assert by_run_id.status_code == 404, (suffix, by_run_id.text)
        assert "base_features" not in by_run_id.text
    # nor through a link row that names this DAG
    linked = _get(airflow_app, _url(AIRFLOW_RUN, "/rows.json"))
    assert linked.status_code == 404, linked.text


def test_the_dag_tab_of_a_dag_without_runs_is_a_404(airflow_app: dict[str, Any], finetune_db: str) -> None:
    response = _get(airflow_app, "/finetune/dags/finetune_sweep")

    assert response.status_code == 404
    assert "no finetune runs of DAG &#39;finetune_sweep&#39;" in response.text


@pytest.mark.parametrize("factor, crypto", [("base_features", "BTC"), ("a b&c=d", "é/+?#")])
def test_a_groups_folds_link_is_its_url_encoded_key(factor: str, crypto: str) -> None:
    from urllib.parse import parse_qs, urlencode

    from finetune_sweep.ui.app import _folds_query

    query = _folds_query(factor, crypto, 10, 0)

    assert query == "folds?" + urlencode({"factor": factor, "crypto": crypto, "cost_bps": 10, "slippage_bps": 0})
    assert parse_qs(query.split("?", 1)[1]) == {
        "factor": [factor],
        "crypto": [crypto],
        "cost_bps": ["10"],
        "slippage_bps": ["0"],
    }


@pytest.mark.parametrize(
    "query", ["cost_bps=99999999999", "slippage_bps=-99999999999", "cost_bps=1e3", "factor=%00", "crypto=" + "x" * 5000]
)
def test_hostile_fold_filters_get_a_page_never_a_server_error(
    airflow_app: dict[str, Any], seeded: str, query: str
) -> None:
    response = _get(airflow_app, _url(AIRFLOW_RUN, f"/folds?{query}"))

    assert response.status_code in (200, 400), response.text[:500]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("suffix", ["", "/folds?factor=base_features&crypto=BTC", "/rows.csv"])
def test_a_run_id_with_a_nul_is_unknown_not_a_server_error(
    airflow_app: dict[str, Any], seeded: str, suffix: str
) -> None:
    response = _get(airflow_app, _url("manual__x\x00y", suffix))

    assert response.status_code == 404, response.text[:500]
    assert "Unknown run" in response.text


def test_a_dag_id_with_a_nul_gets_a_page_not_a_server_error(airflow_app: dict[str, Any], seeded: str) -> None:
    response = _get(airflow_app, "/finetune/dags/" + quote("finetune\x00sweep", safe=""))

    assert response.status_code in (400, 403, 404), response.text[:500]
    assert "Traceback" not in response.text


def test_csv_cells_that_a_spreadsheet_would_evaluate_are_neutralised() -> None:
    from finetune_sweep.ui.app import _csv_chunks

    values = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx", "a\rb", "BTC", -0.5, 3]
    text = "".join(_csv_chunks(iter([{str(i): v for i, v in enumerate(values)}]), [str(i) for i in range(len(values))]))

    assert text.endswith("\r\n")
    (header, row) = list(csv.reader(io.StringIO(text, newline="")))
    assert row == ["'=1+1", "'+SUM(A1)", "'-2+3", "'@cmd", "'\tx", "'\rx", "a\rb", "BTC", "-0.5", "3"]
    # a bare CR inside a cell is quoted, so no reader takes it for a line end
    assert '"a\rb"' in text and '"\'\rx"' in text


@pytest.mark.parametrize("query", ["", "?factor=base_features", "?crypto=BTC", "?factor=&crypto=BTC"])
def test_the_fold_detail_needs_a_factor_and_a_crypto(airflow_app: dict[str, Any], seeded: str, query: str) -> None:
    response = _get(airflow_app, _url(AIRFLOW_RUN, "/folds" + query))

    assert response.status_code == 400
    assert "the fold detail needs factor and crypto" in response.text
    assert 'id="folds"' not in response.text


def test_the_fold_detail_is_paged(airflow_app: dict[str, Any], seeded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_sweep.ui import app as ui_app

    monkeypatch.setattr(ui_app, "FOLD_PAGE_ROWS", 3)  # base_features BTC: 2 costs x 2 folds = 4 rows
    base = "/folds?factor=base_features&crypto=BTC"

    first = _get(airflow_app, _url(AIRFLOW_RUN, base)).text
    second = _get(airflow_app, _url(AIRFLOW_RUN, base + "&page=2")).text

    def fold_rows(html: str) -> int:
        return html.split('id="folds"')[1].split("</table>")[0].count("<tr>") - 1  # less the header

    assert fold_rows(first) == 3 and fold_rows(second) == 1
    assert 'href="folds?factor=base_features&amp;crypto=BTC&amp;page=2" rel="next"' in first
    assert 'rel="prev"' in second and 'rel="next"' not in second


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_downloads_state_their_row_cap(
    airflow_app: dict[str, Any], seeded: str, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    from finetune_sweep.ui import app as ui_app

    full = _get(airflow_app, _url(AIRFLOW_RUN, f"/folds.{fmt}"))
    monkeypatch.setattr(ui_app, "DOWNLOAD_ROW_CAP", 5)
    capped = _get(airflow_app, _url(AIRFLOW_RUN, f"/folds.{fmt}"))

    assert (full.headers["x-finetune-rows"], full.headers["x-finetune-truncated"]) == ("16", "false")
    assert capped.headers["x-finetune-row-cap"] == "5"
    assert (capped.headers["x-finetune-rows"], capped.headers["x-finetune-rows-total"]) == ("5", "16")
    assert capped.headers["x-finetune-truncated"] == "true"
    if fmt == "json":
        assert full.json()[:5] == capped.json()
    else:
        assert full.text.split("\r\n")[:6] == capped.text.split("\r\n")[:6] and capped.text.count("\r\n") == 6
