"""How much the training grid's own statistics move an interpolation at a mass point.

Any model that learns from a grid of MC samples inherits their statistical fluctuations: at a
point between grid points it can be no better than the events around it allow, unless it
pools many more of them. :func:`grid_noise` measures that inherited noise for the simplest
local interpolator, horizontal (quantile) interpolation (Read, NIM A 425 (1999) 357), whose
quantiles at a point are exactly ``Q(u) = sum_k w_k Q_k(u)`` over the surrounding grid points
``k`` (the bilinear weights of :class:`fedhex_hep.generation.morphing.GridInterpolator`):

  every grid point's events are split at random into two halves A and B; the median, IQR and
  half the 16-84% range at the point are interpolated from the A halves and from the B halves,
  and compared like a candidate with its reference (relative median shift, relative width
  errors). The difference of two independent half-grid estimates has four times the variance
  of one estimate from the full grid (variance ~ 1/n), so ``rms(difference) / 2`` over many
  splits is the noise of the full grid's interpolation at that point.

Read a closure error at a held-out point against both noise sources: the reference's (the
statistical floor, :func:`fedhex_hep.validation.metrics.floor_spread`) and the training grid's (this).
It is a property of the grid, not of the flow: a flow that pools more grid points can do
better, one that follows each grid point's fluctuations does about as badly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.errors import FedhexError

__all__ = ["GridNoiseError", "grid_noise"]

#: the quantiles behind the median shift and the two width errors
_QUANTILES = np.array([0.16, 0.25, 0.5, 0.75, 0.84])


class GridNoiseError(FedhexError, ValueError):
    """Bad input to :func:`grid_noise` (e.g. fewer than one split); the message says which."""


def _shift_and_widths(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """(median shift, IQR error, half-68% error) of quantiles ``qa`` against ``qb``, per feature.

    ``qa``, ``qb``: (5, F) at the 16/25/50/75/84% quantiles.
    """
    shift = (qa[2] - qb[2]) / np.abs(qb[2])
    iqr = (qa[3] - qa[1]) / (qb[3] - qb[1]) - 1.0
    half68 = (qa[4] - qa[0]) / (qb[4] - qb[0]) - 1.0
    return np.stack([shift, iqr, half68])


def grid_noise(
    grid: FeatureSet,
    points: Any,
    n_splits: int = 50,
    seed: int = 0,
) -> list[dict[str, dict[str, float]]]:
    """Noise of each feature's median shift and width errors at ``points`` from the grid's statistics.

    ``grid``: the MC the model is trained on (one sample per label point). ``points``: (k, L)
    mass points in label units (GeV), each inside the grid's cells. Returns one dict per point,
    ``{feature: {"median_shift", "width_error_iqr", "width_error_68"}}`` (relative, unitless;
    the keys of :func:`fedhex_hep.validation.metrics.floor_spread`).
    """
    from fedhex_hep.generation.morphing import GridInterpolator

    if n_splits < 1:
        raise GridNoiseError(f"n_splits must be >= 1, got {n_splits}")
    interp = GridInterpolator(grid, min_events=4)
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    weights = np.array([interp.weights(p) for p in points])  # (k, n_grid): raises outside the grid
    used = np.nonzero(weights.any(axis=0))[0]
    rng = np.random.default_rng(seed)
    sq = np.zeros((len(points), 3, len(interp.feature_names)))
    for _ in range(n_splits):
        qa = np.zeros((len(points), len(_QUANTILES), len(interp.feature_names)))
        qb = np.zeros_like(qa)
        for k in used:
            sample = interp.samples[k]
            perm = rng.permutation(len(sample))
            half = len(sample) // 2
            a = np.quantile(sample[perm[:half]], _QUANTILES, axis=0)
            b = np.quantile(sample[perm[half : 2 * half]], _QUANTILES, axis=0)
            qa += weights[:, k, None, None] * a
            qb += weights[:, k, None, None] * b
        for i in range(len(points)):
            sq[i] += _shift_and_widths(qa[i], qb[i]) ** 2
    rms = np.sqrt(sq / n_splits) / 2.0  # half-grid difference -> full-grid noise
    keys = ("median_shift", "width_error_iqr", "width_error_68")
    return [
        {name: {key: float(rms[i, j, f]) for j, key in enumerate(keys)} for f, name in enumerate(interp.feature_names)}
        for i in range(len(points))
    ]
