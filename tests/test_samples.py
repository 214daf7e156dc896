"""Sample writer: NanoAOD-like signal grid, Gaussian toys, folder names, demo grid."""

from __future__ import annotations

import shlex
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from fedhex_hep.io import samples
from fedhex_hep.io.samples import (
    DEMO_COMMAND,
    DEMO_GRID,
    SIGNAL_BRANCHES,
    SampleError,
    make_gaussian_grid,
    make_gaussian_line,
    make_samples,
    make_signal_grid,
    mass_point_dirname,
    parse_mass_point_dirname,
)

INT32_BRANCHES = {"CBL_Region", "CBL_RecoPhi_photonindex", "CBL_RecoPhi_twoprongindex",
                  "nPhoton", "nTwoProng", "nGenPhi", "nGenOmega"}
COUNTERS = {"nPhoton": "Photon_", "nTwoProng": "TwoProng_", "nGenPhi": "GenPhi_", "nGenOmega": "GenOmega_"}


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("grid")
    return make_signal_grid(out, [800, 2500], [1.0, 9.025], n_events=3000, seed=3, files_per_point=2)


def _read(path: Path) -> ak.Array:
    with uproot.open(path) as f:
        return f["Events"].arrays()


def _pick(jagged: ak.Array, index) -> np.ndarray:
    """jagged[i, index[i]] per event as float64 (NaN where the index is out of range)."""
    hit = jagged[ak.local_index(jagged) == np.asarray(index)]
    return ak.to_numpy(ak.fill_none(ak.firsts(hit), np.nan)).astype(np.float64)


def _selected(a: ak.Array) -> np.ndarray:
    """The reference selection, computed independently of the extraction module."""
    region1 = np.asarray(a.CBL_Region) == 1
    idx = np.where(region1, np.asarray(a.CBL_RecoPhi_photonindex), 0)
    return region1 & (np.nan_to_num(_pick(a.Photon_pt, idx), nan=-1.0) > 220)


def test_layout_branches_and_types(small_grid):
    assert len(small_grid) == 2 * 2 * 2
    names = sorted({p.parent.name for p in small_grid})
    assert names == ["Phi_2500_omega_1", "Phi_2500_omega_9p025", "Phi_800_omega_1", "Phi_800_omega_9p025"]
    assert sorted({p.name for p in small_grid}) == ["nano_0.root", "nano_1.root"]
    with uproot.open(small_grid[0]) as f:
        tree = f["Events"]
        assert isinstance(tree, uproot.TTree)
        assert set(tree.keys()) == set(SIGNAL_BRANCHES)
        for name in SIGNAL_BRANCHES:
            interp = tree[name].interpretation
            dtype = interp.content.from_dtype if hasattr(interp, "content") else interp.from_dtype
            if name in INT32_BRANCHES:
                assert dtype == np.dtype(">i4"), name
            elif name in ("run", "luminosityBlock"):
                assert dtype == np.dtype(">u4"), name
            elif name == "event":
                assert dtype == np.dtype(">u8"), name
            else:
                assert dtype == np.dtype(">f4"), name


def test_counters_match_jagged_branches(small_grid):
    for path in small_grid[:2]:
        a = _read(path)
        for counter, prefix in COUNTERS.items():
            jagged = [f for f in a.fields if f.startswith(prefix)]
            assert jagged, prefix
            for field in jagged:
                np.testing.assert_array_equal(np.asarray(a[counter]), ak.to_numpy(ak.num(a[field])))
        assert ak.all(a.GenPhi_mass[:, 0] == float(a.GenPhi_mass[0, 0]))
        # candidates are pt-ordered in each event (NanoAOD convention)
        for coll in ("Photon_pt", "TwoProng_pt"):
            pt = a[coll]
            assert ak.all(pt[:, 1:] <= pt[:, :-1])


def test_index_branches_consistent(small_grid):
    for path in small_grid:
        a = _read(path)
        region = np.asarray(a.CBL_Region)
        assert set(np.unique(region)) <= {0, 1, 2}
        r1 = region == 1
        assert 0.3 < r1.mean() < 0.95
        gi = np.asarray(a.CBL_RecoPhi_photonindex)
        ti = np.asarray(a.CBL_RecoPhi_twoprongindex)
        nph, ntp = np.asarray(a.nPhoton), np.asarray(a.nTwoProng)
        assert np.all((gi[r1] >= 0) & (gi[r1] < nph[r1]))
        assert np.all((ti[r1] >= 0) & (ti[r1] < ntp[r1]))
        assert np.all(gi[~r1] == -1) and np.all(ti[~r1] == -1)
        assert np.all(np.asarray(a.CBL_RecoPhi_mass)[~r1] == -1)
        # the stored reco mass is the invariant mass of the indexed pair
        sel = np.flatnonzero(r1)[:200]
        ph = a[sel]
        m = np.asarray(ph.CBL_RecoPhi_mass)
        phpt, pheta, phphi = (_pick(ph[f"Photon_{v}"], gi[sel]) for v in ("pt", "eta", "phi"))
        tppt, tpeta, tpphi, tpm = (_pick(ph[f"TwoProng_{v}"], ti[sel]) for v in ("pt", "eta", "phi", "massPi0"))
        assert np.all(np.isfinite(phpt)) and np.all(np.isfinite(tpm))
        expect = samples._inv_mass(phpt, pheta, phphi, 0.0, tppt, tpeta, tpphi, tpm)
        np.testing.assert_allclose(m, expect, rtol=3e-3)


def test_features_near_generator_masses(small_grid):
    for path in small_grid:
        a = _read(path)
        sel = _selected(a)
        phi = float(a.GenPhi_mass[0, 0])
        omega = float(a.GenOmega_mass[0, 0])
        assert {"Phi": phi, "omega": omega} == pytest.approx(parse_mass_point_dirname(path.parent.name))
        reco_phi = np.asarray(a.CBL_RecoPhi_mass)[sel]
        idx = np.asarray(a.CBL_RecoPhi_twoprongindex)[sel]
        reco_omega = _pick(a.TwoProng_massPi0[sel], idx)
        # peaks within a few percent of the generator masses; a few-percent core resolution
        assert abs(np.median(reco_phi) / phi - 1) < 0.03
        assert abs(np.median(reco_omega) / omega - 1) < 0.08
        q25, q75 = np.quantile(reco_phi / phi, [0.25, 0.75])
        assert 0.005 < (q75 - q25) < 0.1
        # low-side tail: more events far below the peak than far above it
        assert np.mean(reco_phi < 0.9 * phi) > 2 * np.mean(reco_phi > 1.1 * phi)


def test_efficiency_below_one_and_mass_dependent(tmp_path):
    files = make_signal_grid(tmp_path, [750, 3000], [1.0, 10.0], n_events=4000, seed=0)
    eff = {}
    region1 = {}
    for path in files:
        a = _read(path)
        point = parse_mass_point_dirname(path.parent.name)
        eff[(point["Phi"], point["omega"])] = _selected(a).mean()
        region1[(point["Phi"], point["omega"])] = (np.asarray(a.CBL_Region) == 1).mean()
    values = np.array(list(eff.values()))
    assert np.all(values < 0.9) and np.all(values > 0.2)
    # depends on the masses well beyond binomial noise (sigma ~ 0.008 at n=4000)
    assert values.max() - values.min() > 0.06
    # photon-pt cut sculpts low m_Phi: it removes far more region-1 events at 750 than at 3000 GeV
    loss = {k: 1 - eff[k] / region1[k] for k in eff}
    assert loss[(750.0, 10.0)] > 2 * loss[(3000.0, 10.0)] + 0.03


def test_shapes_change_nonlinearly_with_omega(tmp_path):
    """Missing-pi0 fraction follows a sigmoid in m_omega: the low-side population of the
    reconstructed omega mass is not a linear function of the mass."""
    omegas = [1.0, 3.0, 5.0, 9.0]
    files = make_signal_grid(tmp_path, [1500], omegas, n_events=6000, seed=1)
    low = []
    for path in files:
        a = _read(path)
        sel = _selected(a)
        idx = np.asarray(a.CBL_RecoPhi_twoprongindex)[sel]
        m = _pick(a.TwoProng_massPi0[sel], idx)
        low.append(np.mean(m < 0.85 * float(a.GenOmega_mass[0, 0])))
    low = np.array(low)
    assert low[-1] > low[0] + 0.1
    # linear interpolation between 1 and 9 GeV mispredicts the middle points
    lin = np.interp(omegas, [omegas[0], omegas[-1]], [low[0], low[-1]])
    assert np.max(np.abs(low - lin)) > 0.04


def _low_share(path: Path) -> float:
    """Share of selected events whose omega mass is below 80% of the generated one."""
    a = _read(path)
    sel = _selected(a)
    m = _pick(a.TwoProng_massPi0[sel], np.asarray(a.CBL_RecoPhi_twoprongindex)[sel])
    return float(np.mean(m < 0.8 * float(a.GenOmega_mass[0, 0])))


def test_threshold_turns_on_within_a_cell_at_an_edge_moving_with_m_phi(tmp_path):
    """--threshold 0.3: below m_omega = 0.3 GeV x m_Phi / TeV about 60% of the two-prongs are
    reconstructed from one prong (a low-mass population); 25% above the edge, almost none."""
    edges = {2000.0: 0.6, 4000.0: 1.2}
    for phi, edge in edges.items():
        below = make_signal_grid(tmp_path / "b", [phi], [0.8 * edge], n_events=3000, seed=2, threshold=0.3)[0]
        above = make_signal_grid(tmp_path / "a", [phi], [1.25 * edge], n_events=3000, seed=2, threshold=0.3)[0]
        plain = make_signal_grid(tmp_path / "p", [phi], [1.25 * edge], n_events=3000, seed=2)[0]
        assert _low_share(below) > _low_share(plain) + 0.4
        assert abs(_low_share(above) - _low_share(plain)) < 0.05
    with pytest.raises(SampleError, match="threshold"):
        make_signal_grid(tmp_path / "x", [1000], [1.0], n_events=10, threshold=-1.0)


def test_seeded_reproducibility(tmp_path):
    a1 = make_signal_grid(tmp_path / "a", [1000], [5.0], n_events=500, seed=7)
    a2 = make_signal_grid(tmp_path / "b", [1000], [5.0], n_events=500, seed=7)
    b = make_signal_grid(tmp_path / "c", [1000], [5.0], n_events=500, seed=8)
    # a point's events do not depend on the other points of the grid
    c = make_signal_grid(tmp_path / "d", [1000, 2000], [5.0, 1.0], n_events=500, seed=7)
    x1, x2, y = _read(a1[0]), _read(a2[0]), _read(b[0])
    z = _read([p for p in c if p.parent.name == "Phi_1000_omega_5"][0])
    for field in ("CBL_RecoPhi_mass", "Photon_pt", "TwoProng_massPi0", "CBL_Region"):
        assert ak.all(x1[field] == x2[field])
        assert ak.all(x1[field] == z[field])
    assert not np.array_equal(np.asarray(x1.CBL_RecoPhi_mass), np.asarray(y.CBL_RecoPhi_mass))


def test_refuses_existing_files_unless_overwrite(tmp_path):
    make_signal_grid(tmp_path, [1000], [5.0], n_events=50)
    with pytest.raises(OSError, match="already exists"):
        make_signal_grid(tmp_path, [1000], [5.0], n_events=50)
    make_signal_grid(tmp_path, [1000], [5.0], n_events=60, overwrite=True)
    assert _read(tmp_path / "Phi_1000_omega_5" / "nano_0.root").event.tolist() == list(range(1, 61))
    assert not list(tmp_path.rglob("*.tmp"))


def test_n_events_mapping_and_bad_input(tmp_path):
    files = make_signal_grid(tmp_path, [1000, 2000], [5.0], n_events={(1000, 5.0): 30, "default": 20})
    assert sorted(len(_read(p)) for p in files) == [20, 30]
    with pytest.raises(SampleError, match="Phi_2000_omega_5"):
        make_signal_grid(tmp_path / "x", [1000, 2000], [5.0], n_events={(1000, 5.0): 30})
    with pytest.raises(SampleError, match="omega"):
        make_signal_grid(tmp_path / "y", [1000], [2000.0], n_events=10)
    with pytest.raises(SampleError, match="files_per_point"):
        make_signal_grid(tmp_path / "z", [1000], [5.0], n_events=10, files_per_point=0)


@pytest.mark.parametrize(
    ("phi", "omega", "name"),
    [(1870, 9.025, "Phi_1870_omega_9p025"), (1000.0, 1.0, "Phi_1000_omega_1"),
     (2464, 5.125, "Phi_2464_omega_5p125"), (750.5, 0.55, "Phi_750p5_omega_0p55")],
)
def test_folder_names_round_trip(phi, omega, name):
    assert mass_point_dirname(phi, omega) == name
    assert parse_mass_point_dirname(name) == {"Phi": float(phi), "omega": float(omega)}


def test_folder_name_parser_generic_and_errors():
    assert parse_mass_point_dirname("x_m1p5_y_2") == {"x": -1.5, "y": 2.0}
    assert parse_mass_point_dirname("/some/where/Phi_1870_omega_9p025") == {"Phi": 1870.0, "omega": 9.025}
    for bad in ("Phi1870", "Phi_1870_omega", "Phi_18x0_omega_1", "Phi_1_Phi_2", "nano", ""):
        with pytest.raises(ValueError, match="folder name"):
            parse_mass_point_dirname(bad)


def test_gaussian_toys_layout(tmp_path):
    grid = make_gaussian_grid(tmp_path / "g", x_means=[0, 1, 2], y_means=[-1, 1], n_events=400, sigma=(0.2, 0.4), rho=0.5)
    assert len(grid) == 6
    for path in grid:
        labels = parse_mass_point_dirname(path.parent.name)
        a = _read(path)
        assert {"x", "y", "label_x", "label_y", "run", "event"} <= set(a.fields)
        assert np.all(np.asarray(a.label_x) == labels["x"]) and np.all(np.asarray(a.label_y) == labels["y"])
        x, y = np.asarray(a.x, dtype=float), np.asarray(a.y, dtype=float)
        assert abs(x.mean() - labels["x"]) < 0.05 and abs(np.std(y) - 0.4) < 0.05
        assert 0.4 < np.corrcoef(x, y)[0, 1] < 0.6
    line = make_gaussian_line(tmp_path / "l", x_means=[0, 1, 2], y_means=[0, 2, 4], n_events=100)
    assert [p.parent.name for p in line] == ["x_0_y_0", "x_1_y_2", "x_2_y_4"]
    with pytest.raises(SampleError, match="same length"):
        make_gaussian_line(tmp_path / "bad", x_means=[0, 1], y_means=[0], n_events=10)


def test_make_samples_dispatch(tmp_path):
    files = make_samples("signal", tmp_path / "s", phi="1000,2000", omega="5", events=40, seed=2)
    assert sorted(p.parent.name for p in files) == ["Phi_1000_omega_5", "Phi_2000_omega_5"]
    files = make_samples("line", tmp_path / "l", x="0,1", y="0,1", events=10, sigma="0.1,0.1")
    assert len(files) == 2
    with pytest.raises(SampleError, match="unknown sample kind"):
        make_samples("bogus", tmp_path)
    with pytest.raises(SampleError, match="--phi"):
        make_samples("grid", tmp_path / "g", phi=[1000])


def test_demo_command_matches_demo_grid():
    args = shlex.split(DEMO_COMMAND)
    assert args[:4] == ["fedhex-hep", "make-samples", "signal", DEMO_GRID["outdir"]]
    opts = dict(zip(args[4::2], args[5::2]))
    assert [float(v) for v in opts["--phi"].split(",")] == list(DEMO_GRID["phi"])
    assert [float(v) for v in opts["--omega"].split(",")] == list(DEMO_GRID["omega"])
    assert int(opts["--events"]) == DEMO_GRID["events"] and int(opts["--seed"]) == DEMO_GRID["seed"]
    assert len(DEMO_GRID["phi"]) >= 5 and len(DEMO_GRID["omega"]) >= 5


def test_shipped_demo_grid_is_current(demo_dir, tmp_path):
    """data/demo holds exactly DEMO_GRID, and regenerating one point reproduces it bit for bit."""
    expected = {mass_point_dirname(p, o) for p in DEMO_GRID["phi"] for o in DEMO_GRID["omega"]}
    assert {d.name for d in demo_dir.iterdir() if d.is_dir()} == expected
    size = sum(p.stat().st_size for p in demo_dir.rglob("*") if p.is_file())
    assert size < 40e6  # the 8 x 13 grid at 10,000 events per point is ~37 MB: keep clones small
    phi, omega = DEMO_GRID["phi"][1], DEMO_GRID["omega"][2]
    fresh = make_signal_grid(tmp_path, [phi], [omega], n_events=DEMO_GRID["events"], seed=DEMO_GRID["seed"])[0]
    shipped = _read(demo_dir / mass_point_dirname(phi, omega) / "nano_0.root")
    new = _read(fresh)
    assert len(shipped) == DEMO_GRID["events"]
    for field in SIGNAL_BRANCHES:
        assert ak.all(shipped[field] == new[field]), field
    assert _selected(shipped).sum() >= 4000


def test_compression_choices(tmp_path):
    lz = make_signal_grid(tmp_path / "lzma", [1000], [5.0], n_events=2000, seed=4)[0]
    zl = make_signal_grid(tmp_path / "zlib", [1000], [5.0], n_events=2000, seed=4, compression="zlib")[0]
    a, b = _read(lz), _read(zl)
    for field in SIGNAL_BRANCHES:
        assert ak.all(a[field] == b[field]), field
    assert lz.stat().st_size < zl.stat().st_size
    with pytest.raises(SampleError, match="compression"):
        make_signal_grid(tmp_path / "bad", [1000], [5.0], n_events=10, compression="zstd")
    assert not (tmp_path / "bad").exists()
