"""How a factor pod's time and memory grow with its work: cryptos, folds, cost bases, seeds, workers.

    .venv/bin/python benchmarks/bench_scale.py [--factor n_features] [--quick]

Each row runs the real pod (``python -m finetune run``, its own process) on the synthetic market
(``synthetic://?symbols=50``, so that 50 cryptos exist) against a scratch database on the
server of ``FINETUNE_BENCH_ADMIN_URL`` (default: the machine's PostgreSQL), dropped at the end.
One dimension moves at a time from the base point (8 cryptos, 4 folds, 3 cost bases, 100 seeds,
1 worker), so each block of rows shows what grows with that dimension alone. Printed per row:
wall time, time per key (crypto x fold x cost basis), time per (crypto, fold) (one fit), the
peak the pod reports (``pod_usage``; with 2 workers that is the parent plus twice the larger
worker's peak, an upper bound: forked workers share their imported pages) and the rows written
per second. Ratios are within this one run (machines are noisy); the base point, in every block, runs once;
``--quick`` skips the 50-crypto and 12-fold rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scratch_database import scratch_database

REPO_ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-06-07T00:00:00Z"
DATA_URI = "synthetic://?symbols=50"
BASE = {"cryptos": 8, "folds": 4, "costs": 3, "seeds": 100, "workers": 1}
COST_LEVELS = list(range(0, 150, 5))  # 30 cost bases at most


def symbols(n: int) -> list[str]:
    sys.path.insert(0, str(REPO_ROOT / "images" / "finetune"))
    from finetune.synthetic import parse_synthetic_uri

    return list(parse_synthetic_uri(DATA_URI).symbols[:n])


def points(quick: bool) -> list[tuple[str, dict]]:
    """(what moves, the run's settings): one dimension at a time around BASE."""
    moves = {
        "cryptos": [1, 8] + ([] if quick else [50]),
        "folds": [2, 4] + ([] if quick else [12]),
        "costs": [3, 30],
        "seeds": [100, 1000],
        "workers": [1, 2],
    }
    rows = [(name, {**BASE, name: value}) for name, values in moves.items() for value in values]
    if not quick:
        rows += [("workers @50", {**BASE, "cryptos": 50, "workers": w}) for w in (1, 2)]
    return rows


def run_pod(dsn: str, factor: str, run_id: str, point: dict) -> dict:
    argv = [
        sys.executable,
        "-m",
        "finetune",
        "run",
        "--run-id",
        run_id,
        "--factor",
        factor,
        "--cryptos",
        ",".join(symbols(point["cryptos"])),
        "--cost-bps",
        ",".join(map(str, COST_LEVELS[: point["costs"]])),
        "--as-of",
        AS_OF,
        "--n-folds",
        str(point["folds"]),
        "--n-seeds",
        str(point["seeds"]),
        "--hold-bars",
        "24",
        "--data-uri",
        DATA_URI,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "images" / "finetune"),
        "FINETUNE_DB_URL": dsn,
        "FINETUNE_POD_WORKERS": str(point["workers"]),
    }
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pod failed ({done.returncode}): {done.stderr.strip()}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    usage = next(e for e in events if e["event"] == "pod_usage")
    n_pairs = point["cryptos"] * point["folds"]
    n_keys = n_pairs * point["costs"]
    return {
        "wall_s": wall,
        "per_key_ms": 1000 * wall / n_keys,
        "per_fit_ms": 1000 * wall / n_pairs,
        "peak_mib": usage["peak_memory_bytes"] / 2**20,
        "rows_per_s": n_keys * 4 / usage["seconds"],  # a model row and its three baselines per key
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", default="n_features")
    parser.add_argument("--quick", action="store_true", help="skip the 50-crypto and 12-fold rows")
    args = parser.parse_args()

    with scratch_database("ft_bench_scale") as dsn:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "images" / "finetune"), "FINETUNE_DB_URL": dsn}
        subprocess.run([sys.executable, "-m", "finetune", "migrate"], env=env, check=True, capture_output=True)
        print(f"factor {args.factor}, synthetic hourly market, as-of {AS_OF}, {os.cpu_count()} cpus")
        header = f"{'moves':<12}{'cryptos':>8}{'folds':>6}{'costs':>6}{'seeds':>6}{'workers':>8}"
        print(header + f"{'wall s':>9}{'ms/key':>8}{'ms/fit':>8}{'peak MiB':>10}{'rows/s':>8}")
        by_point: dict[tuple, dict] = {}  # the base point is in every block: run once, shown in each
        results = {}
        for moves, point in points(args.quick):
            key = tuple(point.items())
            if key not in by_point:
                by_point[key] = run_pod(dsn, args.factor, f"scale-{len(by_point)}", point)
            result = results[(moves, point["cryptos"], point["workers"])] = by_point[key]
            print(
                f"{moves:<12}{point['cryptos']:>8}{point['folds']:>6}{point['costs']:>6}{point['seeds']:>6}"
                f"{point['workers']:>8}{result['wall_s']:>9.1f}{result['per_key_ms']:>8.0f}"
                f"{result['per_fit_ms']:>8.0f}{result['peak_mib']:>10.0f}{result['rows_per_s']:>8.0f}",
                flush=True,
            )
        one, eight = results[("cryptos", 1, 1)], results[("cryptos", 8, 1)]
        print(f"peak 8 cryptos / 1 crypto: {eight['peak_mib'] / one['peak_mib']:.2f} (goal <= 1.3)")
        if ("cryptos", 50, 1) in results:
            fifty = results[("cryptos", 50, 1)]
            print(f"peak 50 cryptos / 1 crypto: {fifty['peak_mib'] / one['peak_mib']:.2f} (goal <= 1.5)")
        w1, w2 = results[("workers", 8, 1)], results[("workers", 8, 2)]
        print(f"8 cryptos, 1 worker / 2 workers wall time: {w1['wall_s'] / w2['wall_s']:.2f}x (goal >= 1.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
