"""Manual UI acceptance: trigger `finetune_sweep` through the Airflow 3 trigger form, in a real browser.

NOT part of `make test`. It starts a real local deployment (api-server, scheduler with
``--skip-serve-logs``, dag-processor; LocalExecutor on a throw-away SQLite metadata database under
``.demo/ui/airflow-home``, the simple auth manager with every user an admin, everything bound to
127.0.0.1), then drives the UI in Debian's chromium through Playwright:

1. opens the DAG's trigger form and screenshots it with its defaults (``.demo/ui/trigger_form.png``);
2. fills the form with an injection string as the crypto symbol and triggers: the trigger must be
   refused naming ``cryptos`` and create no run (``trigger_refused.png``);
3. corrects it to a small valid conf (one factor, one crypto, two folds, one cost level;
   ``trigger_form_filled.png``) and triggers;
4. waits (bounded, ``--timeout`` seconds, default 900) for the run to finish, screenshots the grid
   (``.demo/ui/grid.png``) and prints the final state of the run and of each task;
5. opens the run's "Sweep results" tab (the UI plugin), waits for its table and chart, and
   screenshots it (``.demo/ui/run_tab.png``);
6. stops every process it started (their process groups), also on failure or Ctrl-C.

Requirements:

* ``FINETUNE_DB_URL`` (required): a PostgreSQL database the sweep may write to, e.g.
  ``psql -h 127.0.0.1 -U postgres -d test -c 'create database ui_accept'`` then
  ``FINETUNE_DB_URL=postgresql://postgres@127.0.0.1:5432/ui_accept``. It becomes the
  ``finetune_db`` connection; the pods run locally (``FINETUNE_POD_BACKEND=local``).
* Debian's chromium: ``apt-get update && apt-get install -y chromium`` (``/usr/bin/chromium``;
  ``--chromium PATH`` for another one). Never ``playwright install``: the browser is the system's.
* The Playwright Python package (in requirements.txt; ``make venv`` installs it).

Run: ``FINETUNE_DB_URL=... .venv/bin/python scripts/ui_acceptance.py`` (exit 0 when the run
succeeded). ``--keep`` leaves the deployment up after the run until Ctrl-C (to look around at the
printed URL).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import ProxyHandler, Request, build_opener

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / ".demo" / "ui"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "finetune_sweep"
sys.path[:0] = [str(REPO_ROOT / "plugins")]

from finetune_sweep.db.dsn import connection_json_from_dsn, redact_dsn  # noqa: E402
from finetune_sweep.ui import RUN_TAB_ROUTE  # noqa: E402
from local_airflow import free_port, local_airflow_env, stop_process_group  # noqa: E402

# Requests to 127.0.0.1 never go through a proxy from the environment.
LOCAL = build_opener(ProxyHandler({}))
# What the form submits: small enough for a couple of minutes on 2 cores.
UI_CONF: dict[str, Any] = {
    "factors": ["base_features"],
    "cryptos": ["BTC"],
    "cost_bps": [10],
    "slippage_bps": [0],
    "n_folds": 2,
    "n_seeds": 20,
    "hold_bars": 24,
    "train_bars": 24 * 60,
    "test_bars": 24 * 7,
}
# Refused at trigger time by the param's pattern (and never reaches a pod or the database).
BAD_SYMBOL = "BTC'; DROP TABLE x;--"
# Local pods: the cluster profiles (8-24 GiB) capped for a laptop.
LOCAL_PROFILES = {"STANDARD": {"memory": "1536Mi"}, "MEDIUM": {"memory": "2Gi"}, "HEAVY": {"memory": "3Gi"}}
# Chromium as root in a container: no sandbox, no GPU, /tmp instead of a small /dev/shm.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def log(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def deployment_settings(port: int) -> dict[str, str]:
    """A login-free local deployment on 127.0.0.1:``port`` (LocalExecutor; manual runs only)."""
    base_url = f"http://127.0.0.1:{port}"
    return {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__BASE_URL": base_url,
        # Task processes report to this api-server's execution API (default: localhost:8080).
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        # Manual runs only: no scheduled @weekly run, which would run the full default sweep
        # and, with max_active_runs=1, block a triggered one.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "FINETUNE_RETRY_DELAY_SECONDS": "1",
    }


def airflow_env(home: Path, port: int, dsn: str) -> dict[str, str]:
    env = local_airflow_env(home)
    env.update(deployment_settings(port))
    env.update(
        # unpaused, so that the triggered run starts
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW_CONN_FINETUNE_DB=connection_json_from_dsn(dsn),
        FINETUNE_POD_BACKEND="local",
        FINETUNE_PROFILES=json.dumps(LOCAL_PROFILES),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "plugins"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


class Deployment:
    """api-server + scheduler + dag-processor, each in its own process group, logs under OUT_DIR."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env = env
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def start(self, name: str, args: list[str]) -> None:
        out = (OUT_DIR / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        log(f"started {name} (pid {self.procs[name].pid}), log {OUT_DIR / (name + '.log')}")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(OUT_DIR / (name + '.log'))}")

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is not None:
                continue
            stop_process_group(proc, grace=30)
            log(f"stopped {name} (exit {proc.returncode})")

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with LOCAL.open(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, _ = self.api("GET", "/api/v2/monitor/health")
                if status == 200:
                    break
            except (URLError, OSError):
                pass
            time.sleep(1)
        else:
            raise TimeoutError(f"api-server not answering after {timeout} s:\n{tail(OUT_DIR / 'api-server.log')}")
        status, body = self.api("GET", "/auth/token")
        if status != 201:
            raise RuntimeError(f"GET /auth/token: {status} {body}")
        self.token = body["access_token"]
        while time.monotonic() < deadline:
            self.check_alive()
            status, body = self.api("GET", f"/api/v2/dags/{DAG_ID}")
            if status == 200:
                log(f"{DAG_ID} is serialised (paused: {body['is_paused']})")
                return
            time.sleep(2)
        raise TimeoutError(f"{DAG_ID} not parsed after {timeout} s:\n{tail(OUT_DIR / 'dag-processor.log')}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"<no log: {err}>"


def _set_json_editor(page: Any, param: str, value: Any) -> None:
    """Replace the content of an array param's JSON (Monaco) editor."""
    editor = page.locator(f"#element_{param} .monaco-editor")
    editor.wait_for(timeout=30_000)
    editor.locator(".view-lines").click()
    page.keyboard.press("Control+a")
    # Paste over the selection, as a user would: one edit. (Typed keys fight the editor: the form
    # re-formats the JSON after each keystroke that parses, and Monaco auto-closes brackets.)
    editor.locator("textarea").evaluate(
        """(area, text) => {
            const data = new DataTransfer();
            data.setData("text/plain", text);
            area.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        json.dumps(value),
    )
    page.wait_for_timeout(500)
    text = editor.locator(".view-lines").inner_text().replace("\u00a0", " ")
    if json.loads(text) != value:
        raise RuntimeError(f"the {param} editor holds {text!r}, wanted {json.dumps(value)}")


def fill_form(page: Any, conf: dict[str, Any]) -> None:
    """Fill the trigger form's Run Parameters the way a user would."""
    dialog = page.get_by_role("dialog")
    # Factors: a multi-select (pick list); clear it, then pick each factor.
    dialog.locator('button[aria-label="Clear selected options"]').click()
    picker = dialog.locator('input[aria-label="Select one or multiple values"]')
    for factor in conf["factors"]:
        picker.click()
        picker.fill(factor)
        page.get_by_role("option", name=factor, exact=True).click()
    chosen = dialog.locator("input[type=hidden][name=element_factors]").evaluate_all("els => els.map(e => e.value)")
    if chosen != conf["factors"]:
        raise RuntimeError(f"the factors multi-select holds {chosen}, wanted {conf['factors']}")
    # Cryptos: a textarea, one symbol per line.
    dialog.locator("#element_cryptos").fill("\n".join(conf["cryptos"]))
    # Integer arrays: JSON editors.
    _set_json_editor(page, "cost_bps", conf["cost_bps"])
    _set_json_editor(page, "slippage_bps", conf["slippage_bps"])
    # Integers: number inputs.
    for name in ("n_folds", "n_seeds", "hold_bars", "train_bars", "test_bars"):
        field = dialog.locator(f"input[name=element_{name}]")
        field.fill(str(conf[name]))
        field.press("Tab")


def drive(deployment: Deployment, args: argparse.Namespace) -> bool:
    """Screenshot the form, trigger through it, wait for the run, screenshot the grid."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            # Tall enough for the whole trigger dialog in one screenshot.
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(60_000)
            page.goto(f"{deployment.base_url}/dags/{DAG_ID}", wait_until="networkidle", timeout=120_000)
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Run Parameters").wait_for()
            page.locator("#element_cost_bps .monaco-editor").wait_for()
            page.wait_for_timeout(1000)
            form_png = OUT_DIR / "trigger_form.png"
            page.screenshot(path=str(form_png), full_page=True)
            log(f"trigger form (defaults): {form_png}")

            status, body = deployment.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
            before = {run["dag_run_id"] for run in body["dag_runs"]} if status == 200 else set()
            submit = dialog.locator('[data-testid="trigger-dag-submit"]')

            # First a bad symbol: the trigger must be refused, naming the param, and create no run.
            fill_form(page, {**UI_CONF, "cryptos": [BAD_SYMBOL]})
            submit.click()
            refusal = dialog.get_by_text("Invalid input for param cryptos", exact=False)
            try:
                refusal.first.wait_for(timeout=30_000)
                log(f"bad symbol refused: {refusal.first.inner_text()[:200]!r}")
            except Exception:  # noqa: BLE001 - report what the form shows instead
                log("WARNING: no 'Invalid input for param cryptos' message shown for a bad symbol")
            refused_png = OUT_DIR / "trigger_refused.png"
            page.screenshot(path=str(refused_png), full_page=True)
            log(f"trigger form (bad symbol refused): {refused_png}")
            status, body = deployment.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
            if status == 200 and {r["dag_run_id"] for r in body["dag_runs"]} - before:
                raise RuntimeError("a run was created from a refused trigger")

            # Then the valid conf.
            dialog.locator("#element_cryptos").fill("\n".join(UI_CONF["cryptos"]))
            filled_png = OUT_DIR / "trigger_form_filled.png"
            page.screenshot(path=str(filled_png), full_page=True)
            log(f"trigger form (filled): {filled_png}")
            submit.click()

            run = None
            deadline = time.monotonic() + 60
            while run is None and time.monotonic() < deadline:
                status, body = deployment.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
                new = [r for r in body["dag_runs"] if r["dag_run_id"] not in before] if status == 200 else []
                run = new[0] if new else None
                if run is None:
                    time.sleep(1)
            if run is None:
                shot = OUT_DIR / "trigger_failed.png"
                page.screenshot(path=str(shot), full_page=True)
                raise RuntimeError(f"no run was created by the form; see {shot}")
            run_id = run["dag_run_id"]
            log(f"triggered {run_id} with conf {json.dumps(run['conf'])}")
            # The form submits every param (the untouched ones at their defaults).
            wrong = {k: run["conf"].get(k) for k, v in UI_CONF.items() if run["conf"].get(k) != v}
            if wrong:
                raise RuntimeError(f"the form submitted {wrong} instead of {UI_CONF}")

            state = run["state"]
            deadline = time.monotonic() + args.timeout
            while state not in ("success", "failed") and time.monotonic() < deadline:
                deployment.check_alive()
                time.sleep(5)
                status, run = deployment.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
                if status == 200 and run["state"] != state:
                    state = run["state"]
                    log(f"run state: {state}")
            page.goto(
                f"{deployment.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}",
                wait_until="networkidle",
                timeout=120_000,
            )
            page.set_viewport_size({"width": 1600, "height": 1000})
            page.wait_for_timeout(3000)
            grid_png = OUT_DIR / "grid.png"
            page.screenshot(path=str(grid_png), full_page=True)
            log(f"grid: {grid_png}")
            tab_ok = open_run_tab(page, deployment.base_url, run_id)
        finally:
            browser.close()

    tasks_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100"
    status, body = deployment.api("GET", tasks_path)
    if status == 200:
        for ti in sorted(body["task_instances"], key=lambda t: (t["start_date"] or "", t["map_index"])):
            where = f"[{ti['rendered_map_index'] or ti['map_index']}]" if ti["map_index"] >= 0 else ""
            print(f"  {ti['task_id']}{where}: {ti['state']} (try {ti['try_number']})")
    print(f"FINAL STATE of {run_id}: {state}")
    return state == "success" and tab_ok


def open_run_tab(page: Any, base_url: str, run_id: str) -> bool:
    """Open the run's "Sweep results" tab (the UI plugin), screenshot it, report what its frame shows."""
    url = f"{base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/{RUN_TAB_ROUTE}"
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    frame = page.frame_locator("iframe")
    try:
        frame.locator("#results tbody tr").first.wait_for(timeout=60_000)
        frame.locator(".chart .plot-container").first.wait_for(timeout=60_000)
    except Exception as err:  # noqa: BLE001 - the screenshot below shows what the tab shows instead
        log(f"the run tab did not show its table and chart: {type(err).__name__}")
        ok = False
    else:
        verdict = frame.locator("#verdict h2").inner_text()
        rows = frame.locator("#results tbody tr").count()
        log(f"run tab: {verdict}; {rows} row(s); {frame.locator('.chart .plot-container').count()} chart(s)")
        ok = True
    tab_png = OUT_DIR / "run_tab.png"
    page.screenshot(path=str(tab_png), full_page=True)
    log(f"run tab ({url}): {tab_png}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run (default 900)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary")
    parser.add_argument("--keep", action="store_true", help="leave the deployment up until Ctrl-C")
    args = parser.parse_args()

    dsn = os.environ.get("FINETUNE_DB_URL")
    if not dsn:
        print(
            "FINETUNE_DB_URL is required: a PostgreSQL database for the sweep, e.g. "
            "postgresql://postgres@127.0.0.1:5432/ui_accept",
            file=sys.stderr,
        )
        return 2
    if not Path(args.chromium).exists():
        print(f"no browser at {args.chromium}: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        print("the Playwright package is missing: make venv (it is in requirements.txt)", file=sys.stderr)
        return 2

    home = OUT_DIR / "airflow-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = free_port()
    env = airflow_env(home, port, dsn)
    log(f"finetune_db: {redact_dsn(dsn)}; AIRFLOW_HOME {home}")

    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    if migrate.returncode != 0:
        print(migrate.stdout[-3000:] + migrate.stderr[-3000:], file=sys.stderr)
        return 1
    log("metadata database migrated")

    deployment = Deployment(env, port)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        deployment.start("dag-processor", ["dag-processor"])
        deployment.start("scheduler", ["scheduler", "--skip-serve-logs"])
        deployment.start("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
        deployment.wait_ready(timeout=240)
        log(f"UI at {deployment.base_url}")
        ok = drive(deployment, args)
        if args.keep:
            log(f"--keep: the deployment stays up at {deployment.base_url}; Ctrl-C to stop")
            while True:
                deployment.check_alive()
                time.sleep(5)
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        deployment.stop()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
