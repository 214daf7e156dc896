"""grid_noise(): the training grid's own statistical noise at a point, against analytic values."""

from __future__ import annotations

import numpy as np
import pytest

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.validation.grid_noise import GridNoiseError, grid_noise
from fedhex_hep.generation.morphing import MorphingError


def _ring_grid(n: int, seed: int) -> FeatureSet:
    """A 3 x 3 label grid without its centre; N(10, 1) for both features at every point."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for x in (1.0, 2.0, 3.0):
        for y in (10.0, 20.0, 30.0):
            if (x, y) == (2.0, 20.0):
                continue
            feats.append(rng.normal(10.0, 1.0, (n, 2)))
            labels.append(np.tile([x, y], (n, 1)))
    return FeatureSet.from_numpy(np.concatenate(feats), np.concatenate(labels), ["a", "b"], ["gx", "gy"])


def test_grid_noise_is_the_analytic_noise_of_the_interpolated_quantiles():
    # The held-out centre gets weight 1/4 on each of its four neighbours (n events each), so an
    # interpolated quantile has half the sd of one neighbour's: the sample median 1.2533/sqrt(n),
    # half the 16-84% range 0.964/sqrt(n), the IQR 1.573/sqrt(n) (asymptotic, N(10, 1)); relative
    # to 10, 0.9945 and 1.349. A missing /2 (half-grid difference -> full grid) would be 100% off,
    # a missing sqrt(2) 41%; the estimate scatters ~10% over grid draws.
    n = 4000
    (noise,) = grid_noise(_ring_grid(n, seed=3), [[2.0, 20.0]], n_splits=300, seed=1)
    expect = {
        "median_shift": 0.5 * 1.2533 / np.sqrt(n) / 10.0,
        "width_error_68": 0.5 * 0.964 / np.sqrt(n) / 0.9945,
        "width_error_iqr": 0.5 * 1.573 / np.sqrt(n) / 1.349,
    }
    assert set(noise) == {"a", "b"}
    for name in ("a", "b"):
        for key, value in expect.items():
            assert noise[name][key] == pytest.approx(value, rel=0.25), (name, key)
    # four times the events per grid point: half the noise
    (big,) = grid_noise(_ring_grid(4 * n, seed=4), [[2.0, 20.0]], n_splits=300, seed=1)
    assert big["a"]["width_error_68"] == pytest.approx(expect["width_error_68"] / 2, rel=0.25)


def test_grid_noise_at_a_grid_point_between_two_columns_uses_only_them():
    # (1.5, 10) lies on the grid line y = 10 between x = 1 and 2: weight 1/2 on each
    n = 4000
    (noise,) = grid_noise(_ring_grid(n, seed=5), [[1.5, 10.0]], n_splits=300, seed=2)
    assert noise["a"]["median_shift"] == pytest.approx(np.sqrt(0.5) * 1.2533 / np.sqrt(n) / 10.0, rel=0.25)


def test_grid_noise_bad_input_names_the_problem():
    grid = _ring_grid(100, seed=0)
    with pytest.raises(MorphingError, match="gx=5"):
        grid_noise(grid, [[5.0, 20.0]])
    with pytest.raises(GridNoiseError, match="n_splits"):
        grid_noise(grid, [[2.0, 20.0]], n_splits=0)
