"""Working outside a clone: the demo grid made into a cache folder, `config show`, a quiet TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import uproot

from fedhex_hep.config import default_config_text, load_config
from fedhex_hep.demo import cache_dir, demo_grid, with_demo_input
from fedhex_hep.io.samples import DEMO_GRID

POINTS = {"phi": (1500.0,), "omega": (1.75, 5.0), "events": DEMO_GRID["events"], "seed": DEMO_GRID["seed"]}


def _arrays(path):
    with uproot.open(path) as f:
        return f["Events"].arrays(library="ak")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHEX_HEP_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEDHEX_HEP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "fedhex-hep"


def test_cached_demo_points_equal_the_repository_copy(tmp_path, demo_dir):
    """Seeded per point: the cached files hold the same events, bit for bit, as data/demo."""
    folder, made = demo_grid(POINTS, tmp_path)
    assert made and folder == tmp_path / "demo"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["Phi_1500_omega_1p75", "Phi_1500_omega_5"]
    for name in names:
        ours, shipped = _arrays(folder / name / "nano_0.root"), _arrays(demo_dir / name / "nano_0.root")
        assert ours.fields == shipped.fields and len(ours) == len(shipped) == DEMO_GRID["events"]
        for field in ours.fields:
            a, b = ours[field], shipped[field]
            assert str(a.type) == str(b.type), field
            flat_a, flat_b = (np.asarray(a if a.ndim == 1 else np.concatenate(a.to_list() or [[]])) for a in (a, b))
            assert np.array_equal(flat_a, flat_b, equal_nan=True), field
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert demo_grid(POINTS, tmp_path) == (folder, False)  # made once


def test_run_input_falls_back_to_the_cache_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHEX_HEP_CACHE", str(tmp_path / "cache"))
    demo_grid(POINTS, tmp_path / "cache")  # a small stand-in for the full grid, already cached
    monkeypatch.chdir(tmp_path)
    config, note = with_demo_input(load_config())
    assert config.input.paths == [str(tmp_path / "cache" / "demo")]
    assert note and "data/demo not found" in note and str(tmp_path / "cache" / "demo") in note
    own = load_config(overrides={"input.paths": ["elsewhere"]})
    assert with_demo_input(own) == (own, None)  # a user's own input is never replaced


def test_repository_checkout_reads_data_demo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    config = load_config()
    assert with_demo_input(config) == (config, None)


def test_config_show_prints_the_default_config(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(["fedhex-hep", "config", "show"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == default_config_text()
    resolved = subprocess.run(
        ["fedhex-hep", "config", "show", "--set", "training.epochs=7"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert resolved.returncode == 0 and "epochs = 7" in resolved.stdout


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_start_up_is_quiet_unless_verbose(verbose):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if verbose:
        env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    code = "import fedhex_hep.model.flow as f; print(float(f.tf.constant(1.0) + 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "2.0"
    if not verbose:
        assert out.stderr.strip() == "", out.stderr
