"""Mass scans: FlowTemplateProcessor under coffea's Runner, run_scan's ROOT file, executors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedhex_hep.generation.scan import ScanError, grid_points
from fedhex_hep.processors.generation import (
    CombinedProcessor,
    FlowTemplateProcessor,
    GenerationProcessorError,
    format_value,
    point_seed,
    template_name,
)

# The toy grid is a 2 x 2 lattice plus its centre: every cell of the 3 x 3 lattice it spans lacks
# corners, which test_scan_warns_once_about_sparse_cells checks; the other tests do not look.
pytestmark = pytest.mark.filterwarnings("ignore::fedhex_hep.generation.grid_support.SparseCellWarning")

FEATURES = ["x", "y"]
LABELS = ["ma", "mb"]
TRAIN_GRID = [(1000.0, 2.0), (1000.0, 6.0), (2000.0, 2.0), (2000.0, 6.0), (1500.0, 4.0)]
BINS = {"x": (20, 600.0, 2600.0), "y": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0]}


def _toy(n_per_point: int, seed: int):
    """Features x ~ N(ma, 0.05 ma), y ~ N(mb, 0.1 mb) at each training point (GeV)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(TRAIN_GRID), n_per_point, axis=0)
    feats = np.stack([rng.normal(labels[:, 0], 0.05 * labels[:, 0]), rng.normal(labels[:, 1], 0.1 * labels[:, 1])], axis=1)
    return feats, labels


def train_toy_model(path: Path, ensemble: int = 1, bootstrap: bool = True) -> Path:
    """A really trained tiny flow, or ensemble of flows (2 features, 2 labels, 2 epochs; each
    member on its own bootstrap replica unless ``bootstrap`` is False), at ``path``."""
    from fedhex_hep.config import config_from_dict
    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.model.training import train

    cfg = config_from_dict(
        {
            "input": {"features": {f: f for f in FEATURES}, "labels": {lab: lab for lab in LABELS}},
            "model": {"n_blocks": 1, "spline_blocks": 0, "hidden_units": [8], "ensemble": ensemble,
                      "bootstrap": bootstrap},
            "training": {"epochs": 2, "decay_epochs": 2, "checkpoint_every": 1, "patience": 0, "batch_size": 256},
        }
    )
    feats, labels = _toy(300, seed=3)
    train(FeatureSet.from_numpy(feats, labels, FEATURES, LABELS), cfg, path, progress=False)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("scan") / "model")


def _efficiency_model():
    from fedhex_hep.generation.efficiency import EfficiencyModel

    pts = np.array(TRAIN_GRID)
    eff = 0.3 + 0.2 * (pts[:, 0] - 1000.0) / 1000.0 + 0.02 * pts[:, 1]
    return EfficiencyModel(label_names=LABELS).fit(pts, eff, np.full(len(pts), 0.01))


def _read_hists(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    import uproot

    out = {}
    with uproot.open(path) as f:
        for key, cls in f.classnames(recursive=False).items():
            if cls.startswith("TH1"):
                h = f[key]
                out[key.split(";")[0]] = (h.values(flow=True), h.variances(flow=True), h.axis().edges())
    return out


# -- grid spec -------------------------------------------------------------------------------
def test_grid_points_syntax():
    pts = grid_points("1000:3000:250,1:9:1")
    assert pts.shape == (81, 2)
    assert pts[0].tolist() == [1000.0, 1.0] and pts[1].tolist() == [1000.0, 2.0] and pts[-1].tolist() == [3000.0, 9.0]
    assert grid_points("1870/2464,9.025").tolist() == [[1870.0, 9.025], [2464.0, 9.025]]
    assert grid_points("0:1:0.1,5")[:, 0].tolist() == [round(0.1 * i, 1) for i in range(11)]
    both = grid_points("1000:2000:1000,2;1000,2/3")  # duplicates across ';' dropped, order kept
    assert both.tolist() == [[1000.0, 2.0], [2000.0, 2.0], [1000.0, 3.0]]


@pytest.mark.parametrize(
    "spec, message",
    [("", "empty"), ("1000:900:10,2", "stop >= start"), ("1000:2000:0,2", "step > 0"), ("abc,2", "field 1"), ("1000", "2 labels")],
)
def test_grid_points_errors(spec, message):
    with pytest.raises(ScanError, match=message):
        grid_points(spec, n_labels=2)


def test_names_and_seeds():
    assert format_value(1870.0) == "1870" and format_value(9.025) == "9p025" and format_value(-1.5) == "m1p5"
    assert template_name("phi", ["labelphi", "labelomega"], [1870.0, 9.025]) == "h_phi__labelphi_1870__labelomega_9p025"
    from fedhex_hep.io.export import hist_name

    assert template_name("x", LABELS, [1234.5, 0.25]) == hist_name("x", LABELS, [1234.5, 0.25])
    seeds = {point_seed(1, i) for i in range(1000)}
    assert len(seeds) == 1000 and point_seed(1, 5) == point_seed(1, 5) != point_seed(2, 5)


# -- processor -------------------------------------------------------------------------------
def test_processor_input_errors(model_dir, tmp_path):
    pts = [[1200.0, 3.0]]
    with pytest.raises(GenerationProcessorError, match="shape"):
        FlowTemplateProcessor(model_dir, [[1.0, 2.0, 3.0]], 10, BINS)
    with pytest.raises(GenerationProcessorError, match="listed twice"):
        FlowTemplateProcessor(model_dir, pts * 2, 10, BINS)
    with pytest.raises(GenerationProcessorError, match="unknown feature 'z'"):
        FlowTemplateProcessor(model_dir, pts, 10, {"z": (10, 0.0, 1.0)})
    with pytest.raises(GenerationProcessorError, match=r"bins\['x'\]"):
        FlowTemplateProcessor(model_dir, pts, 10, {"x": [3.0, 2.0, 1.0]})
    with pytest.raises(GenerationProcessorError, match="does not exist"):
        FlowTemplateProcessor(tmp_path / "nomodel", pts, 10, BINS)
    # a training grid that is not a table of points: named as the model loader names it
    import json
    import shutil

    from fedhex_hep.config import load_config
    from fedhex_hep.model.storage import write_checksums

    bad = shutil.copytree(model_dir, tmp_path / "bad_grid")
    info = json.loads((bad / "training.json").read_text())
    info["label_points"] = [[1000.0, 2.0], [1500.0]]
    (bad / "training.json").write_text(json.dumps(info))
    write_checksums(bad, load_config(bad / "config.toml"))
    with pytest.raises(GenerationProcessorError, match=r"training.json: bad 'label_points'"):
        FlowTemplateProcessor(bad, pts, 10, BINS)


def test_processor_is_light_to_pickle(model_dir):
    """Only the model path travels with the processor, never the weights."""
    import cloudpickle

    proc = FlowTemplateProcessor(model_dir, grid_points("1100:1900:200,3/5"), 50, BINS, seed=4)
    hists, _ = proc.generate_point(0)  # loads the model into this process's cache
    blob = cloudpickle.dumps(proc)
    assert len(blob) < 20000
    assert b"tensorflow" not in blob
    again = pickle.loads(blob)
    hists2, _ = again.generate_point(0)
    name = template_name("x", LABELS, proc.points[0])
    assert np.array_equal(hists[name].values(flow=True), hists2[name].values(flow=True))
    assert hists[name].sum(flow=True).value == hists[name].sum().value == 50  # nothing in flow bins
    import awkward as ak

    empty = again.process(ak.Array({"point_index": np.zeros(0, dtype=np.int64)}))  # an empty chunk
    assert empty == {"templates": {}, "n_generated": {}, "acceptance": {}}
    with pytest.raises(GenerationProcessorError, match="point_index outside"):
        again.process(ak.Array({"point_index": np.array([99])}))


def test_embedded_in_user_processor(model_dir, tmp_path):
    """A user's processor calls ours inside its process(); coffea's Runner runs it over MC + points."""
    import hist
    import uproot
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    feats, labels = _toy(200, seed=11)
    mc_file = tmp_path / "mc.root"
    with uproot.recreate(mc_file) as f:
        f["Events"] = {"x": feats[:, 0], "y": feats[:, 1], "ma": labels[:, 0], "mb": labels[:, 1]}

    class MyAnalysis(processor.ProcessorABC):
        def __init__(self, model_path, points):
            self.templates = FlowTemplateProcessor(model_path, points, n_events=300, bins=BINS, seed=9, chunk_points=2)

        def process(self, events):
            if self.templates.handles(events):
                return {"signal_templates": self.templates.process(events)}
            h = hist.Hist.new.Reg(20, 600.0, 2600.0, name="x").Weight()
            h.fill(x=events.x)
            return {"mc": {events.metadata["dataset"]: h}}

        def postprocess(self, accumulator):
            return accumulator

    points = grid_points("1200/1700,3/5")
    analysis = MyAnalysis(model_dir, points)
    fileset = {"toy_mc": {"files": {str(mc_file): "Events"}}}
    fileset.update(analysis.templates.fileset(tmp_path / "points"))
    assert len(fileset["flow_templates"]["files"]) == 2  # 4 points, 2 per file
    runner = processor.Runner(executor=processor.IterativeExecutor(status=False), schema=BaseSchema, chunksize=400)
    out = runner(fileset, analysis)

    assert out["mc"]["toy_mc"].sum(flow=True).value == len(feats)
    templates = out["signal_templates"]["templates"]
    assert sorted(templates) == sorted(analysis.templates.template_names())
    assert len(templates) == 8
    for i, point in enumerate(points):
        direct, _ = analysis.templates.generate_point(i)
        for name, h in direct.items():
            assert np.array_equal(templates[name].values(flow=True), h.values(flow=True)), name
            assert templates[name].sum().value == 300
    assert set(out["signal_templates"]["n_generated"].values()) == {300}


def test_combined_with_feature_processor(model_dir, tmp_path):
    """One coffea job: MC features (FeatureProcessor) and flow templates side by side."""
    import uproot
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    from fedhex_hep.processors.extraction import FeatureProcessor

    feats, labels = _toy(100, seed=12)
    mc_file = tmp_path / "mc.root"
    with uproot.recreate(mc_file) as f:
        f["Events"] = {"x": feats[:, 0], "y": feats[:, 1], "ma": labels[:, 0], "mb": labels[:, 1]}
    templates = FlowTemplateProcessor(model_dir, TRAIN_GRID, 100, BINS, seed=5, return_events=True)
    features = FeatureProcessor({"x": "x", "y": "y"}, {"ma": "ma", "mb": "mb"}, selection="y > 3")
    fileset = {"toy_mc": {"files": {str(mc_file): "Events"}}, **templates.fileset(tmp_path / "pts")}
    runner = processor.Runner(executor=processor.IterativeExecutor(status=False), schema=BaseSchema, chunksize=1000)
    out = runner(fileset, CombinedProcessor(templates, features))

    mc_columns = out["features"]["columns"]
    assert len(mc_columns["x"].value) == int((feats[:, 1] > 3).sum())
    assert set(out["features"]["hists"]) == {"x", "y"}
    assert len(out["templates"]["templates"]) == 2 * len(TRAIN_GRID)
    events = out["templates"]["events"]["ma_1500__mb_4"]
    assert len(events) == 100 and np.all(np.asarray(events["ma"]) == 1500.0)
    assert np.all((np.asarray(events["x"]) >= 600.0) & (np.asarray(events["x"]) < 2600.0))


# -- run_scan --------------------------------------------------------------------------------
def test_scan_root_file_opens_in_root(model_dir, tmp_path):
    ROOT = pytest.importorskip("ROOT")
    points = grid_points("1100:1900:400,2.5/5.5")
    plain = tmp_path / "scan.root"
    from fedhex_hep.generation.scan import run_scan

    assert run_scan(model_dir, points, 250, plain, bins=BINS, seed=3, progress=False) == plain
    with pytest.raises(OSError, match="already exists"):
        run_scan(model_dir, points, 250, plain, bins=BINS, seed=3, progress=False)
    scaled = tmp_path / "scan_yield.root"
    eff_model = _efficiency_model()
    run_scan(model_dir, points, 250, scaled, bins=BINS, seed=3, progress=False, yield_normalised=True, efficiency=eff_model)
    expected_eff = eff_model.predict(points)

    for path, norm in ((plain, np.ones(len(points))), (scaled, expected_eff)):
        f = ROOT.TFile.Open(str(path))
        assert f and not f.IsZombie()
        for i, point in enumerate(points):
            for feature in FEATURES:
                h = f.Get(template_name(feature, LABELS, point))
                assert h, template_name(feature, LABELS, point)
                assert h.GetEntries() > 0
                assert h.Integral() == pytest.approx(250 * norm[i], rel=1e-12)
                assert h.GetBinContent(0) == 0 and h.GetBinContent(h.GetNbinsX() + 1) == 0
        tree = f.Get("scan")
        assert tree.GetEntries() == len(points)
        f.Close()

    import uproot

    with uproot.open(scaled) as f:
        eff = f["efficiency"].arrays(library="np")
        assert np.allclose(eff["eff"], expected_eff) and np.array_equal(eff["ma"], points[:, 0])
        meta = json.loads(f["meta/histograms"])
        assert len(meta) == 2 * len(points)
        assert json.loads(f["meta/yield_normalised"]) is True
    # the same seed gives the same shapes whatever the normalisation
    a, b = _read_hists(plain), _read_hists(scaled)
    name = template_name("y", LABELS, points[1])
    assert np.allclose(a[name][0] * expected_eff[1], b[name][0])


def test_scan_input_errors(model_dir, tmp_path):
    from fedhex_hep.generation.scan import run_scan

    with pytest.raises(ScanError, match="executor 'spark'"):
        run_scan(model_dir, [[1200.0, 3.0]], 10, tmp_path / "a.root", bins=BINS, executor="spark")
    with pytest.raises(ScanError, match="yield_normalised needs an efficiency"):
        run_scan(model_dir, [[1200.0, 3.0]], 10, tmp_path / "a.root", bins=BINS, yield_normalised=True)
    with pytest.raises(ScanError, match="fields"):
        run_scan(model_dir, "1000:2000:500", 10, tmp_path / "a.root", bins=BINS)
    with pytest.raises(ScanError, match="outside"):
        run_scan(model_dir, [[1200.0, 3.0]], 10, tmp_path / "a.root", bins=BINS, efficiency=1.5)
    assert not (tmp_path / "a.root").exists()


def test_scan_automatic_binning(model_dir, tmp_path, capsys):
    import uproot

    from fedhex_hep.generation.scan import run_scan

    out = run_scan(model_dir, "1200/1800,3", 100, tmp_path / "auto.root", bins=12, seed=2, progress=False, efficiency=0.5)
    assert "Generating" not in capsys.readouterr().out  # progress=False: no bars from coffea either
    with uproot.open(out) as f:
        h = f[template_name("x", LABELS, [1200.0, 3.0])]
        assert len(h.axis().edges()) == 13
        assert h.values(flow=True).sum() == 100
        assert np.allclose(f["scan"]["eff"].array(library="np"), 0.5)


def test_scan_warns_once_about_sparse_cells_and_range(model_dir, tmp_path):
    import warnings

    from fedhex_hep.generation.grid_support import OutsideGridWarning, SparseCellWarning
    from fedhex_hep.generation.scan import run_scan

    points = [[1200.0, 3.0], [1800.0, 5.0], [1500.0, 4.0], [2400.0, 4.0]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_scan(model_dir, points, 50, tmp_path / "s.root", bins=8, seed=1, progress=False, chunk_points=1)
    sparse = [str(w.message) for w in caught if w.category is SparseCellWarning]
    outside = [str(w.message) for w in caught if w.category is OutsideGridWarning]
    assert len(sparse) == 1 and sparse[0].startswith("2 of 4 mass points (ma, mb)")
    assert "(1200, 3) lacks (1000, 4), (1500, 2); (1800, 5) lacks (1500, 6), (2000, 4)." in sparse[0]
    assert outside == ["label ma = 2400 is outside the training range [1000, 2000] by 400 "
                       "(0.80 grid spacings of 500; 40.0% of the training range): the flow extrapolates there"]


@pytest.mark.slow
def test_dask_localcluster_matches_iterative(model_dir, tmp_path):
    """>= 25 mass points on a real dask LocalCluster (2 workers) == iterative, same seed."""
    from fedhex_hep.generation.scan import run_scan

    points = grid_points("1000:2000:250,2:6:1")
    assert len(points) == 25
    iterative = run_scan(model_dir, points, 200, tmp_path / "it.root", bins=BINS, seed=7, progress=False, chunk_points=25)
    dask = run_scan(
        model_dir, points, 200, tmp_path / "dask.root", bins=BINS, seed=7, executor="dask", workers=2, progress=False, chunk_points=3
    )
    a, b = _read_hists(iterative), _read_hists(dask)
    assert len(a) == 50 and sorted(a) == sorted(b)
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert np.array_equal(x, y), name
        assert a[name][0].sum() == 200
    # and a different seed really changes the templates
    other = run_scan(model_dir, points[:2], 200, tmp_path / "s8.root", bins=BINS, seed=8, progress=False)
    c = _read_hists(other)
    name = template_name("x", LABELS, points[0])
    assert not np.array_equal(a[name][0], c[name][0])


def test_scan_efficiency_sources(model_dir, tmp_path):
    """efficiency.json in the model directory is found by itself; a FeatureSet parquet works too."""
    import shutil

    import uproot

    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.generation.scan import run_scan, scan_efficiency

    eff_model = _efficiency_model()
    points = grid_points("1250/1750,3/5")
    own = tmp_path / "model"
    shutil.copytree(model_dir, own)
    (own / "efficiency.json").write_text(json.dumps(eff_model.to_dict()))
    out = run_scan(own, points, 120, tmp_path / "auto_eff.root", bins=BINS, progress=False, yield_normalised=True)
    with uproot.open(out) as f:
        scan = f["scan"].arrays(library="np")
    assert np.allclose(scan["eff"], eff_model.predict(points))
    assert np.allclose(scan["integral"], 120 * eff_model.predict(points))
    assert np.all((scan["acceptance"] > 0) & (scan["acceptance"] <= 1))

    fs = FeatureSet.from_numpy(np.zeros((1, 2)), np.array([[1500.0, 4.0]]), FEATURES, LABELS, metadata={"efficiency": eff_model.to_dict()})
    parquet = fs.save(tmp_path / "mc.parquet")
    got = scan_efficiency(parquet, model_dir, points[::-1], FEATURES, LABELS)
    assert np.allclose(got["points"]["eff"], eff_model.predict(points[::-1]))  # in the order asked
    with pytest.raises(ScanError, match="does not exist"):
        scan_efficiency(tmp_path / "nope.json", model_dir, points, FEATURES, LABELS)


@pytest.mark.slow
def test_futures_executor_matches_iterative(model_dir, tmp_path):
    from fedhex_hep.generation.scan import run_scan

    points = grid_points("1000:2000:500,2/6")
    a = run_scan(model_dir, points, 150, tmp_path / "it.root", bins=BINS, seed=7, progress=False)
    b = run_scan(model_dir, points, 150, tmp_path / "fu.root", bins=BINS, seed=7, executor="futures", workers=2, progress=False, chunk_points=1)
    ha, hb = _read_hists(a), _read_hists(b)
    assert sorted(ha) == sorted(hb) and len(ha) == 12
    for name in ha:
        assert np.array_equal(ha[name][0], hb[name][0]) and np.array_equal(ha[name][1], hb[name][1]), name
