"""The band-coverage benchmark's binning and reference histograms (benchmarks/band_coverage.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import band_coverage  # noqa: E402

from fedhex_hep.io.featureset import FeatureSet  # noqa: E402


def _reference() -> FeatureSet:
    rng = np.random.default_rng(3)
    a = np.column_stack([rng.normal(100, 10, 2000), rng.normal(5, 1, 2000)])
    b = np.column_stack([rng.normal(300, 30, 1000), rng.normal(9, 2, 1000)])
    labels = np.repeat([[1000.0, 1.0], [2000.0, 2.0]], [2000, 1000], axis=0)
    return FeatureSet.from_numpy(np.vstack([a, b]), labels, ["x", "y"], ["mx", "my"])


def test_bins_come_from_the_point_and_reference_drops_events_outside_any_binning():
    ref = _reference()
    point = np.array([2000.0, 2.0])
    bins = band_coverage.fixed_bins(ref, point, 10)
    x = ref.features[ref.mask_label(point)]
    for i, f in enumerate(("x", "y")):
        lo, hi = np.quantile(x[:, i], [0.001, 0.999])
        assert np.allclose(bins[f], np.linspace(lo, hi, 11))
    counts = band_coverage.reference_hists(ref, point, bins)
    inside = np.all([(x[:, i] >= bins[f][0]) & (x[:, i] < bins[f][-1]) for i, f in enumerate(("x", "y"))], axis=0)
    # the same events enter both features' histograms: only those inside every binning
    assert counts["x"].sum() == counts["y"].sum() == inside.sum() < len(x)
    assert np.array_equal(counts["y"], np.histogram(x[inside, 1], bins=bins["y"])[0])
