"""Export to ROOT (read back with ROOT itself) and parquet; atomic, refusing, failure-safe writes."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from fedhex_hep.io.atomic import OutputError
from fedhex_hep.io.export import (
    ExportError,
    export_parquet,
    export_root,
    format_value,
    hist_name,
    hists_path,
    resolve_binning,
)
from fedhex_hep.io.featureset import FeatureSet

FEATURES = ["phi", "omega"]
LABELS = ["labelphi", "labelomega"]
POINTS = np.array([[1000.0, 2.5], [1870.0, 9.025], [3000.0, 5.0]])


def make_featureset(n_per_point: int = 3000, seed: int = 0, weighted: bool = True, source: str = "mc") -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(POINTS, n_per_point, axis=0)
    features = labels * (1 + 0.03 * rng.standard_normal(labels.shape))
    weights = rng.uniform(0.5, 1.5, len(labels)) if weighted else None
    cutflow = {
        "per_label": [
            {"label": dict(zip(LABELS, map(float, p))), "read": 2 * n_per_point + 100 * i, "selected": n_per_point}
            for i, p in enumerate(POINTS)
        ]
    }
    meta = {"source": source, "config": {"input": {"selection": "x > 1"}}, "version": "0.1.0", "cutflow": cutflow}
    if source == "generated":
        meta["model_path"] = "/models/m1"
    return FeatureSet.from_numpy(features, labels, FEATURES, LABELS, weights, meta)


@pytest.fixture(scope="module")
def root():
    import warnings

    with warnings.catch_warnings():
        # the pip ROOT package warns on import that it is in alpha stage (message starts with a
        # newline, so the pyproject filter does not match it)
        warnings.simplefilter("ignore", UserWarning)
        import ROOT

    ROOT.gROOT.SetBatch(True)
    return ROOT


def test_names_and_value_format():
    assert format_value(1870.0) == "1870"
    assert format_value(9.025) == "9p025"
    assert format_value(-1.5) == "m1p5"
    assert format_value(0.5) == "0p5"
    assert hist_name("phi", LABELS, [1870.0, 9.025]) == "h_phi__labelphi_1870__labelomega_9p025"


def _check_point_histograms(f, fs, point, edges_phi):
    """The TH1Ds and the TH2D of one mass point, read by ROOT, against the FeatureSet."""
    mask = fs.mask_label(point)
    w = fs.weights[mask]
    phi = fs.column("phi")[mask]
    omega = fs.column("omega")[mask]
    h = f.Get(hist_name("phi", LABELS, point))
    assert h.ClassName() == "TH1D"
    assert h.GetNbinsX() == 50
    assert h.GetXaxis().GetXmin() == pytest.approx(edges_phi[0])
    assert h.GetXaxis().GetTitle() == "phi [GeV]"
    inside = (phi >= edges_phi[0]) & (phi < edges_phi[-1])
    assert h.Integral() == pytest.approx(w[inside].sum(), rel=1e-12)
    # Sumw2 errors: sqrt(sum w^2) per bin, checked in the fullest bin
    counts, _ = np.histogram(phi, bins=edges_phi, weights=w**2)
    b = int(np.argmax(counts))
    assert h.GetSumw2N() > 0
    assert h.GetBinError(b + 1) == pytest.approx(np.sqrt(counts[b]), rel=1e-12)
    # under/overflow preserved: total incl. flow bins is the sum of all weights
    assert h.Integral(0, h.GetNbinsX() + 1) == pytest.approx(w.sum(), rel=1e-12)

    h_om = f.Get(hist_name("omega", LABELS, point))
    assert h_om.GetNbinsX() == 5 and h_om.GetXaxis().GetXbins().GetSize() == 6  # variable edges

    name2 = "h2_phi_vs_omega__" + hist_name("x", LABELS, point)[len("h_x__") :]
    h2 = f.Get(name2)
    assert h2.ClassName() == "TH2D"
    in2 = inside & (omega >= 0) & (omega < 16)
    assert h2.Integral() == pytest.approx(w[in2].sum(), rel=1e-12)
    assert h2.GetYaxis().GetTitle() == "omega [GeV]"


def test_root_file_read_by_root(tmp_path, root):
    fs = make_featureset()
    path = export_root(fs, tmp_path / "mc.root", bins={"phi": 50, "omega": [0, 1, 2, 4, 8, 16]}, extra_meta={"note": "t"})
    f = root.TFile.Open(str(path))
    assert f and not f.IsZombie()

    tree = f.Get("events")
    assert tree.ClassName() == "TTree"
    assert tree.GetEntries() == len(fs)
    branches = sorted(b.GetName() for b in tree.GetListOfBranches())
    assert branches == sorted([*FEATURES, *LABELS, "weight"])
    # values: compare a few entries and a full-column sum with the FeatureSet
    for i in (0, 4321, len(fs) - 1):
        tree.GetEntry(i)
        for name in [*FEATURES, *LABELS, "weight"]:
            assert getattr(tree, name) == pytest.approx(fs.column(name)[i], rel=1e-15)
    rdf = root.RDataFrame(tree)
    assert rdf.Sum("phi").GetValue() == pytest.approx(fs.column("phi").sum(), rel=1e-12)

    edges_phi = resolve_binning(fs, {"phi": 50})["phi"]
    for point in POINTS:
        _check_point_histograms(f, fs, point, edges_phi)

    # metadata readable by ROOT as TObjString holding JSON
    meta = {key: str(f.Get(f"meta/{key}").GetString()) for key in ("config", "version", "source", "binning", "extra")}
    assert json.loads(meta["config"]) == fs.metadata["config"]
    assert meta["version"] == __import__("fedhex_hep").__version__
    assert meta["source"] == "mc"
    assert json.loads(meta["binning"])["omega"] == [0, 1, 2, 4, 8, 16]
    assert json.loads(meta["extra"]) == {"note": "t"}

    # efficiency tree: measured at every point of an MC file
    eff = f.Get("efficiency")
    assert eff.GetEntries() == len(POINTS)
    for i in range(len(POINTS)):
        eff.GetEntry(i)
        j = int(np.argmin(np.abs(POINTS[:, 0] - eff.labelphi)))
        assert eff.eff == pytest.approx(3000 / (6000 + 100 * j))
        assert eff.interpolated == 0 and eff.eff_err > 0
    assert f.Get("efficiency_table").GetEntries() == len(POINTS)
    f.Close()


def test_generated_file_interpolated_efficiency_and_model_path(tmp_path):
    import uproot

    from fedhex_hep.generation.efficiency import EfficiencyModel

    mc = make_featureset()
    model = EfficiencyModel.from_cutflow(mc.metadata["cutflow"])
    rng = np.random.default_rng(1)
    off = np.array([[1500.0, 4.0]])
    gen = FeatureSet.from_numpy(
        off * (1 + 0.03 * rng.standard_normal((500, 2))),
        np.repeat(off, 500, axis=0),
        FEATURES,
        LABELS,
        metadata={"source": "generated", "model_path": "/models/m1", "config": {}},
    )
    path = export_root(gen, tmp_path / "gen.root", efficiency=model)
    with uproot.open(path) as f:
        eff = f["efficiency"].arrays(library="np")
        assert eff["interpolated"].tolist() == [1] and eff["in_range"].tolist() == [1]
        assert eff["eff"][0] == pytest.approx(model.predict(off)[0])
        assert f["meta/model_path"] == "/models/m1"
        assert f["meta/source"] == "generated"
        assert "h_phi__labelphi_1500__labelomega_4" in f
        # identical layout to an MC export
        assert f["events"].keys() == ["phi", "omega", "labelphi", "labelomega", "weight"]


def test_big_tree_written_in_few_large_baskets(tmp_path):
    import uproot

    fs = make_featureset(n_per_point=150_000, weighted=False)
    path = export_root(fs, tmp_path / "big.root", bins=10)
    with uproot.open(path) as f:
        tree = f["events"]
        assert tree.num_entries == len(fs)
        assert tree["phi"].num_baskets == 1  # one extend call for 450k events, not an RNTuple
        np.testing.assert_array_equal(tree["labelomega"].array(library="np"), fs.column("labelomega"))


def test_existing_output_refused_unless_overwrite(tmp_path):
    fs = make_featureset(200)
    target = tmp_path / "out.root"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match=str(target).replace(".", r"\.") + " already exists"):
        export_root(fs, target)
    assert target.read_bytes() == b"precious"
    export_root(fs, target, overwrite=True)
    assert target.read_bytes()[:4] == b"root"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.root"]


def test_full_disk_mid_write_leaves_no_file(tmp_path, monkeypatch):
    """ENOSPC from the ROOT writer in the middle of the file: clear error, nothing left behind."""
    import uproot.sink.file

    real_write = uproot.sink.file.FileSink.write
    calls = {"n": 0}

    def failing_write(self, location, serialization):
        calls["n"] += 1
        if calls["n"] > 5:  # let the header and a few records through, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, location, serialization)

    monkeypatch.setattr(uproot.sink.file.FileSink, "write", failing_write)
    with pytest.raises(OutputError, match=r"cannot write .*full\.root: no space left on device"):
        export_root(make_featureset(500), tmp_path / "full.root")
    assert calls["n"] > 5
    assert list(tmp_path.iterdir()) == []


def test_full_disk_keeps_previous_file(tmp_path, monkeypatch):
    import uproot.sink.file

    target = tmp_path / "keep.root"
    export_root(make_featureset(100), target)
    before = target.read_bytes()

    def no_space(self, location, serialization):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uproot.sink.file.FileSink, "write", no_space)
    with pytest.raises(OutputError, match="no space left on device"):
        export_root(make_featureset(100, seed=5), target, overwrite=True)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.root"]


def test_read_only_folder_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions (root)")
        with pytest.raises(OutputError, match=r"cannot write .*x\.root: permission denied"):
            export_root(make_featureset(100), folder / "x.root")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_read_only_filesystem_simulated(tmp_path, monkeypatch):
    """Same check where chmod cannot be used (root): the OS refuses the temporary file (EROFS)."""
    import fedhex_hep.io.atomic

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(fedhex_hep.io.atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*x\.root: permission denied \(read-only folder\?\)"):
        export_root(make_featureset(100), tmp_path / "x.root")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_folder_clear_error(tmp_path):
    """A folder that cannot be created (a file is in the way) gives a one-line error, even as root."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"cannot create folder .*file"):
        export_root(make_featureset(100), blocker / "sub" / "x.root")


def test_parquet_round_trip(tmp_path):
    import pyarrow.parquet as pq

    fs = make_featureset(1000, source="generated")
    path = export_parquet(fs, tmp_path / "gen.parquet", bins=20)
    back = FeatureSet.load(path)
    assert back.feature_names == FEATURES and back.label_names == LABELS
    for name in [*FEATURES, *LABELS, "weight"]:
        np.testing.assert_array_equal(back.column(name), fs.column(name))
    export_meta = back.metadata["export"]
    assert export_meta["source"] == "generated" and export_meta["model_path"] == "/models/m1"
    assert back.metadata["config"] == fs.metadata["config"]
    assert back.metadata["efficiency"]["coef"]  # the efficiency model travels with the events

    table = pq.read_table(hists_path(path)).to_pylist()
    assert len(table) == 3 * len(POINTS)
    row = next(r for r in table if r["name"] == hist_name("phi", LABELS, POINTS[1]))
    edges = np.asarray(row["edges_x"])
    assert len(edges) == 21 and edges.tolist() == export_meta["binning"]["phi"]
    mask = fs.mask_label(POINTS[1])
    expected, _ = np.histogram(fs.column("phi")[mask], bins=edges, weights=fs.weights[mask])
    np.testing.assert_allclose(row["values"], expected, rtol=1e-12)
    row2 = next(r for r in table if r["dim"] == 2 and r["labelphi"] == 1870.0)
    assert len(row2["values"]) == 20 * 20 and row2["y"] == "omega"

    with pytest.raises(OutputError, match="already exists"):
        export_parquet(fs, path)


def test_parquet_failure_leaves_neither_file(tmp_path, monkeypatch):
    fs = make_featureset(100)

    def broken_save(self, path, overwrite=True):
        raise OutputError(errno.ENOSPC, f"cannot write {path}: no space left on device")

    monkeypatch.setattr(FeatureSet, "save", broken_save)
    with pytest.raises(OutputError, match="no space left"):
        export_parquet(fs, tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bins, message",
    [
        ({"mass": 10}, "unknown feature 'mass'"),
        ({"phi": [3, 2, 1]}, "feature 'phi' must be a strictly increasing"),
        ({"phi": 0}, "feature 'phi' must be a positive integer"),
        ("many", "bins must be an int"),
    ],
)
def test_bad_binning_names_the_feature(tmp_path, bins, message):
    with pytest.raises(ExportError, match=message):
        export_root(make_featureset(50), tmp_path / "x.root", bins=bins)
    assert list(tmp_path.iterdir()) == []


def test_empty_featureset_refused(tmp_path):
    fs = make_featureset(10).select(np.zeros(30, dtype=bool))
    with pytest.raises(ExportError, match="empty"):
        export_root(fs, tmp_path / "x.root")


def test_common_binning_for_two_featuresets():
    a, b = make_featureset(500, seed=1), make_featureset(500, seed=2)
    both = resolve_binning([a, b], 30)
    values = np.concatenate([a.column("phi"), b.column("phi")])
    assert both["phi"][0] == pytest.approx(np.quantile(values, 0.001))
    assert both["phi"][-1] == pytest.approx(np.quantile(values, 0.999))
    assert len(both["omega"]) == 31


def _demo_point_featureset(folder) -> tuple[FeatureSet, dict]:
    """Reference selection of DESIGN.md applied with plain uproot + awkward (independent of extract)."""
    import awkward as ak
    import uproot

    columns = [
        "CBL_Region",
        "Photon_pt",
        "CBL_RecoPhi_photonindex",
        "CBL_RecoPhi_mass",
        "TwoProng_massPi0",
        "CBL_RecoPhi_twoprongindex",
        "GenPhi_mass",
        "GenOmega_mass",
    ]
    files = sorted(folder.glob("*.root"))
    assert files, f"no ROOT files in {folder}"
    events = ak.concatenate([uproot.open(f)["Events"].arrays(columns) for f in files])
    region = events[events.CBL_Region == 1]  # indices are valid only in region 1
    photon_pt = ak.fill_none(ak.firsts(region.Photon_pt[ak.singletons(region.CBL_RecoPhi_photonindex)]), -1.0)
    sel = region[ak.to_numpy(photon_pt) > 220]
    omega = ak.fill_none(ak.firsts(sel.TwoProng_massPi0[ak.singletons(sel.CBL_RecoPhi_twoprongindex)]), np.nan)
    features = np.stack([ak.to_numpy(sel.CBL_RecoPhi_mass), ak.to_numpy(omega)], axis=1).astype(np.float64)
    labels = np.stack([ak.to_numpy(sel.GenPhi_mass[:, 0]), ak.to_numpy(sel.GenOmega_mass[:, 0])], axis=1)
    label = dict(zip(LABELS, map(float, labels[0])))
    cutflow = {"per_label": [{"label": label, "read": len(events), "selected": len(sel)}]}
    fs = FeatureSet.from_numpy(
        features, labels.astype(np.float64), FEATURES, LABELS, metadata={"source": "mc", "cutflow": cutflow}
    )
    return fs, label


def test_roofit_crystal_ball_on_exported_demo_point(tmp_path, demo_dir, root):
    """A downstream fit: RooCBShape to the exported reconstructed Phi mass at a demo grid point."""
    from fedhex_hep.io.samples import DEMO_GRID, mass_point_dirname

    m_phi = DEMO_GRID["phi"][len(DEMO_GRID["phi"]) // 2]
    m_omega = DEMO_GRID["omega"][len(DEMO_GRID["omega"]) // 2]
    fs, label = _demo_point_featureset(demo_dir / mass_point_dirname(m_phi, m_omega))
    assert label == {"labelphi": m_phi, "labelomega": m_omega}
    assert len(fs) > 1000
    edges = np.linspace(0.8 * m_phi, 1.15 * m_phi, 71)  # 5 GeV-ish bins around the peak
    path = export_root(fs, tmp_path / "demo_mc.root", bins={"phi": edges, "omega": 40})

    f = root.TFile.Open(str(path))
    h = f.Get(hist_name("phi", LABELS, [m_phi, m_omega]))
    assert h.ClassName() == "TH1D"
    phi = fs.column("phi")
    assert h.Integral() == pytest.approx(np.sum((phi >= edges[0]) & (phi < edges[-1])))
    eff = f.Get("efficiency")
    eff.GetEntry(0)
    assert eff.eff == pytest.approx(fs.metadata["cutflow"]["per_label"][0]["selected"] / fs.metadata["cutflow"]["per_label"][0]["read"])

    root.RooMsgService.instance().setGlobalKillBelow(root.RooFit.WARNING)
    x = root.RooRealVar("x", "phi [GeV]", edges[0], edges[-1])
    data = root.RooDataHist("data", "exported phi", root.RooArgList(x), h)
    m0 = root.RooRealVar("m0", "peak", m_phi, 0.9 * m_phi, 1.1 * m_phi)
    sigma = root.RooRealVar("sigma", "width", 0.02 * m_phi, 0.002 * m_phi, 0.2 * m_phi)
    alpha = root.RooRealVar("alpha", "tail start", 1.0, 0.1, 10.0)
    n = root.RooRealVar("n", "tail power", 3.0, 0.5, 100.0)
    cb = root.RooCBShape("cb", "Crystal Ball", x, m0, sigma, alpha, n)
    result = cb.fitTo(data, root.RooFit.Save(True), root.RooFit.PrintLevel(-1))
    assert result.status() == 0
    assert result.covQual() == 3  # full, accurate covariance matrix
    assert abs(m0.getVal() - m_phi) / m_phi < 0.01, m0.getVal()
    assert 0 < sigma.getVal() < 0.1 * m_phi
    f.Close()


def test_generated_set_takes_efficiency_from_its_model_dir(tmp_path):
    import uproot

    mc = make_featureset(200)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "training.json").write_text(json.dumps({"cutflow": mc.metadata["cutflow"]}))
    gen = FeatureSet.from_numpy(
        mc.features, mc.labels, FEATURES, LABELS, metadata={"source": "generated", "model_path": str(model_dir)}
    )
    path = export_root(gen, tmp_path / "gen.root")
    with uproot.open(path) as f:
        eff = f["efficiency"].arrays(library="np")
    np.testing.assert_allclose(np.sort(eff["eff"]), np.sort([200 / (400 + 100 * i) for i in range(3)]))
