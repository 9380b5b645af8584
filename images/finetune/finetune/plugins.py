"""Factors and models found through Python entry points (DESIGN 5, "Plug-ins").

Two groups, the built-ins registered in them like any team's package (``images/finetune/
pyproject.toml``):

- ``finetune.factors``: name -> ``build(bars, market) -> pandas.DataFrame``. ``bars`` is one
  symbol's frame (UTC ``DatetimeIndex``, float64 ``open high low close volume``; its symbol in
  ``bars.attrs["symbol"]``), ``market`` maps symbols of the data source to such frames (the run's
  cryptos when iterated; any other symbol of the source on look-up), for cross-asset factors. It
  returns float feature columns on ``bars.index``; its leading rows with any NaN are the warm-up
  and are dropped, and every later value must be finite. Each column may read only the bars at or
  before its row (a trailing computation): the warm-up is probed on a prefix of the bars.
- ``finetune.models``: name -> a factory (a class, or any callable without arguments) whose
  ``fit(features, labels)`` returns a fitted object with ``positions(features)`` (0/1 per row)
  and a ``hyperparams`` dict (JSON, stored on every row). ``features`` are float32 rows of the
  training window, ``labels`` the forward ``hold_bars`` log returns of those rows, built with the
  embargo of DESIGN 5 (the last label reads the close just before the test window). ``fit`` may
  also declare the keyword arguments ``close`` (the training rows' closes) and ``hold_bars``;
  it gets them when it does (the built-in ridge selects its hyperparameters with them).

:func:`installed` reads the entry points once per process (≈ 10 ms; ``benchmarks/bench_plugins.py``)
without importing them; a plug-in is imported when a run asks for it by name, so one that cannot
be imported fails that run with its name and the error, and hides no other plug-in.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from finetune.stopping import Terminated

FACTOR_GROUP = "finetune.factors"
MODEL_GROUP = "finetune.models"
DEFAULT_MODEL = "ridge_long_flat"
# The built-ins as images/finetune/pyproject.toml registers them (a test keeps the two equal), for
# where the package runs without its installed metadata: the image copies it to /app (PYTHONPATH)
# instead of installing it. An installed entry point of the same name comes first.
BUILTINS = {
    FACTOR_GROUP: {
        "base_features": "finetune.factors:BASE_FEATURES",
        "n_features": "finetune.factors:N_FEATURES",
        "btc_features": "finetune.factors:BTC_FEATURES",
        "l2_features": "finetune.factors:L2_FEATURES",
    },
    MODEL_GROUP: {DEFAULT_MODEL: "finetune.model:RidgeLongFlat"},
}
# The keyword arguments a model's fit may declare to receive (see the module docstring).
FIT_CONTEXT = ("close", "hold_bars")


class PluginError(ValueError):
    """A plug-in that cannot be used, or did something the interface forbids; the message is one
    line naming the plug-in (and the symbol and fold where it happened).

    A plain message (no other constructor argument), so that it crosses from a worker process to
    the pod's own with its text intact.
    """


class UnknownPluginError(PluginError):
    """A plug-in name that no installed package registers; the message lists the installed ones."""


@dataclass(frozen=True)
class Installed:
    """The entry points of both groups, by name (not imported)."""

    factors: Mapping[str, EntryPoint]
    models: Mapping[str, EntryPoint]


def _by_name(group: str) -> dict[str, EntryPoint]:
    # Two distributions registering one name: the first found wins, as importlib orders them
    # (sys.path order), which is how Python resolves the modules themselves.
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        found.setdefault(point.name, point)
    for name, value in BUILTINS[group].items():
        found.setdefault(name, EntryPoint(name, value, group))
    return found


@functools.cache
def installed() -> Installed:
    """The installed factors and models, read once per process."""
    return Installed(factors=_by_name(FACTOR_GROUP), models=_by_name(MODEL_GROUP))


def _load(kind: str, name: str, points: Mapping[str, EntryPoint], *, names: str) -> Any:
    """The object entry point ``name`` names, which must be callable (``names`` says as what)."""
    if name not in points:
        raise UnknownPluginError(
            f"unknown {kind} {name!r}; installed {kind}s: {', '.join(sorted(points)) or 'none'} "
            f"(entry point group finetune.{kind}s)"
        )
    try:
        loaded = points[name].load()
    except Exception as exc:  # any import-time failure of a team's package: reported, with its name
        raise PluginError(
            f"{kind} {name!r} ({points[name].value}) cannot be loaded: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    if not callable(loaded):
        raise PluginError(f"{kind} {name!r} ({points[name].value}) is not callable: it must name {names}")
    return loaded


def load_factor(name: str) -> Any:
    """The ``build`` of factor ``name``.

    :raises UnknownPluginError: no installed package registers it (the installed ones are named).
    :raises PluginError: its entry point cannot be imported, or it is not callable.
    """
    return _load("factor", name, installed().factors, names="build(bars, market)")


@dataclass(frozen=True)
class Model:
    """A model plug-in, loaded: its name (the rows' ``strategy``) and its factory."""

    name: str
    factory: Any

    def fit(self, features: np.ndarray, labels: np.ndarray, *, close: np.ndarray, hold_bars: int, where: str) -> Any:
        """A fitted model on the training rows, its ``hyperparams`` checked.

        :param where: e.g. ``BTC fold 2``, for the error message.
        :raises PluginError: the factory or fit raised, or the result lacks the interface.
        """
        context = {"close": close, "hold_bars": hold_bars}
        with plugin_code(f"model {self.name} on {where}", "fit"):
            estimator = self.factory()
            accepted = _keywords(estimator.fit)
            fitted = estimator.fit(features, labels, **{k: v for k, v in context.items() if k in accepted})
        hyperparams = getattr(fitted, "hyperparams", None)
        if not isinstance(hyperparams, Mapping) or not callable(getattr(fitted, "positions", None)):
            raise PluginError(
                f"model {self.name} on {where}: fit returned {type(fitted).__name__}, "
                "not an object with positions(features) and a hyperparams dict"
            )
        try:
            json.dumps(dict(hyperparams), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"model {self.name} on {where}: hyperparams are not JSON: {one_line(exc)}") from exc
        return fitted

    def positions(self, fitted: Any, features: np.ndarray, *, where: str) -> np.ndarray:
        """``fitted.positions(features)`` as float64 0.0/1.0, one per row.

        :raises PluginError: it raised, or gave the wrong length or values other than 0 and 1.
        """
        with plugin_code(f"model {self.name} on {where}", "positions"):
            raw = fitted.positions(features)
        return checked_positions(raw, len(features), who=f"model {self.name} on {where}")


@contextmanager
def plugin_code(who: str, what: str) -> Iterator[None]:
    """Within the block a plug-in's code runs: whatever it raises becomes a one-line
    :class:`PluginError` ``{who}: {what} raised {type}: {first line}``. A SIGTERM's
    :class:`~finetune.stopping.Terminated` passes through: the pod is stopping, the plug-in is fine.
    """
    try:
        yield
    except Terminated:
        raise
    except Exception as exc:  # a team's code may raise anything: named, in one line
        raise PluginError(f"{who}: {what} raised {type(exc).__name__}: {one_line(exc)}") from exc


def _keywords(fit: Any) -> frozenset[str]:
    """The :data:`FIT_CONTEXT` names ``fit`` declares (all of them when it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(fit).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return frozenset(FIT_CONTEXT)
    return frozenset(p.name for p in parameters if p.name in FIT_CONTEXT and p.kind is not p.VAR_POSITIONAL)


def checked_positions(raw: Any, n: int, *, who: str) -> np.ndarray:
    """``raw`` as a float64 array of ``n`` values each 0.0 or 1.0, else :class:`PluginError`."""
    try:
        held = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{who}: positions are not numbers: {one_line(exc)}") from exc
    if held.shape != (n,):
        raise PluginError(f"{who}: positions have shape {held.shape}, expected ({n},): one per test bar")
    bad = ~((held == 0) | (held == 1))
    if bad.any():
        values = ", ".join(repr(float(v)) for v in np.unique(held[bad])[:5])
        raise PluginError(f"{who}: positions must be 0 (flat) or 1 (long), got {values}")
    return held


def load_model(name: str) -> Model:
    """Model ``name``, loaded.

    :raises UnknownPluginError: no installed package registers it (the installed ones are named).
    :raises PluginError: its entry point cannot be imported, or it is not callable.
    """
    factory = _load("model", name, installed().models, names="a model class or factory")
    return Model(name=name, factory=factory)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (a plug-in's error may be long)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def check_all() -> Iterator[tuple[str, str, str | None]]:
    """(group, name, error or None) for every installed plug-in, each imported in turn: one that
    fails is reported and the others are still checked (``python -m finetune plugins``)."""
    for kind, loader, points in (
        ("factor", load_factor, installed().factors),
        ("model", load_model, installed().models),
    ):
        for name in sorted(points):
            try:
                loader(name)
            except PluginError as exc:
                yield kind, name, str(exc)
            else:
                yield kind, name, None
