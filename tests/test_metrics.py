"""Metrics against independent computations on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedhex_hep.validation import metrics
from fedhex_hep.validation.metrics import Chi2Result, MetricsError


def test_chi2_hand_computation_unweighted():
    # bins [0,1), [1,2), [2,3]; a has counts (2, 1, 1), b has (1, 3, 0)
    a = [0.5, 0.2, 1.5, 2.5]
    b = [0.1, 1.1, 1.2, 1.3]
    res = metrics.chi2_ndf(a, b, [0, 1, 2, 3])
    na, nb = np.array([2, 1, 1.0]), np.array([1, 3, 0.0])
    expected = np.sum((na / 4 - nb / 4) ** 2 / (na / 16 + nb / 16))
    assert isinstance(res, Chi2Result)
    assert res.chi2 == pytest.approx(expected)
    assert res.ndf == 2
    assert res.pvalue == pytest.approx(stats.chi2.sf(expected, 2))
    assert res.chi2_per_ndf == pytest.approx(expected / 2)


def test_chi2_weighted_uses_sum_of_squared_weights():
    a = np.array([0.5, 1.5, 1.6])
    wa = np.array([2.0, 0.5, 1.5])
    b = np.array([0.4, 0.6, 1.4])
    res = metrics.chi2_ndf(a, b, [0, 1, 2], weights_a=wa)
    na, va = np.array([2.0, 2.0]), np.array([4.0, 0.25 + 2.25])
    nb, vb = np.array([2.0, 1.0]), np.array([2.0, 1.0])
    expected = np.sum((na / 4 - nb / 3) ** 2 / (va / 16 + vb / 9))
    assert res.chi2 == pytest.approx(expected)
    assert res.ndf == 1


def test_chi2_against_huge_reference_is_pearson_chisquare():
    # against a (practically) infinite reference, the two-sample chi2 of unweighted histograms
    # is Pearson's chi2 of a against b's shape: compare with scipy.stats.chisquare
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    edges = np.linspace(-3, 3, 21)
    probs = np.diff(stats.norm.cdf(edges))
    counts_a = np.histogram(a, edges)[0].astype(float)
    ref = stats.chisquare(counts_a, probs / probs.sum() * counts_a.sum())
    big = np.round(probs * 1e12)
    res = metrics.chi2_from_counts(counts_a, counts_a, big, big)
    assert res.chi2 == pytest.approx(ref.statistic, rel=1e-6)
    assert res.ndf == 19
    # the weighted form (explicit variances) with a negligible reference error is Neyman's chi2
    res_w = metrics.chi2_from_counts(counts_a, counts_a, big, big, pooled=False)
    neyman = np.sum((counts_a - probs / probs.sum() * counts_a.sum()) ** 2 / counts_a)
    assert res_w.chi2 == pytest.approx(neyman, rel=1e-4)


def test_chi2_skips_bins_empty_in_both():
    res = metrics.chi2_ndf([0.5, 2.5], [0.5, 2.5], [0, 1, 2, 3])
    assert res.ndf == 1
    assert res.chi2 == pytest.approx(0.0)


def test_chi2_unequal_sizes_not_biased_by_sparse_bins():
    rng = np.random.default_rng(5)
    values = [
        metrics.chi2_2d(rng.normal(size=(3000, 2)), rng.normal(size=(20000, 2)), 20).chi2_per_ndf
        for _ in range(10)
    ]
    assert np.mean(values) == pytest.approx(1.0, abs=0.08)


def test_chi2_same_distribution_near_one_shifted_not():
    rng = np.random.default_rng(2)
    values = []
    for _ in range(20):
        a, b = rng.normal(size=20000), rng.normal(size=20000)
        values.append(metrics.chi2_ndf(a, b, 40).chi2_per_ndf)
    assert np.mean(values) == pytest.approx(1.0, abs=0.15)
    a, b = rng.normal(0.1, 1, 20000), rng.normal(size=20000)
    assert metrics.chi2_ndf(a, b, 40).chi2_per_ndf > 3


def test_chi2_bad_input():
    with pytest.raises(MetricsError, match="empty"):
        metrics.chi2_ndf([], [1.0], [0, 1])
    with pytest.raises(MetricsError, match="increasing"):
        metrics.chi2_ndf([1.0], [1.0], [1, 0])
    with pytest.raises(MetricsError, match="no entries"):
        metrics.chi2_ndf([5.0], [0.5], [0, 1])


def test_ks_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=1000), rng.normal(0.2, 1, 800)
    res = metrics.ks_test(a, b)
    ref = stats.ks_2samp(a, b)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    statistic, pvalue = res
    assert pvalue < 0.01


def test_quantile_edges_span_bulk():
    ref = np.arange(1001.0)
    edges = metrics.quantile_edges(ref, 40)
    assert edges.size == 41
    assert edges[0] == pytest.approx(5.0)
    assert edges[-1] == pytest.approx(995.0)


def test_chi2_2d_hand_computation():
    a = np.array([[0.5, 0.5], [0.5, 0.5], [1.5, 0.5], [1.5, 1.5]])
    b = np.array([[0.5, 0.5], [1.5, 1.5], [1.5, 1.5], [0.5, 1.5]])
    edges = ([0, 1, 2], [0, 1, 2])
    res = metrics.chi2_2d(a, b, edges)
    # cells (x,y): a = {(0,0): 2, (1,0): 1, (1,1): 1}; b = {(0,0): 1, (1,1): 2, (0,1): 1}
    na = np.array([2, 0, 1, 1.0])
    nb = np.array([1, 1, 0, 2.0])
    expected = np.sum((na - nb) ** 2 / (na + nb))  # equal totals: (n_a - n_b)^2 / (n_a + n_b)
    assert res.chi2 == pytest.approx(expected)
    assert res.ndf == 3


def test_median_shift_and_width_errors_known_scaling():
    rng = np.random.default_rng(6)
    b = 100.0 + rng.normal(size=10001)
    a = 1.01 * b  # median scales by exactly 1.01, widths too
    assert metrics.median_shift(a, b) == pytest.approx(0.01, rel=1e-9)
    c = 100.0 + 1.1 * (b - 100.0)  # widths x1.1 about the centre, median (nearly) unchanged
    widths = metrics.width_errors(c, b)
    iqr = lambda x: np.subtract(*np.percentile(x, [75, 25]))  # noqa: E731
    h68 = lambda x: np.subtract(*np.percentile(x, [84, 16])) / 2  # noqa: E731
    assert widths["iqr"] == pytest.approx(iqr(c) / iqr(b) - 1, abs=1e-9)
    assert widths["half68"] == pytest.approx(h68(c) / h68(b) - 1, abs=1e-9)
    assert widths["iqr"] == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(MetricsError, match="median is 0"):
        metrics.median_shift([1.0, 2.0], [-1.0, 0.0, 1.0])


def test_robust_width_of_normal():
    rng = np.random.default_rng(7)
    assert metrics.robust_width(rng.normal(0, 2.5, 200000)) == pytest.approx(2.5, rel=0.01)


def test_wasserstein_of_known_normals():
    rng = np.random.default_rng(8)
    b = rng.normal(0, 1, 200000)
    # shift by 0.3: W1 = 0.3; width 2 vs 1: W1 = E|2Z - Z| = sqrt(2/pi)
    assert metrics.wasserstein_rel(rng.normal(0.3, 1, 200000), b) == pytest.approx(0.3, rel=0.03)
    assert metrics.wasserstein_rel(rng.normal(0, 2, 200000), b) == pytest.approx(
        np.sqrt(2 / np.pi), rel=0.03
    )
    assert metrics.wasserstein_rel(rng.normal(0, 1, 200000), b) < 0.02


def test_classifier_auc_same_and_shifted():
    rng = np.random.default_rng(9)
    n = 4000
    same = metrics.classifier_auc(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)), folds=3)
    assert abs(same - 0.5) < 4 * metrics.auc_null_sigma(n, n) + 0.01
    # 1D shift d between unit normals: optimal AUC = Phi(d / sqrt(2))
    d = 0.5
    shifted = metrics.classifier_auc(
        rng.normal(size=(n, 2)) + [d, 0.0], rng.normal(size=(n, 2)), folds=3
    )
    assert shifted == pytest.approx(stats.norm.cdf(d / np.sqrt(2)), abs=0.025)


def test_compare_samples_and_floor():
    rng = np.random.default_rng(10)
    mc = np.column_stack([rng.normal(50, 2, 8000), rng.exponential(1.0, 8000) + 1])
    floor = metrics.statistical_floor(mc, ["m", "t"], seed=1, folds=3)
    assert floor["n_candidate"] == floor["n_reference"] == 4000
    assert set(floor["features"]) == {"m", "t"}
    assert floor["features"]["m"]["chi2_ndf"] < 2
    assert abs(floor["joint"]["auc"] - 0.5) < 0.04
    assert floor["joint"]["chi2_2d_ndf"] < 1.5
    shifted = metrics.compare_samples(mc[:4000] * [1.02, 1.0], mc[4000:], ["m", "t"], folds=3)
    assert shifted["features"]["m"]["median_shift"] == pytest.approx(0.02, abs=0.002)
    assert shifted["features"]["m"]["chi2_ndf"] > 2.5
    assert shifted["joint"]["auc"] > 0.6
    with pytest.raises(MetricsError, match="features"):
        metrics.compare_samples(mc[:, :1], mc)


def test_floor_spread_is_the_analytic_noise_of_two_gaussian_halves():
    # halves of n = 10000 events from N(10, 1): sd of the sample median 1.2533/sqrt(n), of half the
    # 16-84% range 0.964/sqrt(n), of the IQR 1.573/sqrt(n) (asymptotic quantile covariances);
    # the difference of two halves has sqrt(2) times that, relative to 10, 0.9945 and 1.349.
    # Splits of one fixed sample scatter about +-12% around it (measured over sample seeds):
    # 25% still catches a missing sqrt(2) (41%).
    rng = np.random.default_rng(4)
    n = 10000
    mc = np.column_stack([rng.normal(10.0, 1.0, 2 * n), rng.normal(10.0, 1.0, 2 * n)])
    rms = metrics.floor_spread(mc, ["a", "b"], n_splits=200, seed=2)
    assert set(rms) == {"a", "b"}
    expect = {
        "median_shift": np.sqrt(2) * 1.2533 / np.sqrt(n) / 10.0,
        "width_error_68": np.sqrt(2) * 0.964 / np.sqrt(n) / 0.9945,
        "width_error_iqr": np.sqrt(2) * 1.573 / np.sqrt(n) / 1.349,
    }
    for name in ("a", "b"):
        for key, value in expect.items():
            assert rms[name][key] == pytest.approx(value, rel=0.25), (name, key)
    # four times the events: half the noise
    big = np.column_stack([rng.normal(10.0, 1.0, 8 * n)])
    assert metrics.floor_spread(big, n_splits=200, seed=2)["x0"]["width_error_68"] == pytest.approx(
        expect["width_error_68"] / 2, rel=0.25
    )
    with pytest.raises(MetricsError, match="n_splits"):
        metrics.floor_spread(mc, n_splits=0)
    with pytest.raises(MetricsError, match="feature names"):
        metrics.floor_spread(mc, ["a"])
