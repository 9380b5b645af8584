"""Calendar-correct bars: the bar interval, which bars exist at as-of, and the holes between them.

A file's rows are not yet bars of a calendar: a row can be missing (an exchange outage), the
newest row can still be open at as-of, and a feed can have stopped days ago. :func:`calendar_bars`
turns a symbol's rows into the bars a run may use, under :class:`BarOptions` (DESIGN 4.1, "Data
options"):

- **Interval.** Given (``--bar-interval``), else detected as the most frequent step between
  consecutive stamps up to as-of (the smallest on a tie), so a few holes do not change it.
- **Label.** ``open`` (default): a stamp is the bar's open, so the bar is used only once it has
  closed, ``stamp + interval <= as_of`` (the bar opening at as-of may be partial if the data was
  pulled at as-of). ``close``: the stamp is the bar's close, used once ``stamp <= as_of``.
- **Staleness.** The last usable bar must close no more than ``max_stale_bars`` intervals before
  as-of, else the symbol is refused: its newest test window would end early and the same
  ``fold_id`` would cover another period than the other symbols'.
- **Gaps.** ``fill`` (default): bars on the regular grid of the interval; a gap of up to
  ``max_gap_bars`` missing bars is filled with the previous close carried forward
  (open = high = low = close, volume 0) and marked in the ``filled`` column. ``refuse``: no gap is
  filled. ``rows``: rows as given, for markets with sessions (FX weekends, equity nights), where a
  missing row is not missing data; the Sharpe ratio is then annualised by the rows per year
  observed (an hourly FX series has ~6240, not 8760), and a closed session longer than
  ``max_stale_bars`` before as-of needs a larger ``--max-stale-bars``.

**The span the run uses** runs from the earliest bar that the oldest fold's first training row
reads (its training start minus the factor's feature warm-up) to as-of. A gap before that span is
not the run's concern. Since the span is only known once features and folds are built, a gap that
cannot be filled does not fail here: the bars are cut to start just after the newest such gap
(``BarCalendar.unfilled_gap``), and when the folds then lack bars, the span reached across that
gap, which :func:`finetune.runner.prepare` reports as the cause (exit 2, crypto, gap start and
length). Windows, ``hold_bars``, feature lookbacks and the Sharpe annualisation are all counted in
bars; on a regular grid that makes them fixed spans of calendar time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetune.locations import DataError

GAP_MODES = ("fill", "refuse", "rows")
BAR_LABELS = ("open", "close")
DEFAULT_MAX_GAP_BARS = 6
DEFAULT_MAX_STALE_BARS = 24
# Crypto trades around the clock: a year is 365 days of bars of any interval.
YEAR = pd.Timedelta(days=365)


@dataclass(frozen=True)
class BarOptions:
    """How rows become bars (the ``run`` command's data options)."""

    gaps: str = "fill"
    max_gap_bars: int = DEFAULT_MAX_GAP_BARS
    bar_label: str = "open"
    max_stale_bars: int = DEFAULT_MAX_STALE_BARS
    bar_interval: pd.Timedelta | None = None  # None: detected from the stamps

    def __post_init__(self) -> None:
        if self.gaps not in GAP_MODES:
            raise ValueError(f"gaps must be one of {', '.join(GAP_MODES)}, got {self.gaps!r}")
        if self.bar_label not in BAR_LABELS:
            raise ValueError(f"bar_label must be one of {', '.join(BAR_LABELS)}, got {self.bar_label!r}")
        for name in ("max_gap_bars", "max_stale_bars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.bar_interval is not None and not pd.Timedelta(self.bar_interval) > pd.Timedelta(0):
            raise ValueError(f"bar_interval must be a positive duration, got {self.bar_interval!r}")

    def as_json(self) -> dict[str, object]:
        """The options as stored in ``finetune_runs.params``."""
        return {
            "gaps": self.gaps,
            "max_gap_bars": self.max_gap_bars,
            "bar_label": self.bar_label,
            "max_stale_bars": self.max_stale_bars,
            "bar_interval": None if self.bar_interval is None else describe(self.bar_interval),
        }


@dataclass(frozen=True)
class Gap:
    """``n_missing`` bars missing after the bar stamped ``after``."""

    after: pd.Timestamp
    n_missing: int
    interval: pd.Timedelta

    @property
    def first_missing(self) -> pd.Timestamp:
        return self.after + self.interval

    def describe(self) -> str:
        return (
            f"a gap of {self.n_missing} missing bars ({describe(self.n_missing * self.interval)}) "
            f"starting {self.first_missing.isoformat()}"
        )


@dataclass(frozen=True)
class BarCalendar:
    """What :func:`calendar_bars` found for one symbol at one as-of."""

    interval: pd.Timedelta
    bars_per_year: float
    # The newest gap that was not filled (fill: longer than max_gap_bars; refuse: any): the bars
    # start just after it. None when every gap was filled or the rows are taken as given.
    unfilled_gap: Gap | None
    n_filled: int


def describe(duration: pd.Timedelta) -> str:
    """A compact duration such as ``1h``, ``10d``, ``15min`` or ``1d 6h``."""
    parts = pd.Timedelta(duration).components
    units = (("d", parts.days), ("h", parts.hours), ("min", parts.minutes), ("s", parts.seconds))
    text = " ".join(f"{value}{unit}" for unit, value in units if value)
    return text or str(pd.Timedelta(duration))


def parse_interval(text: str) -> pd.Timedelta:
    """``1h``, ``15min``, ``1d`` ... as a positive Timedelta, else ValueError naming the text."""
    try:
        interval = pd.Timedelta(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a bar interval: {text!r} (e.g. 1h, 15min, 1d)") from exc
    if interval is pd.NaT or interval <= pd.Timedelta(0):
        raise ValueError(f"not a bar interval: {text!r} (a positive duration, e.g. 1h, 15min, 1d)")
    return interval


def detect_interval(index: pd.DatetimeIndex, where: str) -> pd.Timedelta:
    """The most frequent step between consecutive stamps (the smallest on a tie)."""
    if len(index) < 2:
        raise DataError(f"{where}: cannot detect the bar interval from {len(index)} bar(s); give --bar-interval")
    steps, counts = np.unique(np.diff(index.as_unit("ns").asi8), return_counts=True)
    return pd.Timedelta(int(steps[np.argmax(counts)]), unit="ns")


def bars_per_year(interval: pd.Timedelta) -> float:
    """How many bars of ``interval`` a year of round-the-clock trading holds (8760 for 1h)."""
    return YEAR / pd.Timedelta(interval)


def _usable(index: pd.DatetimeIndex, *, as_of: pd.Timestamp, interval: pd.Timedelta, label: str) -> int:
    """How many leading bars have closed by as-of."""
    cutoff = as_of - interval if label == "open" else as_of
    return int(index.searchsorted(cutoff, side="right"))


def _check_fresh(
    index: pd.DatetimeIndex, *, as_of: pd.Timestamp, interval: pd.Timedelta, options: BarOptions, where: str
) -> None:
    last_close = index[-1] + interval if options.bar_label == "open" else index[-1]
    if as_of - last_close > options.max_stale_bars * interval:
        behind = as_of - last_close
        raise DataError(
            f"{where}: stale data: its last usable bar {index[-1].isoformat()} closes {describe(behind)} "
            f"({behind / interval:g} bars of {describe(interval)}) before as-of {as_of.isoformat()}, "
            f"more than --max-stale-bars {options.max_stale_bars}"
        )


def _on_grid(index: pd.DatetimeIndex, interval: pd.Timedelta, where: str) -> np.ndarray:
    """Bar numbers of the stamps on the grid that starts at the first stamp, or DataError."""
    stamps = index.as_unit("ns").asi8
    offsets = stamps - stamps[0]
    step = interval.value
    off = np.flatnonzero(offsets % step)
    if off.size:
        raise DataError(
            f"{where}: timestamp {index[off[0]].isoformat()} is off the {describe(interval)} grid that starts at "
            f"{index[0].isoformat()} (give the right --bar-interval, or --gaps rows for irregular rows)"
        )
    return offsets // step


def _fill(frame: pd.DataFrame, positions: np.ndarray, interval: pd.Timedelta) -> pd.DataFrame:
    """``frame`` on the full grid: missing bars carry the previous close forward with volume 0."""
    grid = pd.date_range(frame.index[0], periods=int(positions[-1]) + 1, freq=interval, name=frame.index.name)
    filled = frame.reindex(grid)
    missing = filled["close"].isna()
    close = filled["close"].ffill()
    for column in ("open", "high", "low"):
        filled[column] = filled[column].fillna(close)
    filled["close"] = close
    filled["volume"] = filled["volume"].fillna(0.0)
    filled["filled"] = missing.to_numpy()
    return filled


def calendar_bars(
    history: pd.DataFrame, *, as_of: pd.Timestamp, options: BarOptions, where: str
) -> tuple[pd.DataFrame, BarCalendar]:
    """The bars of ``history`` usable at ``as_of`` (see the module docstring), with a bool
    ``filled`` column, and what was found. ``history`` has a sorted unique UTC index.

    :raises DataError: too few rows to know the interval, stamps off the grid, stale data.
    """
    known = history.iloc[: int(history.index.searchsorted(as_of, side="right"))]
    if known.empty:
        raise DataError(f"{where}: as-of {as_of.isoformat()} is before its first bar {history.index[0].isoformat()}")
    interval = options.bar_interval
    if interval is None:
        interval = detect_interval(known.index, where)
    elif len(known) > 1 and options.gaps != "rows":
        # A given interval finer than the data's would "fill" every other bar; a coarser one
        # would put stamps off its grid: either way the bars would not be the data's.
        step = detect_interval(known.index, where)
        if step != interval:
            raise DataError(
                f"{where}: --bar-interval {describe(interval)} is not the data's bar interval: its stamps are "
                f"most often {describe(step)} apart"
            )
    bars = known.iloc[: _usable(known.index, as_of=as_of, interval=interval, label=options.bar_label)]
    if bars.empty:
        raise DataError(
            f"{where}: as-of {as_of.isoformat()} is before its first bar {history.index[0].isoformat()} closes"
        )
    _check_fresh(bars.index, as_of=as_of, interval=interval, options=options, where=where)
    if options.gaps == "rows":
        # Sessions: bars per year as observed (an FX hour bar trades ~6240 hours a year, not 8760).
        span = bars.index[-1] - bars.index[0]
        per_year = (len(bars) - 1) * (YEAR / span) if len(bars) > 1 else bars_per_year(interval)
        return bars.assign(filled=False), BarCalendar(interval, per_year, None, 0)
    positions = _on_grid(bars.index, interval, where)
    missing = np.diff(positions) - 1
    limit = options.max_gap_bars if options.gaps == "fill" else 0
    too_long = np.flatnonzero(missing > limit)
    gap = None
    if too_long.size:
        # Only bars after the newest unfillable gap can make a regular grid (module docstring).
        k = int(too_long[-1])
        gap = Gap(after=bars.index[k], n_missing=int(missing[k]), interval=interval)
        bars, positions = bars.iloc[k + 1 :], positions[k + 1 :] - positions[k + 1]
    filled = _fill(bars, positions, interval)
    calendar = BarCalendar(interval, bars_per_year(interval), gap, int(filled["filled"].sum()))
    return filled, calendar
