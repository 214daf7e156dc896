"""Generation speed and memory: wall time and peak RSS to sample N events at one label.

Each N runs in its own subprocess, so the peak RSS (sampled every 10 ms by a thread, and
``ru_maxrss``) belongs to that N alone; the model is trained once (default architecture,
1 epoch: speed does not depend on how well it is trained).

    python benchmarks/bench_generate.py [--n 1000000 10000000] [--batch-size 100000]

``run(...) -> dict`` is used by the benchmark driver.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_CHILD = r"""
import json, os, resource, sys, threading, time
import psutil
proc = psutil.Process()
peak = [0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.01)
import fedhex_hep.generation.sampling
# XLA for every request size, or never (generation's own rule depends on the events per point)
fedhex_hep.generation.sampling.XLA_MIN_EVENTS = 0 if sys.argv[4] == "1" else 2**62
from fedhex_hep.generation.sampling import generate
from fedhex_hep.model.storage import load_model
model = load_model(sys.argv[1])
n, batch = int(sys.argv[2]), int(sys.argv[3])
point = [[1700.0, 5.0]]
generate(model, point, min(n, batch), seed=0, batch_size=batch)  # compile once, outside the timing
base = proc.memory_info().rss
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
fs = generate(model, point, n, seed=1, batch_size=batch)
wall = time.perf_counter() - t0
stop.set()
peak[0] = max(peak[0], proc.memory_info().rss)
out_bytes = 8 * len(fs) * (len(fs.feature_names) + len(fs.label_names) + 1)
print(json.dumps({"n": n, "wall_s": wall, "events_per_s": n / wall, "rss_before_mb": base / 2**20,
                  "peak_rss_mb": peak[0] / 2**20, "growth_mb": (peak[0] - base) / 2**20,
                  "output_arrays_mb": out_bytes / 2**20, "n_out": len(fs)}))
"""


def _train_model(model_dir: Path, kind: str) -> str:
    """Train the benchmark model into ``model_dir``; returns its architecture, as the tables name it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import architecture, packaged_toy_config, toy_featureset

    from fedhex_hep.model.training import train

    cfg = packaged_toy_config(kind)
    train(toy_featureset(20000), cfg, model_dir, progress=False)
    return f"{architecture(cfg.model)}, mixture of {cfg.model.ensemble}"


def run(ns: tuple[int, ...] = (1_000_000, 10_000_000), batch_size: int = 100_000, kind: str = "maf",
        threads: int | None = None, jit: bool = True) -> dict[str, Any]:
    """Peak RSS and wall time per N (each in a fresh subprocess); threads = TF intra-op threads."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        architecture = _train_model(model_dir, kind)
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        if threads:
            env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        for n in ns:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(model_dir), str(n), str(batch_size), "1" if jit else "0"],
                capture_output=True, text=True, env=env, check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"kind": kind, "architecture": architecture, "batch_size": batch_size, "cpus": os.cpu_count(), "xla": jit,
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--kind", default="maf")
    parser.add_argument("--no-xla", action="store_true", help="sample with a plain graph instead of XLA")
    args = parser.parse_args()
    result = run(tuple(args.n), args.batch_size, args.kind, jit=not args.no_xla)
    print(json.dumps(result, indent=2))
    for r in result["results"]:
        print(f"{r['n']:>10,d} events: {r['wall_s']:.2f} s ({r['events_per_s']:,.0f} ev/s), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['growth_mb']:.0f} MB, output columns {r['output_arrays_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
