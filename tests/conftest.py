"""Shared pytest fixtures: real NanoAOD files, the shipped demo grid, a fast configuration."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]

#: The small flow that tests of the mechanics train: two affine blocks of [16, 16]. The default's
#: two spline blocks are switched off: they need n_blocks >= 2 and take 2-3x the training time, and
#: these tests check plumbing, not fidelity. Tests override single keys as they need.
TINY_MODEL: dict[str, object] = {"model.n_blocks": 2, "model.spline_blocks": 0, "model.hidden_units": [16, 16]}


def set_options(overrides: Mapping[str, object]) -> list[str]:
    """The same overrides as the CLI's repeatable ``--set key=value`` options (values in TOML)."""
    return [option for key, value in overrides.items() for option in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def nanoaod_dir() -> Path:
    """Small real CMS NanoAOD files shipped in tests/data/nanoaod (origin: tests/data/README.md)."""
    path = REPO / "tests" / "data" / "nanoaod"
    if not any(path.glob("*.root")):
        pytest.fail(f"real NanoAOD test files missing in {path}")
    return path


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The demo signal grid shipped in data/demo."""
    path = REPO / "data" / "demo"
    if not any(path.glob("*/*.root")):
        pytest.fail(f"demo grid missing in {path}: run the command in README.md to regenerate it")
    return path


@pytest.fixture()
def tiny_config():
    """A Config for a fast run: small model, 3 epochs, the demo grid as input."""
    from fedhex_hep.config import load_config

    return load_config(
        overrides={
            "input.paths": [str(REPO / "data" / "demo")],
            **TINY_MODEL,
            "model.ensemble": 1,
            "training.epochs": 3,
            "training.decay_epochs": 3,
            "training.checkpoint_every": 1,
            "training.patience": 0,
            "generation.n_events": 2000,
        }
    )
