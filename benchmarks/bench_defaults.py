"""Time to accuracy: the default model against a heavy configuration, in one run.

Both are trained on the same grid of a scenario of ``benchmarks/scenarios.py`` (``--scenario``,
default ``coarse``) and scored at its off-grid points (smooth points and threshold cells)
against fresh reference MC of the simulator (classifier AUC, 2D chi2/ndf), next to robust
moment morphing, with the scenario suite's done-when checks (``scenarios.verdict``).

``HEAVY`` is an equal-weight mixture of 3 flows of [64, 64] units on a standard normal base,
conditioned on log m_Phi and log m_omega, batch 1024, learning rate 1e-3 decaying to 1e-5 over
300 epochs, 10% m_Phi jitter, the same for every block. It can be trained for fewer epochs
than its 300 (``--heavy-epochs``) on the SAME schedule; its training time is then extrapolated
linearly to 300 epochs from the measured seconds per epoch (the report says so), and its scores
are those of the shorter run.

    python benchmarks/bench_defaults.py --out output/bench_defaults [--scenario coarse] [--heavy-epochs 300]

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
    "model.hidden_units": [64, 64],
    "model.base_components": 1,
    "model.bootstrap": False,
    "preprocessing.labels.labelomega.relative_to": "",
    "training.epochs": 300,
    "training.decay_epochs": 300,
    "training.batch_size": 1024,
    "training.min_steps_per_epoch": 0,
    "training.learning_rate": 1e-3,
    "training.final_learning_rate": 1e-5,
    "training.label_jitter": {"labelphi": 0.1},
    "training.label_jitter_spacing": 0.0,
    "training.spline_label_jitter": {},
    "training.conditioning_l2": 0.0,
}


def measure(name: str, config: Any, grid: Any, refs: tuple[Any, Any], kinds: list[str], points: np.ndarray,
            out: Path, full_epochs: int) -> dict[str, Any]:
    """Train, time, and score one configuration at ``points`` (n, 2) of the given ``kinds``
    against ``refs`` (the scenario's reference and its goal reference)."""
    from fedhex_hep.model.training import train

    t0 = time.perf_counter()
    model = train(grid, config, out / name, progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    epoch_s = model.info["epoch_seconds"]
    run_epochs = len(epoch_s)
    # fixed cost (data preparation, graph building) + per-epoch cost scaled to the full schedule
    extrapolated = seconds + (full_epochs - run_epochs) * float(np.median(epoch_s))
    rows = []
    for kind, point in zip(kinds, points):
        row = scenarios.score_point(point, refs, model, grid, seed=0)
        rows.append({"point": point.tolist(), "kind": kind, **row})
        print(f"[{name}] {kind} {point.tolist()}: flow {row['flow']} morph {row['morph']}", flush=True)
    return {
        "name": name, "epochs_run": run_epochs, "epochs_full": full_epochs, "train_seconds": seconds,
        "train_seconds_full": extrapolated, "extrapolated": run_epochs < full_epochs, "rows": rows,
        "verdict": scenarios.verdict(rows),
    }


def _summary(rows: list[dict[str, Any]], method: str, kind: str) -> str:
    sel = [r[method] for r in rows if r["kind"] == kind]
    if not sel:
        return "- | -"
    auc = [r["auc"] for r in sel]
    chi2 = [r["chi2_2d_ndf"] for r in sel]
    first = f"{np.mean(auc):.3f}" if kind == "smooth" else f"{min(auc):.3f}-{max(auc):.3f}"
    return f"{first} | {max(chi2):.2f}"


def _goal_range(rows: list[dict[str, Any]]) -> str:
    auc = [r["flow_goal"]["auc"] for r in rows if r["kind"] == "threshold"]
    return f"{min(auc):.3f}-{max(auc):.3f}" if auc else "-"


def markdown(scenario: str, new: dict[str, Any], heavy: dict[str, Any]) -> str:
    def line(r: dict[str, Any], method: str = "flow") -> str:
        note = f" (extrapolated from {r['epochs_run']} epochs)" if r["extrapolated"] else ""
        verdict = "pass" if r["verdict"]["pass"] else "FAIL"
        return (f"| {r['name']} | {r['epochs_full']} | {r['train_seconds_full']:.0f}{note} | "
                f"{_summary(r['rows'], method, 'smooth')} | {_summary(r['rows'], method, 'threshold')} "
                f"| {_goal_range(r['rows'])} | {verdict} |")

    morph_line = (f"| robust moment morphing | - | - | {_summary(new['rows'], 'morph', 'smooth')} "
                  f"| {_summary(new['rows'], 'morph', 'threshold')} | - | - |")
    return "\n".join([
        f"Scenario `{scenario}`; smooth points: mean AUC and max 2D chi2/ndf; threshold cells: AUC range and max 2D "
        f"chi2/ndf at the suite's equal sizes, and the AUC range at {scenarios.GOAL_EVENTS:,} events per side.",
        "",
        "| model | epochs | training wall time (s) | smooth AUC | smooth chi2/ndf | threshold AUC | threshold chi2/ndf "
        f"| threshold AUC, {scenarios.GOAL_EVENTS:,} per side | done-when checks |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        line(new), line(heavy), morph_line,
        "",
        f"Training time ratio heavy / default: {heavy['train_seconds_full'] / new['train_seconds_full']:.1f}x.",
    ])


def main(argv: list[str] | None = None) -> int:
    from fedhex_hep.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/bench_defaults"))
    parser.add_argument("--scenario", default="coarse", choices=sorted(scenarios.SCENARIOS))
    parser.add_argument("--heavy-epochs", type=int, default=300)
    args = parser.parse_args(argv)
    workdir = args.out / args.scenario
    workdir.mkdir(parents=True, exist_ok=True)
    config = load_config()
    spec = scenarios.SCENARIOS[args.scenario]
    grid = scenarios.grid_features(args.scenario, spec, workdir, config)
    kinds, points = scenarios.evaluation_points(spec)
    refs = scenarios.references(spec, points, workdir, config)
    new = measure("default", config, grid, refs, kinds, points, workdir, config.training.epochs)
    heavy_cfg = config.with_overrides({**HEAVY, "training.epochs": args.heavy_epochs})
    heavy = measure("heavy", heavy_cfg, grid, refs, kinds, points, workdir, HEAVY["training.epochs"])
    (workdir / "bench_defaults.json").write_text(json.dumps({"default": new, "heavy": heavy}, indent=2))
    text = markdown(args.scenario, new, heavy)
    (workdir / "bench_defaults.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
