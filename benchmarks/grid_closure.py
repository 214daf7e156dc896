"""Closure at the training grid points of a `fedhex-hep run` folder (the grid-point closure table of docs/results.md).

    python benchmarks/grid_closure.py output/run-YYYYmmdd-HHMMSS [--events 20000]

Generates ``--events`` events at every grid point of the run's ``features.parquet`` with the
run's model and compares them with the MC there: relative median shift (with the MC median's
own statistical uncertainty) and relative error of the 16-84% half width (with the MC width's
bootstrap uncertainty). Writes ``grid_closure.json`` into the run folder and prints a markdown
table per omega row plus a summary.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedhex_hep.validation import metrics
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.generation.sampling import generate
from fedhex_hep.model.storage import load_model


def point_closure(generated: np.ndarray, mc: np.ndarray, names: list[str], boot: int = 200) -> dict[str, float]:
    """Per feature: median shift, its MC stat (relative), half-68 width error and its MC stat."""
    rng = np.random.default_rng(0)
    row: dict[str, float] = {}
    n = len(mc)
    for i, name in enumerate(names):
        m = mc[:, i]
        row[f"{name}_median"] = metrics.median_shift(generated[:, i], m)
        # sd of a median ~ 1.2533 sigma / sqrt(n) (sigma from the robust width)
        row[f"{name}_median_stat"] = 1.2533 * metrics.robust_width(m) / np.sqrt(n) / abs(float(np.median(m)))
        row[f"{name}_w68"] = metrics.width_errors(generated[:, i], m)["half68"]
        boots = [metrics.half68_width(m[rng.integers(0, n, n)]) for _ in range(boot)]
        row[f"{name}_w68_stat"] = float(np.std(boots) / metrics.half68_width(m))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a fedhex-hep run folder (features.parquet, model/)")
    parser.add_argument("--events", type=int, default=20000, help="generated events per grid point")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    mc = FeatureSet.load(args.run_dir / "features.parquet")
    model = load_model(args.run_dir / "model")
    points = mc.label_points()
    gen = generate(model, points, args.events, seed=args.seed)
    names = list(mc.feature_names)
    rows = []
    for p in points:
        m = mc.at_label(p).features
        row = {"point": p.tolist(), "n_mc": len(m)}
        row.update(point_closure(gen.at_label(p).features, m, names))
        rows.append(row)
    (args.run_dir / "grid_closure.json").write_text(json.dumps(rows, indent=1))

    last = len(mc.label_names) - 1
    by_row: dict[float, list[dict]] = defaultdict(list)
    for row in rows:
        by_row[row["point"][last]].append(row)
    head = [f"{mc.label_names[last]}", "points", "MC events per point"]
    for f in names:
        head += [f"{f}: mean abs median shift", f"{f}: mean abs width error (MC width sd)"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for value, rs in sorted(by_row.items()):
        cells = [f"{value:g}", str(len(rs)), f"{min(r['n_mc'] for r in rs)}-{max(r['n_mc'] for r in rs)}"]
        for f in names:
            cells.append(f"{np.mean([abs(r[f + '_median']) for r in rs]) * 100:.2f}%")
            cells.append(
                f"{np.mean([abs(r[f + '_w68']) for r in rs]) * 100:.1f}% "
                f"({np.mean([r[f + '_w68_stat'] for r in rs]) * 100:.1f}%)"
            )
        print("| " + " | ".join(cells) + " |")
    print()
    for f in names:
        med = np.array([abs(r[f + "_median"]) for r in rows])
        med_stat = np.array([r[f + "_median_stat"] for r in rows])
        w = np.array([abs(r[f + "_w68"]) for r in rows])
        w_stat = np.array([r[f + "_w68_stat"] for r in rows])
        print(
            f"- {f}: |median shift| max {med.max() * 100:.2f}%, mean {med.mean() * 100:.2f}%, within 2x the MC "
            f"median's own sd at {int(np.sum(med <= 2 * med_stat))}/{len(rows)} points; |width error| mean "
            f"{w.mean() * 100:.1f}%, max {w.max() * 100:.1f}%, within 2x the MC width's sd at "
            f"{int(np.sum(w <= 2 * w_stat))}/{len(rows)} points"
        )


if __name__ == "__main__":
    main()
