"""compare(): plots per mass point, overview, loss curve; metrics equal direct metrics calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from fedhex_hep.validation import metrics
from fedhex_hep.io.atomic import OutputError
from fedhex_hep.validation.compare import CompareError, compare, core_edges, plot_loss
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.validation.plotting import PlotError

FEATURES = ["phi", "omega"]
LABELS = ["labelphi", "labelomega"]
MC_POINTS = np.array([[1000.0, 2.5], [1870.0, 9.025], [3000.0, 5.0]])


def sample(points: np.ndarray, n: int, seed: int, shift: float = 0.0, weighted: bool = False) -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(points, n, axis=0)
    features = labels * (1 + shift + 0.03 * rng.standard_normal(labels.shape))
    weights = rng.uniform(0.5, 1.5, len(labels)) if weighted else None
    return FeatureSet.from_numpy(features, labels, FEATURES, LABELS, weights)


@pytest.fixture()
def history(tmp_path):
    path = tmp_path / "model" / "history.csv"
    path.parent.mkdir()
    rows = ["epoch,loss,val_loss,lr"] + [f"{e},{1.5 / e - 0.2},{1.6 / e - 0.18},{1e-3 * 0.9**e}" for e in range(1, 21)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _weighted_ks_by_hand(a, wa, b, wb):
    """Largest distance of the weighted CDFs at every sample value, and the effective size n_a n_b / (n_a + n_b)."""
    sa, sb = np.argsort(a), np.argsort(b)
    ca, cb = np.cumsum(wa[sa]) / wa.sum(), np.cumsum(wb[sb]) / wb.sum()
    x = np.concatenate([a, b])
    fa = np.concatenate([[0.0], ca])[np.searchsorted(a[sa], x, side="right")]
    fb = np.concatenate([[0.0], cb])[np.searchsorted(b[sb], x, side="right")]
    na, nb = wa.sum() ** 2 / (wa**2).sum(), wb.sum() ** 2 / (wb**2).sum()
    return float(np.max(np.abs(fa - fb))), na * nb / (na + nb)


def test_weighted_ks_reduces_to_scipy_and_counts_integer_weights_as_copies():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 400), rng.normal(0.1, 1, 700)
    ones = metrics.ks_test_weighted(a, b, np.ones(400), np.ones(700))
    scipy = stats.ks_2samp(a, b, method="asymp")
    assert ones.statistic == pytest.approx(scipy.statistic) and ones.pvalue == pytest.approx(scipy.pvalue, rel=1e-9)
    w = rng.integers(1, 4, 400).astype(float)
    weighted = metrics.ks_test_weighted(a, b, w, None)
    copies = stats.ks_2samp(np.repeat(a, w.astype(int)), b)
    assert weighted.statistic == pytest.approx(copies.statistic, abs=1e-12)


def test_compare_files_and_metrics(tmp_path, history):
    mc = sample(MC_POINTS, 3000, seed=0, weighted=True)
    gen_points = np.array([[1870.0, 9.025], [2200.0, 4.0]])  # one grid point, one off-grid point
    gen = sample(gen_points, 2000, seed=1)
    out = tmp_path / "plots"
    result = compare(gen, mc, out, bins=30, history_csv=history)

    tag = "labelphi_1870__labelomega_9p025"
    expected = {
        f"phi__{tag}.png",
        f"omega__{tag}.png",
        f"2d_phi_vs_omega__{tag}.png",
        "label_plane.png",
        "loss.png",
    }
    assert {p.split("/")[-1] for p in result["plots"]} == expected
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(expected | {"metrics.json"})
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real, non-trivial image
    assert result["points_without_mc"] == [[2200.0, 4.0]]
    assert list(result["metrics"]) == [tag]

    # metric values equal direct metrics calls on the same events and MC-quantile binning
    g, m = gen.at_label([1870.0, 9.025]), mc.at_label([1870.0, 9.025])
    for feature in FEATURES:
        got = result["metrics"][tag]["features"][feature]
        edges = core_edges(m.column(feature), 30)
        chi2 = metrics.chi2_ndf(g.column(feature), m.column(feature), edges, g.weights, m.weights)
        assert got["chi2"] == chi2.chi2 and got["ndf"] == chi2.ndf == 29
        assert got["chi2_ndf"] == pytest.approx(chi2.chi2 / chi2.ndf)
        # KS with the MC weights: weighted CDFs evaluated point by point, effective sizes for the p-value
        d, n_eff = _weighted_ks_by_hand(g.column(feature), g.weights, m.column(feature), m.weights)
        assert got["ks_statistic"] == pytest.approx(d, abs=1e-12)
        assert got["ks_pvalue"] == pytest.approx(stats.kstwo.sf(d, round(n_eff)), rel=1e-9)
        # same distribution: chi2/ndf of order 1, not a placeholder
        assert 0.3 < got["chi2_ndf"] < 2.5
        outside = (m.column(feature) < edges[0]) | (m.column(feature) >= edges[-1])
        assert got["outside_mc"] == pytest.approx(m.weights[outside].sum() / m.weights.sum())
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"] == result["metrics"]


def test_core_edges_focus_on_the_peak():
    rng = np.random.default_rng(0)
    peak = rng.normal(2000.0, 40.0, 9000)
    tail = rng.uniform(300.0, 1900.0, 1000)  # a long low-side continuum
    ref = np.concatenate([peak, tail])
    edges = core_edges(ref, 40)
    q25, med, q75 = np.quantile(ref, [0.25, 0.5, 0.75])
    assert edges[0] == pytest.approx(med - 6 * (q75 - q25) / 1.349)
    assert edges[-1] == pytest.approx(np.quantile(ref, 0.995))  # clipped to the 99.5% quantile
    assert len(edges) == 41 and np.diff(edges)[0] < 40  # bins narrower than the peak width


def test_shifted_generation_is_flagged(tmp_path):
    mc = sample(MC_POINTS[1:2], 4000, seed=0)
    gen = sample(MC_POINTS[1:2], 4000, seed=1, shift=0.01)  # 1% scale shift, a third of the width
    result = compare(gen, mc, tmp_path / "p")
    feats = next(iter(result["metrics"].values()))["features"]
    assert feats["phi"]["chi2_ndf"] > 3 and feats["phi"]["ks_pvalue"] < 1e-6


def test_pdf_on_request(tmp_path):
    mc = sample(MC_POINTS[:1], 500, seed=0)
    result = compare(sample(MC_POINTS[:1], 500, seed=1), mc, tmp_path / "p", formats=("pdf",))
    assert len(result["plots"]) == 4
    assert all(p.endswith(".pdf") and open(p, "rb").read(5) == b"%PDF-" for p in result["plots"])


def test_existing_output_refused_unless_overwrite(tmp_path):
    mc = sample(MC_POINTS[:1], 500, seed=0)
    gen = sample(MC_POINTS[:1], 500, seed=1)
    out = tmp_path / "p"
    compare(gen, mc, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    with pytest.raises(OutputError, match=r"p/phi__labelphi_1000__labelomega_2p5\.png already exists"):
        compare(gen, mc, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    compare(sample(MC_POINTS[:1], 500, seed=2), mc, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(before)
    assert (out / "metrics.json").read_bytes() != before["metrics.json"]


def test_plot_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    mc = sample(MC_POINTS[:1], 300, seed=0)
    with pytest.raises(OutputError, match="no space left on device"):
        compare(sample(MC_POINTS[:1], 300, seed=1), mc, tmp_path / "p")
    assert [p for p in (tmp_path / "p").iterdir() if not p.name.startswith(".fedhex-hep.lock")] == []


def test_second_compare_into_a_busy_folder_is_refused(tmp_path):
    from fedhex_hep.io.atomic import output_lock

    mc = sample(MC_POINTS[:1], 100, seed=0)
    out = tmp_path / "p"
    with output_lock(out):  # another run holds the folder
        with pytest.raises(OutputError, match="in use by another fedhex-hep process"):
            compare(sample(MC_POINTS[:1], 100, seed=1), mc, out)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []


def test_mismatched_columns_refused(tmp_path):
    mc = sample(MC_POINTS[:1], 100, seed=0)
    other = FeatureSet.from_numpy(mc.features, mc.labels, ["a", "b"], LABELS)
    with pytest.raises(CompareError, match="differ from MC columns"):
        compare(other, mc, tmp_path / "p")


def test_loss_plot_and_bad_history(tmp_path, history):
    files = plot_loss(history, tmp_path / "loss.png")
    assert [f.name for f in files] == ["loss.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(PlotError, match="bad.csv has no column 'val_loss'"):
        plot_loss(bad, tmp_path / "x")
