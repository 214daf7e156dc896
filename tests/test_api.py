"""The Python API at the package's face: pinned names and signatures, runnable examples, and a
notebook-style session that must give what the command line gives."""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys

import numpy as np
import pytest

import fedhex_hep
from conftest import TINY_MODEL

#: The public API, as pyhf pins its own: a change here is a change users see.
PUBLIC = {
    "load_model": "(path: 'str | Path', checkpoint: 'str | int | None' = None) -> 'Model'",
    "extract": "(config: 'Config | str | Path | None' = None, *, overrides: 'Mapping[str, Any] | None' = None, "
    "executor: 'str' = 'iterative', workers: 'int' = 2, progress: 'bool' = False, processor: 'Any | None' = None) "
    "-> 'FeatureSet'",
    "train": "(features: 'FeatureSet | str | Path', model_dir: 'str | Path', config: 'Config | str | Path | None' = None, "
    "*, overrides: 'Mapping[str, Any] | None' = None, resume: 'bool' = False, overwrite: 'bool' = False, "
    "progress: 'bool' = False) -> 'Model'",
    "Model.sample": "(self, points: 'Mapping[str, Any] | Sequence[Any] | np.ndarray', n: 'int', seed: 'int' = 0, *, "
    "ranges: 'Mapping[str, Sequence[float]] | None' = None, batch_size: 'int' = 100000) -> 'ak.Array'",
    "Model.log_prob": "(self, events: 'ak.Array | FeatureSet | Mapping[str, Any]') -> 'np.ndarray'",
    "FeatureSet.to_hist": "(self, feature: 'str | Sequence[str]', bins: 'int | Sequence[float] | Mapping[str, Any]' = 40, "
    "*, point: 'Sequence[float] | Mapping[str, float] | None' = None) -> 'Any'",
}
NAMES = ["Config", "FeatureSet", "FedhexError", "Model", "__version__", "extract", "load_config", "load_model", "train"]
TINY = {**TINY_MODEL, "model.ensemble": 1, "training.epochs": 2, "training.decay_epochs": 2, "training.patience": 0}
POINTS = ["Phi_1500_omega_4", "Phi_1500_omega_6", "Phi_2000_omega_4", "Phi_2000_omega_6"]


def _resolve(dotted: str):
    obj = fedhex_hep
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_public_names_and_signatures_are_pinned():
    assert sorted(fedhex_hep.__all__) == NAMES
    for name, signature in PUBLIC.items():
        assert str(inspect.signature(_resolve(name))) == signature, name
    for name in ("load_model", "extract", "train", "Model.sample", "Model.log_prob", "FeatureSet.to_hist"):
        doc = inspect.getdoc(_resolve(name))
        assert doc and ">>>" in doc, f"{name} needs a docstring with an example"


def test_import_loads_neither_tensorflow_nor_coffea():
    code = "import sys, fedhex_hep; fedhex_hep.FeatureSet; fedhex_hep.FedhexError; print('tensorflow' in sys.modules or 'coffea' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_error_derives_from_fedhex_error(tmp_path):
    with pytest.raises(fedhex_hep.FedhexError):
        fedhex_hep.load_model(tmp_path / "no-model")


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A tiny model trained through the API on four demo points: (features, model, folder)."""
    folder = tmp_path_factory.mktemp("api")
    fs = fedhex_hep.extract(overrides={"input.paths": [str(demo_dir / p) for p in POINTS], "input.min_events_per_label": 0})
    model = fedhex_hep.train(fs, folder / "model", overrides=TINY)
    return fs, model, folder


def test_docstring_examples_run(trained, demo_dir, tmp_path):
    import fedhex_hep.api
    import fedhex_hep.io.featureset

    fs, model, folder = trained
    events = model.sample({"labelphi": 1800.0, "labelomega": 5.3}, 1000, seed=1)
    globs = {"fedhex_hep": fedhex_hep, "np": np, "model_dir": folder / "model", "demo_dir": demo_dir, "tmp_dir": tmp_path,
             "model": model, "events": events, "fs": fs}
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for module in (fedhex_hep.api, fedhex_hep.io.featureset):
        for test in finder.find(module, extraglobs=globs):
            runner.run(test)
            examples += len(test.examples)
    assert runner.failures == 0 and examples >= 10


def test_sample_mapping_and_array_agree_and_seed_repeats(trained):
    _, model, _ = trained
    a = model.sample({"labelomega": 5.3, "labelphi": 1800.0}, 500, seed=3)
    b = model.sample([1800.0, 5.3], 500, seed=3)
    c = model.sample([1800.0, 5.3], 500, seed=4)
    assert np.array_equal(a["phi"], b["phi"]) and not np.array_equal(a["phi"], c["phi"])
    two = model.sample({"labelphi": [1600.0, 1800.0], "labelomega": 5.3}, 10, seed=3)
    assert sorted(set(np.asarray(two["labelphi"]).tolist())) == [1600.0, 1800.0]
    with pytest.raises(fedhex_hep.FedhexError, match="labelomega"):
        model.sample({"labelphi": 1800.0}, 10)


def test_log_prob_equals_trained_model(trained):
    _, model, _ = trained
    events = model.sample([1700.0, 4.5], 300, seed=2)
    x = np.stack([np.asarray(events[n]) for n in model.feature_names], axis=1)
    c = np.stack([np.asarray(events[n]) for n in model.label_names], axis=1)
    assert np.allclose(model.log_prob(events), model.trained.log_prob(x, c))


def test_notebook_session_equals_generate_and_export(trained, tmp_path):
    """load_model -> sample at a new point -> to_hist == `fedhex-hep generate` + `fedhex-hep export`."""
    import uproot
    from typer.testing import CliRunner

    from fedhex_hep.cli.app import app

    _, _, folder = trained
    model = fedhex_hep.load_model(folder / "model")
    events = model.sample({"labelphi": 1750.0, "labelomega": 5.0}, 2000, seed=7)
    h = fedhex_hep.FeatureSet(events, model.feature_names, model.label_names).to_hist("phi", bins=25)

    gen, root = tmp_path / "gen.parquet", tmp_path / "gen.root"
    cli = CliRunner()
    result = cli.invoke(app, ["generate", str(folder / "model"), "-l", "1750,5", "-n", "2000", "--seed", "7", "-o", str(gen), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["export", str(gen), "--bins", "25", "-o", str(root)])
    assert result.exit_code == 0, result.output
    with uproot.open(root) as f:
        exported = f["h_phi__labelphi_1750__labelomega_5"].to_hist()
    assert np.array_equal(h.axes[0].edges, exported.axes[0].edges)
    assert np.array_equal(h.values(), exported.values()) and np.array_equal(h.variances(), exported.variances())
    assert h.sum(flow=True).value == 2000 and h.values().sum() > 1900
