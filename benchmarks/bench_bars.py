"""What calendar-correct bars cost next to reading the data, measured in one run.

    .venv/bin/python benchmarks/bench_bars.py [--years 5] [--repeats 5]

Writes ``--years`` of hourly bars of the synthetic ETH (about 1 % of the hours removed, in holes of
1 to 6 bars) as CSV and parquet into a temporary folder, then reports the median wall time of

- reading the file with pandas straight from its path (how data.py read before pyarrow.fs),
- reading it through :class:`finetune.locations.DataLocation` (the one path for file/s3/gs),
- :func:`finetune.bars.calendar_bars` on the normalised rows (interval detection, as-of cut,
  staleness, gap filling),

and the ratios calendar / read and DataLocation / direct read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "images" / "finetune"))

from finetune.bars import BarOptions, calendar_bars  # noqa: E402
from finetune.data import normalise_ohlcv  # noqa: E402
from finetune.locations import DataLocation  # noqa: E402
from finetune.synthetic import synthetic_ohlcv  # noqa: E402


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    return statistics.median(timeit.repeat(work, number=1, repeat=repeats))


def _holed_history(years: int) -> pd.DataFrame:
    history = synthetic_ohlcv("ETH").iloc[: years * 8760]
    rng = np.random.default_rng(0)
    starts = rng.choice(len(history) - 10, size=len(history) // 350, replace=False)
    drop = np.unique(np.concatenate([start + np.arange(rng.integers(1, 7)) for start in starts]))
    return history.drop(index=history.index[drop])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    history = _holed_history(args.years)
    as_of = history.index[-1] + pd.Timedelta(hours=1)
    print(f"{len(history)} hourly rows ({args.years} years, {args.years * 8760 - len(history)} hours missing)")
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        history.to_csv(directory / "ETH.csv", index_label="timestamp")
        history.to_parquet(directory / "BTC.parquet")
        location = DataLocation.from_uri(directory.as_uri())
        rows = normalise_ohlcv(pd.read_csv(directory / "ETH.csv"), "ETH")
        calendar = median_seconds(
            lambda: calendar_bars(rows, as_of=as_of, options=BarOptions(), where="ETH"), args.repeats
        )
        bars, found = calendar_bars(rows, as_of=as_of, options=BarOptions(), where="ETH")
        print(f"calendar_bars: {calendar * 1e3:8.1f} ms  ({found.n_filled} bars filled, {len(bars)} bars)")
        for symbol, suffix, reader in (("ETH", ".csv", pd.read_csv), ("BTC", ".parquet", pd.read_parquet)):
            direct = median_seconds(lambda: reader(directory / f"{symbol}{suffix}"), args.repeats)
            through = median_seconds(lambda: location.read_table(symbol), args.repeats)
            print(
                f"{suffix:8s} read direct {direct * 1e3:8.1f} ms, through DataLocation {through * 1e3:8.1f} ms "
                f"(ratio {through / direct:.2f}); calendar / read = {calendar / through:.2f}"
            )


if __name__ == "__main__":
    main()
