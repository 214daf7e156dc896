"""Templates a fit can trust: acceptance, yields, the analysis' binning, overflow, the
interpolation band, a combine datacard fitted by a real RooFit/HistFactory likelihood."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import norm
from test_scan import FEATURES, LABELS, TRAIN_GRID, train_toy_model

from fedhex_hep.binning import BinningError, apply_overflow, parse_bins_option, parse_bins_options, read_edges_file
from fedhex_hep.generation.uncertainty import UncertaintyError, band_coverage, band_scale, interpolation_band
from fedhex_hep.naming import hist_name, variation_name

# test_scan's toy grid is a 2 x 2 lattice plus its centre: its scans warn of sparse cells
pytestmark = pytest.mark.filterwarnings("ignore::fedhex_hep.generation.grid_support.SparseCellWarning")


# -- acceptance: a sampler whose distribution is known exactly ----------------------------------
class _GaussianFlow:
    """z ~ N(0, 1) per feature, reproducible from the seed pair (the flow interface)."""

    n_labels = 1

    def sample(self, c, seed):
        rng = np.random.default_rng([int(s) for s in np.atleast_1d(seed)])
        return rng.standard_normal((len(c), 1)).astype(np.float32)


class _ShiftPreprocessor:
    feature_names = ["x"]
    label_names = ["mu"]

    def transform_labels(self, labels):
        return np.asarray(labels, dtype=np.float64)

    def inverse_features(self, z, labels):
        return np.asarray(z, dtype=np.float64) + np.asarray(labels, dtype=np.float64)[:, :1]


def _gaussian_model():
    """x ~ N(mu, 1) at label mu: P(lo <= x <= hi) is known in closed form."""
    return SimpleNamespace(
        feature_names=["x"], label_names=["mu"], label_ranges={}, training_label_points=np.zeros((0, 1)), path=None,
        preprocessor=_ShiftPreprocessor(), flow=_GaussianFlow(), config=SimpleNamespace(to_dict=lambda: {}),
    )


def test_acceptance_is_accepted_over_drawn_with_a_batch_larger_than_the_request():
    from fedhex_hep.generation.sampling import generate

    model = _gaussian_model()
    lo, hi = -0.5, 1.0
    points = np.array([[0.0], [0.7]])
    fs = generate(model, points, n_events=1000, seed=5, batch_size=50000, ranges={"x": (lo, hi)})
    info = fs.metadata["generation"]
    assert min(info["drawn"]) > 1000  # the batch is larger than the request
    for k, mu in enumerate(points[:, 0]):
        exact = norm.cdf(hi - mu) - norm.cdf(lo - mu)
        sigma = np.sqrt(exact * (1 - exact) / info["drawn"][k])
        assert abs(info["acceptance"][k] - exact) < 5 * sigma, (info["acceptance"][k], exact)
        assert info["acceptance"][k] == info["accepted"][k] / info["drawn"][k]
    x = fs.column("x")
    assert len(x) == 2000 and np.all((x >= lo) & (x <= hi))


# -- binning -------------------------------------------------------------------------------------
def test_bins_options(tmp_path):
    assert parse_bins_option("phi=60:500:3500") == ("phi", (60, 500.0, 3500.0))
    assert parse_bins_option("phi=0,10,20,50") == ("phi", [0.0, 10.0, 20.0, 50.0])
    (tmp_path / "e.txt").write_text("# phi edges, GeV\n500 700\n1000, 3500\n")
    assert parse_bins_option(f"phi={tmp_path / 'e.txt'}") == ("phi", [500.0, 700.0, 1000.0, 3500.0])
    (tmp_path / "e.json").write_text(json.dumps({"phi": [1, 2, 4]}))
    assert read_edges_file(tmp_path / "e.json", "phi").tolist() == [1.0, 2.0, 4.0]
    assert parse_bins_options(["12"]) == 12
    for bad, message in (("phi=1,0", "strictly increasing"), ("phi=2.5:0:1", "integer"), ("phi", "expected"), ("phi=nofile", "edges file")):
        with pytest.raises(BinningError, match=message):
            from fedhex_hep.binning import edges_from_spec

            edges_from_spec(parse_bins_option(bad)[1], "phi")


def test_overflow_fold_and_drop_keep_track_of_the_events():
    import hist

    h = hist.Hist(hist.axis.Regular(3, 0.0, 3.0), storage=hist.storage.Weight())
    h.fill([-1.0, 0.5, 1.5, 2.5, 5.0, 6.0], weight=[1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    folded, fraction = apply_overflow(h, "fold")
    assert fraction == pytest.approx(5.0 / 8.0)
    assert folded.values(flow=True).tolist() == [0.0, 2.0, 1.0, 5.0, 0.0]
    assert folded.variances(flow=True).tolist() == [0.0, 2.0, 1.0, 9.0, 0.0]
    dropped, _ = apply_overflow(h, "drop")
    assert dropped.values(flow=True).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_export_cli_bins_and_overflow_policy(tmp_path):
    import uproot

    from fedhex_hep.io.featureset import FeatureSet

    rng = np.random.default_rng(1)
    feats = rng.normal([1000.0, 5.0], [100.0, 1.0], size=(2000, 2))
    fs = FeatureSet.from_numpy(feats, np.tile([1000.0, 5.0], (2000, 1)), FEATURES, LABELS)
    path = fs.save(tmp_path / "f.parquet")
    _cli("export", str(path), "--bins", "x=900,1000,1100", "--bins", "y=4:4:6", "--overflow", "fold", "-o", str(tmp_path / "f.root"))
    with uproot.open(tmp_path / "f.root") as f:
        h = f[hist_name("x", LABELS, [1000.0, 5.0])]
        overflow = json.loads(f["meta/overflow"])
    assert h.axis().edges().tolist() == [900.0, 1000.0, 1100.0]
    assert h.values(flow=True)[0] == 0 and h.values().sum() == 2000
    outside = np.mean((feats[:, 0] < 900) | (feats[:, 0] >= 1100))
    assert overflow["policy"] == "fold" and overflow["fraction"][h.name] == pytest.approx(outside)


# -- coverage of the band ------------------------------------------------------------------------
def test_band_coverage_on_a_constructed_case():
    nominal = np.array([1.0, 10.0, 40.0, 100.0, 40.0, 10.0, 1.0])
    up, down = nominal * 1.1, nominal * 0.9
    # reference: no statistical error; 100 and 40 inside the band, one 40 and one 10 outside
    reference = np.array([1.0, 12.0, 41.0, 100.0, 46.0, 10.0, 1.0])
    reference *= nominal.sum() / reference.sum()
    got = band_coverage(nominal, up, down, reference, reference_var=np.zeros(7))
    # bins holding 95% of the reference: the five largest (2 + 2 of 213 events are left out)
    assert got["n_bins"] == 5
    inside = (reference >= down) & (reference <= up)
    core = np.argsort(reference)[::-1][:5]
    assert got["n_covered"] == int(inside[core].sum())
    assert got["coverage"] == pytest.approx(inside[core].mean())
    # the reference's statistical error widens the band: a huge error covers everything
    assert band_coverage(nominal, up, down, reference, reference_var=np.full(7, 1e6))["coverage"] == 1.0
    with pytest.raises(UncertaintyError, match="binnings"):
        band_coverage(nominal, up, down, reference[:3])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_band_is_a_one_sigma_prediction_interval(k):
    # the truth and K members drawn from one distribution: the band around the members' mean
    # holds the truth in 68.3% of many trials (Monte Carlo, independent of the t formula)
    rng = np.random.default_rng(k)
    draws = rng.normal(size=(400_000, k + 1))
    members, truth = draws[:, :k], draws[:, k]
    half = band_scale(k) * members.std(axis=1, ddof=1)
    inside = np.abs(truth - members.mean(axis=1)) <= half
    assert inside.mean() == pytest.approx(norm.cdf(1) - norm.cdf(-1), abs=0.003)


def test_interpolation_band_scales_the_members_spread():
    hist = pytest.importorskip("hist")
    members = []
    for counts in ([10.0, 20.0], [12.0, 20.0], [14.0, 26.0]):
        h = hist.Hist(hist.axis.Regular(2, 0, 2), storage=hist.storage.Weight())
        h.view()["value"], h.view()["variance"] = counts, counts
        members.append(h)
    up, down = interpolation_band(members[1], members)
    sigma = band_scale(3) * np.array([2.0, np.std([20.0, 20.0, 26.0], ddof=1)])
    assert up.values() == pytest.approx(np.array([12.0, 20.0]) + sigma)
    assert down.values() == pytest.approx(np.clip(np.array([12.0, 20.0]) - sigma, 0, None))
    assert up.variances() == pytest.approx(members[1].variances())
    with pytest.raises(UncertaintyError, match=">= 2"):
        band_scale(1)


# -- a trained ensemble --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A really trained tiny ensemble of two flows (2 features, 2 labels, 2 epochs)."""
    return train_toy_model(tmp_path_factory.mktemp("templates") / "model", ensemble=2)


def test_a_band_from_members_fitted_to_the_same_events_warns(tmp_path):
    """Without bootstrap replicas the members' spread omits the grid's statistics: the scan says
    so, and still writes the variations."""
    import uproot

    from fedhex_hep.generation.scan import run_scan
    from fedhex_hep.generation.uncertainty import BandWithoutBootstrapWarning

    same_events = train_toy_model(tmp_path / "model", ensemble=2, bootstrap=False)
    with pytest.warns(BandWithoutBootstrapWarning, match=r"model\.bootstrap = false"):
        scan = run_scan(same_events, "1200,3", 500, tmp_path / "scan.root", bins={"x": (12, 1050.0, 1450.0)},
                        seed=6, progress=False, variations=True)
    nominal = hist_name("x", LABELS, (1200.0, 3.0))
    with uproot.open(scan) as f:
        assert {variation_name(nominal, "interp", d) for d in ("Up", "Down")} <= {k.split(";")[0] for k in f.keys()}


def _cli(*args: str):
    from typer.testing import CliRunner

    from fedhex_hep.cli.app import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_scan_bins_edges_reach_root_and_yields_are_eff_acc_xsec_lumi(model_with_eff, tmp_path):
    ROOT = pytest.importorskip("ROOT")
    import uproot

    edges_x = [900.0, 1150.0, 1200.0, 1250.0, 1300.0, 1500.0]
    out = tmp_path / "scan.root"
    _cli(
        "generate", str(model_with_eff), "--scan", "1200/1300,3", "-n", "400", "--seed", "4", "-o", str(out),
        "--bins", "x=" + ",".join(f"{e:g}" for e in edges_x), "--bins", "y=16:0:8", "--range", "y=1,7",
        "--yield-normalised", "--xsec", "2.5", "--lumi", "1000", "--set", "generation.batch_size=100000", "--no-progress",
        "--config", str(model_with_eff / "config.toml"),
    )
    with uproot.open(out) as f:
        scan = f["scan"].arrays(library="np")
        meta_overflow = json.loads(f["meta/overflow"])
        assert json.loads(f["meta/ranges"]) == {"y": [1.0, 7.0]}
    f = ROOT.TFile.Open(str(out))
    for i, point in enumerate([(1200.0, 3.0), (1300.0, 3.0)]):
        h = f.Get(hist_name("x", LABELS, point))
        axis = h.GetXaxis()
        got = [axis.GetBinLowEdge(b) for b in range(1, axis.GetNbins() + 2)]
        assert got == edges_x  # the analysis' edges exactly
        assert h.GetBinContent(0) == 0 and h.GetBinContent(axis.GetNbins() + 1) == 0
        expected = scan["eff"][i] * scan["acceptance"][i] * 2.5 * 1000
        assert h.Integral() == pytest.approx(expected, rel=1e-6)
        assert scan["integral"][i] == pytest.approx(expected, rel=1e-6)
        # drop: events outside x's edges or y's range are not generated; the fraction is reported
        assert 0 < scan["acceptance"][i] < 1
        assert meta_overflow["policy"] == "drop"
        assert meta_overflow["fraction"][hist_name("x", LABELS, point)] == pytest.approx(1 - scan["acceptance"][i])
        hy = f.Get(hist_name("y", LABELS, point))
        assert hy.GetXaxis().GetXmin() == 0 and hy.GetXaxis().GetXmax() == 8 and hy.GetNbinsX() == 16
        assert hy.Integral(1, 2) == 0 and hy.Integral(15, 16) == 0  # --range y=1,7 honoured
    f.Close()


@pytest.fixture(scope="module")
def model_with_eff(model_dir, tmp_path_factory) -> Path:
    import shutil

    from fedhex_hep.generation.efficiency import EfficiencyModel

    own = tmp_path_factory.mktemp("eff") / "model"
    shutil.copytree(model_dir, own)
    pts = np.array(TRAIN_GRID)
    model = EfficiencyModel(label_names=LABELS).fit(pts, 0.3 + 0.1 * (pts[:, 0] - 1000.0) / 1000.0, np.full(len(pts), 0.01))
    (own / "efficiency.json").write_text(json.dumps(model.to_dict()))
    return own


def test_acceptance_of_a_scan_matches_an_independent_sample(model_with_eff, tmp_path):
    """The scan's acceptance (drop) against the fraction inside the binning of a free flow sample."""
    import uproot

    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.generation.scan import run_scan
    from fedhex_hep.model.storage import load_model

    bins = {"x": (10, 1150.0, 1300.0)}
    out = run_scan(model_with_eff, [[1200.0, 3.0]], 2000, tmp_path / "acc.root", bins=bins, seed=2, progress=False,
                   yield_normalised=True, xsec=1.0, lumi=1.0)
    with uproot.open(out) as f:
        scan = f["scan"].arrays(library="np")
    free = generate(load_model(model_with_eff), [[1200.0, 3.0]], 200000, seed=99).column("x")
    p = np.mean((free >= 1150.0) & (free < 1300.0))
    n = 2000 / scan["acceptance"][0]  # events examined, at least
    assert abs(scan["acceptance"][0] - p) < 5 * np.sqrt(p * (1 - p) / n) + 5 * np.sqrt(p * (1 - p) / 200000)
    assert scan["integral"][0] == pytest.approx(scan["eff"][0] * scan["acceptance"][0], rel=1e-6)


def test_fold_puts_the_outside_events_into_the_edge_bins(model_dir, tmp_path):
    import uproot

    from fedhex_hep.generation.scan import run_scan

    out = run_scan(model_dir, [[1200.0, 3.0]], 500, tmp_path / "fold.root", bins={"x": (10, 1150.0, 1250.0)},
                   seed=2, progress=False, overflow="fold")
    with uproot.open(out) as f:
        h = f[hist_name("x", LABELS, [1200.0, 3.0])]
        overflow = json.loads(f["meta/overflow"])
        scan = f["scan"].arrays(library="np")
    values = h.values(flow=True)
    assert values[0] == 0 and values[-1] == 0 and values.sum() == 500
    assert overflow["policy"] == "fold" and 0 < overflow["fraction"][h.name] < 1
    assert scan["acceptance"][0] == 1.0 and scan["outside"][0] == overflow["fraction"][h.name]


@pytest.mark.slow
def test_variations_datacard_and_a_histfactory_fit(model_with_eff, tmp_path):
    """Signal + interpolation band + flat background -> HistFactory fits mu = 1 on the Asimov data."""
    ROOT = pytest.importorskip("ROOT")
    import uproot

    from fedhex_hep.generation.scan import run_scan

    scan = run_scan(model_with_eff, "1200/1400,3", 3000, tmp_path / "scan.root", bins={"x": (12, 1050.0, 1450.0)},
                    seed=6, progress=False, variations=True, yield_normalised=True, xsec=0.5, lumi=2000.0)
    point = (1200.0, 3.0)
    nominal = hist_name("x", LABELS, point)
    with uproot.open(scan) as f:
        h, up, down = (f[n].values() for n in (nominal, variation_name(nominal, "interp", "Up"), variation_name(nominal, "interp", "Down")))
    assert np.all(up >= h) and np.all(down <= h) and np.any(up > h)
    with uproot.open(scan) as f:
        bkg_hist = f[nominal].to_hist()
    bkg_hist.view()["value"] = 40.0
    bkg_hist.view()["variance"] = 40.0
    with uproot.recreate(tmp_path / "bkg.root") as f:
        f["bkg"] = bkg_hist
    card = tmp_path / "card.txt"
    _cli("datacard", str(scan), "--point", "1200,3", "--feature", "x", "--background", f"bkg={tmp_path / 'bkg.root'}:bkg", "-o", str(card))
    text = card.read_text()
    assert f"shapes sig x scan.root {nominal} {nominal}_$SYSTEMATIC" in text
    assert "interp shape 1 -" in text and "eff_sig lnN" in text
    mu = _fit_card_with_histfactory(ROOT, card)
    assert mu == pytest.approx(1.0, abs=1e-3)


def _parse_card(card: Path) -> dict:
    """The pieces of our one-channel card that a HistFactory model needs."""
    shapes, nuisances = {}, []
    for line in card.read_text().splitlines():
        words = line.split()
        if words[:1] == ["shapes"]:
            shapes[words[1]] = {"file": str(card.parent / words[3]), "hist": words[4], "syst": words[5] if len(words) > 5 else None}
        elif len(words) >= 3 and words[1] in ("shape", "lnN"):
            nuisances.append((words[0], words[1], words[2]))
    return {"shapes": shapes, "nuisances": nuisances}


def _fit_card_with_histfactory(ROOT, card: Path) -> float:
    HF = ROOT.RooStats.HistFactory
    parsed = _parse_card(card)
    meas = HF.Measurement("fedhex", "fedhex")
    meas.SetPOI("mu")
    meas.SetLumi(1.0)
    meas.AddConstantParam("Lumi")
    chan = HF.Channel("x")
    data = parsed["shapes"]["data_obs"]
    chan.SetData(data["hist"], data["file"])
    for process, src in parsed["shapes"].items():
        if process == "data_obs":
            continue
        sample = HF.Sample(process, src["hist"], src["file"])
        sample.SetNormalizeByTheory(False)
        if process == "sig":
            sample.AddNormFactor("mu", 1.0, 0.0, 5.0)
            for name, kind, value in parsed["nuisances"]:
                if kind == "shape":
                    pattern = src["syst"].replace("$SYSTEMATIC", name)
                    sample.AddHistoSys(name, pattern + "Down", src["file"], "", pattern + "Up", src["file"], "")
                else:
                    kappa = float(value)
                    sample.AddOverallSys(name, 1.0 / kappa, kappa)
        chan.AddSample(sample)
    meas.AddChannel(chan)
    meas.CollectHistograms()
    ws = HF.HistoToWorkspaceFactoryFast.MakeCombinedModel(meas)
    config = ws.obj("ModelConfig")
    pdf, obs_data = config.GetPdf(), ws.data("obsData")
    names = {p.GetName() for p in config.GetNuisanceParameters()}
    assert {"alpha_interp", "alpha_eff_sig"} <= names  # the nuisances are in the likelihood
    nll = pdf.createNLL(obs_data, ROOT.RooFit.Constrain(config.GetNuisanceParameters()))
    # start away from the truth, so that only the fit brings mu back to 1
    ws.var("mu").setVal(0.3)
    ws.var("alpha_interp").setVal(0.7)
    minim = ROOT.RooMinimizer(nll)
    minim.setPrintLevel(-1)
    minim.setStrategy(2)
    minim.setEps(1e-6)
    minim.minimize("Minuit2", "Migrad")
    return float(ws.var("mu").getVal())
