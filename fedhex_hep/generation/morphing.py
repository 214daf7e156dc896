"""Classical interpolation between MC mass points: the baselines a flow has to beat.

Two methods, both built from the MC events of a grid of label (mass) points:

* :class:`MomentMorphing` -- linear moment morphing (M. Baak, S. Gadatsch, R. Harrington,
  W. Verkerke, NIM A 771 (2015) 39). The target point gets interpolation weights ``w_k`` on
  the corners of its grid cell (bilinear in the label values). Per feature, each corner's
  events are shifted and scaled, ``x' = (x - m_k) * s / s_k + m``, where ``(m_k, s_k)`` are the
  corner's location and width and ``(m, s) = sum_k w_k (m_k, s_k)`` the interpolated ones; the
  result is the mixture of the transformed corner samples with weights ``w_k``. Moments are
  mean/standard deviation, or median/IQR with ``robust=True`` (insensitive to far tails). The
  per-event transform is applied to every feature of the event, so each corner's correlations
  between features are kept.
* :class:`QuantileInterpolation` -- horizontal (quantile) interpolation (A. L. Read, NIM A 425
  (1999) 357), per feature: the target inverse CDF is ``Q(u) = sum_k w_k Q_k(u)`` with the same
  bilinear weights. The joint distribution is built with the empirical copula of the corner
  nearest to the target point: its events' per-feature ranks give ``u`` (jittered within the
  rank), which are mapped through each feature's interpolated ``Q``.

Cell choice (documented behaviour): for each label axis the target is bracketed by grid values
below and above it (a single value when the target lies on it); a cell is usable when all its
corners are grid points with MC. The usable cells of smallest size (in units of the typical grid
spacing per axis) are used; if several tie (e.g. a held-out grid point, which lies on a grid line
in both directions: its two neighbours along each axis), their weights are averaged. All weights
are therefore non-negative (never extrapolation): a point outside the grid's convex cells, or
whose surrounding cell has a corner without MC, raises :class:`MorphingError`.

Sampling draws events from the corner samples (without replacement while a corner has enough
events, with replacement beyond), so results for ``n`` larger than the MC statistics repeat MC
events: the statistical precision of a morphed sample is that of the MC it is built from.
Event weights of the MC are ignored (unit-weight MC assumed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.errors import FedhexError

__all__ = [
    "MorphingError",
    "GridInterpolator",
    "MomentMorphing",
    "QuantileInterpolation",
    "morph_generate",
    "MORPH_METHODS",
]

#: names accepted by :func:`morph_generate` (``kind``) and the validation report
MORPH_METHODS = ("moment", "moment_robust", "quantile")


class MorphingError(FedhexError, ValueError):
    """A point cannot be interpolated (outside the grid, missing corner) or bad input."""


def _fmt(point: Sequence[float], names: Sequence[str]) -> str:
    return ", ".join(f"{n}={v:g}" for n, v in zip(names, point))


class GridInterpolator:
    """Interpolation weights on the MC grid points of a FeatureSet (see module docstring)."""

    def __init__(self, featureset: FeatureSet, min_events: int = 2) -> None:
        if len(featureset) == 0:
            raise MorphingError("morphing needs MC events, the FeatureSet is empty")
        self.feature_names = list(featureset.feature_names)
        self.label_names = list(featureset.label_names)
        self.metadata = dict(featureset.metadata)
        features = featureset.features
        labels = featureset.labels
        points, inverse = np.unique(labels, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        self.points = points
        self.samples: list[np.ndarray] = [features[inverse == k] for k in range(len(points))]
        for point, sample in zip(points, self.samples):
            if len(sample) < min_events:
                raise MorphingError(
                    f"mass point {_fmt(point, self.label_names)} has {len(sample)} MC events; "
                    f"morphing needs at least {min_events}"
                )
        self._index = {tuple(p): k for k, p in enumerate(points)}
        self.axes = [np.unique(points[:, d]) for d in range(points.shape[1])]
        # typical spacing per axis, so that cell sizes along different axes are comparable
        self.spacing = np.array(
            [np.median(np.diff(ax)) if len(ax) > 1 else 1.0 for ax in self.axes], dtype=np.float64
        )

    def _point(self, point: Sequence[float]) -> np.ndarray:
        point = np.asarray(point, dtype=np.float64).reshape(-1)
        if point.size != len(self.label_names):
            raise MorphingError(
                f"mass point {list(point)} has {point.size} values for labels {self.label_names}"
            )
        return point

    def weights(self, point: Sequence[float]) -> np.ndarray:
        """Non-negative weights (summing to 1) on the grid points for ``point``."""
        point = self._point(point)
        options: list[list[tuple[float, ...]]] = []
        for d, ax in enumerate(self.axes):
            x = point[d]
            close = np.isclose(ax, x, rtol=1e-9, atol=0.0)
            below, above = ax[(ax < x) & ~close], ax[(ax > x) & ~close]
            opts: list[tuple[float, ...]] = [(float(v),) for v in ax[close]]
            opts += [(float(lo), float(hi)) for lo in below for hi in above]
            if not opts:
                raise MorphingError(
                    f"mass point {_fmt(point, self.label_names)} is outside the MC grid in "
                    f"{self.label_names[d]} (grid {ax.min():g}..{ax.max():g}); morphing does not extrapolate"
                )
            options.append(opts)
        best_size, best_cells = np.inf, []
        for combo in itertools.product(*options):
            size = sum((c[-1] - c[0]) / s for c, s in zip(combo, self.spacing))
            if size > best_size + 1e-9:
                continue
            corners = list(itertools.product(*combo))
            if not all(c in self._index or self._find(c) is not None for c in corners):
                continue
            if size < best_size - 1e-9:
                best_size, best_cells = size, []
            best_cells.append(combo)
        if not best_cells:
            raise MorphingError(
                f"mass point {_fmt(point, self.label_names)}: no grid cell around it has MC at all "
                "of its corners"
            )
        total = np.zeros(len(self.points))
        for combo in best_cells:
            # linear weight per axis, product over axes (bilinear in 2D)
            per_axis = []
            for d, c in enumerate(combo):
                if len(c) == 1:
                    per_axis.append([(c[0], 1.0)])
                else:
                    t = (point[d] - c[0]) / (c[1] - c[0])
                    per_axis.append([(c[0], 1.0 - t), (c[1], t)])
            for corner in itertools.product(*per_axis):
                key = tuple(v for v, _ in corner)
                w = float(np.prod([w for _, w in corner]))
                k = self._index.get(key)
                if k is None:
                    k = self._find(key)
                total[k] += w / len(best_cells)
        return total

    def _find(self, corner: tuple[float, ...]) -> int | None:
        hits = np.nonzero(np.all(np.isclose(self.points, corner, rtol=1e-9, atol=0.0), axis=1))[0]
        return int(hits[0]) if hits.size else None

    def nearest(self, point: Sequence[float], weights: np.ndarray | None = None) -> int:
        """Index of the grid point nearest to ``point`` (in grid-spacing units) among those used."""
        point = self._point(point)
        dist = np.sqrt((((self.points - point) / self.spacing) ** 2).sum(axis=1))
        if weights is not None:
            dist = np.where(weights > 0, dist, np.inf)
        return int(np.argmin(dist))

    def _draw(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        sample = self.samples[k]
        replace = n > len(sample)
        return sample[rng.choice(len(sample), size=n, replace=replace)]


class MomentMorphing(GridInterpolator):
    """Linear moment morphing on the MC grid (see the module docstring).

    ``MomentMorphing(mc, robust=False).sample(point, n, seed)`` returns ``(n, n_features)``.
    """

    def __init__(self, featureset: FeatureSet, robust: bool = False) -> None:
        super().__init__(featureset)
        self.robust = robust
        if robust:
            loc = [np.median(s, axis=0) for s in self.samples]
            q = [np.quantile(s, [0.25, 0.75], axis=0) for s in self.samples]
            width = [qq[1] - qq[0] for qq in q]
        else:
            loc = [s.mean(axis=0) for s in self.samples]
            width = [s.std(axis=0) for s in self.samples]
        self.loc = np.array(loc)
        self.width = np.array(width)
        for point, w in zip(self.points, self.width):
            if np.any(w <= 0):
                bad = [n for n, v in zip(self.feature_names, w) if v <= 0]
                raise MorphingError(
                    f"mass point {_fmt(point, self.label_names)}: feature(s) {bad} have zero width"
                )

    def moments(self, point: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated (location, width) per feature at ``point``."""
        w = self.weights(point)
        return w @ self.loc, w @ self.width

    def sample(self, point: Sequence[float], n: int, seed: int = 0) -> np.ndarray:
        """``n`` morphed events at ``point``, shape (n, n_features)."""
        rng = np.random.default_rng(seed)
        w = self.weights(point)
        loc, width = w @ self.loc, w @ self.width
        counts = rng.multinomial(int(n), w)
        parts = []
        for k in np.nonzero(counts)[0]:
            x = self._draw(k, counts[k], rng)
            parts.append((x - self.loc[k]) * (width / self.width[k]) + loc)
        out = np.concatenate(parts) if parts else np.empty((0, len(self.feature_names)))
        return out[rng.permutation(len(out))]


class QuantileInterpolation(GridInterpolator):
    """Per-feature quantile (horizontal) interpolation with the nearest point's copula.

    ``QuantileInterpolation(mc).sample(point, n, seed)`` returns ``(n, n_features)``.
    """

    def __init__(self, featureset: FeatureSet) -> None:
        super().__init__(featureset)
        # sorted samples per point and feature: Q_k(u) by linear interpolation of order stats
        self.sorted = [np.sort(s, axis=0) for s in self.samples]

    def _quantile(self, k: int, f: int, u: np.ndarray) -> np.ndarray:
        values = self.sorted[k][:, f]
        pos = u * len(values) - 0.5  # Hazen plotting positions: u_i = (i + 0.5) / n
        return np.interp(pos, np.arange(len(values)), values)

    def sample(self, point: Sequence[float], n: int, seed: int = 0) -> np.ndarray:
        """``n`` interpolated events at ``point``, shape (n, n_features)."""
        rng = np.random.default_rng(seed)
        w = self.weights(point)
        nearest = self.nearest(point, w)
        base = self._draw(nearest, int(n), rng)
        # ranks within the nearest point's sample -> uniform u, jittered inside the rank
        m = len(self.samples[nearest])
        ranks = np.stack(
            [np.searchsorted(self.sorted[nearest][:, f], base[:, f], side="left") for f in range(base.shape[1])],
            axis=1,
        )
        u = (ranks + rng.uniform(size=ranks.shape)) / m
        out = np.zeros_like(u)
        for k in np.nonzero(w)[0]:
            for f in range(u.shape[1]):
                out[:, f] += w[k] * self._quantile(k, f, u[:, f])
        return out


def _interpolator(featureset: FeatureSet, kind: str) -> GridInterpolator:
    if kind == "moment":
        return MomentMorphing(featureset, robust=False)
    if kind == "moment_robust":
        return MomentMorphing(featureset, robust=True)
    if kind == "quantile":
        return QuantileInterpolation(featureset)
    raise MorphingError(f"morphing kind {kind!r}: expected one of {', '.join(MORPH_METHODS)}")


def morph_generate(
    featureset: FeatureSet,
    points: Any,
    n_events: int,
    seed: int = 0,
    kind: str = "moment",
) -> FeatureSet:
    """Generate ``n_events`` per mass point by interpolating the MC (``--method morph``).

    ``points``: (k, n_labels) mass points (GeV). ``kind``: "moment" (default), "moment_robust"
    or "quantile". Returns a FeatureSet like the flow generator's, with metadata
    ``source="generated"``, ``method="morph"``, ``morph_kind``, the MC's ``config`` and the
    interpolation weights used per point.
    """
    from fedhex_hep import __version__

    if n_events < 1:
        raise MorphingError(f"n_events must be >= 1, got {n_events}")
    interp = _interpolator(featureset, kind)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[None, :]
    features, labels, used = [], [], []
    for i, point in enumerate(points):
        x = interp.sample(point, n_events, seed=seed + i)
        features.append(x)
        labels.append(np.repeat(point[None, :], len(x), axis=0))
        w = interp.weights(point)
        used.append(
            {
                "label": dict(zip(interp.label_names, map(float, point))),
                "weights": [
                    {"label": dict(zip(interp.label_names, map(float, interp.points[k]))), "weight": float(w[k])}
                    for k in np.nonzero(w)[0]
                ],
            }
        )
    metadata = {
        "source": "generated",
        "method": "morph",
        "morph_kind": kind,
        "seed": int(seed),
        "version": __version__,
        "config": featureset.metadata.get("config", {}),
        "morph_points": used,
    }
    return FeatureSet.from_numpy(
        np.concatenate(features),
        np.concatenate(labels),
        interp.feature_names,
        interp.label_names,
        metadata=metadata,
    )
