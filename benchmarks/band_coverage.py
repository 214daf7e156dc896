"""Coverage of the interpolation band at held-out points of the scenario suite.

For a scenario of :mod:`scenarios` (same grid and same fresh reference MC at its off-grid
points), train ONE model: the default config with ``BAND_MODEL``'s changes (3 members, each on
its own bootstrap replica of the events). At each held-out point, generate the nominal
template and its band ``nominal +- band_scale(3) * std_k(member_k)`` exactly as
``fedhex-hep generate --scan ... --variations`` does (:class:`FlowTemplateProcessor` with
``variations=True``), as many events as the reference holds there, on a fixed binning taken
from the reference (``--bins`` bins per feature between the 0.1% and 99.9% quantiles of the
reference at that point; reference events outside the binning are dropped, as the generation drops them).

Coverage (:func:`fedhex_hep.generation.uncertainty.band_coverage`): the reference is scaled to
the nominal's sum; over the fewest bins (in decreasing reference content) that hold 95% of the
reference, the fraction where the reference lies in ``[nominal - hypot(nominal - down, s),
nominal + hypot(up - nominal, s)]``, ``s`` the reference's own statistical error. The target of
a one-sigma band is >= 68%.

    python benchmarks/band_coverage.py --out output/scenarios --only coarse [--reuse] [--append benchmarks/SCENARIOS.md]

Caches the grid and reference as :mod:`scenarios` does (``<out>/<scenario>/``); the ensemble
model goes to ``<out>/<scenario>/model_ensemble3``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402

ENSEMBLE = 3
SEED = 1
# The band's own model: the default config with these changes (a 3-member bootstrap ensemble of
# flows of [64, 64] units, each holding out 20% of its events for a validation loss).
BAND_MODEL: dict[str, Any] = {
    "model.ensemble": ENSEMBLE,
    "model.bootstrap": True,
    "model.hidden_units": [64, 64],
    "training.validation_fraction": 0.2,
    "training.batch_size": 4096,
}


def fixed_bins(ref: Any, point: np.ndarray, n_bins: int) -> dict[str, list[float]]:
    """Per feature: ``n_bins`` equal bins between the 0.1% and 99.9% quantiles of the reference at
    ``point`` (GeV), fixed before anything is generated."""
    out = {}
    sel = ref.mask_label(point)
    for f in ref.feature_names:
        lo, hi = np.quantile(np.asarray(ref.column(f), dtype=np.float64)[sel], [0.001, 0.999])
        out[f] = np.linspace(lo, hi, n_bins + 1).tolist()
    return out


def reference_hists(ref: Any, point: np.ndarray, bins: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Reference counts per feature at ``point``, from the events inside every feature's binning."""
    sel = ref.mask_label(point)
    cols = {f: np.asarray(ref.column(f), dtype=np.float64)[sel] for f in bins}
    inside = np.ones(int(sel.sum()), dtype=bool)
    for f, edges in bins.items():
        inside &= (cols[f] >= edges[0]) & (cols[f] < edges[-1])
    return {f: np.histogram(cols[f][inside], bins=edges)[0].astype(np.float64) for f, edges in bins.items()}


def score_point(model_dir: Path, point: np.ndarray, ref: Any, bins: dict[str, list[float]]) -> dict[str, Any]:
    """Band coverage per feature and pooled over the features at one held-out point."""
    from fedhex_hep.generation.uncertainty import band_coverage
    from fedhex_hep.processors.generation import FlowTemplateProcessor, template_name, variation_name

    counts = reference_hists(ref, point, bins)
    n_events = int(next(iter(counts.values())).sum())
    proc = FlowTemplateProcessor(model_dir, point[None, :], n_events, bins, seed=SEED, variations=True)
    hists, _ = proc.generate_point(0)
    out: dict[str, Any] = {"n_events": n_events, "features": {}}
    for f in bins:
        name = template_name(f, proc.label_names, point)
        up, down = (hists[variation_name(name, proc.syst, d)] for d in ("Up", "Down"))
        out["features"][f] = band_coverage(hists[name], up, down, counts[f], reference_var=counts[f])
    covered = sum(c["n_covered"] for c in out["features"].values())
    n_bins = sum(c["n_bins"] for c in out["features"].values())
    out.update(coverage=covered / n_bins, n_bins=n_bins, n_covered=covered)
    return out


def run(name: str, out: Path, n_bins: int, reuse: bool) -> dict[str, Any]:
    """Train (or with ``reuse`` load) the ensemble model of scenario ``name`` and score its points."""
    from fedhex_hep.config import load_config
    from fedhex_hep.model.training import train

    spec = scenarios.SCENARIOS[name]
    config = load_config(overrides=BAND_MODEL)
    workdir = out / name
    workdir.mkdir(parents=True, exist_ok=True)
    grid = scenarios.grid_features(name, spec, workdir, config)
    kinds, points = scenarios.evaluation_points(spec)
    ref = scenarios.reference(spec, points, workdir, config)
    model_dir = workdir / f"model_ensemble{ENSEMBLE}"
    if not (reuse and (model_dir / "training.json").exists()):
        train(grid, config, model_dir, progress=False, overwrite=True)
    train_s = float(sum(json.loads((model_dir / "training.json").read_text())["epoch_seconds"]))
    rows = []
    for kind, point in zip(kinds, points):
        bins = fixed_bins(ref, point, n_bins)
        row = {"point": point.tolist(), "kind": kind, **score_point(model_dir, point, ref, bins)}
        rows.append(row)
        print(f"[{name}] {kind} {point.tolist()}: coverage {row['coverage']:.2f} of {row['n_bins']} bins", flush=True)
    return {"scenario": name, "train_seconds": train_s, "bins_per_feature": n_bins, "rows": rows}


def _settings(overrides: dict[str, Any]) -> str:
    """Config overrides as TOML assignments, `key = value`, ... (JSON spells these values as TOML does)."""
    return ", ".join(f"`{key} = {json.dumps(value)}`" for key, value in overrides.items())


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per scenario: coverage pooled over the features, and per feature."""
    lines = ["## Interpolation band coverage", ""]
    lines += [
        f"One model per scenario with the default config and {_settings(BAND_MODEL)} (each member fitted to its own "
        "bootstrap replica of the events); at each held-out point the "
        "nominal template and its band (nominal +- band_scale(3) = 1.53 x the members' std per bin, a one-sigma prediction "
        "interval, as `generate --scan --variations`), "
        "as many events as the reference there, 1D templates per feature, in equal bins between the 0.1% and 99.9% quantiles of the point's reference. "
        "Coverage (`band_coverage`): over the fewest bins holding 95% of the reference (scaled to the nominal's sum), "
        "the fraction where the reference lies inside the band widened in quadrature by the reference's own "
        "statistical error. Target: >= 68%.",
        "",
    ]
    for res in results:
        feats = list(res["rows"][0]["features"])
        lines += [
            f"### {res['scenario']} ({res['bins_per_feature']} bins per feature; training {res['train_seconds']:.0f} s)",
            "",
            "| point (m_Phi, m_omega) | kind | coverage | bins counted | " + " | ".join(f"{f}: covered / bins" for f in feats) + " |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in feats) + " |",
        ]
        for r in res["rows"]:
            per = " | ".join(f"{c['n_covered']} / {c['n_bins']}" for c in r["features"].values())
            lines.append(f"| ({r['point'][0]:g}, {r['point'][1]:g}) | {r['kind']} | {r['coverage']:.0%} | {r['n_bins']} | {per} |")
        total = sum(r["n_covered"] for r in res["rows"]) / sum(r["n_bins"] for r in res["rows"])
        worst = min(r["coverage"] for r in res["rows"])
        lines += ["", f"All points: {total:.0%} of the bins covered; lowest point {worst:.0%}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/scenarios"))
    parser.add_argument("--only", default="coarse", help="comma-separated scenario names")
    parser.add_argument("--bins", type=int, default=40, help="bins per feature")
    parser.add_argument("--reuse", action="store_true", help="score an ensemble model already trained in --out")
    parser.add_argument("--append", type=Path, help="append the markdown tables to this file")
    args = parser.parse_args(argv)
    results = [run(name, args.out, args.bins, args.reuse) for name in args.only.split(",")]
    (args.out / "band_coverage.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
