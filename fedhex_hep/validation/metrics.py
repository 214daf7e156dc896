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
from fedhex_hep.errors import FedhexError

__all__ = [
    "MetricsError",
    "Chi2Result",
    "KSResult",
    "chi2_from_counts",
    "chi2_ndf",
    "ks_test",
    "quantile_edges",
    "median_shift",
    "width_errors",
    "robust_width",
    "half68_width",
    "wasserstein_rel",
    "classifier_auc",
    "auc_null_sigma",
    "feature_metrics",
    "joint_metrics",
    "compare_samples",
    "split_halves",
    "statistical_floor",
    "floor_spread",
]


class MetricsError(FedhexError, ValueError):
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
    counts_a: np.ndarray,
    var_a: np.ndarray,
    counts_b: np.ndarray,
    var_b: np.ndarray,
    pooled: bool | None = None,
) -> Chi2Result:
    """Two-sample chi2 of two histograms with different totals (weighted or not).

    Weighted form: chi2 = sum_i (n_a,i/N_a - n_b,i/N_b)^2 / (var_a,i/N_a^2 + var_b,i/N_b^2),
    ``var`` being the sum of squared weights per bin.
    Unweighted histograms (``var == counts``; ``pooled=None`` detects it) use the pooled
    estimate of the bin variance, chi2 = sum_i (N_b n_a,i - N_a n_b,i)^2 / (N_a N_b (n_a,i + n_b,i))
    (the classic two-sample test, as ROOT's TH1::Chi2Test "UU"): identical to the weighted
    form for equal totals, and unbiased for sparse bins when the totals differ.
    Sums run over bins where at least one histogram is non-empty; ndf = (those bins) - 1, the
    constraint being the common normalisation. N is the in-range total of each histogram.
    """
    counts_a, var_a, counts_b, var_b = (
        np.asarray(v, dtype=np.float64).reshape(-1) for v in (counts_a, var_a, counts_b, var_b)
    )
    if not (counts_a.shape == var_a.shape == counts_b.shape == var_b.shape):
        raise MetricsError("histograms for the chi2 have different numbers of bins")
    total_a, total_b = counts_a.sum(), counts_b.sum()
    if total_a <= 0 or total_b <= 0:
        raise MetricsError("a histogram for the chi2 has no entries inside the bin range")
    if pooled is None:
        pooled = bool(np.array_equal(var_a, counts_a) and np.array_equal(var_b, counts_b))
    if pooled:
        occupied = counts_a + counts_b
        used = occupied > 0
        num = (total_b * counts_a[used] - total_a * counts_b[used]) ** 2
        chi2 = float(np.sum(num / occupied[used]) / (total_a * total_b))
    else:
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
    """``bins`` equal-width bins spanning the reference's ``lo``-``hi`` quantiles (:func:`fedhex_hep.binning.quantile_edges`)."""
    from fedhex_hep.binning import quantile_edges as edges

    ref = _as_1d(ref, "reference")
    if bins < 1:
        raise MetricsError(f"number of bins must be >= 1, got {bins}")
    return edges(ref, bins, lo, hi, what="reference")


# ---------------------------------------------------------------------------------------------
# per-feature location / width / distance

_IQR_TO_SIGMA = 1.0 / (2.0 * 0.6744897501960817)  # IQR of a unit normal is 1.349


def robust_width(x: Any) -> float:
    """Gaussian-equivalent width from the interquartile range: IQR / 1.349 (same units as x)."""
    q25, q75 = np.quantile(_as_1d(x, "x"), [0.25, 0.75])
    return float((q75 - q25) * _IQR_TO_SIGMA)


def half68_width(x: Any) -> float:
    """Half the 16-84% range (the Gaussian sigma for a normal shape; same units as x)."""
    q16, q84 = np.quantile(_as_1d(x, "x"), [0.16, 0.84])
    return float((q84 - q16) / 2)


def median_shift(a: Any, b: Any) -> float:
    """Relative median shift (median(a) - median(b)) / |median(b)|  (b = reference MC)."""
    med_a, med_b = np.median(_as_1d(a, "a")), np.median(_as_1d(b, "b"))
    if med_b == 0:
        raise MetricsError("reference median is 0: a relative median shift is undefined")
    return float((med_a - med_b) / abs(med_b))


def width_errors(a: Any, b: Any) -> dict[str, float]:
    """Relative width errors of ``a`` against reference ``b``.

    ``iqr``: (IQR_a - IQR_b) / IQR_b; ``half68``: the same for half the 16-84% range (the
    Gaussian sigma for a normal shape, robust against far tails).
    """
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    iqr_a, iqr_b = (float(np.subtract(*np.quantile(x, [0.75, 0.25]))) for x in (a, b))
    h68_a, h68_b = half68_width(a), half68_width(b)
    if iqr_b <= 0 or h68_b <= 0:
        raise MetricsError("reference sample has zero width: relative width errors are undefined")
    return {"iqr": float((iqr_a - iqr_b) / iqr_b), "half68": float((h68_a - h68_b) / h68_b)}


def wasserstein_rel(a: Any, b: Any) -> float:
    """Wasserstein-1 (earth mover's) distance divided by the reference's robust width.

    Dimensionless: 0.01 means the mass has to move on average 1% of a Gaussian-equivalent
    width (IQR/1.349 of ``b``).
    """
    from scipy import stats

    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    width = robust_width(b)
    if width <= 0:
        raise MetricsError("reference sample has zero width: W1 cannot be normalised")
    return float(stats.wasserstein_distance(a, b) / width)


# ---------------------------------------------------------------------------------------------
# joint metrics


def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise MetricsError(f"sample {name} must be a non-empty (n_events, n_features) array")
    return arr


def _feature_names(feature_names: Sequence[str] | None, n_features: int) -> list[str]:
    """The given names (one per column), or x0, x1, ... when None."""
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(n_features)]
    if len(names) != n_features:
        raise MetricsError(f"{len(names)} feature names for {n_features} features")
    return names


def chi2_2d(a: Any, b: Any, bins: int | tuple[Any, Any] = 20) -> Chi2Result:
    """Two-sample chi2 of 2D histograms of (n, 2) samples ``a`` and ``b`` (shapes, both errors).

    ``bins``: an int (per axis, spanning the reference's 0.5-99.5% quantiles on each axis) or a
    pair of edge arrays. Same formula as :func:`chi2_ndf` over the non-empty 2D cells.
    """
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != 2 or b.shape[1] != 2:
        raise MetricsError(f"chi2_2d needs two columns, got {a.shape[1]} and {b.shape[1]}")
    if np.ndim(bins) == 0:
        edges = (quantile_edges(b[:, 0], int(bins)), quantile_edges(b[:, 1], int(bins)))
    else:
        edges = tuple(np.asarray(e, dtype=np.float64) for e in bins)
    na = np.histogram2d(a[:, 0], a[:, 1], bins=edges)[0]
    nb = np.histogram2d(b[:, 0], b[:, 1], bins=edges)[0]
    # unweighted: pooled variance estimate (unbiased in sparse cells for unequal sizes)
    return chi2_from_counts(na, na, nb, nb, pooled=True)


def auc_null_sigma(n_a: int, n_b: int) -> float:
    """Standard deviation of the ROC AUC of indistinguishable samples (Mann-Whitney null)."""
    return float(np.sqrt((n_a + n_b + 1) / (12.0 * n_a * n_b)))


def classifier_auc(
    x_a: Any, x_b: Any, folds: int = 5, seed: int = 0, max_iter: int = 200
) -> float:
    """Classifier two-sample test: out-of-fold ROC AUC of gradient-boosted trees.

    A ``HistGradientBoostingClassifier`` learns to tell ``x_a`` from ``x_b`` in ``folds``-fold
    stratified cross-validation; the AUC of the pooled out-of-fold scores is returned.
    0.5 = indistinguishable (noise ~ :func:`auc_null_sigma`), 1 = fully separated. Values
    below 0.5 are noise. Early stopping on an internal validation split limits overfitting.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    x_a, x_b = _as_2d(x_a, "a"), _as_2d(x_b, "b")
    if x_a.shape[1] != x_b.shape[1]:
        raise MetricsError(f"samples have {x_a.shape[1]} and {x_b.shape[1]} features")
    if folds < 2:
        raise MetricsError(f"classifier test needs >= 2 folds, got {folds}")
    x = np.concatenate([x_a, x_b])
    y = np.concatenate([np.ones(len(x_a)), np.zeros(len(x_b))])
    scores = np.empty(len(x))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y):
        clf = HistGradientBoostingClassifier(
            max_iter=max_iter, early_stopping=True, validation_fraction=0.2, random_state=seed
        )
        clf.fit(x[train], y[train])
        scores[test] = clf.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, scores))


# ---------------------------------------------------------------------------------------------
# everything at once


def feature_metrics(a: Any, b: Any, bins: int = 40) -> dict[str, float]:
    """All per-feature metrics of candidate ``a`` against reference ``b`` (one feature)."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    chi2 = chi2_ndf(a, b, quantile_edges(b, bins))
    ks = ks_test(a, b)
    widths = width_errors(a, b)
    return {
        "median_shift": median_shift(a, b),
        "width_error_iqr": widths["iqr"],
        "width_error_68": widths["half68"],
        "w1_rel": wasserstein_rel(a, b),
        "chi2": chi2.chi2,
        "ndf": chi2.ndf,
        "chi2_ndf": chi2.chi2_per_ndf,
        "chi2_pvalue": chi2.pvalue,
        "ks_statistic": ks.statistic,
        "ks_pvalue": ks.pvalue,
    }


def joint_metrics(
    a: Any, b: Any, bins_2d: int = 20, classifier: bool = True, folds: int = 5, seed: int = 0
) -> dict[str, float]:
    """Joint metrics: 2D chi2/ndf (worst feature pair) and the classifier AUC (all features)."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    out: dict[str, float] = {}
    n_feat = a.shape[1]
    if n_feat >= 2:
        worst: Chi2Result | None = None
        for i in range(n_feat):
            for j in range(i + 1, n_feat):
                res = chi2_2d(a[:, [i, j]], b[:, [i, j]], bins_2d)
                if worst is None or res.chi2_per_ndf > worst.chi2_per_ndf:
                    worst = res
        assert worst is not None
        out.update(chi2_2d=worst.chi2, ndf_2d=worst.ndf, chi2_2d_ndf=worst.chi2_per_ndf,
                   chi2_2d_pvalue=worst.pvalue)
    if classifier:
        out["auc"] = classifier_auc(a, b, folds=folds, seed=seed)
        out["auc_null_sigma"] = auc_null_sigma(len(a), len(b))
    return out


def compare_samples(
    a: Any,
    b: Any,
    feature_names: Sequence[str] | None = None,
    bins: int = 40,
    bins_2d: int = 20,
    classifier: bool = True,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-feature and joint metrics of candidate ``a`` (n, F) against reference ``b`` (m, F).

    Returns ``{"n_candidate", "n_reference", "features": {name: {...}}, "joint": {...}}``.
    """
    a, b = _as_2d(a, "candidate"), _as_2d(b, "reference")
    if a.shape[1] != b.shape[1]:
        raise MetricsError(f"candidate has {a.shape[1]} features, reference {b.shape[1]}")
    names = _feature_names(feature_names, a.shape[1])
    return {
        "n_candidate": int(len(a)),
        "n_reference": int(len(b)),
        "features": {name: feature_metrics(a[:, i], b[:, i], bins) for i, name in enumerate(names)},
        "joint": joint_metrics(a, b, bins_2d=bins_2d, classifier=classifier, folds=folds, seed=seed),
    }


def split_halves(x: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Randomly split the events of ``x`` into two disjoint halves of equal size."""
    x = _as_2d(x, "sample")
    if len(x) < 4:
        raise MetricsError(f"need at least 4 events to split into halves, got {len(x)}")
    perm = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    return x[perm[:half]], x[perm[half : 2 * half]]


def statistical_floor(
    mc: Any,
    feature_names: Sequence[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """The same metrics for two independent halves of the MC at equal size: the noise level.

    Any metric of a candidate compared at that same size is to be read against these numbers.
    ``options`` are passed to :func:`compare_samples`.
    """
    first, second = split_halves(mc, seed=seed)
    return compare_samples(first, second, feature_names, seed=seed, **options)


def floor_spread(
    mc: Any,
    feature_names: Sequence[str] | None = None,
    n_splits: int = 50,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The noise level of each feature's median shift and width errors between two MC halves.

    :func:`statistical_floor` is one random split: one draw of the noise, which can land near
    zero by chance. This is the root mean square of the same numbers over ``n_splits`` random
    half-splits, i.e. the size a shift or width error of a candidate compared at half the MC's
    size shows from statistics alone. Keys as in :func:`feature_metrics` (relative, unitless).
    """
    x = _as_2d(mc, "sample")
    if n_splits < 1:
        raise MetricsError(f"n_splits must be >= 1, got {n_splits}")
    names = _feature_names(feature_names, x.shape[1])
    rng = np.random.default_rng(seed)
    sums = {name: {"median_shift": 0.0, "width_error_iqr": 0.0, "width_error_68": 0.0} for name in names}
    for _ in range(n_splits):
        first, second = split_halves(x, seed=int(rng.integers(2**31)))
        for i, name in enumerate(names):
            widths = width_errors(first[:, i], second[:, i])
            sums[name]["median_shift"] += median_shift(first[:, i], second[:, i]) ** 2
            sums[name]["width_error_iqr"] += widths["iqr"] ** 2
            sums[name]["width_error_68"] += widths["half68"] ** 2
    return {name: {key: float(np.sqrt(v / n_splits)) for key, v in d.items()} for name, d in sums.items()}


def ks_test_weighted(a: Any, b: Any, weights_a: Any = None, weights_b: Any = None) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test of weighted samples.

    Statistic: the largest distance between the two weighted empirical CDFs. p-value: the
    two-sided Kolmogorov distribution (``scipy.stats.kstwo``) at the effective sample sizes
    ``n_eff = (sum w)^2 / sum w^2``, as ``ks_2samp(method="asymp")`` does with counts. Without
    weights the result is ``scipy.stats.ks_2samp``'s.
    """
    from scipy import stats

    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if weights_a is None and weights_b is None:
        return ks_test(a, b)
    wa, wb = _weights(weights_a, a.size, "weights_a"), _weights(weights_b, b.size, "weights_b")
    if wa.sum() <= 0 or wb.sum() <= 0:
        raise MetricsError("weighted KS test needs positive sums of weights")
    values = np.concatenate([a, b])
    order = np.argsort(values, kind="stable")
    step_a = np.concatenate([wa / wa.sum(), np.zeros(b.size)])[order]
    step_b = np.concatenate([np.zeros(a.size), wb / wb.sum()])[order]
    # distance after the last of each run of equal values (ties move both CDFs together)
    last = np.append(np.diff(values[order]) != 0, True)
    statistic = float(np.max(np.abs(np.cumsum(step_a) - np.cumsum(step_b))[last]))
    n_a, n_b = wa.sum() ** 2 / (wa**2).sum(), wb.sum() ** 2 / (wb**2).sum()
    n_eff = max(1.0, float(np.round(n_a * n_b / (n_a + n_b))))
    return KSResult(statistic, float(np.clip(stats.kstwo.sf(statistic, n_eff), 0.0, 1.0)))

__all__ += ["ks_test_weighted"]
