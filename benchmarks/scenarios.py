"""Scenario suite: the default flow against moment morphing on grids it was not tuned on.

Each scenario is a signal grid written with the toy simulator (``fedhex-hep make-samples``),
extracted with the default config, and used ONCE to train the default model (no per-scenario
tuning). At off-grid points (smooth points, and points inside the cell where the simulator's
prong-merging threshold changes the shapes) events are generated with the flow and with robust
moment morphing of the same grid, and each is compared with fresh reference MC of the simulator
at that point (another seed): classifier AUC and 2D chi2/ndf from
:mod:`fedhex_hep.validation.metrics`, at equal sample sizes (the reference's, capped at the
distinct events morphing can give: see :func:`score_point`). The flow is also scored alone with
10,000 events per side against a second, larger reference: the AUC goal below is checked there.
Next to each threshold point, the flow's AUC at the corners of its grid cell (points it was
trained on, against fresh MC there, 10,000 per side) shows how close the grid's statistics
let the flow get to the simulator at all.

Scenarios (``SCENARIOS``):

* ``demo``: the demo grid in data/demo (8 x 13 points, 10,000 events each);
* ``coarse``: m_Phi 500-5000 GeV (7 steps) x m_omega 0.5-9 GeV (7 steps), 4,000 events per
  point, with the prong-merging threshold (``make-samples --threshold 0.3``: below
  m_omega = 0.3 GeV x m_Phi / 1 TeV);
* ``irregular``: ``coarse`` with 30% of its points removed at random (seeded);
* ``sparse``: the same with another random 30% removed, among them a corner of each
  threshold cell;
* ``lowstat``: ``coarse`` with 1,500 events per point;
* ``ample``: ``coarse`` with 16,000 events per point (what more statistics per point buys);
* ``shifted``: another spacing and range (m_Phi 600-4800 GeV in 6 steps of x1.5, m_omega
  0.6-8.3 GeV in 6 steps of x1.7, 3,000 events per point) with the threshold elsewhere
  (``--threshold 0.4``), scored at other points.

``irregular``, ``ample`` and ``shifted`` are held back: they were not looked at while the
defaults were chosen (only ``demo``, ``coarse``, ``sparse`` and ``lowstat`` were).

Done-when (per scenario): at smooth points the flow's mean AUC is within +0.005 of morphing's
and every 2D chi2/ndf <= max(1.2, morphing's + 0.1); at threshold points the flow beats
morphing on AUC and 2D chi2/ndf, with AUC <= 0.53 at 10,000 events per side.

    python benchmarks/scenarios.py --out output/scenarios [--only demo,coarse] [--set training.epochs=20] [--reuse]

Writes ``<out>/scenarios.md`` (one table per scenario plus the verdicts) and ``scenarios.json``;
grids, features and models are cached under ``<out>/<scenario>/`` (delete to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

COARSE_PHI = (500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0)
COARSE_OMEGA = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0)
COARSE_SMOOTH = [(1250.0, 1.5), (2500.0, 4.0), (3500.0, 6.0), (1750.0, 2.5), (4500.0, 8.0)]
# cells the merging edge (m_omega = 0.3 m_Phi / TeV) crosses: (1750, 0.75) lies above the edge
# with (2000, 0.5) below it; (3500, 0.75) below it with (3000, 1) above it; (4500, 1.5) just
# above it with (4000, 1) and (5000, 1) below it
COARSE_THRESHOLD = [(1750.0, 0.75), (3500.0, 0.75), (4500.0, 1.5)]
THRESHOLD = 0.3
SHIFTED_PHI = (600.0, 900.0, 1400.0, 2100.0, 3200.0, 4800.0)
SHIFTED_OMEGA = (0.6, 1.0, 1.7, 2.9, 4.9, 8.3)
# the edge (m_omega = 0.4 m_Phi / TeV) crosses these cells: (1700, 0.8) lies above it with
# (2100, 0.6) below; (2600, 1.3) above it with (3200, 1) below; (4000, 1.3) below it with
# (3200, 1.7) above
SHIFTED_THRESHOLD = [(1700.0, 0.8), (2600.0, 1.3), (4000.0, 1.3)]
SHIFTED_SMOOTH = [(750.0, 1.3), (1150.0, 2.2), (1750.0, 3.8), (2600.0, 6.4), (4000.0, 3.8)]

SCENARIOS: dict[str, dict[str, Any]] = {
    "demo": {
        "grid": "data/demo", "threshold": None, "drop": 0.0, "held_back": False,
        "smooth": [(875.0, 2.1), (1375.0, 4.25), (1625.0, 6.4), (2250.0, 5.25), (2750.0, 8.1)],
        "threshold_points": [],
    },
    "coarse": {
        "phi": COARSE_PHI, "omega": COARSE_OMEGA, "events": 4000, "threshold": THRESHOLD, "drop": 0.0,
        "held_back": False, "smooth": COARSE_SMOOTH, "threshold_points": COARSE_THRESHOLD,
    },
    "irregular": {
        "phi": COARSE_PHI, "omega": COARSE_OMEGA, "events": 4000, "threshold": THRESHOLD, "drop": 0.3,
        "held_back": True, "smooth": COARSE_SMOOTH, "threshold_points": COARSE_THRESHOLD,
    },
    "sparse": {
        "phi": COARSE_PHI, "omega": COARSE_OMEGA, "events": 4000, "threshold": THRESHOLD, "drop": 0.3,
        "drop_seed": 21, "held_back": False, "smooth": COARSE_SMOOTH, "threshold_points": COARSE_THRESHOLD,
    },
    "lowstat": {
        "phi": COARSE_PHI, "omega": COARSE_OMEGA, "events": 1500, "threshold": THRESHOLD, "drop": 0.0,
        "held_back": False, "smooth": COARSE_SMOOTH, "threshold_points": COARSE_THRESHOLD,
    },
    "ample": {
        "phi": COARSE_PHI, "omega": COARSE_OMEGA, "events": 16000, "threshold": THRESHOLD, "drop": 0.0,
        "held_back": True, "smooth": COARSE_SMOOTH, "threshold_points": COARSE_THRESHOLD,
    },
    "shifted": {
        "phi": SHIFTED_PHI, "omega": SHIFTED_OMEGA, "events": 3000, "threshold": 0.4, "drop": 0.0,
        "held_back": True, "smooth": SHIFTED_SMOOTH, "threshold_points": SHIFTED_THRESHOLD,
    },
}
REFERENCE_EVENTS = 10000
REFERENCE_SEED = 20261
# The AUC goal (<= 0.53 in threshold cells) holds for 10,000 events per side: a larger, independent
# reference (the selection keeps 45-60% of the generated events) for that one number.
GOAL_EVENTS = 10000
GOAL_REFERENCE_EVENTS = 24000
GOAL_REFERENCE_SEED = 20262
# The flow at the threshold cells' grid corners (points it was trained on) against fresh MC: how
# close the grid's own statistics let it get, the yardstick for the held-out cells.
CORNER_REFERENCE_SEED = 20263
GRID_SEED = 0
DROP_SEED = 7


def _extract(paths: list[str], config: Any) -> Any:
    from fedhex_hep.extraction.runner import extract

    return extract(config.with_overrides({"input.paths": paths, "input.min_events_per_label": 0}), progress=False)


def grid_features(name: str, spec: dict[str, Any], workdir: Path, config: Any) -> Any:
    """The scenario's training FeatureSet (simulated and extracted once, then cached)."""
    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.io.samples import make_signal_grid

    cache = workdir / "features.parquet"
    if cache.exists():
        return FeatureSet.load(cache)
    if "grid" in spec:
        fs = _extract([spec["grid"]], config)
    else:
        make_signal_grid(workdir / "grid", spec["phi"], spec["omega"], n_events=spec["events"], seed=GRID_SEED,
                         overwrite=True, compression="zlib", threshold=spec["threshold"])
        fs = _extract([str(workdir / "grid")], config)
    if spec["drop"] > 0:
        points = fs.label_points()
        rng = np.random.default_rng(spec.get("drop_seed", DROP_SEED))
        drop = rng.choice(len(points), int(round(spec["drop"] * len(points))), replace=False)
        keep = np.ones(len(fs), dtype=bool)
        for p in points[drop]:
            keep &= ~fs.mask_label(p)
        fs = fs.select(keep)
    fs.save(cache, overwrite=True)
    return fs


def evaluation_points(spec: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The scenario's off-grid points: their kinds ("smooth", then "threshold") and the points (n, 2)."""
    kinds = ["smooth"] * len(spec["smooth"]) + ["threshold"] * len(spec["threshold_points"])
    return kinds, np.array(list(spec["smooth"]) + list(spec["threshold_points"]), dtype=np.float64)


def reference(
    spec: dict[str, Any], points: np.ndarray, workdir: Path, config: Any,
    n_events: int = REFERENCE_EVENTS, seed: int = REFERENCE_SEED, name: str = "reference",
) -> Any:
    """Fresh simulator MC at the evaluation points (``n_events`` generated per point, another
    seed than any grid), cached as ``<workdir>/<name>.parquet``."""
    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.io.samples import make_signal_grid

    cache = workdir / f"{name}.parquet"
    if cache.exists():
        return FeatureSet.load(cache)
    for phi, omega in points:
        make_signal_grid(workdir / name, [phi], [omega], n_events=n_events, seed=seed,
                         overwrite=True, compression="zlib", threshold=spec["threshold"])
    fs = _extract([str(workdir / name)], config)
    fs.save(cache, overwrite=True)
    return fs


def references(spec: dict[str, Any], points: np.ndarray, workdir: Path, config: Any) -> tuple[Any, Any]:
    """The scenario's reference and its goal reference: a larger, independent one for the AUC
    goal at GOAL_EVENTS events per side (both cached)."""
    goal = reference(spec, points, workdir, config, GOAL_REFERENCE_EVENTS, GOAL_REFERENCE_SEED, "reference_goal")
    return reference(spec, points, workdir, config), goal


def score_point(point: np.ndarray, refs: tuple[Any, Any], model: Any, grid: Any, seed: int) -> dict[str, Any]:
    """Flow and robust moment morphing at ``point`` against ``refs`` (the scenario's reference
    and goal reference, FeatureSets).

    Morphing re-uses MC events when asked for more than its grid corners hold, and repeated
    events would inflate its classifier AUC; so both methods are compared with ``n`` events,
    ``n`` = the reference's size at ``point`` capped at the number of distinct events morphing
    can give. The flow alone is also compared with the goal reference at GOAL_EVENTS events per
    side (``flow_goal``).
    """
    from fedhex_hep.generation.morphing import MomentMorphing
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.validation import metrics
    from fedhex_hep.validation.closure import _morph_cap

    ref, goal_ref = (r.features[r.mask_label(point)] for r in refs)
    interp = MomentMorphing(grid, robust=True)
    n = int(min(len(ref), _morph_cap(interp, point)))
    flow = generate(model, point[None, :], n, seed=seed).features
    morph = interp.sample(point, n, seed=seed)
    out: dict[str, Any] = {"n_reference": int(len(ref)), "n_compared": n}
    for name, sample in (("flow", flow), ("morph", morph)):
        joint = metrics.joint_metrics(sample[:n], ref[:n], seed=seed)
        out[name] = {"auc": joint["auc"], "chi2_2d_ndf": joint["chi2_2d_ndf"]}
    goal_mc = goal_ref[:GOAL_EVENTS]
    goal = _flow_joint(model, point, goal_mc, seed)
    out["flow_goal"] = {"n": len(goal_mc), "auc": goal["auc"], "chi2_2d_ndf": goal["chi2_2d_ndf"]}
    return out


def _flow_joint(model: Any, point: np.ndarray, mc: np.ndarray, seed: int) -> dict[str, Any]:
    """Joint metrics of as many flow events at ``point`` as ``mc`` (n, F) holds, against ``mc``."""
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.validation import metrics

    flow = generate(model, np.asarray(point, dtype=np.float64)[None, :], len(mc), seed=seed).features
    return metrics.joint_metrics(flow, mc, seed=seed)


def cell_corners(spec: dict[str, Any], point: Sequence[float], grid: Any) -> np.ndarray:
    """The corners of the grid cell (the scenario's axes) that holds ``point``, those ``grid``
    holds, shape (k, 2), k <= 4; empty for a scenario without axes (the demo grid)."""
    if "phi" not in spec:
        return np.empty((0, 2))

    def bracket(axis: Sequence[float], x: float) -> np.ndarray:
        values = np.sort(np.asarray(axis, dtype=np.float64))
        i = int(np.clip(np.searchsorted(values, x), 1, len(values) - 1))
        return values[i - 1 : i + 1]

    held = grid.label_points()
    corners = [(a, b) for a in bracket(spec["phi"], point[0]) for b in bracket(spec["omega"], point[1])]
    kept = [c for c in corners if np.isclose(held, c, rtol=1e-5).all(axis=1).any()]
    return np.array(kept, dtype=np.float64).reshape(-1, 2)


def score_corners(
    spec: dict[str, Any], rows: list[dict[str, Any]], grid: Any, model: Any, workdir: Path, config: Any, seed: int
) -> None:
    """Add ``flow_corners`` to each threshold row: the flow's AUC at each of its cell's grid
    corners against fresh MC there (GOAL_EVENTS per side), the fit the grid's statistics allow."""
    cells = [(r, [tuple(c) for c in cell_corners(spec, r["point"], grid).tolist()])
             for r in rows if r["kind"] == "threshold"]
    corners = sorted({c for _, cs in cells for c in cs})
    if not corners:
        return
    ref = reference(spec, np.array(corners), workdir, config, GOAL_REFERENCE_EVENTS,
                    CORNER_REFERENCE_SEED, "reference_corners")
    auc = {c: _flow_joint(model, np.array(c), ref.features[ref.mask_label(np.array(c))][:GOAL_EVENTS], seed)["auc"]
           for c in corners}
    for r, cs in cells:
        r["flow_corners"] = [{"point": list(c), "auc": auc[c]} for c in cs]


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The done-when checks of one scenario."""
    smooth = [r for r in rows if r["kind"] == "smooth"]
    thresh = [r for r in rows if r["kind"] == "threshold"]
    out: dict[str, Any] = {}
    if smooth:
        f_auc = float(np.mean([r["flow"]["auc"] for r in smooth]))
        m_auc = float(np.mean([r["morph"]["auc"] for r in smooth]))
        out["smooth_mean_auc"] = {"flow": f_auc, "morph": m_auc, "pass": f_auc <= m_auc + 0.005}
        out["smooth_chi2"] = {"pass": all(
            r["flow"]["chi2_2d_ndf"] <= max(1.2, r["morph"]["chi2_2d_ndf"] + 0.1) for r in smooth)}
    if thresh:
        out["threshold"] = {"pass": all(
            r["flow"]["auc"] < r["morph"]["auc"] and r["flow"]["chi2_2d_ndf"] < r["morph"]["chi2_2d_ndf"]
            and r["flow_goal"]["auc"] <= 0.53 for r in thresh)}
    out["pass"] = all(v["pass"] for v in out.values() if isinstance(v, dict))
    return out


def run_scenario(
    name: str, spec: dict[str, Any], out: Path, config: Any, seed: int = 0, reuse: bool = False
) -> dict[str, Any]:
    """Train once on the scenario's grid (``reuse``: load a model trained before) and score
    every evaluation point."""
    from fedhex_hep.model.storage import load_model
    from fedhex_hep.model.training import train

    workdir = out / name
    workdir.mkdir(parents=True, exist_ok=True)
    grid = grid_features(name, spec, workdir, config)
    kinds, points = evaluation_points(spec)
    refs = references(spec, points, workdir, config)
    t0 = time.perf_counter()
    if reuse and (workdir / "model" / "training.json").exists():
        model = load_model(workdir / "model")
        train_s = float(sum(model.info["epoch_seconds"]))
    else:
        model = train(grid, config, workdir / "model", progress=False, overwrite=True)
        train_s = time.perf_counter() - t0
    rows = []
    for kind, point in zip(kinds, points):
        row = score_point(point, refs, model, grid, seed)
        rows.append({"point": point.tolist(), "kind": kind, **row})
        print(f"[{name}] {kind} {point.tolist()}: flow {row['flow']} morph {row['morph']}", flush=True)
    score_corners(spec, rows, grid, model, workdir, config, seed)
    return {
        "scenario": name, "held_back": spec["held_back"], "grid_points": int(len(grid.label_points())),
        "events": int(len(grid)), "train_seconds": train_s, "rows": rows, "verdict": verdict(rows),
    }


def markdown(results: list[dict[str, Any]], overrides: dict[str, Any]) -> str:
    """One table per scenario, then the verdicts."""
    lines = ["# Scenario suite: default flow vs robust moment morphing", ""]
    if overrides:
        lines += [f"Config overrides: `{json.dumps(overrides)}`", ""]
    for res in results:
        v = res["verdict"]
        held = " (held back from choosing the defaults)" if res["held_back"] else ""
        lines += [
            f"## {res['scenario']}{held}",
            "",
            f"{res['grid_points']} grid points, {res['events']:,} selected events; training {res['train_seconds']:.0f} s "
            "(wall time on the machine the suite ran on, shared or not).",
            "",
            f"| point (m_Phi, m_omega) | kind | events per side | flow AUC | flow 2D chi2/ndf | morphing AUC "
            f"| morphing 2D chi2/ndf | flow AUC, {GOAL_EVENTS:,} per side | flow AUC at the cell's grid points |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["rows"]:
            f, m = r["flow"], r["morph"]
            lines.append(
                f"| ({r['point'][0]:g}, {r['point'][1]:g}) | {r['kind']} | {r['n_compared']:,} | {f['auc']:.3f} "
                f"| {f['chi2_2d_ndf']:.2f} | {m['auc']:.3f} | {m['chi2_2d_ndf']:.2f} | {r['flow_goal']['auc']:.3f} "
                f"| {_corner_range(r)} |"
            )
        checks = ", ".join(f"{k}: {'pass' if c['pass'] else 'FAIL'}" for k, c in v.items() if isinstance(c, dict))
        lines += ["", f"Verdict: {'PASS' if v['pass'] else 'FAIL'} ({checks})", ""]
    return "\n".join(lines)


def _corner_range(row: dict[str, Any]) -> str:
    aucs = [c["auc"] for c in row.get("flow_corners", [])]
    return f"{min(aucs):.3f}-{max(aucs):.3f} ({len(aucs)})" if aucs else ""


def main(argv: list[str] | None = None) -> int:
    from fedhex_hep.config import load_config, parse_override

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/scenarios"))
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenario names")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (TOML value)")
    parser.add_argument("--reuse", action="store_true", help="score models already trained in --out")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(text) for text in args.set)
    config = load_config(overrides=overrides or None)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.only.split(","):
        results.append(run_scenario(name, SCENARIOS[name], args.out, config, reuse=args.reuse))
        (args.out / "scenarios.json").write_text(json.dumps(results, indent=2))
        (args.out / "scenarios.md").write_text(markdown(results, overrides))
    print(markdown(results, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
