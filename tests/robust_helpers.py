"""Shared inputs of the robustness and fuzz tests: a small ROOT file, a tiny trained model, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_FILE = REPO / "data" / "demo" / "Phi_1000_omega_1" / "nano_0.root"
#: Branches the default configuration reads, grouped as uproot writes jagged collections.
_FLAT = ("CBL_Region", "CBL_RecoPhi_mass", "CBL_RecoPhi_photonindex", "CBL_RecoPhi_twoprongindex")
_COLLECTIONS = {"Photon": ("pt",), "TwoProng": ("massPi0",), "GenPhi": ("mass",), "GenOmega": ("mass",)}


def write_small_root(path: Path, n_events: int = 300) -> Path:
    """The first ``n_events`` of a demo file with the branches the default config reads (zlib; mktree+extend)."""
    import awkward as ak
    import uproot

    source = uproot.open(DEMO_FILE)["Events"].arrays(entry_stop=n_events, library="ak")
    branches = {name: source[name] for name in _FLAT}
    for collection, fields in _COLLECTIONS.items():
        branches[collection] = ak.zip({f: source[f"{collection}_{f}"] for f in fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path, compression=uproot.ZLIB(1)) as file:
        tree = file.mktree("Events", {k: v.type for k, v in branches.items()})
        tree.extend(branches)
    return path


def small_config(paths: list[Path], **extra: object):
    from fedhex_hep.config import load_config

    return load_config(
        overrides={"input.paths": [str(p) for p in paths], "input.min_events_per_label": 0, **extra}
    )


def toy_model_config(**overrides: object):
    """A one-block flow of 4 hidden units over two features and two labels (trains in seconds)."""
    from fedhex_hep.config import load_config

    base = {
        "input.features": {"mphi": "a", "momega": "b"},
        "input.labels": {"gphi": "c", "gomega": "d"},
        "preprocessing.features": {
            "mphi": {"relative_to": "gphi", "transform": "log"},
            "momega": {"relative_to": "gomega", "transform": "log"},
        },
        "preprocessing.labels": {"gphi": {"transform": "log"}, "gomega": {"transform": "log"}},
        "input.min_events_per_label": 0,
        "model.n_blocks": 1,
        "model.spline_blocks": 0,
        "model.hidden_units": [4],
        "model.ensemble": 1,
        "training.epochs": 2,
        "training.decay_epochs": 2,
        "training.batch_size": 200,
        "training.checkpoint_every": 1,
        "training.patience": 0,
        "generation.labels": [[1500.0, 4.0]],
    }
    base.update(overrides)
    return load_config(overrides=base)


def toy_featureset(n: int = 600, seed: int = 0):
    from fedhex_hep.io.featureset import FeatureSet

    rng = np.random.default_rng(seed)
    labels = np.stack([rng.choice([1000.0, 1500.0, 2000.0], n), rng.choice([2.0, 6.0], n)], axis=1)
    noise = np.stack([0.03 * rng.standard_normal(n), 0.08 * rng.standard_normal(n)], axis=1)
    return FeatureSet.from_numpy(labels * np.exp(noise), labels, ["mphi", "momega"], ["gphi", "gomega"])


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fedhex_hep.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=full_env
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr lines that are not TensorFlow's start-up chatter."""
    noise = ("WARNING: All log", "I0000", "E0000", "W0000", "oneDNN")
    return [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith(noise)]


def train_tiny_model(tmp_path_factory) -> Path:
    """A really trained tiny flow on :func:`toy_featureset` with :func:`toy_model_config`."""
    from fedhex_hep.model.training import train

    path = tmp_path_factory.mktemp("model") / "m"
    train(toy_featureset(), toy_model_config(), path, progress=False)
    return path
