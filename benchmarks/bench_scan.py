"""Scan and command-line generation speed against the warm in-process sampler, in one run.

Measured in the same process and on the same model, reported as ratios:

* ``warm``: ``generate()`` of N events at one point in a process whose sampler is already
  compiled (the best the sampler does);
* ``cli_1m``: ``fedhex-hep generate -n N`` in a fresh process: start-up, TensorFlow import,
  model load, tracing and compilation, sampling and writing the parquet file;
* ``scan``: ``run_scan`` of P points x E events per point (iterative executor) in this process
  (model cached; the scan's batch shape is compiled in its first call), ``scan_again`` the same
  scan once more (nothing left to compile), and the same scan from the command line
  (``cli_scan``: everything included).

Goals: ``cli_1m`` within 3x of ``warm`` (wall time); scans at >= 0.5x ``warm``'s events/s.

    python benchmarks/bench_scan.py [--tiny] [--points 100] [--events 20000] [--n 1000000]

``--tiny`` trains a two-block [8]-unit affine flow (plumbing speed); the default trains the packaged
architecture for one epoch (speed does not depend on how well it is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

POINT = (1700.0, 5.0)


def _train(model_dir: Path, tiny: bool) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import architecture, packaged_toy_config, toy_config, toy_featureset

    from fedhex_hep.model.training import train

    if tiny:
        cfg = toy_config(1, 2, 8, 1024, "maf", 1).with_overrides({"model.spline_blocks": 0})
    else:
        cfg = packaged_toy_config()
    train(toy_featureset(20000), cfg, model_dir, progress=False)
    return f"{architecture(cfg.model)}, mixture of {cfg.model.ensemble}"


def _cli(*args: str) -> float:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fedhex_hep.cli", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"fedhex-hep {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall


def _warm(model_dir: Path, n: int) -> float:
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.model.cache import load_model_cached

    model = load_model_cached(model_dir)  # the scan below finds it in the same cache
    generate(model, [POINT], n, seed=0)  # trace and compile outside the timing
    t0 = time.perf_counter()
    generate(model, [POINT], n, seed=1)
    return time.perf_counter() - t0


def run(points: int = 100, events: int = 20000, n: int = 1_000_000, tiny: bool = False) -> dict[str, Any]:
    """Wall times (s), events/s and the ratios to the warm in-process sampler."""
    from fedhex_hep.generation.scan import run_scan

    import numpy as np

    side = max(1, int(round(points**0.5)))
    axes = (np.linspace(1000.0, 2500.0, side), np.linspace(2.0, 8.0, max(1, points // side)))
    grid = ",".join("/".join(f"{v:.6g}" for v in axis) for axis in axes)
    bins = {"mphi": (60, 500.0, 3500.0), "momega": (40, 0.0, 12.0)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        arch = _train(model_dir, tiny)
        warm = _warm(model_dir, n)
        cli_1m = _cli("generate", str(model_dir), "-l", f"{POINT[0]},{POINT[1]}", "-n", str(n), "-o", str(tmp / "g.parquet"))
        t0 = time.perf_counter()
        out = run_scan(model_dir, grid, events, tmp / "scan.root", bins=bins, progress=False)
        scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_scan(model_dir, grid, events, tmp / "scan2.root", bins=bins, progress=False, seed=2)
        scan_again = time.perf_counter() - t0
        import uproot

        with uproot.open(out) as f:
            n_points = f["scan"].num_entries
        cli_scan = _cli(
            "generate", str(model_dir), "--scan", grid, "-n", str(events), "-o", str(tmp / "scan_cli.root"),
            "--bins", "mphi=60:500:3500", "--bins", "momega=40:0:12", "--no-progress",
        )
    warm_eps = n / warm
    scan_events = n_points * events
    return {
        "model": arch,
        "n": n,
        "scan_points": n_points,
        "scan_events_per_point": events,
        "warm_s": warm,
        "warm_events_per_s": warm_eps,
        "cli_1m_s": cli_1m,
        "cli_1m_over_warm": cli_1m / warm,
        "scan_s": scan,
        "scan_events_per_s": scan_events / scan,
        "scan_over_warm_rate": scan_events / scan / warm_eps,
        "scan_again_s": scan_again,
        "scan_again_over_warm_rate": scan_events / scan_again / warm_eps,
        "cli_scan_s": cli_scan,
        "cli_scan_over_warm_rate": scan_events / cli_scan / warm_eps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--tiny", action="store_true", help="a two-block [8]-unit affine flow")
    args = parser.parse_args()
    print(json.dumps(run(args.points, args.events, args.n, args.tiny), indent=2))


if __name__ == "__main__":
    main()
