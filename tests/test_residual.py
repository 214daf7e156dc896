"""Residual standardisation: polynomial fits, exact invertibility on and off the grid, log-det,
save/load through preprocessing.json."""

from __future__ import annotations

import numpy as np
import pytest

from fedhex_hep.config import load_config
from fedhex_hep.model.preprocessing import Preprocessor
from fedhex_hep.model.residual import IQR_GAUSS, fit_polynomial, fit_residual, monomials, point_statistics


def _grid_sample(n_per: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose peak and width drift with the labels: m_reco = m_gen * (1 + a(m) + b(m) * N)."""
    rng = np.random.default_rng(seed)
    pts = np.array([(p, o) for p in (1000.0, 1500.0, 2000.0, 3000.0) for o in (1.0, 2.0, 4.0, 8.0)])
    labels = np.repeat(pts, n_per, axis=0)
    lp, lo = np.log(labels[:, 0] / 1000), np.log(labels[:, 1])
    shift = 0.02 * lp - 0.03 * lo
    width = 0.02 * np.exp(0.3 * lo)
    z = rng.standard_normal((len(labels), 2))
    features = np.stack([labels[:, 0] * np.exp(shift + width * z[:, 0]), labels[:, 1] * np.exp(-shift + 2 * width * z[:, 1])], axis=1)
    return features, labels


def _pre(features: np.ndarray, labels: np.ndarray, residual: bool = True, degree: int = 2) -> Preprocessor:
    cfg = load_config(overrides={"preprocessing.residual": residual, "preprocessing.residual_max_degree": degree})
    return Preprocessor.fit(features, labels, ["phi", "omega"], ["labelphi", "labelomega"], cfg.preprocessing)


def test_monomials_by_degree() -> None:
    assert monomials(2, 0) == [(0, 0)]
    assert monomials(2, 1) == [(0, 0), (1, 0), (0, 1)]
    assert sorted(monomials(2, 2)) == sorted([(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)])


def test_polynomial_degree_by_leave_one_out() -> None:
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, (30, 2))
    linear = 0.5 + 2.0 * c[:, 0] - c[:, 1]
    fit = fit_polynomial(c, linear + 1e-6 * rng.standard_normal(30), max_degree=2)
    assert fit.degree == 1
    np.testing.assert_allclose(fit(c), linear, atol=1e-5)
    quad = linear + 3.0 * c[:, 0] * c[:, 1]
    assert fit_polynomial(c, quad, max_degree=2).degree == 2
    # too few points for degree 2 (6 coefficients need >= 12 points): falls back
    assert fit_polynomial(c[:8], quad[:8], max_degree=2).degree <= 1
    assert fit_polynomial(c, quad, max_degree=0).degree == 0


def test_point_statistics_are_median_and_gaussian_iqr_width() -> None:
    rng = np.random.default_rng(2)
    c = np.repeat(np.array([[0.0, 0.0], [1.0, 0.5]]), 20000, axis=0)
    y = np.where(c[:, 0] == 0, 1.0 + 0.1 * rng.standard_normal(len(c)), -2.0 + 0.5 * rng.standard_normal(len(c)))
    points, med, log_width = point_statistics(y, c)
    np.testing.assert_array_equal(points, [[0.0, 0.0], [1.0, 0.5]])
    np.testing.assert_allclose(med, [1.0, -2.0], atol=0.01)
    np.testing.assert_allclose(np.exp(log_width), [0.1, 0.5], rtol=0.03)
    assert IQR_GAUSS == pytest.approx(2 * 0.6744897501960817)


def test_round_trip_on_and_off_grid_to_float_precision() -> None:
    features, labels = _grid_sample()
    pre = _pre(features, labels)
    assert all(p.residual is not None for p in pre.feature_params)
    rng = np.random.default_rng(3)
    off = np.stack([rng.uniform(800, 3500, 2000), rng.uniform(0.7, 9.5, 2000)], axis=1)
    x_off = off * np.exp(0.05 * rng.standard_normal((2000, 2)))
    for x, lab in ((features, labels), (x_off, off)):
        back = pre.inverse_features(pre.transform_features(x, lab), lab)
        np.testing.assert_allclose(back, x, rtol=1e-13, atol=0)
    z = rng.standard_normal((2000, 2))
    np.testing.assert_allclose(pre.transform_features(pre.inverse_features(z, off), off), z, rtol=0, atol=1e-12)


def test_residual_removes_the_drift_of_peak_and_width() -> None:
    features, labels = _grid_sample()
    plain, resid = _pre(features, labels, residual=False), _pre(features, labels)
    points = np.unique(labels, axis=0)
    for pre, ok in ((plain, False), (resid, True)):
        z = pre.transform_features(features, labels)
        med = np.array([np.median(z[(labels == p).all(axis=1)], axis=0) for p in points])
        iqr = np.array([np.subtract(*np.quantile(z[(labels == p).all(axis=1)], [0.75, 0.25], axis=0)) for p in points])
        spread = med.std(axis=0) / iqr.mean(axis=0)
        width_ratio = iqr.max(axis=0) / iqr.min(axis=0)
        if ok:
            assert np.all(spread < 0.05) and np.all(width_ratio < 1.3)  # IQR noise at 800 events
        else:
            assert np.all(spread > 0.3) and np.all(width_ratio > 2.0)


def test_log_det_matches_numerical_jacobian_and_json_round_trip() -> None:
    features, labels = _grid_sample(n_per=200)
    pre = _pre(features, labels)
    x, lab = features[::37], labels[::37] * np.array([1.07, 0.93])  # off-grid labels
    h = 1e-5
    numeric = np.zeros(len(x))
    for i in range(2):
        step = np.zeros_like(x)
        step[:, i] = h * x[:, i]
        d = (pre.transform_features(x + step, lab)[:, i] - pre.transform_features(x - step, lab)[:, i]) / (2 * step[:, i])
        numeric += np.log(np.abs(d))
    np.testing.assert_allclose(pre.log_det_jacobian(x, lab), numeric, rtol=0, atol=1e-6)
    again = Preprocessor.from_json(pre.to_json())
    np.testing.assert_array_equal(again.transform_features(x, lab), pre.transform_features(x, lab))
    np.testing.assert_array_equal(again.log_det_jacobian(x, lab), pre.log_det_jacobian(x, lab))
    # a file without residual entries (residual off) still loads and has none
    plain = _pre(features, labels, residual=False)
    assert not Preprocessor.from_json(plain.to_json()).has_residual


def test_fit_residual_single_point_is_constant() -> None:
    rng = np.random.default_rng(4)
    y = 0.3 + 0.2 * rng.standard_normal(5000)
    res = fit_residual(y, np.zeros((5000, 2)), max_degree=2)
    assert res.loc.degree == 0 and res.log_scale.degree == 0
    r = res.forward(y, np.zeros((5000, 2)))
    assert abs(np.median(r)) < 0.02 and np.subtract(*np.quantile(r, [0.75, 0.25])) == pytest.approx(IQR_GAUSS, rel=0.05)
