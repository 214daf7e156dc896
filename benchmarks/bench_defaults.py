"""Time to accuracy: the default model against the previous heavy default, in one run.

Both are trained on the same FeatureSet (default: the demo grid, extracted) and scored at the
demo scenario's off-grid points of ``benchmarks/scenarios.py`` against fresh reference MC of
the simulator (classifier AUC, 2D chi2/ndf), next to robust moment morphing.

``HEAVY`` is the heavy configuration (an equal-weight mixture of 3 flows, batch 1024, learning
rate 1e-3 decaying to 1e-5 over 300 epochs, 10% m_Phi jitter). It can be trained for fewer
epochs than its 300 (``--heavy-epochs``) on the SAME schedule; its training time is then
extrapolated linearly to 300 epochs from the measured seconds per epoch (the report says so),
and its scores are those of the shorter run.

    python benchmarks/bench_defaults.py --out output/bench_defaults [--features F.parquet] [--heavy-epochs 300]

Writes ``<out>/bench_defaults.json`` and ``bench_defaults.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402

HEAVY: dict[str, Any] = {
    "model.ensemble": 3,
    "training.epochs": 300,
    "training.decay_epochs": 300,
    "training.batch_size": 1024,
    "training.min_steps_per_epoch": 0,
    "training.learning_rate": 1e-3,
    "training.final_learning_rate": 1e-5,
    "training.label_jitter": {"labelphi": 0.1},
    "training.label_jitter_spacing": 0.0,
}


def measure(name: str, config: Any, grid: Any, ref: Any, points: np.ndarray, out: Path, full_epochs: int) -> dict[str, Any]:
    """Train, time, and score one configuration."""
    from fedhex_hep.model.training import train

    t0 = time.perf_counter()
    model = train(grid, config, out / name, progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    epoch_s = model.info["epoch_seconds"]
    run_epochs = len(epoch_s)
    # fixed cost (data preparation, graph building) + per-epoch cost scaled to the full schedule
    extrapolated = seconds + (full_epochs - run_epochs) * float(np.median(epoch_s))
    rows = []
    for point in points:
        row = scenarios.score_point(point, ref.features[ref.mask_label(point)], model, grid, seed=0)
        rows.append({"point": point.tolist(), **row})
        print(f"[{name}] {point.tolist()}: flow {row['flow']} morph {row['morph']}", flush=True)
    return {
        "name": name, "epochs_run": run_epochs, "epochs_full": full_epochs, "train_seconds": seconds,
        "train_seconds_full": extrapolated, "extrapolated": run_epochs < full_epochs, "rows": rows,
        "mean_auc": float(np.mean([r["flow"]["auc"] for r in rows])),
        "max_chi2_2d_ndf": float(np.max([r["flow"]["chi2_2d_ndf"] for r in rows])),
    }


def markdown(new: dict[str, Any], heavy: dict[str, Any]) -> str:
    def line(r: dict[str, Any]) -> str:
        note = f" (extrapolated from {r['epochs_run']} epochs)" if r["extrapolated"] else ""
        return (f"| {r['name']} | {r['epochs_full']} | {r['train_seconds_full']:.0f}{note} | {r['mean_auc']:.3f} "
                f"| {r['max_chi2_2d_ndf']:.2f} |")

    morph_auc = float(np.mean([r["morph"]["auc"] for r in new["rows"]]))
    morph_chi2 = float(np.max([r["morph"]["chi2_2d_ndf"] for r in new["rows"]]))
    return "\n".join([
        "| model | epochs | training wall time (s) | mean AUC | max 2D chi2/ndf |",
        "| --- | --- | --- | --- | --- |",
        line(new), line(heavy),
        f"| robust moment morphing | - | - | {morph_auc:.3f} | {morph_chi2:.2f} |",
        "",
        f"Training time ratio heavy / default: {heavy['train_seconds_full'] / new['train_seconds_full']:.1f}x.",
    ])


def main(argv: list[str] | None = None) -> int:
    from fedhex_hep.config import load_config
    from fedhex_hep.io.featureset import FeatureSet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/bench_defaults"))
    parser.add_argument("--features", type=Path, default=None, help="demo FeatureSet (default: extract data/demo)")
    parser.add_argument("--heavy-epochs", type=int, default=300)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config = load_config()
    spec = scenarios.SCENARIOS["demo"]
    grid = FeatureSet.load(args.features) if args.features else scenarios.grid_features("demo", spec, args.out, config)
    points = np.array(spec["smooth"], dtype=np.float64)
    ref = scenarios.reference(spec, points, args.out, config)
    new = measure("default", config, grid, ref, points, args.out, config.training.epochs)
    heavy_cfg = config.with_overrides({**HEAVY, "training.epochs": args.heavy_epochs})
    heavy = measure("heavy", heavy_cfg, grid, ref, points, args.out, HEAVY["training.epochs"])
    (args.out / "bench_defaults.json").write_text(json.dumps({"default": new, "heavy": heavy}, indent=2))
    text = markdown(new, heavy)
    (args.out / "bench_defaults.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
