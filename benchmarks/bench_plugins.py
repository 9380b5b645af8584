"""Plug-in discovery, and the built-ins' time per key and peak before and after they became plug-ins.

    .venv/bin/python benchmarks/bench_plugins.py [--before REV] [--repeats 3]

1. Discovery: in fresh interpreters (after the pod's own imports: ``finetune.runner``), the
   cold :func:`finetune.plugins.installed` (both groups read from the installed metadata) and the
   load of the built-in factor and model by name; median over 7 processes. Goal: <= 50 ms.
2. Per key: each built-in factor's pod workload without the database (``runner.prepare`` and
   ``evaluate_crypto`` over 3 cryptos x 4 folds x 3 costs, 100 seeds, the default windows), once
   with the pod package as it was at ``--before`` (``git archive`` into a temporary folder, put
   first on ``PYTHONPATH``) and once as it is now, alternating, each in a fresh process; the
   median seconds per key and the peak RSS (``ru_maxrss``) of each, and their ratios (now/before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FACTORS = ("base_features", "n_features", "btc_features", "l2_features")

DISCOVERY = """
import json, time
import finetune.plugins as plugins
import finetune.runner  # what a pod imports anyway (pandas, the built-ins' modules): not discovery's cost
start = time.perf_counter()
found = plugins.installed()
discovered = time.perf_counter() - start
plugins.load_factor("base_features"), plugins.load_model("ridge_long_flat")
print(json.dumps({"discover": discovered, "discover_and_load": time.perf_counter() - start,
                  "n": len(found.factors) + len(found.models)}))
"""

WORKLOAD = """
import json, resource, sys, time
import pandas as pd
import finetune
from finetune.runner import RunConfig, evaluate_crypto, prepare
factor = sys.argv[1]
config = RunConfig(run_id="bench", factor=factor, cryptos=("BTC", "ETH", "SOL"), cost_bps=(10, 15, 30),
    slippage_bps=(0,), as_of=pd.Timestamp("2026-06-07T00:00:00Z"), n_folds=4, n_seeds=100, hold_bars=24,
    train_bars=24 * 180, test_bars=24 * 30, data_uri=None)
start = time.perf_counter()
plan = prepare(config)
keys = sum(len(results) for crypto in config.cryptos for _, _, results in evaluate_crypto(plan, crypto))
seconds = time.perf_counter() - start
print(json.dumps({"package": finetune.__file__, "seconds_per_key": seconds / keys, "keys": keys,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(code: str, *args: str, pythonpath: str | None = None) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_package(rev: str, into: Path) -> Path:
    """The pod package at ``rev`` (``images/finetune``) extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev, "images/finetune"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "images" / "finetune"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="3a4a812", help="the revision before the plug-ins (default 3a4a812)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    samples = [run(DISCOVERY) for _ in range(7)]
    discover = statistics.median(s["discover"] for s in samples) * 1000
    loaded = statistics.median(s["discover_and_load"] for s in samples) * 1000
    print(
        f"discovery: {discover:.1f} ms for {samples[0]['n']} entry points (median of 7 processes; goal <= 50 ms); "
        f"with loading the built-in factor and model by name: {loaded:.1f} ms"
    )

    with tempfile.TemporaryDirectory() as tmp:
        before_path = str(export_package(args.before, Path(tmp)))
        print(
            f"{'factor':<14} {'before s/key':>13} {'now s/key':>10} {'ratio':>6} {'before peak':>12} {'now peak':>9} {'ratio':>6}"
        )
        for factor in FACTORS:
            before, now = [], []
            for _ in range(args.repeats):  # alternating, so that a busy moment hits both
                before.append(run(WORKLOAD, factor, pythonpath=before_path))
                now.append(run(WORKLOAD, factor))
            assert all(b["package"].startswith(before_path) for b in before), before[0]["package"]
            assert all(not n["package"].startswith(before_path) for n in now)
            b_time = statistics.median(b["seconds_per_key"] for b in before)
            n_time = statistics.median(n["seconds_per_key"] for n in now)
            b_peak = statistics.median(b["peak_rss"] for b in before) / 2**20
            n_peak = statistics.median(n["peak_rss"] for n in now) / 2**20
            print(
                f"{factor:<14} {b_time * 1000:>11.1f}ms {n_time * 1000:>8.1f}ms {n_time / b_time:>6.2f} "
                f"{b_peak:>9.0f}MiB {n_peak:>6.0f}MiB {n_peak / b_peak:>6.2f}"
            )
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
