"""Metrics against independent computations on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedhex_hep import metrics
from fedhex_hep.metrics import Chi2Result, MetricsError


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


def test_chi2_empty_bins_skipped_and_matches_pearson_for_reference_limit():
    # against a huge reference the two-sample chi2 tends to Pearson's chisquare of a vs b's shape
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    edges = np.linspace(-3, 3, 21)
    probs = np.diff(stats.norm.cdf(edges))
    counts_a = np.histogram(a, edges)[0].astype(float)
    ref = stats.chisquare(counts_a, probs / probs.sum() * counts_a.sum())
    # neyman-like denominator (observed) vs pearson (expected): compare through a huge b
    res = metrics.chi2_from_counts(counts_a, counts_a, probs * 1e9, probs * 1e9)
    neyman = np.sum((counts_a - probs / probs.sum() * counts_a.sum()) ** 2 / counts_a)
    assert res.chi2 == pytest.approx(neyman, rel=1e-4)
    assert res.chi2 == pytest.approx(ref.statistic, rel=0.25)
    assert res.ndf == 19


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
