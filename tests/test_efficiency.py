"""Selection efficiency from the cutflow and its smooth interpolation in the masses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from fedhex_hep.generation.efficiency import EfficiencyError, EfficiencyModel, EfficiencyTable, selection_efficiency

LABELS = ["labelphi", "labelomega"]


def true_eff(points: np.ndarray) -> np.ndarray:
    """A smooth efficiency: a turn-on in m_phi, a mild slope in m_omega (exactly logistic-quadratic)."""
    lphi, lom = np.log(points[:, 0] / 1500.0), np.log(points[:, 1] / 5.0)
    return expit(0.3 + 1.8 * lphi - 0.9 * lphi**2 + 0.25 * lom)


def grid() -> np.ndarray:
    phis = [500.0, 1000.0, 1500.0, 2000.0, 3000.0]
    omegas = [1.0, 2.0, 5.0, 10.0]
    return np.array([(p, o) for p in phis for o in omegas])


def test_table_from_cutflow_binomial_errors():
    cutflow = {
        "per_label": [
            {"label": {"labelphi": 1000.0, "labelomega": 2.0}, "read": 1000, "selected": 400},
            {"label": {"labelphi": 1000.0, "labelomega": 2.0}, "read": 1000, "selected": 500},  # 2nd file
            {"label": {"labelphi": 2000.0, "labelomega": 2.0}, "read": 500, "selected": 0},
        ]
    }
    table = selection_efficiency(cutflow)
    assert table.label_names == LABELS
    np.testing.assert_allclose(table.points, [[1000.0, 2.0], [2000.0, 2.0]])
    np.testing.assert_allclose(table.eff, [900 / 2000, 0.0])
    p = (900.5) / 2001
    assert table.err[0] == pytest.approx(np.sqrt(p * (1 - p) / 2000))
    assert table.err[1] > 0  # never zero, even at 0%
    # Clopper-Pearson against scipy's beta quantiles, computed independently
    assert table.lo[0] == pytest.approx(stats.beta.ppf(0.158655, 900, 1101), rel=1e-4)
    assert table.hi[0] == pytest.approx(stats.beta.ppf(1 - 0.158655, 901, 1100), rel=1e-4)
    assert table.lo[1] == 0.0 and 0 < table.hi[1] < 0.01
    again = EfficiencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    np.testing.assert_allclose(again.eff, table.eff)


def test_cutflow_list_layout_with_label_names():
    table = selection_efficiency([{"label": [1000.0, 2.0], "events": 10, "passed": 5}], LABELS)
    assert table.eff.tolist() == [0.5]


@pytest.mark.parametrize(
    "cutflow, message",
    [
        ({"per_label": [{"label": {"labelphi": 1.0}, "selected": 1}]}, "no read count"),
        ({"per_label": [{"read": 3, "selected": 1}]}, "no 'label'"),
        ({"per_label": [{"label": {"labelphi": 1.0}, "read": 3, "selected": 5}]}, "selected=5.0 read=3.0"),
        ({"per_label": []}, "no per-label entries"),
        ("nonsense", "must be a dict"),
    ],
)
def test_bad_cutflow_names_the_problem(cutflow, message):
    with pytest.raises(EfficiencyError, match=message):
        selection_efficiency(cutflow)


def test_interpolation_recovers_smooth_function_within_errors():
    rng = np.random.default_rng(3)
    pts = grid()
    n = np.full(len(pts), 20000)
    k = rng.binomial(n, true_eff(pts))
    table = EfficiencyTable(LABELS, pts, n, k)
    model = EfficiencyModel.from_table(table, degree=2)
    assert model.used_degree == 2 and model.ndf == len(pts) - 6
    # goodness of fit: the true function is in the model family, chi2/ndf ~ 1
    assert stats.chi2.sf(model.chi2, model.ndf) > 0.001
    # off-grid points inside the grid: prediction within 3 sigma of the truth, sigma small
    off = np.array([[750.0, 1.5], [1250.0, 7.0], [2500.0, 3.3], [1700.0, 9.0]])
    eff, err = model.predict_with_error(off)
    truth = true_eff(off)
    assert np.all(np.abs(eff - truth) < 3 * err), (eff, truth, err)
    assert np.all(err < 0.01)
    assert model.in_range(off).all() and not model.in_range(np.array([[4000.0, 5.0]]))[0]
    # serialisation round trip through JSON gives identical predictions
    again = EfficiencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict(off), eff, rtol=1e-12)
    np.testing.assert_allclose(again.table.eff, table.eff)


def test_fit_from_eff_and_err_only():
    pts = grid()
    eff = true_eff(pts)
    err = np.full(len(pts), 0.002)
    model = EfficiencyModel(degree=2).fit(pts, eff, err)
    # exact inputs inside the model family: the fit reproduces the function
    off = np.array([[800.0, 3.0]])
    assert model.predict(off)[0] == pytest.approx(true_eff(off)[0], abs=1e-6)
    assert model.chi2 == pytest.approx(0.0, abs=1e-6)


def test_degree_is_lowered_for_few_points_and_fixed_labels():
    pts = np.array([[1000.0, 5.0], [2000.0, 5.0], [3000.0, 5.0]])  # omega never varies
    model = EfficiencyModel(degree=2).fit(pts, [0.2, 0.4, 0.5], [0.01, 0.01, 0.01])
    assert model.terms == [(0, 0), (1, 0)]  # constant + linear in log m_phi, keeping one ndf
    assert model.ndf == 1
    assert 0.2 < model.predict(np.array([[1500.0, 5.0]]))[0] < 0.4


def test_bad_fit_input():
    with pytest.raises(EfficiencyError, match="within \\[0, 1\\]"):
        EfficiencyModel().fit(grid()[:3], [0.1, 1.2, 0.3], [0.01] * 3)
    with pytest.raises(EfficiencyError, match="not fitted"):
        EfficiencyModel().predict(grid())
    with pytest.raises(EfficiencyError, match="positive"):
        EfficiencyModel().fit(np.array([[-1.0, 2.0], [1.0, 2.0]]), [0.1, 0.2], [0.01, 0.01])


def test_auto_degree_follows_the_data():
    """A cubic turn-on needs degree 3: 'auto' (Akaike) finds it and predicts within errors."""
    rng = np.random.default_rng(7)
    phis = np.array([500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0])
    omegas = np.array([1.0, 2.0, 5.0, 10.0])
    pts = np.array([(p, o) for p in phis for o in omegas])

    def cubic(points):
        x = np.log(points[:, 0] / 1200.0)
        return expit(0.2 + 1.5 * x - 0.8 * x**2 - 1.2 * x**3 + 0.2 * np.log(points[:, 1]))

    n = np.full(len(pts), 50000)
    table = EfficiencyTable(LABELS, pts, n, rng.binomial(n, cubic(pts)))
    auto = EfficiencyModel.from_table(table)
    assert auto.degree == "auto" and auto.used_degree == 3
    assert stats.chi2.sf(auto.chi2, auto.ndf) > 0.001
    quad = EfficiencyModel.from_table(table, degree=2)
    assert quad.chi2 > auto.chi2 + 2 * (len(auto.terms) - len(quad.terms))  # AIC prefers the cubic
    off = np.array([[600.0, 1.5], [1250.0, 3.0], [2500.0, 7.0]])
    eff, err = auto.predict_with_error(off)
    assert np.all(np.abs(eff - cubic(off)) < 3 * err), (eff, cubic(off), err)
    again = EfficiencyModel.from_dict(json.loads(json.dumps(auto.to_dict())))
    np.testing.assert_allclose(again.predict(off), eff, rtol=1e-12)
    with pytest.raises(EfficiencyError, match="'auto' or an integer"):
        EfficiencyModel(degree="cubic")


def test_cutflow_layout_of_extract():
    """The layout fedhex_hep.extraction.runner writes into FeatureSet metadata['cutflow']."""
    cutflow = {
        "selection": "CBL_Region == 1",
        "read": 10000,
        "selected": 5200,
        "per_label": [
            {"dataset": "Phi_1000_omega_1", "label": {"labelphi": 1000.0, "labelomega": 1.0}, "read": 5000, "selected": 2422},
            {"dataset": "Phi_2000_omega_5", "label": {"labelphi": 2000.0, "labelomega": 5.0}, "read": 5000, "selected": 2778},
        ],
        "unlabelled": {"read": 0, "selected": 0},
    }
    table = selection_efficiency(cutflow)
    assert table.label_names == LABELS
    np.testing.assert_allclose(table.eff, [2422 / 5000, 2778 / 5000])
    model = EfficiencyModel.from_cutflow(cutflow)
    assert model.used_degree == 0 and model.ndf == 1  # two points: a constant, one ndf left


def test_weighted_cutflow_gives_efficiency_from_sums_of_weights():
    """Efficiency = sum of selected weights / sum of all weights; intervals at the effective counts."""
    rng = np.random.default_rng(3)
    w = rng.uniform(0.2, 3.0, 5000)
    selected = rng.uniform(size=5000) < 0.3 + 0.2 * (w > 1.5)  # the selection favours heavy events
    entry = {
        "label": {"labelphi": 1000.0, "labelomega": 2.0},
        "read": 5000,
        "selected": int(selected.sum()),
        "sumw_read": w.sum(),
        "sumw2_read": (w**2).sum(),
        "sumw": w[selected].sum(),
        "sumw2": (w[selected] ** 2).sum(),
    }
    table = selection_efficiency({"per_label": [entry]})
    eff = w[selected].sum() / w.sum()
    assert table.eff[0] == pytest.approx(eff) and abs(eff - selected.mean()) > 0.02  # weights matter here
    n_eff = w.sum() ** 2 / (w**2).sum()
    k_eff = eff * n_eff
    assert table.n_eff[0] == pytest.approx(n_eff) and n_eff < 5000
    assert table.lo[0] == pytest.approx(stats.beta.ppf(0.158655, k_eff, n_eff - k_eff + 1), rel=1e-4)
    assert table.hi[0] == pytest.approx(stats.beta.ppf(1 - 0.158655, k_eff + 1, n_eff - k_eff), rel=1e-4)
    p = (k_eff + 0.5) / (n_eff + 1)
    assert table.err[0] == pytest.approx(np.sqrt(p * (1 - p) / n_eff))
    again = EfficiencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    np.testing.assert_allclose([again.eff, again.lo, again.n_eff], [table.eff, table.lo, table.n_eff])


def test_unit_weight_cutflow_equals_counts():
    counts = {"label": {"labelphi": 1000.0, "labelomega": 2.0}, "read": 800, "selected": 300}
    weighted = {**counts, "sumw_read": 800.0, "sumw2_read": 800.0, "sumw": 300.0, "sumw2": 300.0}
    a, b = selection_efficiency([counts]), selection_efficiency([weighted])
    for name in ("eff", "err", "lo", "hi"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12)
