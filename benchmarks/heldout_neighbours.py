"""Does the flow's width error at a held-out point follow its training neighbours' fluctuations?

A model trained on a grid of finite MC samples inherits their fluctuations. This compares, at
each held-out point of the reference, the flow's widths with a large independent MC sample (the
truth) and sets beside it how far the training grid's own events deviate from the truth at the
point's four direct grid neighbours (m_Phi -+ one step, m_omega -+ one step; their mean). Widths:
IQR and half the 16-84% range of each feature. A correlation near 1 with a slope near 1 means
the flow copies its neighbours' noise; near 0, its error is its own.

    fedhex-hep make-samples signal output/truth --phi 750,1000,1250,1500,1750,2000,2500 --omega 2.5,5,7.5 --events 200000 --seed 99
    fedhex-hep make-samples signal output/truth --phi 1000,1500,2000 --omega 1.75,3.25,4,4.5,5.5,6,6.75,8.75,10 --events 200000 --seed 99
    fedhex-hep extract --input output/truth --set input.min_events_per_label=0 -o output/truth.parquet
    python benchmarks/heldout_neighbours.py output/validate/models/group0-seed1 output/validate/models/group0-seed2 \\
        output/validate/models/group0-seed3 --grid output/demo_mc.parquet --truth output/truth.parquet \\
        --reference output/reference.parquet

(The models are those ``validate --holdout all`` trained without the reference's points; the
truth's seed differs from the grid's and the reference's. A point's events do not depend on the
other points of a ``make-samples`` call, so the two calls above give the held-out points and
their neighbours on the 8 x 9 grid and on the 8 x 13 one, 101k-132k selected events each.
Several models are sampled as their equal-weight mixture, like validate's "3-seed mixture".)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedhex_hep.io.featureset import FeatureSet  # noqa: E402
from fedhex_hep.generation.sampling import generate  # noqa: E402
from fedhex_hep.validation.metrics import half68_width, robust_width  # noqa: E402
from fedhex_hep.model.storage import load_model  # noqa: E402

WIDTHS = (("IQR", robust_width), ("16-84%", half68_width))


def widths(columns: dict[str, np.ndarray], features: list[str]) -> np.ndarray:
    """Every feature's IQR and 16-84% half width, in that order (feature units)."""
    return np.array([width(columns[f]) for f in features for _, width in WIDTHS])


def columns_at(fs: FeatureSet, point: np.ndarray, what: str) -> dict[str, np.ndarray]:
    """The events of ``fs`` at one label point; KeyError naming the file's role if there are none."""
    events = fs.at_label(point)
    if len(events) == 0:
        raise KeyError(f"{what} has no events at {tuple(float(v) for v in point)}")
    return {f: np.asarray(events.column(f)) for f in fs.feature_names}


def neighbours(point: np.ndarray, grid: np.ndarray) -> list[np.ndarray]:
    """The four direct neighbours of an interior ``point`` on the rectangular label ``grid``."""
    axes = [np.unique(grid[:, k]) for k in range(grid.shape[1])]
    found = []
    for k, axis in enumerate(axes):
        i = int(np.searchsorted(axis, point[k]))
        if i == len(axis) or not np.isclose(axis[i], point[k]):
            raise KeyError(f"{tuple(float(v) for v in point)} is not on the grid's label axis {k}")
        for j in (i - 1, i + 1):
            if not 0 <= j < len(axis):
                raise KeyError(f"{tuple(float(v) for v in point)} has no neighbour on the grid's label axis {k}")
            q = point.copy()
            q[k] = axis[j]
            found.append(q)
    return found


def rms(x: np.ndarray) -> float:
    """Root mean square (the mean included, unlike a standard deviation)."""
    return float(np.sqrt(np.mean(np.square(x))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders trained without the reference's points")
    parser.add_argument("--grid", required=True, help="FeatureSet parquet: the training grid (e.g. output/demo_mc.parquet)")
    parser.add_argument("--truth", required=True, help="FeatureSet parquet: large independent MC at the points and neighbours")
    parser.add_argument("--reference", required=True, help="FeatureSet parquet: validate's reference (its points are scored)")
    parser.add_argument("--events", type=int, default=200000, help="generated events per point and model")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)

    grid, truth, reference = (FeatureSet.load(p) for p in (args.grid, args.truth, args.reference))
    features = reference.feature_names
    points = reference.label_points()
    grid_points = grid.label_points()
    generated = [generate(load_model(m), points, args.events, seed=args.seed + i) for i, m in enumerate(args.models)]

    names = [f"{f} {w}" for f in features for w, _ in WIDTHS]
    print("Relative width errors in %, per feature and width: " + ", ".join(names))
    print()
    print("| held-out point | flow vs truth | grid vs truth, mean over the 4 neighbours | reference vs truth | flow vs reference |")
    print("| --- | --- | --- | --- | --- |")
    flow_errors, grid_deviations = [], []
    for point in points:
        true = widths(columns_at(truth, point, "--truth"), features)
        parts = [columns_at(g, point, "generated sample") for g in generated]
        flow = widths({f: np.concatenate([p[f] for p in parts]) for f in features}, features)
        near = np.mean(
            [widths(columns_at(grid, q, "--grid"), features) / widths(columns_at(truth, q, "--truth"), features) - 1
             for q in neighbours(point, grid_points)],
            axis=0,
        )
        ref = widths(columns_at(reference, point, "--reference"), features)
        flow_errors.append(100 * (flow / true - 1))
        grid_deviations.append(100 * near)
        cells = [flow_errors[-1], grid_deviations[-1], 100 * (ref / true - 1), 100 * (flow / ref - 1)]
        label = ", ".join(f"{v:g}" for v in point)
        print(f"| ({label}) | " + " | ".join(" / ".join(f"{v:+.1f}" for v in c) for c in cells) + " |")

    err, dev = np.ravel(flow_errors), np.ravel(grid_deviations)
    slope = np.polyfit(dev, err, 1)[0]
    print()
    print(f"flow vs truth over {err.size} widths: mean {err.mean():+.2f}%, rms {rms(err):.2f}%")
    print(f"neighbours' grid vs truth: mean {dev.mean():+.2f}%, rms {rms(dev):.2f}%")
    print(f"correlation {np.corrcoef(dev, err)[0, 1]:.2f}, slope of the flow's error on the neighbours' {slope:.2f}")
    rest = err - slope * dev
    print(f"flow error left after that fit: mean {rest.mean():+.2f}%, rms {rms(rest):.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
