"""Walk-forward folds over a factor's feature index, anchored at as-of (DESIGN 5, "Folds").

Positions are half-open ``[start, end)`` row numbers of the feature index. With ``end`` the
number of bars ``<= as_of``, the newest test window is ``[end - test_bars, end)`` and each older
one sits just before the next: fold ``n_folds - 1 - k`` tests ``[end - (k+1)*test_bars,
end - k*test_bars)``. Fold 0 is the oldest. Its train window ends ``hold_bars`` bars before its
test window starts: a training label at bar ``t`` reads ``close[t + hold_bars]``, so the last one
(``t = train_end - 1``) reads ``close[test_start - 1]``, never a test bar (the embargo).

Only the index and ``as_of`` define the windows: no wall clock, the same inputs give the same
folds at any time. The index is the calendar bars of :mod:`finetune.bars` (the regular grid of the
data's interval unless ``--gaps rows``), so ``train_bars``, ``test_bars`` and ``hold_bars`` are
spans of calendar time: a window of ``n`` bars spans exactly ``n - 1`` intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from finetune.data import to_utc

DEFAULT_TRAIN_BARS = 24 * 180
DEFAULT_TEST_BARS = 24 * 30


class FoldError(ValueError):
    """A fold that cannot be built; the message names the fold and the bars it needed / had."""


@dataclass(frozen=True)
class Fold:
    """Half-open row ranges of one walk-forward fold."""

    fold_id: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int

    @property
    def n_test_bars(self) -> int:
        return self.test_end - self.test_start


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def walk_forward_folds(
    index: pd.DatetimeIndex,
    *,
    as_of: pd.Timestamp,
    n_folds: int,
    train_bars: int | None = None,
    test_bars: int | None = None,
    hold_bars: int,
) -> list[Fold]:
    """``n_folds`` consecutive, non-overlapping test windows ending at the last bar <= as-of.

    ``train_bars`` / ``test_bars`` of None take :data:`DEFAULT_TRAIN_BARS` / :data:`DEFAULT_TEST_BARS`.

    :raises FoldError: when as-of precedes the index or a fold lacks training bars.
    :raises ValueError: on counts below 1 or an index that is not increasing.
    """
    _count("n_folds", n_folds, 1)
    train_bars = _count("train_bars", DEFAULT_TRAIN_BARS if train_bars is None else train_bars, 1)
    test_bars = _count("test_bars", DEFAULT_TEST_BARS if test_bars is None else test_bars, 1)
    _count("hold_bars", hold_bars, 1)
    if not index.is_monotonic_increasing or index.has_duplicates:
        raise ValueError("the feature index must be strictly increasing")
    cutoff = to_utc(as_of)
    end = int(index.searchsorted(cutoff, side="right"))
    if end == 0:
        first = index[0].isoformat() if len(index) else "none (empty index)"
        raise FoldError(f"no bar at or before as-of {cutoff.isoformat()}: the first bar is {first}")
    folds = []
    for fold_id in range(n_folds):
        test_end = end - (n_folds - 1 - fold_id) * test_bars
        test_start = test_end - test_bars
        train_end = test_start - hold_bars
        train_start = train_end - train_bars
        if train_start < 0:
            needed = train_bars + hold_bars + test_bars * (n_folds - fold_id)
            raise FoldError(
                f"fold {fold_id} of {n_folds}: needs {train_bars} training bars + {hold_bars} embargo "
                f"+ {test_bars * (n_folds - fold_id)} test bars = {needed} "
                f"bars up to as-of {cutoff.isoformat()}, but only {end} are available "
                f"({max(train_end, 0)} for training)"
            )
        folds.append(Fold(fold_id, train_start, train_end, test_start, test_end))
    return folds
