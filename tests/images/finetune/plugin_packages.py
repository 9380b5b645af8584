"""Throw-away plug-in packages for the tests: a module and a ``*.dist-info`` with its entry points
in a folder put on ``sys.path`` (and ``PYTHONPATH`` for a pod subprocess), which is all that
``importlib.metadata.entry_points`` reads. :func:`finetune.plugins.installed` is cleared around
each use, so that the discovery really runs.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from finetune import plugins

# Factors and models whose bodies the tests choose by name (module ``test_plugins_pkg``).
SOURCE = '''
import numpy as np
import pandas as pd


def range_factor(bars, market):
    """A well-behaved factor: log range and its 24-bar mean (23 warm-up rows)."""
    log_range = np.log(bars["high"] / bars["low"])
    return pd.DataFrame({"log_range": log_range, "range_24": log_range.rolling(24).mean()}, index=bars.index)


def raises(bars, market):
    raise RuntimeError("the team's factor broke\\nsecond line")


def short(bars, market):
    return range_factor(bars, market).iloc[:-1]


def other_index(bars, market):
    frame = range_factor(bars, market)
    frame.index = frame.index + pd.Timedelta(hours=1)
    return frame


def not_float(bars, market):
    return pd.DataFrame({"up": bars["close"] > bars["open"]}, index=bars.index)


def late_nan(bars, market):
    frame = range_factor(bars, market)
    frame.iloc[100, 0] = np.nan
    return frame


def late_inf(bars, market):
    """Finite on the first years (the warm-up probe's prefix), inf in the last week before as-of."""
    frame = range_factor(bars, market)
    frame.loc[frame.index >= "2026-06-01", "range_24"] = np.inf
    return frame


class _Fitted:
    def __init__(self, positions):
        self._positions = positions
        self.hyperparams = {"kind": "test"}

    def positions(self, features):
        return self._positions(len(features))


class AlwaysLong:
    def fit(self, features, labels):
        return _Fitted(lambda n: np.ones(n))


class WrongLength:
    def fit(self, features, labels):
        return _Fitted(lambda n: np.ones(n + 1))


class NotZeroOne:
    def fit(self, features, labels):
        return _Fitted(lambda n: np.full(n, 0.5))


class FitRaises:
    def fit(self, features, labels, *, hold_bars):
        raise np.linalg.LinAlgError(f"singular matrix (hold_bars {hold_bars})")


class RaisesOnSecondFit:
    """Fits once, then raises: in one process, the first fold's keys commit before the failure."""

    calls = 0

    def fit(self, features, labels, **context):
        RaisesOnSecondFit.calls += 1
        if RaisesOnSecondFit.calls > 1:
            raise ValueError("second fit refused")
        return _Fitted(lambda n: np.ones(n))
'''

FACTORS = ("range_factor", "raises", "short", "other_index", "not_float", "late_nan", "late_inf")
MODELS = ("AlwaysLong", "WrongLength", "NotZeroOne", "FitRaises", "RaisesOnSecondFit")


def write_package(
    folder: Path,
    *,
    factors: Mapping[str, str] | None = None,
    models: Mapping[str, str] | None = None,
    source: str = SOURCE,
) -> Path:
    """``folder`` holding module ``test_plugins_pkg`` and its dist-info; returns ``folder``.

    :param factors: entry point name -> value (default: every factor of :data:`SOURCE` as
        ``test_<name>``); likewise ``models``.
    """
    factors = {f"test_{name}": f"test_plugins_pkg:{name}" for name in FACTORS} if factors is None else factors
    models = {f"test_{name.lower()}": f"test_plugins_pkg:{name}" for name in MODELS} if models is None else models
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_plugins_pkg.py").write_text(textwrap.dedent(source))
    info = folder / "test_plugins_pkg-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugins-pkg\nVersion: 0.0.1\n")
    lines = ["[finetune.factors]", *(f"{k} = {v}" for k, v in factors.items()), ""]
    lines += ["[finetune.models]", *(f"{k} = {v}" for k, v in models.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return folder


@contextmanager
def on_path(folder: Path) -> Iterator[Path]:
    """``folder`` on ``sys.path`` and the plug-in discovery re-run, both undone afterwards."""
    sys.path.insert(0, str(folder))
    plugins.installed.cache_clear()
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("test_plugins_pkg", None)
        plugins.installed.cache_clear()
