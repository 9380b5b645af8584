"""The plugin's FastAPI app: the run tab, the DAG tab, per-fold detail, downloads and static assets.

Airflow does not protect plugin apps: every page and data route depends on
``requires_access_dag("GET", DagAccessEntity.RUN)``, which reads the DAG id from the path
(anonymous: 401, a user without access to that DAG: 403), and then on the DAG being one of this
Airflow's (``~``, Airflow's "every DAG", is not): each DAG's pages show its own runs only, never a
run registered by hand (``dag_id`` NULL) nor another DAG's attempts. The static assets hold no data and
need an authenticated user only. The tab is a same-origin iframe that carries Airflow's session
cookie, so the same checks apply to the browser.

Links are relative (``../../../static/...``): the app works under any mount prefix and any
``[api] base_url``.

Every response carries a Content-Security-Policy that allows only this app's own scripts (the
pages have no inline script: chart data travels as ``application/json``), ``nosniff``, and, but for
the static assets, ``Cache-Control: no-store``: results are not left in shared or disk caches.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus, urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import get_user, requires_access_dag
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from finetune_sweep.db.attempts import read_history
from finetune_sweep.db.connect import NotMigrated
from finetune_sweep.db.dsn import dsn_from_connection, redact
from finetune_sweep.settings import get_settings, sizing_overrides, sizing_policy
from finetune_sweep.sizing.profiles import SizingError, load_profiles, load_sizing
from finetune_sweep.sizing.quantities import format_bytes
from finetune_sweep.sizing.recommend import describe_window, recommend
from finetune_sweep.ui import charts, queries
from finetune_sweep.ui.airflow_runs import AirflowRun, dag_exists, expected_finetune_run_id, find_airflow_run

HERE = Path(__file__).resolve().parent


def _known_dag(dag_id: str) -> None:
    """Refuse a path DAG id that names no DAG of this Airflow, before anything is read.

    ``requires_access_dag`` takes ``~`` for "every DAG" (and a user who may read them all passes),
    and a finetune run is shown only under the DAG that made it: a run registered by hand
    (``dag_id`` NULL) is shown under no DAG at all (the CLI and the report still read it).
    """
    if "\x00" in dag_id or not dag_exists(dag_id):
        raise PageError(404, "Unknown DAG", f"no DAG {dag_id!r} in this Airflow")


# Authentication first: an anonymous request learns nothing, not even which DAGs exist.
READ_RUN = [Depends(requires_access_dag("GET", DagAccessEntity.RUN)), Depends(_known_dag)]
LOG = logging.getLogger(__name__)

# plotly draws with inline styles (hence 'unsafe-inline' for styles only) and data: images for its
# toolbar icons; the tab is an iframe of Airflow's own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'"
)
# What a viewer reads when the finetune database cannot be reached; host, port, database and the
# driver's message go to the api-server's log only.
UNAVAILABLE = "the results database is unavailable"
# The fold page shows this many rows at a time (about 0.4 KB of HTML each: well under 1 MB).
FOLD_PAGE_ROWS = 1000
# A download holds at most this many rows (a 60,000-key run's folds fit); the response says so.
DOWNLOAD_ROW_CAP = 250_000
STREAM_BATCH_ROWS = 2000
# A spreadsheet evaluates a text cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# Columns of the downloads, in order (the tables show the same rows).
GROUP_COLUMNS = (
    "factor",
    "crypto",
    "cost_bps",
    "slippage_bps",
    "folds",
    "model",
    "buy_and_hold",
    "random",
    "random_p05",
    "random_p95",
    "naive",
    "percentile",
    "random_percentile",
    "exposure",
    "folds_won",
    "missing_baselines",
)
FOLD_COLUMNS = (
    "factor",
    "crypto",
    "cost_bps",
    "slippage_bps",
    "fold_id",
    "variant",
    "test_start",
    "test_end",
    "n_bars",
    "n_filled_bars",
    "model",
    "sharpe",
    "max_drawdown",
    "n_trades",
    "exposure",
    "percentile",
    "random_percentile",
    "perm_p_value",
    "perm_n_shifts",
    "profit_p_value",
    "profit_vs_buy_and_hold_p_value",
    "buy_and_hold",
    "random",
    "random_p05",
    "random_p50",
    "random_p95",
    "random_std",
    "n_seeds",
    "naive",
    "won",
)


class PageError(Exception):
    """A page that cannot be shown: its status and one line that says why (never a traceback)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _static_files() -> dict[str, Path]:
    """The assets the pages load: ours, and plotly.js from the plotly wheel (no CDN)."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    files = {
        "finetune_ui.js": HERE / "static" / "finetune_ui.js",
        "finetune_ui.css": HERE / "static" / "finetune_ui.css",
    }
    if spec is not None and spec.submodule_search_locations:
        files["plotly.min.js"] = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return files


# --------------------------------------------------------------------------- formatting


def _percent(value: Any, digits: int = 2, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):{'+' if signed else ''}.{digits}%}"


def _bytes(value: Any) -> str:
    return "–" if value is None else format_bytes(value)


def _sort_key(value: Any) -> str:
    """``data-sort`` of a cell: numbers sort numerically, missing values last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_percent, size=_bytes, sortkey=_sort_key, seg=lambda s: quote(str(s), safe=""))
    env.globals.update(json_for_script=_json_for_script)
    return env


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    # JSON has no NaN: a missing number is null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _row_json(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    return json.dumps({c: _clean(row.get(c)) for c in columns}, default=_json_default)


def _json_for_script(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    text = json.dumps(value, default=_json_default, allow_nan=False) if value is not None else "null"
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csv_cell(value: Any) -> Any:
    value = _clean(value)
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        # OWASP's neutralisation: a leading quote makes the cell text. Only text cells: a negative
        # number is written by Python as a number, which no spreadsheet evaluates.
        return "'" + value
    return _json_default(value) if isinstance(value, (datetime, date, Decimal)) else value


def _csv_chunks(rows: Iterator[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    """A CSV of ``rows``, :data:`STREAM_BATCH_ROWS` lines a chunk."""
    out = io.StringIO()
    # RFC 4180 line ends; with CR in the terminator the writer also quotes a cell holding a bare CR
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for n, row in enumerate(rows, 1):
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
        if n % STREAM_BATCH_ROWS == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _json_chunks(rows: Iterator[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    """A JSON array of ``rows`` (one object each), :data:`STREAM_BATCH_ROWS` rows a chunk."""
    chunk = ["["]
    for n, row in enumerate(rows):
        chunk.append(("," if n else "") + _row_json(row, columns))
        if len(chunk) >= STREAM_BATCH_ROWS:
            yield "".join(chunk)
            chunk = []
    chunk.append("]")
    yield "".join(chunk)


def _stream(dsn: str, table: str, run_id: str, columns: Sequence[str], fmt: str) -> Iterator[bytes]:
    """The download's body, a batch of rows at a time from a server-side cursor (memory: one batch)."""
    with queries.connect(dsn) as conn:
        rows = queries.stream_rows(conn, table, run_id, cap=DOWNLOAD_ROW_CAP, batch=STREAM_BATCH_ROWS)
        for chunk in (_csv_chunks if fmt == "csv" else _json_chunks)(rows, columns):
            yield chunk.encode()


def _for_chart(value: Any) -> Any:
    if isinstance(value, list):
        return [_for_chart(v) for v in value]
    if isinstance(value, dict):
        return {k: _for_chart(v) for k, v in value.items()}
    return _clean(value)


# --------------------------------------------------------------------------- data access


def _dsn() -> str:
    conn_id = get_settings().conn_id
    try:
        return dsn_from_connection(conn_id)
    except Exception as err:  # noqa: BLE001 - Airflow raises its own "not defined" types across versions
        LOG.warning("finetune results: the Airflow connection %r is not available (%s)", conn_id, type(err).__name__)
        raise PageError(503, "Finetune database unavailable", UNAVAILABLE) from None


class _Database:
    """The finetune database of one request: its DSN and a pooled connection; a failure is a 503 page."""

    def __init__(self) -> None:
        self.dsn = _dsn()
        self.conn: Any = None
        self._lease: Any = None

    def __enter__(self) -> _Database:
        import psycopg

        try:
            self._lease = queries.connect(self.dsn)
            self.conn = self._lease.__enter__()
        except psycopg.Error as err:
            self._unavailable(err)
        return self

    def __exit__(self, kind: Any, err: Any, trace: Any) -> bool:
        import psycopg

        self._lease.__exit__(None, None, None)  # back to the pool (reset) whatever happened
        if isinstance(err, psycopg.OperationalError):
            self._unavailable(err)
        if isinstance(err, psycopg.DataError):
            # a value from the URL the database cannot hold (the routes check the known ones first)
            raise PageError(400, "Bad request", (str(err).strip().splitlines() or ["invalid value"])[0]) from None
        return False

    def _unavailable(self, err: Exception) -> None:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        LOG.warning("finetune results: %s", redact(first_line, [self.dsn]))
        raise PageError(503, "Finetune database unavailable", UNAVAILABLE) from None


class _Resolved:
    """An Airflow run id resolved to its finetune run (or to the reason why there is none)."""

    def __init__(self, *, dag_id: str, airflow_run_id: str, run_id: str | None, airflow_run: AirflowRun | None):
        self.dag_id = dag_id
        self.airflow_run_id = airflow_run_id
        self.run_id = run_id
        self.airflow_run = airflow_run


def _resolve(conn: Any, dag_id: str, airflow_run_id: str) -> _Resolved:
    if "\x00" in dag_id + airflow_run_id:  # no such id can exist (PostgreSQL text holds no NUL)
        raise PageError(404, "Unknown run", f"no run {airflow_run_id!r} of DAG {dag_id!r}")
    airflow_run = find_airflow_run(dag_id, airflow_run_id)
    candidates = []
    if airflow_run is not None and (expected := expected_finetune_run_id(airflow_run)):
        candidates.append(expected)
    run_id = None
    if queries.has_finetune_tables(conn):
        run_id = queries.resolve_run_id(conn, dag_id=dag_id, airflow_run_id=airflow_run_id, candidates=candidates)
    if run_id is None and airflow_run is None:
        raise PageError(
            404,
            "Unknown run",
            f"no run {airflow_run_id!r} of DAG {dag_id!r}: neither Airflow nor the finetune database knows it",
        )
    return _Resolved(dag_id=dag_id, airflow_run_id=airflow_run_id, run_id=run_id, airflow_run=airflow_run)


def _require_run(resolved: _Resolved) -> str:
    if resolved.run_id is None:
        raise PageError(
            404,
            "No finetune run",
            f"the Airflow run {resolved.airflow_run_id!r} has no finetune run: it stopped before `register`",
        )
    return resolved.run_id


@lru_cache(maxsize=1024)
def _quoted(value: Any) -> str:
    return quote_plus(str(value))


def _folds_query(factor: str, crypto: str, cost_bps: int, slippage_bps: int) -> str:
    """``folds?factor=...`` of one group; a run's few factors and cryptos are quoted once each
    (``urlencode`` on each of 2,000 rows was a third of the run tab's rendering)."""
    return (
        f"folds?factor={_quoted(factor)}&crypto={_quoted(crypto)}&cost_bps={_quoted(cost_bps)}"
        f"&slippage_bps={_quoted(slippage_bps)}"
    )


# Cost and slippage are PostgreSQL integers of bps.
MAX_BPS = 2**31 - 1


def _int_or_none(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise PageError(
            400, "Bad request", f"{name}={value!r} is not an integer; allowed: a whole number of bps"
        ) from None
    if not 0 <= number <= MAX_BPS:
        raise PageError(400, "Bad request", f"{name}={value!r} is out of range; allowed: 0 to {MAX_BPS} bps")
    return number


def _text_or_none(value: str | None, name: str) -> str | None:
    """A text filter as given; PostgreSQL text cannot hold NUL, so such a value is refused here."""
    if value is not None and "\x00" in value:
        raise PageError(400, "Bad request", f"{name}={value!r} contains a NUL character; allowed: text without NUL")
    return value


# --------------------------------------------------------------------------- app


class SecurityHeaders:
    """ASGI middleware: the policy headers on every response (see the module docstring).

    Plain ASGI rather than ``BaseHTTPMiddleware``: a streamed download passes through unbuffered.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
                # the static assets set their own (private) caching; everything else holds results
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app() -> FastAPI:
    """The plugin's FastAPI app (mounted at ``/finetune`` by the plugin)."""
    app = FastAPI(title="finetune sweep results", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    env = _environment()
    static = _static_files()

    def page_response(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, err: PageError) -> Response:  # noqa: ARG001
        depth = request.url.path.rstrip("/").count("/") - request.scope.get("root_path", "").rstrip("/").count("/")
        return page_response(
            "message.html",
            status=err.status,
            title=err.title,
            message=err.message,
            static="../" * max(depth - 1, 0) + "static/",
        )

    @app.get("/static/{name}", dependencies=[Depends(get_user)])
    def static_file(name: str) -> Response:
        path = static.get(name)
        if path is None or not path.is_file():
            raise PageError(404, "Not found", f"no static file {name!r}")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/dags/{dag_id}/runs/{airflow_run_id}", dependencies=READ_RUN, response_class=HTMLResponse)
    def run_tab(dag_id: str, airflow_run_id: str) -> Response:
        with _Database() as db:
            resolved = _resolve(db.conn, dag_id, airflow_run_id)
            linked = queries.airflow_runs_of(db.conn, resolved.run_id) if resolved.run_id else []
            data = (
                queries.fetch_run_page(db.dsn, resolved.run_id, airflow_run_id=airflow_run_id, conn=db.conn)
                if resolved.run_id
                else None
            )
        base = "./" + quote(airflow_run_id, safe="") + "/"
        if data is None:
            return page_response(
                "not_registered.html",
                dag_id=dag_id,
                airflow_run_id=airflow_run_id,
                airflow_run=resolved.airflow_run,
                static="../../../static/",
            )
        return page_response(
            "run.html",
            dag_id=dag_id,
            airflow_run_id=airflow_run_id,
            airflow_run=resolved.airflow_run,
            linked=linked,
            data=data,
            curves=_for_chart(charts.cost_curves(data.groups)),
            with_charts=True,
            base=base,
            folds_link=lambda row: (
                base + _folds_query(row["factor"], row["crypto"], row["cost_bps"], row["slippage_bps"])
            ),
            static="../../../static/",
        )

    @app.get("/dags/{dag_id}/runs/{airflow_run_id}/folds", dependencies=READ_RUN, response_class=HTMLResponse)
    def folds_page(
        dag_id: str,
        airflow_run_id: str,
        factor: str | None = None,
        crypto: str | None = None,
        cost_bps: str | None = None,
        slippage_bps: str | None = None,
        page: str | None = None,
    ) -> Response:
        cost, slip = _int_or_none(cost_bps, "cost_bps"), _int_or_none(slippage_bps, "slippage_bps")
        factor, crypto = _text_or_none(factor, "factor"), _text_or_none(crypto, "crypto")
        if not factor or not crypto:
            # a whole run's folds were a 40 MB page; the downloads carry them all
            raise PageError(
                400,
                "Bad request",
                "the fold detail needs factor and crypto (a group's link from the run tab); "
                "the whole run's folds are in folds.csv / folds.json",
            )
        number = _int_or_none(page, "page") or 1
        with _Database() as db:
            run_id = _require_run(_resolve(db.conn, dag_id, airflow_run_id))
            # one row more than a page tells whether a next page exists
            rows = queries.fetch_folds(
                db.conn,
                run_id,
                factor=factor,
                crypto=crypto,
                cost_bps=cost,
                slippage_bps=slip,
                limit=FOLD_PAGE_ROWS + 1,
                offset=(number - 1) * FOLD_PAGE_ROWS,
            )
        selection = {"factor": factor, "crypto": crypto, "cost_bps": cost, "slippage_bps": slip}
        query = "folds?" + urlencode({k: v for k, v in selection.items() if v is not None})
        return page_response(
            "folds.html",
            dag_id=dag_id,
            airflow_run_id=airflow_run_id,
            run_id=run_id,
            rows=rows[:FOLD_PAGE_ROWS],
            selection=selection,
            page_number=number,
            previous_page=f"{query}&page={number - 1}" if number > 1 else None,
            next_page=f"{query}&page={number + 1}" if len(rows) > FOLD_PAGE_ROWS else None,
            page_rows=FOLD_PAGE_ROWS,
            back="../" + quote(airflow_run_id, safe=""),
            static="../../../../static/",
        )

    @app.get("/dags/{dag_id}/runs/{airflow_run_id}/{table}.{fmt}", dependencies=READ_RUN)
    def download(
        dag_id: str, airflow_run_id: str, table: Literal["rows", "folds"], fmt: Literal["csv", "json"]
    ) -> Response:
        # Resolved and counted on a connection of its own, so that a missing run or a database
        # that is down is still a page; the rows then stream on another (see _stream).
        with _Database() as db:
            run_id = _require_run(_resolve(db.conn, dag_id, airflow_run_id))
            total = queries.count_rows(db.conn, table, run_id)
        columns = GROUP_COLUMNS if table == "rows" else FOLD_COLUMNS
        # The file is named by the finetune run (what a notebook joins on); ':' is not portable.
        filename = f"{run_id.replace(':', '-')}_{table}.{fmt}"
        return StreamingResponse(
            _stream(db.dsn, table, run_id, columns, fmt),
            media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
            headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
                # the cap and whether it cut this download: a reader can tell a partial file
                "X-Finetune-Row-Cap": str(DOWNLOAD_ROW_CAP),
                "X-Finetune-Rows": str(min(total, DOWNLOAD_ROW_CAP)),
                "X-Finetune-Rows-Total": str(total),
                "X-Finetune-Truncated": "true" if total > DOWNLOAD_ROW_CAP else "false",
            },
        )

    @app.get("/dags/{dag_id}", dependencies=READ_RUN, response_class=HTMLResponse)
    def dag_tab(dag_id: str) -> Response:
        with _Database() as db:
            history = queries.fetch_history(db.conn, dag_id) if queries.has_finetune_tables(db.conn) else []
            if not history:
                raise PageError(404, "No sweep history", f"no finetune runs of DAG {dag_id!r} in the finetune database")
            profiles_json, sizing_json = sizing_overrides()
            # The same advice as the report's: the recommender's window of recorded attempts.
            policy = sizing_policy()
            window = describe_window(history_runs=policy.history_runs, history_days=policy.history_days)
            try:
                # this DAG's runs only: another DAG's attempts are not its viewers' to see
                attempts = read_history(
                    db.conn, history_runs=policy.history_runs, history_days=policy.history_days, dag_id=dag_id
                )
                recommendations = recommend(attempts, load_sizing(sizing_json), load_profiles(profiles_json))
            except (SizingError, NotMigrated) as err:
                recommendations, advice_error = [], str(err)
            else:
                advice_error = None
        runs = sorted({(row["as_of"], row["run_id"]) for row in history}, reverse=True)
        return page_response(
            "dag.html",
            dag_id=dag_id,
            history=history,
            runs=runs,
            charts=_for_chart(charts.history_charts(history)),
            with_charts=True,
            recommendations=recommendations,
            advice_error=advice_error,
            advice_window=window,
            run_base="./" + quote(dag_id, safe="") + "/runs/",
            static="../static/",
        )

    return app
