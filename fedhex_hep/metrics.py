"""Two-sample fidelity metrics: generated (or interpolated) events against MC.

Every metric compares *shapes*: samples are normalised to unit area, and the statistical
uncertainty of BOTH samples enters (generated samples are finite too). Heavy imports
(scikit-learn) happen inside the functions that need them.

Conventions: ``a`` is the candidate (generated / interpolated), ``b`` the reference (MC).
Metrics that need a scale (width, W1) take it from the reference ``b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MetricsError",
    "Chi2Result",
    "KSResult",
    "chi2_from_counts",
    "chi2_ndf",
    "ks_test",
    "quantile_edges",
]


class MetricsError(ValueError):
    """Bad input to a metric (empty sample, mismatched shapes); the message says which."""


class Chi2Result(NamedTuple):
    """Two-sample chi2 of normalised histograms; ``chi2 / ndf`` is ~1 for compatible shapes."""

    chi2: float
    ndf: int
    pvalue: float

    @property
    def chi2_per_ndf(self) -> float:
        return self.chi2 / self.ndf if self.ndf > 0 else float("nan")


class KSResult(NamedTuple):
    statistic: float
    pvalue: float


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise MetricsError(f"sample {name} is empty")
    return arr


def _weights(w: Any, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.ones(n)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise MetricsError(f"{name} has {w.size} entries for {n} events")
    return w


def chi2_from_counts(
    counts_a: np.ndarray, var_a: np.ndarray, counts_b: np.ndarray, var_b: np.ndarray
) -> Chi2Result:
    """Two-sample chi2 of two histograms with different totals (weighted or not).

    chi2 = sum_i (n_a,i/N_a - n_b,i/N_b)^2 / (var_a,i/N_a^2 + var_b,i/N_b^2), summed over bins
    where at least one histogram is non-empty; ndf = (number of those bins) - 1, the one
    constraint being the common normalisation. ``var`` is the sum of squared weights per bin
    (equal to the count for unweighted events). N is the in-range total of each histogram.
    """
    counts_a, var_a, counts_b, var_b = (
        np.asarray(v, dtype=np.float64).reshape(-1) for v in (counts_a, var_a, counts_b, var_b)
    )
    if not (counts_a.shape == var_a.shape == counts_b.shape == var_b.shape):
        raise MetricsError("histograms for the chi2 have different numbers of bins")
    total_a, total_b = counts_a.sum(), counts_b.sum()
    if total_a <= 0 or total_b <= 0:
        raise MetricsError("a histogram for the chi2 has no entries inside the bin range")
    denom = var_a / total_a**2 + var_b / total_b**2
    used = denom > 0
    diff = counts_a[used] / total_a - counts_b[used] / total_b
    chi2 = float(np.sum(diff**2 / denom[used]))
    ndf = int(used.sum()) - 1
    if ndf <= 0:
        return Chi2Result(chi2, ndf, float("nan"))
    from scipy import stats

    return Chi2Result(chi2, ndf, float(stats.chi2.sf(chi2, ndf)))


def chi2_ndf(
    a: Any,
    b: Any,
    edges: Sequence[float] | np.ndarray | int,
    weights_a: Any = None,
    weights_b: Any = None,
) -> Chi2Result:
    """Two-sample chi2 between histograms of samples ``a`` and ``b`` (shapes, both stat errors).

    ``edges``: bin edges (GeV, same units as the samples), or an int number of bins spanning the
    reference ``b``'s 0.5-99.5% quantiles (see :func:`quantile_edges`). Events outside the edges
    are ignored. Returns ``Chi2Result(chi2, ndf, pvalue)``; ``result.chi2_per_ndf`` is the ratio.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    wa = _weights(weights_a, a.size, "weights_a")
    wb = _weights(weights_b, b.size, "weights_b")
    if np.ndim(edges) == 0:
        edges = quantile_edges(b, int(edges))
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise MetricsError("chi2 bin edges must be a strictly increasing 1D sequence of >= 2 values")
    na, _ = np.histogram(a, bins=edges, weights=wa)
    va, _ = np.histogram(a, bins=edges, weights=wa**2)
    nb, _ = np.histogram(b, bins=edges, weights=wb)
    vb, _ = np.histogram(b, bins=edges, weights=wb**2)
    return chi2_from_counts(na, va, nb, vb)


def ks_test(a: Any, b: Any) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp, unweighted)."""
    from scipy import stats

    res = stats.ks_2samp(_as_1d(a, "a"), _as_1d(b, "b"))
    return KSResult(float(res.statistic), float(res.pvalue))


def quantile_edges(ref: Any, bins: int = 40, lo: float = 0.005, hi: float = 0.995) -> np.ndarray:
    """``bins`` equal-width bins spanning the reference's ``lo``-``hi`` quantiles.

    Spanning the bulk (not min/max) keeps single far-tail events from stretching the binning.
    """
    ref = _as_1d(ref, "reference")
    if bins < 1:
        raise MetricsError(f"number of bins must be >= 1, got {bins}")
    q_lo, q_hi = np.quantile(ref, [lo, hi])
    if not q_hi > q_lo:
        # degenerate reference (constant): widen around the value so the histogram exists
        half = max(abs(q_lo) * 1e-6, 1e-12)
        q_lo, q_hi = q_lo - half, q_hi + half
    return np.linspace(q_lo, q_hi, bins + 1)
