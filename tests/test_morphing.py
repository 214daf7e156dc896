"""Moment morphing and quantile interpolation on Gaussian families with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.generation.morphing import (
    MomentMorphing,
    MorphingError,
    QuantileInterpolation,
    morph_generate,
)

XS = (100.0, 200.0, 300.0)
YS = (1.0, 2.0, 3.0)
N_PER_POINT = 20000


def truth(x: float, y: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Means, widths (per feature) and correlation of the family at (x, y): linear in x, y."""
    mean = np.array([0.9 * x + 5 * y, 10.0 - y + 0.01 * x])
    width = np.array([0.05 * x + 2 * y, 0.5 + 0.1 * y])
    return mean, width, 0.6


def draw(x: float, y: float, n: int, rng: np.random.Generator) -> np.ndarray:
    mean, width, rho = truth(x, y)
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return mean + z * width


def make_grid(skip: tuple[float, float] | None = None, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for x in XS:
        for y in YS:
            if skip is not None and (x, y) == skip:
                continue
            feats.append(draw(x, y, N_PER_POINT, rng))
            labels.append(np.tile([x, y], (N_PER_POINT, 1)))
    return FeatureSet.from_numpy(
        np.concatenate(feats), np.concatenate(labels), ["m1", "m2"], ["gx", "gy"], metadata={"config": {"k": 1}}
    )


@pytest.fixture(scope="module")
def grid() -> FeatureSet:
    return make_grid()


@pytest.fixture(scope="module")
def grid_without_centre() -> FeatureSet:
    return make_grid(skip=(200.0, 2.0), seed=1)


def assert_matches_truth(sample: np.ndarray, x: float, y: float) -> None:
    mean, width, rho = truth(x, y)
    n = len(sample)
    # mean within 4 sigma of its statistical error, width within 3% (stat ~0.5%)
    assert np.all(np.abs(sample.mean(axis=0) - mean) < 4 * width / np.sqrt(n) + 1e-9)
    np.testing.assert_allclose(sample.std(axis=0), width, rtol=0.03)
    assert np.corrcoef(sample.T)[0, 1] == pytest.approx(rho, abs=0.03)
    ref = draw(x, y, n, np.random.default_rng(99))
    for f in range(2):
        assert stats.ks_2samp(sample[:, f], ref[:, f]).pvalue > 1e-3


@pytest.mark.parametrize("kind", ["plain", "robust", "quantile"])
def test_reproduces_intermediate_gaussian_inside_cell(grid, kind):
    interp = QuantileInterpolation(grid) if kind == "quantile" else MomentMorphing(grid, robust=kind == "robust")
    point = (150.0, 2.5)
    w = interp.weights(point)
    assert w.sum() == pytest.approx(1.0)
    assert np.count_nonzero(w) == 4 and np.all(w >= 0)
    assert_matches_truth(interp.sample(point, 20000, seed=3), *point)


@pytest.mark.parametrize("kind", ["plain", "robust", "quantile"])
def test_held_out_centre_from_its_neighbours(grid_without_centre, kind):
    mc = grid_without_centre
    interp = QuantileInterpolation(mc) if kind == "quantile" else MomentMorphing(mc, robust=kind == "robust")
    w = interp.weights((200.0, 2.0))
    used = {tuple(p) for p in interp.points[w > 0]}
    # the two neighbours along each axis, equal weights (both lines tie as smallest cells)
    assert used == {(100.0, 2.0), (300.0, 2.0), (200.0, 1.0), (200.0, 3.0)}
    np.testing.assert_allclose(w[w > 0], 0.25)
    assert_matches_truth(interp.sample((200.0, 2.0), 20000, seed=4), 200.0, 2.0)


def test_on_an_edge_uses_the_two_neighbours(grid):
    morph = MomentMorphing(grid)
    w = morph.weights((250.0, 3.0))
    used = {tuple(p): wk for p, wk in zip(map(tuple, morph.points), w) if wk > 0}
    assert used == {(200.0, 3.0): pytest.approx(0.5), (300.0, 3.0): pytest.approx(0.5)}


def test_at_a_grid_point_returns_its_own_shape(grid):
    own = grid.at_label((100.0, 1.0)).features
    for interp in (MomentMorphing(grid), MomentMorphing(grid, robust=True), QuantileInterpolation(grid)):
        w = interp.weights((100.0, 1.0))
        assert w.max() == pytest.approx(1.0)
        sample = interp.sample((100.0, 1.0), 5000, seed=1)
        for f in range(2):
            assert stats.ks_2samp(sample[:, f], own[:, f]).pvalue > 1e-3
    # moment morphing at a grid point is a subsample of that point's MC, unchanged
    sample = MomentMorphing(grid).sample((100.0, 1.0), 5000, seed=1)
    own_rows = {tuple(r) for r in np.round(own, 9)}
    assert all(tuple(r) in own_rows for r in np.round(sample, 9))


def test_mixture_is_not_a_single_reference(grid):
    # morphing inside a cell must use all four corners: the result differs from each corner
    morph = MomentMorphing(grid)
    sample = morph.sample((150.0, 1.5), 20000, seed=5)
    for corner in [(100.0, 1.0), (200.0, 1.0), (100.0, 2.0), (200.0, 2.0)]:
        assert stats.ks_2samp(sample[:, 0], grid.at_label(corner).features[:, 0]).pvalue < 1e-6


def test_seeds_reproduce(grid):
    morph = MomentMorphing(grid)
    np.testing.assert_array_equal(morph.sample((150.0, 1.5), 100, seed=7), morph.sample((150.0, 1.5), 100, seed=7))
    assert not np.array_equal(morph.sample((150.0, 1.5), 100, seed=7), morph.sample((150.0, 1.5), 100, seed=8))


def test_outside_grid_and_missing_corner_refused(grid):
    morph = MomentMorphing(grid)
    with pytest.raises(MorphingError, match="outside the MC grid in gx"):
        morph.weights((350.0, 2.0))
    with pytest.raises(MorphingError, match="3 values"):
        morph.weights((150.0, 2.0, 1.0))
    corner_missing = grid.select(~grid.mask_label((300.0, 3.0)) & ~grid.mask_label((200.0, 3.0)))
    with pytest.raises(MorphingError, match="no grid cell"):
        MomentMorphing(corner_missing).weights((250.0, 2.5))


def test_morph_generate_featureset(grid):
    points = np.array([[150.0, 1.5], [250.0, 2.5]])
    out = morph_generate(grid, points, 1000, seed=2)
    assert len(out) == 2000
    assert out.feature_names == ["m1", "m2"] and out.label_names == ["gx", "gy"]
    np.testing.assert_array_equal(out.label_points(), points)
    assert out.metadata["source"] == "generated"
    assert out.metadata["method"] == "morph"
    assert out.metadata["morph_kind"] == "moment"
    assert out.metadata["config"] == {"k": 1}
    assert len(out.metadata["morph_points"][0]["weights"]) == 4
    quant = morph_generate(grid, points[:1], 500, seed=2, kind="quantile")
    assert quant.metadata["morph_kind"] == "quantile"
    with pytest.raises(MorphingError, match="expected one of"):
        morph_generate(grid, points, 10, kind="spline")
