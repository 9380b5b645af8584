"""Peak memory of one factor's pod workload, each factor in its own process, in one run.

    .venv/bin/python benchmarks/bench_memory.py [--as-of 2026-06-07T00:00:00Z]

Per factor and per ``n_seeds`` (100, 1000), a fresh interpreter does what a pod does: loads the
synthetic hourly history up to as-of for BTC, ETH and SOL, builds the three feature stores (held
together, as the runner held them before it built one crypto's store at a time: see
``bench_scale.py`` for the runner itself), then per crypto fine-tunes and evaluates 4 walk-forward
folds and computes the baselines for 3 cost levels. It reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), the peak RSS right after its imports (what every pod pays
before any work), and the feature bytes held. Goals: ``btc_features`` peak <= 1.3x
``base_features`` peak, and the same peak at 100 and 1000 seeds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CRYPTOS = ("BTC", "ETH", "SOL")
COSTS_BPS = (10, 15, 30)
FACTORS = ("base_features", "n_features", "btc_features", "l2_features")
N_FOLDS = 4
HOLD_BARS = 24


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(factor: str, n_seeds: int, as_of: str) -> dict:
    """The pod workload of one factor; imports inside so that their cost is measured apart."""
    sys.path.insert(0, str(REPO_ROOT / "images" / "finetune"))
    import pandas as pd

    from finetune.baselines import compute_baselines
    from finetune.costs import round_trip_cost
    from finetune.data import MarketData
    from finetune.factors import build_feature_store
    from finetune.folds import walk_forward_folds
    from finetune.model import evaluate, fine_tune

    after_imports = peak_rss_bytes()
    start = time.perf_counter()
    cutoff = pd.Timestamp(as_of)
    market = MarketData()
    stores = [build_feature_store(factor, crypto, market, as_of=cutoff) for crypto in CRYPTOS]
    for store in stores:
        for fold in walk_forward_folds(store.index, as_of=cutoff, n_folds=N_FOLDS, hold_bars=HOLD_BARS):
            model = fine_tune(store, fold, hold_bars=HOLD_BARS)
            test = slice(fold.test_start, fold.test_end)
            positions = model.positions(store.features[test])
            for cost in COSTS_BPS:
                rt = round_trip_cost(cost)
                evaluate(positions, store.close[test], rt)
                compute_baselines(store.close[test], rt, n_seeds=n_seeds, hold_bars=HOLD_BARS)
    return {
        "factor": factor,
        "n_seeds": n_seeds,
        "peak_rss": peak_rss_bytes(),
        "after_imports": after_imports,
        "feature_bytes": sum(store.features.nbytes for store in stores),
        "store_bytes": sum(store.nbytes for store in stores),
        "n_bars": len(stores[0].index),
        "n_features": max(store.features.shape[1] for store in stores),
        "seconds": time.perf_counter() - start,
    }


def run_child(factor: str, n_seeds: int, as_of: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", factor, "--seeds", str(n_seeds), "--as-of", as_of],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", default="2026-06-07T00:00:00Z")
    parser.add_argument("--child", choices=FACTORS)
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seeds, args.as_of)))
        return

    rows = {(f, s): run_child(f, s, args.as_of) for f in FACTORS for s in (100, 1000)}
    print(f"as-of {args.as_of}, cryptos {','.join(CRYPTOS)}, {N_FOLDS} folds, costs {COSTS_BPS} bp, one process each")
    header = (
        f"{'factor':<14} {'seeds':>5} {'bars':>6} {'feats':>5} {'features MiB':>12} {'store MiB':>9} "
        f"{'imports MiB':>11} {'peak RSS MiB':>12} {'work MiB':>8} {'seconds':>7}"
    )
    print(header)
    print("-" * len(header))
    for (factor, seeds), row in rows.items():
        print(
            f"{factor:<14} {seeds:>5} {row['n_bars']:>6} {row['n_features']:>5} {mib(row['feature_bytes']):>12} "
            f"{mib(row['store_bytes']):>9} {mib(row['after_imports']):>11} {mib(row['peak_rss']):>12} "
            f"{mib(row['peak_rss'] - row['after_imports']):>8} {row['seconds']:>7.2f}"
        )
    print()
    for seeds in (100, 1000):
        btc, base = rows[("btc_features", seeds)], rows[("base_features", seeds)]
        print(
            f"btc_features / base_features at {seeds} seeds: peak RSS {btc['peak_rss'] / base['peak_rss']:.3f}x "
            f"(goal <= 1.3x), work above imports {(btc['peak_rss'] - btc['after_imports']) / (base['peak_rss'] - base['after_imports']):.3f}x, "
            f"feature bytes {btc['feature_bytes'] / base['feature_bytes']:.3f}x"
        )
    for factor in FACTORS:
        few, many = rows[(factor, 100)], rows[(factor, 1000)]
        print(f"{factor}: peak RSS 1000 / 100 seeds = {many['peak_rss'] / few['peak_rss']:.3f}x")


if __name__ == "__main__":
    main()
