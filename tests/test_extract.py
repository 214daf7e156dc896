"""Extraction on real CMS NanoAOD and the demo grid, checked against independent uproot reads;
bad input files, empty selections, non-finite values, sparse labels, filesets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
import uproot

from fedhex_hep.config import ConfigError, load_config
from fedhex_hep.extraction.runner import BadFileWarning, ExtractionError, extract
from fedhex_hep.io.fileset import FilesetError, build_fileset

MLL = "sqrt(2*Muon_pt[0]*Muon_pt[1]*(cosh(Muon_eta[0]-Muon_eta[1]) - cos(Muon_phi[0]-Muon_phi[1])))"
NANO_FILES = {"dy": "nano_dy.root", "dimuon": "nano_dimuon.root", "ttbar": "nanoAOD_2015_CMS_Open_Data_ttbar.root"}
NANO_LABEL = {"dy": 91.0, "dimuon": 50.0, "ttbar": 172.5}


@pytest.fixture(scope="module")
def nano_fileset(nanoaod_dir, tmp_path_factory) -> Path:
    """A coffea-style JSON fileset over the real NanoAOD files with a per-dataset label."""
    path = tmp_path_factory.mktemp("fileset") / "fileset.json"
    data = {
        name: {"files": {str(nanoaod_dir / f): "Events"}, "metadata": {"refmass": NANO_LABEL[name]}}
        for name, f in NANO_FILES.items()
    }
    path.write_text(json.dumps(data))
    return path


def nano_config(fileset: Path, **extra):
    overrides = {
        "input.paths": [str(fileset)],
        "input.features": {"mll": MLL, "pt2": "Muon_pt[1]"},
        "input.labels": {"refmass": "refmass"},
        "input.selection": "nMuon >= 2",
        "input.min_events_per_label": 0,
        "input.chunksize": 100,
    }
    overrides.update(extra)
    return load_config(overrides=overrides)


def reference_dimuon(nanoaod_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Independent uproot + awkward computation: (mll, pt2, label, {dataset: (read, selected)})."""
    mll, pt2, lab, counts = [], [], [], {}
    for name in sorted(NANO_FILES):  # build_fileset sorts datasets
        arrays = uproot.open(nanoaod_dir / NANO_FILES[name])["Events"].arrays(
            ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi"]
        )
        sel = arrays[arrays.nMuon >= 2]
        pt, eta, phi = (ak.to_numpy(sel[f"Muon_{v}"][:, :2]).astype(np.float64) for v in ("pt", "eta", "phi"))
        m = np.sqrt(2 * pt[:, 0] * pt[:, 1] * (np.cosh(eta[:, 0] - eta[:, 1]) - np.cos(phi[:, 0] - phi[:, 1])))
        mll.append(m)
        pt2.append(pt[:, 1])
        lab.append(np.full(len(m), NANO_LABEL[name]))
        counts[name] = (len(arrays), len(sel))
    return np.concatenate(mll), np.concatenate(pt2), np.concatenate(lab), counts


@pytest.mark.parametrize("schema", ["base", "nanoaod"])
def test_dimuon_mass_on_real_nanoaod_matches_uproot(nano_fileset, nanoaod_dir, schema):
    fs = extract(nano_config(nano_fileset, **{"input.schema": schema}), progress=False)
    mll, pt2, lab, counts = reference_dimuon(nanoaod_dir)
    assert len(fs) == len(mll) > 20
    np.testing.assert_allclose(fs.column("mll"), mll, rtol=1e-6)
    np.testing.assert_allclose(fs.column("pt2"), pt2, rtol=1e-6)
    np.testing.assert_array_equal(fs.column("refmass"), lab)  # label from fileset metadata
    assert np.all(fs.weights == 1.0)
    cutflow = fs.metadata["cutflow"]
    assert cutflow["selection"] == "nMuon >= 2"
    got = {p["dataset"]: (p["read"], p["selected"]) for p in cutflow["per_label"]}
    assert got == counts
    assert cutflow["read"] == sum(c[0] for c in counts.values())
    assert fs.metadata["config"]["input"]["selection"] == "nMuon >= 2"
    assert fs.metadata["skipped_files"] == [] and fs.metadata["source"] == "mc"


def test_processor_histograms_and_cutflow_merge_across_chunks(nanoaod_dir):
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    from fedhex_hep.processors.extraction import FeatureProcessor

    proc = FeatureProcessor(
        {"mll": MLL}, {"n": "nMuon"}, selection="nMuon >= 2", weight="genWeight", bins=20, ranges={"mll": (0, 200)}, units={"mll": "GeV"}
    )
    fileset = {"dy": {"files": {str(nanoaod_dir / "nano_dy.root"): "Events"}, "metadata": {}}}
    runner = processor.Runner(processor.IterativeExecutor(status=False, retries=0), schema=BaseSchema, chunksize=15, metadata_cache={})
    out = runner(fileset, proc, treename="Events")
    mll, n, w = (out["columns"][k].value for k in ("mll", "n", "weight"))
    h = out["hists"]["mll"]
    assert [a.name for a in h.axes] == ["dataset", "n", "mll"] and list(h.axes["dataset"]) == ["dy"]
    assert h.axes["mll"].edges[0] == 0 and h.axes["mll"].edges[-1] == 200 and h.axes["mll"].label == "mll [GeV]"
    assert h.axes["n"].label == "n x 10^3"  # no unit given: none shown
    for value in np.unique(n):
        expected, _ = np.histogram(mll[n == value], bins=20, range=(0, 200), weights=w[n == value])
        np.testing.assert_allclose(h["dy", hist.loc(int(value * 1000)), :].values(), expected)
    arrays = uproot.open(nanoaod_dir / "nano_dy.root")["Events"].arrays(["nMuon", "genWeight"])
    nmu, gw = ak.to_numpy(arrays.nMuon), ak.to_numpy(arrays.genWeight)
    cutflow = out["cutflow"]["dy"]
    for value in np.unique(nmu):
        entry = cutflow[(float(value),)]
        at, sel = nmu == value, (nmu == value) & (nmu >= 2)
        assert entry["read"] == at.sum() and entry["selected"] == sel.sum()
        np.testing.assert_allclose([entry["sumw_read"], entry["sumw2_read"]], [gw[at].sum(), (gw[at] ** 2).sum()])
        np.testing.assert_allclose([entry["sumw"], entry["sumw2"]], [gw[sel].sum(), (gw[sel] ** 2).sum()])


def _dimuon_mass(events):
    """A feature as a Python user writes it: a callable on NanoEvents."""
    return (events.Muon[:, 0] + events.Muon[:, 1]).mass


@pytest.mark.filterwarnings("ignore:Missing cross-reference:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Branch .* already exists:RuntimeWarning")
def test_processor_embedded_in_another_processor(nanoaod_dir):
    """Someone else's analysis embeds FeatureProcessor and gets filled hist.Hist without postprocess."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from fedhex_hep.processors.extraction import FeatureProcessor

    class MyAnalysis(processor.ProcessorABC):
        def __init__(self):
            self.features = FeatureProcessor(
                {"mll": _dimuon_mass},
                {"mZ": "mZ"},
                selection=lambda events: ak.num(events.Muon) >= 2,
                weight=lambda events: events.genWeight,
                schema="nanoaod",
                ranges={"mll": (0, 300)},
                units={"mll": "GeV", "mZ": "GeV"},
            )

        def process(self, events):
            return {"fedhex": self.features.process(events), "n": len(events)}

        def postprocess(self, accumulator):
            return accumulator  # the embedded processor's postprocess is not forwarded

    fileset = {"dy": {"files": {str(nanoaod_dir / "nano_dy.root"): "Events"}, "metadata": {"mZ": 91.1876}}}
    runner = processor.Runner(processor.IterativeExecutor(status=False, retries=0), schema=NanoAODSchema, chunksize=10, metadata_cache={})
    out = runner(fileset, MyAnalysis(), treename="Events")
    assert out["n"] == 40
    h = out["fedhex"]["hists"]["mll"]
    assert isinstance(h, hist.Hist) and [a.name for a in h.axes] == ["dataset", "mZ", "mll"]
    assert list(h.axes["dataset"]) == ["dy"] and list(h.axes["mZ"]) == [91188]

    # independent computation with uproot: the two leading muons' invariant mass
    a = uproot.open(nanoaod_dir / "nano_dy.root")["Events"].arrays(["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "genWeight"])
    two = ak.num(a.Muon_pt) >= 2
    pt, eta, phi, m = (ak.to_numpy(a[f"Muon_{k}"][two][:, :2]) for k in ("pt", "eta", "phi", "mass"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    mll = np.sqrt(np.maximum(e.sum(1) ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2 - pz.sum(1) ** 2, 0))
    gw = ak.to_numpy(a.genWeight[two])
    np.testing.assert_allclose(np.sort(out["fedhex"]["columns"]["mll"].value), np.sort(mll), rtol=1e-5)
    expected, _ = np.histogram(mll, bins=40, range=(0, 300), weights=gw)
    got = h["dy", hist.loc(91188), :]
    np.testing.assert_allclose(got.values(), expected, rtol=1e-5)
    np.testing.assert_allclose(got.variances(), np.histogram(mll, bins=40, range=(0, 300), weights=gw**2)[0], rtol=1e-5)
    assert out["fedhex"]["cutflow"]["dy"][(91.1876,)]["selected"] == len(mll) > 0


def test_misspelled_branch_is_named_once_with_a_suggestion(nano_fileset):
    from fedhex_hep.config import ConfigError

    with pytest.raises(ConfigError, match=r"'input.features.pt' reads branch 'Muon_ptt'.*did you mean 'Muon_pt'\?"):
        extract(nano_config(nano_fileset, **{"input.features": {"pt": "Muon_ptt[0]"}}), progress=False)


def test_check_file_names_a_missing_branch_and_its_closest_match(nanoaod_dir):
    from fedhex_hep.extraction.runner import MissingBranch, check_file

    path = str(sorted(nanoaod_dir.glob("*.root"))[0])
    reason, entries, _ = check_file(path, "Events", ["nMuon", "Muon_ptt"])
    assert isinstance(reason, MissingBranch) and entries == 0
    assert (reason.branch, reason.suggestion) == ("Muon_ptt", "Muon_pt")
    assert reason == "branch 'Muon_ptt' is missing from tree 'Events' (did you mean 'Muon_pt'?)"
    assert check_file(path, "Events", ["nMuon", "Muon_pt"])[0] is None


def test_callable_error_fails_before_the_run_with_a_suggestion(nano_fileset, nanoaod_dir):
    from fedhex_hep.processors.extraction import FeatureProcessor

    proc = FeatureProcessor({"mll": lambda ev: ev.Muonn.pt}, {"one": "1"}, schema="nanoaod")
    cfg = nano_config(nano_fileset, **{"input.schema": "nanoaod"})
    with pytest.raises(ExtractionError, match=r"callable .*Muonn.*did you mean 'Muon'\?"):
        extract(cfg, progress=False, executor="futures", processor=proc)


def reference_demo_counts(demo_dir: Path) -> dict[tuple[float, float], int]:
    """Independent count of the default selection per generator mass point."""
    counts: dict[tuple[float, float], int] = {}
    for file in sorted(demo_dir.glob("*/*.root")):
        a = uproot.open(file)["Events"].arrays(
            ["CBL_Region", "Photon_pt", "CBL_RecoPhi_photonindex", "GenPhi_mass", "GenOmega_mass"]
        )
        idx = a.CBL_RecoPhi_photonindex
        valid = (idx >= 0) & (idx < ak.num(a.Photon_pt))
        safe = ak.where(valid, idx, 0)
        pt = _take(a.Photon_pt, safe)
        sel = (a.CBL_Region == 1) & valid & (pt > 220)
        phi = ak.to_numpy(a.GenPhi_mass[:, 0][sel])
        omega = ak.to_numpy(a.GenOmega_mass[:, 0][sel])
        for p, o in zip(phi, omega):
            counts[(float(p), float(o))] = counts.get((float(p), float(o)), 0) + 1
    return counts


def _take(jagged, index):
    """jagged[i, index[i]] for in-range indices (others 0), with awkward's local_index."""
    local = ak.local_index(jagged)
    return ak.fill_none(ak.firsts(jagged[local == index]), -1.0)


def test_demo_grid_default_config_counts_match_uproot(demo_dir, monkeypatch):
    monkeypatch.chdir(demo_dir.parents[1])
    cfg = load_config()  # the shipped default config: input.paths = ["data/demo"]
    fs = extract(cfg, progress=False)
    reference = reference_demo_counts(demo_dir)
    points, counts = fs.counts_per_label()
    got = {(float(p[0]), float(p[1])): int(c) for p, c in zip(points, counts)}
    kept = {k: v for k, v in reference.items() if v >= cfg.input.min_events_per_label}
    assert got == kept
    assert len(got) == len(list(demo_dir.glob("*/")))
    # cutflow per point: every event read, and the selected count
    per_label = {(p["label"]["labelphi"], p["label"]["labelomega"]): p for p in fs.metadata["cutflow"]["per_label"]}
    for point, n in reference.items():
        assert per_label[point]["selected"] == n
        assert 0 < per_label[point]["selected"] < per_label[point]["read"]


# --------------------------------------------------------------------------------------------
# bad input


def _write_tree(path: Path, branches: dict[str, np.ndarray], tree: str = "Events") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        f[tree] = branches
    return path


@pytest.fixture()
def bad_grid(tmp_path, demo_dir) -> dict[str, Path]:
    """Two good demo points plus one bad file of each kind, in mass-point folders."""
    good = sorted(demo_dir.glob("*/*.root"))[:2]
    files = {}
    for i, src in enumerate(good):
        (tmp_path / src.parent.name).mkdir()
        files[f"good{i}"] = Path(shutil.copy(src, tmp_path / src.parent.name / "nano_0.root"))
    zero = tmp_path / "Phi_5000_omega_1" / "nano_0.root"
    zero.parent.mkdir()
    zero.touch()
    files["zero"] = zero
    data = (tmp_path / src.parent.name / "nano_0.root").read_bytes()
    truncated = tmp_path / "Phi_5000_omega_2p5" / "nano_0.root"
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    files["truncated"] = truncated
    files["notree"] = _write_tree(tmp_path / "Phi_5000_omega_5" / "nano_0.root", {"x": np.arange(5.0)}, tree="Other")
    arrays = uproot.open(good[0])["Events"].arrays(library="ak")
    flat = {k: arrays[k] for k in ak.fields(arrays) if k != "CBL_RecoPhi_mass" and not k.startswith("n")}
    files["nobranch"] = _write_tree(tmp_path / "Phi_5000_omega_7p5" / "nano_0.root", flat)
    return files


BAD_REASONS = {
    "zero": "empty file (0 bytes)",
    "truncated": "truncated",
    "notree": "no TTree 'Events'",
    "nobranch": "branch 'CBL_RecoPhi_mass' is missing",
}


def _config(paths, **extra):
    overrides = {"input.paths": [str(p) for p in paths], "input.min_events_per_label": 0}
    overrides.update(extra)
    return load_config(overrides=overrides)


def test_bad_files_skipped_with_warning_and_listed(bad_grid, tmp_path):
    with pytest.warns(BadFileWarning) as record:
        fs = extract(_config([tmp_path]), progress=False)
    messages = [str(w.message) for w in record]
    skipped = {item["file"]: item["reason"] for item in fs.metadata["skipped_files"]}
    for kind, reason in BAD_REASONS.items():
        path = str(bad_grid[kind])
        assert path in skipped and reason in skipped[path], (kind, skipped)
        assert any(path in m and reason in m for m in messages), kind
    assert all("\n" not in m for m in messages)
    good = extract(_config([bad_grid["good0"], bad_grid["good1"]]), progress=False)
    np.testing.assert_array_equal(fs.features, good.features)
    assert len(fs.label_points()) == 2


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_bad_file_is_error_when_not_skipping(bad_grid, kind):
    cfg = _config([bad_grid["good0"], bad_grid[kind]], **{"input.skip_bad_files": False})
    with pytest.raises(ExtractionError) as info:
        extract(cfg, progress=False)
    message = str(info.value)
    assert str(bad_grid[kind]) in message and BAD_REASONS[kind] in message and "\n" not in message


def test_missing_branch_names_branch_and_file(bad_grid):
    cfg = _config([bad_grid["nobranch"]], **{"input.skip_bad_files": False})
    # the branch is in no input file: a misspelling in the configuration, named before anything runs
    with pytest.raises(ConfigError, match=r"'input.features.phi' reads branch 'CBL_RecoPhi_mass', which none of the 1 input files has \(first: .*nano_0\.root"):
        extract(cfg, progress=False)


def test_corrupt_basket_detected_while_processing(tmp_path, demo_dir):
    """Garbage inside a basket (size intact): found by coffea, named, skipped, rest complete."""
    src = sorted(demo_dir.glob("*/*.root"))
    (tmp_path / src[0].parent.name).mkdir()
    good = Path(shutil.copy(src[0], tmp_path / src[0].parent.name / "nano_0.root"))
    bad_dir = tmp_path / src[1].parent.name
    bad_dir.mkdir()
    bad = bad_dir / "nano_0.root"
    shutil.copy(src[1], bad)
    branch = uproot.open(bad)["Events"]["CBL_RecoPhi_mass"]
    seek, nbytes = int(branch.member("fBasketSeek")[0]), int(branch.member("fBasketBytes")[0])
    raw = bytearray(bad.read_bytes())
    key_len = nbytes // 4  # keep the basket key readable, scramble the compressed payload
    raw[seek + key_len + 16 : seek + nbytes] = np.random.default_rng(1).integers(0, 256, nbytes - key_len - 16, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(raw))
    with pytest.warns(BadFileWarning, match=str(bad)):
        fs = extract(_config([tmp_path]), progress=False)
    assert [s["file"] for s in fs.metadata["skipped_files"]] == [str(bad)]
    clean = extract(_config([good]), progress=False)
    np.testing.assert_array_equal(fs.features, clean.features)
    with pytest.raises(ExtractionError, match=str(bad)):
        extract(_config([tmp_path], **{"input.skip_bad_files": False}), progress=False)


def test_selection_keeping_nothing_names_selection(demo_dir):
    cfg = _config([sorted(demo_dir.glob("*/*.root"))[0]], **{"input.selection": "CBL_Region == 1 and CBL_RecoPhi_mass < 0"})
    with pytest.raises(ExtractionError, match=r"selection 'CBL_Region == 1 and CBL_RecoPhi_mass < 0' keeps no events"):
        extract(cfg, progress=False)


def test_malicious_expression_in_config_refused_before_reading(demo_dir):
    cfg = _config([demo_dir], **{"input.features": {"phi": "CBL_RecoPhi_mass.__class__"}})
    with pytest.raises(ValueError, match="feature 'phi'.*attribute access is not allowed"):
        extract(cfg, progress=False)


def test_jagged_feature_is_refused(demo_dir):
    cfg = _config([sorted(demo_dir.glob("*/*.root"))[0]], **{"input.features": {"phi": "Photon_pt"}})
    with pytest.raises(ExtractionError, match=r"feature 'phi' = 'Photon_pt' gives a list per event"):
        extract(cfg, progress=False)


def test_nonfinite_dropped_with_count_or_error(demo_dir):
    file = sorted(demo_dir.glob("*/*.root"))[0]
    feature = {"phi": "log(CBL_RecoPhi_mass - 1000)", "omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"}
    fs = extract(_config([file], **{"input.features": feature}), progress=False)
    arrays = uproot.open(file)["Events"].arrays(["CBL_Region", "CBL_RecoPhi_mass"])
    selected = fs.metadata["cutflow"]["selected"]
    assert fs.metadata["nonfinite"]["dropped_events"] == selected - len(fs) > 0
    assert fs.metadata["nonfinite"]["per_column"]["phi"] > 0
    assert np.all(np.isfinite(fs.features))
    assert len(arrays) == fs.metadata["cutflow"]["read"]
    with pytest.raises(ExtractionError, match=r"non-finite values .*phi"):
        extract(_config([file], **{"input.features": feature, "input.nonfinite": "error"}), progress=False)


def test_sparse_labels_dropped_and_reported(demo_dir):
    files = sorted(demo_dir.glob("*/*.root"))[:3]
    fs_all = extract(_config(files), progress=False)
    points, counts = fs_all.counts_per_label()
    threshold = int(np.sort(counts)[1])  # drops exactly the smallest point
    fs = extract(_config(files, **{"input.min_events_per_label": threshold}), progress=False)
    dropped = fs.metadata["dropped_labels"]
    assert len(dropped) == 1 and dropped[0]["events"] == int(counts.min())
    assert len(fs) == len(fs_all) - int(counts.min())


def test_fileset_folder_glob_json(tmp_path, demo_dir):
    fs = build_fileset([demo_dir], "Events", 3)
    assert "Phi_1000_omega_2p5" in fs
    assert fs["Phi_1000_omega_2p5"]["metadata"] == {"Phi": 1000.0, "omega": 2.5}
    globbed = build_fileset([str(demo_dir / "Phi_1000_*" / "*.root")], "Events", 3)
    assert set(globbed) == {d for d in fs if d.startswith("Phi_1000_")}
    # depth bound and case-insensitive suffix
    deep = tmp_path / "a" / "b" / "Phi_1_omega_2"
    deep.mkdir(parents=True)
    shutil.copy(sorted(demo_dir.glob("*/*.root"))[0], deep / "X.ROOT")
    assert "Phi_1_omega_2" in build_fileset([tmp_path], "Events", 3)
    with pytest.raises(FilesetError, match="no .root files found"):
        build_fileset([tmp_path], "Events", 1)
    js = tmp_path / "fs.json"
    js.write_text(json.dumps({"sig": {"files": ["a/b/Phi_1_omega_2/X.ROOT"], "metadata": {"m": 5}}}))
    loaded = build_fileset([js], "Events", 3)
    assert loaded == {"sig": {"files": {str(deep / "X.ROOT"): "Events"}, "metadata": {"m": 5}}}
    with pytest.raises(FilesetError, match="does not exist"):
        build_fileset([tmp_path / "nope"], "Events", 3)
    empty = tmp_path / "e" / "Phi_2_omega_3"
    empty.mkdir(parents=True)
    (empty / "z.root").touch()
    shutil.copy(deep / "X.ROOT", empty / "y.root")
    skipped: list = []
    out = build_fileset([tmp_path / "e"], "Events", 3, skipped=skipped)
    assert list(out["Phi_2_omega_3"]["files"]) == [str(empty / "y.root")]
    assert skipped == [{"file": str(empty / "z.root"), "reason": "empty file (0 bytes)"}]
    with pytest.warns(UserWarning, match="z.root: empty file"):
        build_fileset([tmp_path / "e"], "Events", 3)


def test_lost_chunk_is_loud_not_a_smaller_dataset(demo_dir, monkeypatch):
    """If a chunk's output goes missing (executor bug, lost worker), the event count check fails."""
    import fedhex_hep.extraction.runner as extract_module

    real = extract_module.run_processor

    def drop_one_chunk(fileset, proc, **kwargs):
        out = real(fileset, proc, **kwargs)
        keep = out["columns"]["_entry"].value >= 100  # pretend the chunk [0, 100) of the file vanished
        for acc in out["columns"].values():
            acc._value = acc.value[keep]
        return out

    monkeypatch.setattr(extract_module, "run_processor", drop_one_chunk)
    cfg = _config([sorted(demo_dir.glob("*/*.root"))[0]], **{"input.chunksize": 100})
    with pytest.raises(ExtractionError, match="extraction lost events"):
        extract(cfg, progress=False)


@pytest.mark.parametrize("seed", range(4))
def test_group_rows_matches_numpy_unique(seed):
    from fedhex_hep.processors.extraction import group_rows

    rng = np.random.default_rng(seed)
    tables = [
        rng.integers(0, 3, (500, 2)).astype(float),  # scattered rows: per-column path
        np.repeat(rng.integers(0, 4, (12, 2)), 50, axis=0).astype(float),  # runs: run path
        np.where(rng.random((300, 3)) < 0.1, np.nan, rng.integers(0, 2, (300, 3))),  # NaN groups
        np.full((7, 2), 3.5),
    ]
    for table in tables:
        points, inverse = group_rows(table)
        ref_points, ref_inverse = np.unique(np.nan_to_num(table, nan=-np.inf), axis=0, return_inverse=True)
        np.testing.assert_array_equal(points, ref_points)
        np.testing.assert_array_equal(inverse, ref_inverse.reshape(-1))


def test_weight_expression_and_json_fileset_bad_entries(nanoaod_dir, tmp_path):
    """Weights come from an expression; a JSON fileset's zero-byte / missing files are named."""
    zero = tmp_path / "zero.root"
    zero.touch()
    fileset = tmp_path / "fs.json"
    fileset.write_text(
        json.dumps(
            {
                "dy": {"files": [str(nanoaod_dir / "nano_dy.root"), "zero.root", "missing.root"], "metadata": {"m": 91}},
            }
        )
    )
    cfg = nano_config(fileset, **{"input.labels": {"m": "m"}, "input.weight": "genWeight / abs(genWeight) * 2"})
    with pytest.warns(BadFileWarning) as record:
        fs = extract(cfg, progress=False)
    reasons = {s["file"]: s["reason"] for s in fs.metadata["skipped_files"]}
    assert reasons == {str(zero): "empty file (0 bytes)", str(tmp_path / "missing.root"): "file does not exist"}
    assert len(record) == 2
    arrays = uproot.open(nanoaod_dir / "nano_dy.root")["Events"].arrays(["nMuon", "genWeight"])
    expected = np.sign(ak.to_numpy(arrays.genWeight[arrays.nMuon >= 2])) * 2
    np.testing.assert_array_equal(fs.weights, expected)


def test_processor_picklable_stateless_from_config(demo_dir):
    import pickle

    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    from fedhex_hep.processors.extraction import FeatureProcessor

    proc = FeatureProcessor.from_config(load_config().input)
    clone = pickle.loads(pickle.dumps(proc))
    assert clone.features == proc.features and clone.selection == proc.selection
    assert proc.branches({"Phi": 1.0}) == sorted(
        {"CBL_Region", "Photon_pt", "CBL_RecoPhi_photonindex", "CBL_RecoPhi_mass", "TwoProng_massPi0",
         "CBL_RecoPhi_twoprongindex", "GenPhi_mass", "GenOmega_mass"}
    )
    file = str(sorted(demo_dir.glob("*/*.root"))[0])
    events = NanoEventsFactory.from_root({file: "Events"}, schemaclass=BaseSchema, mode="virtual",
                                         metadata={"dataset": "d", "filename": file}).events()
    first, second = proc.process(events), clone.process(events[:0])
    again = proc.process(events)
    for name in ("phi", "omega", "labelphi", "labelomega", "weight"):
        np.testing.assert_array_equal(first["columns"][name].value, again["columns"][name].value)
        assert len(second["columns"][name].value) == 0  # empty chunk: no special case needed
    assert first["cutflow"] == again["cutflow"]
    with pytest.raises(ValueError, match="attribute access"):
        FeatureProcessor({"x": "a.b"}, {})


def test_labels_from_folder_metadata_match_generator_branches(demo_dir):
    files = sorted(demo_dir.glob("*/*.root"))[:3]
    from_branches = extract(_config(files), progress=False)
    from_folders = extract(_config(files, **{"input.labels": {"labelphi": "Phi", "labelomega": "omega"}}), progress=False)
    np.testing.assert_array_equal(from_folders.features, from_branches.features)
    np.testing.assert_allclose(from_folders.labels, from_branches.labels, rtol=1e-6)
    for file in files:
        parsed = build_fileset([file], "Events", 1)[file.parent.name]["metadata"]
        assert from_folders.mask_label([parsed["Phi"], parsed["omega"]]).any()


def test_killed_worker_message_names_file_and_range_whatever_the_path_length():
    from fedhex_hep.extraction.runner import _describe_failure

    path = "/" + "/".join(["a_rather_long_folder_name"] * 12) + "/ttbar.root"
    inner = RuntimeError("KilledWorker: ('AlwaysKillProcessor-22b8', <WorkerState 'tcp://127.0.0.1:1'>)")
    try:
        try:
            raise inner
        except RuntimeError as cause:
            raise Exception(
                f"Work item WorkItem(dataset='ttbar', filename='{path}', treename='Events', "
                "entrystart=120, entrystop=160, fileuuid=b'\\xd4', usermeta={}) caused a KilledWorker exception"
            ) from cause
    except Exception as exc:
        reason, bad = _describe_failure(exc)
    assert bad == path
    assert reason.startswith(f"{path} entries 120-160: KilledWorker")
    assert "\n" not in reason
