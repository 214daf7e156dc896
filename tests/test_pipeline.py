"""A tiny end-to-end run of the whole chain on the shipped demo grid, from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY_MODEL, set_options

# the default ensemble of 3 flows stays: the chain is checked with a mixture
TINY = [
    *set_options(TINY_MODEL),
    "--set", "training.checkpoint_every=1",
    "--set", "training.decay_epochs=2",
    "--set", "generation.n_events=3000",
    "--epochs", "2",
    "--no-progress",
]


@pytest.mark.slow
def test_run_whole_chain_on_demo(tmp_path, repo_root, demo_dir):
    out = tmp_path / "output"
    cmd = [sys.executable, "-m", "fedhex_hep.cli", "run", "--output-dir", str(out), *TINY]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    (run_dir,) = list(out.glob("run-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "config.toml").is_file()
    assert (run_dir / "model" / "config.toml").is_file()
    pngs = sorted((run_dir / "plots").rglob("*.png"))
    assert pngs, "no comparison plots written"

    import uproot

    with uproot.open(run_dir / "generated.root") as f:
        tree = f["events"]
        assert tree.classname == "TTree"
        assert set(["phi", "omega", "labelphi", "labelomega", "weight"]) <= set(tree.keys())
        # One off-grid point (from the config) and one grid point, n_events each.
        assert tree.num_entries == 2 * 3000
    assert len(summary["generated_points"]) == 2

    ROOT = pytest.importorskip("ROOT")
    rfile = ROOT.TFile.Open(str(run_dir / "generated.root"))
    try:
        rtree = rfile.Get("events")
        assert rtree.GetEntries() == 6000
    finally:
        rfile.Close()

    # A second run never overwrites the first: it gets its own folder.
    again = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list(out.glob("run-*"))) == 2
