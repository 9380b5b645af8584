"""No module of the pod package reads the wall clock: folds and windows come from as-of alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "images" / "finetune" / "finetune"

# (object, attribute) pairs that read the current time; perf_counter / monotonic only measure
# durations and stay allowed.
FORBIDDEN = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "localtime"),
    ("time", "gmtime"),
    ("Timestamp", "now"),
    ("Timestamp", "today"),
    ("Timestamp", "utcnow"),
}
# No exception: not even event lines carry a wall-clock stamp (the task log timestamps them).
ALLOWED: dict[str, list[str]] = {}
FORBIDDEN_IMPORTS = {("time", "time"), ("time", "time_ns"), ("time", "localtime"), ("time", "gmtime")}


def _leaf(node: ast.expr) -> str | None:
    """The last name of ``a.b.c`` (``c``) or a bare name."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def wall_clock_uses(source: str) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (_leaf(node.value), node.attr) in FORBIDDEN:
            uses.append(f"line {node.lineno}: {_leaf(node.value)}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module.split(".")[-1], alias.name) in FORBIDDEN_IMPORTS:
                    uses.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        # pd.Timestamp("now") / pd.to_datetime("today") read the clock through a string
        if isinstance(node, ast.Call) and _leaf(node.func) in {"Timestamp", "to_datetime", "Datetime64", "datetime64"}:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and str(arg.value).lower() in {"now", "today"}:
                    uses.append(f"line {node.lineno}: {_leaf(node.func)}({arg.value!r})")
    return uses


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("import datetime\ndatetime.datetime.now()", 1, id="datetime.now"),
        pytest.param("from datetime import datetime\ndatetime.utcnow()", 1, id="utcnow"),
        pytest.param("from datetime import date\ndate.today()", 1, id="date.today"),
        pytest.param("import time\ntime.time()", 1, id="time.time"),
        pytest.param("from time import time", 1, id="from-time-import-time"),
        pytest.param("import pandas as pd\npd.Timestamp.now(tz='UTC')", 1, id="Timestamp.now"),
        pytest.param("import pandas as pd\npd.Timestamp('now')", 1, id="Timestamp-now-string"),
        pytest.param("import time\ntime.perf_counter(); time.monotonic()", 0, id="durations-allowed"),
        pytest.param("import pandas as pd\npd.Timestamp('2026-06-07')", 0, id="fixed-timestamp-allowed"),
    ],
)
def test_the_scanner_sees_clock_reads(source, expected):
    assert len(wall_clock_uses(source)) == expected


def test_the_package_never_reads_the_wall_clock():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 6  # the scan really looks at the package
    found = {path.name: [use.split(": ", 1)[1] for use in wall_clock_uses(path.read_text())] for path in files}
    assert {name: uses for name, uses in found.items() if uses and uses != ALLOWED.get(name, [])} == {}
