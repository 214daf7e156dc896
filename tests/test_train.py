"""Training: model directory, exact checkpoints, resume identity (also after SIGKILL),
early stopping, NaN handling, save/load identity for several architectures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import TINY_MODEL  # noqa: E402
from fedhex_hep.io.atomic import OutputError  # noqa: E402
from fedhex_hep.config import Config, load_config  # noqa: E402
from fedhex_hep.model.dataset import prepare  # noqa: E402
from fedhex_hep.io.featureset import FeatureSet  # noqa: E402
from fedhex_hep.model.storage import ModelDirError, checkpoint_prefix, load_model  # noqa: E402
from fedhex_hep.model.training import TrainingError, outside_spline_range, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def toy_featureset(n: int = 3000, seed: int = 0) -> FeatureSet:
    """Two reconstructed masses smeared around two generator masses on a 3 x 2 grid (GeV)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.choice([1000.0, 1500.0, 2000.0], n), rng.choice([2.0, 6.0], n)], axis=1)
    features = np.stack(
        [
            labels[:, 0] * np.exp(0.03 * rng.standard_normal(n)),
            labels[:, 1] * np.exp(0.08 * rng.standard_normal(n) - 0.02),
        ],
        axis=1,
    )
    return FeatureSet.from_numpy(features, labels, ["mphi", "momega"], ["gphi", "gomega"])


def toy_config(**overrides: object) -> Config:
    base = {
        "input.features": {"mphi": "a", "momega": "b"},
        "input.labels": {"gphi": "c", "gomega": "d"},
        "preprocessing.features": {
            "mphi": {"relative_to": "gphi", "transform": "log"},
            "momega": {"relative_to": "gomega", "transform": "log"},
        },
        "preprocessing.labels": {"gphi": {"transform": "log"}, "gomega": {"transform": "log"}},
        "input.min_events_per_label": 0,
        **TINY_MODEL,
        "model.ensemble": 1,
        "model.bootstrap": True,
        "training.epochs": 4,
        "training.decay_epochs": 4,
        "training.batch_size": 256,
        "training.checkpoint_every": 2,
        "training.patience": 5,
        "training.validation_fraction": 0.2,
        "training.label_jitter_spacing": 0.0,
        "generation.labels": [[1500.0, 4.0]],
    }
    base.update(overrides)
    return load_config(overrides=base)


def _ckpt_weights(model_dir: Path, name: str) -> list[np.ndarray]:
    reader = tf.train.load_checkpoint(str(checkpoint_prefix(model_dir, name)))
    keys = sorted(k for k in reader.get_variable_to_shape_map() if k.startswith("flow/") and "OPTIMIZER" not in k)
    return [reader.get_tensor(k) for k in keys]


def _final_weights(model_dir: Path) -> list[np.ndarray]:
    reader = tf.train.load_checkpoint(str(model_dir / "weights" / "weights"))
    keys = sorted(k for k in reader.get_variable_to_shape_map() if k.startswith("flow/"))
    assert keys
    return [reader.get_tensor(k) for k in keys]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_model_dir_layout_and_exact_checkpoint_epochs(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model = train(toy_featureset(), toy_config(**{"training.epochs": 5}), model_dir, progress=False)
    ckpts = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
    assert ckpts == ["best", "epoch-0002", "epoch-0004", "last"]
    for name in ("config.toml", "preprocessing.json", "training.json", "versions.json", "history.csv", "loss.png"):
        assert (model_dir / name).is_file(), name
    assert not [p for p in model_dir.rglob(".*") if p.name != ".fedhex-hep.lock"]  # no temporaries left
    history = (model_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,val_loss,lr"
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4", "5"]
    # checkpoint epoch-0002 really is the state after epoch 2
    assert json.loads((model_dir / "checkpoints" / "epoch-0002" / "state.json").read_text())["epoch"] == 2
    assert json.loads((model_dir / "checkpoints" / "last" / "state.json").read_text())["epoch"] == 5
    versions = json.loads((model_dir / "versions.json").read_text())
    assert set(versions) >= {"fedhex-hep", "tensorflow", "tensorflow-probability", "numpy"}
    info = json.loads((model_dir / "training.json").read_text())
    assert info["label_points"] == [[1000.0, 2.0], [1000.0, 6.0], [1500.0, 2.0], [1500.0, 6.0], [2000.0, 2.0], [2000.0, 6.0]]
    assert info["label_ranges"]["gphi"] == {"min": 1000.0, "max": 2000.0, "spacing": 500.0}
    assert load_config(model_dir / "config.toml").to_dict() == toy_config(**{"training.epochs": 5}).to_dict()
    # the loss went down: the loop really trains
    losses = [float(line.split(",")[1]) for line in history[1:]]
    assert losses[-1] < losses[0]
    assert model.training_label_points.shape == (6, 2)


RATIO_LABEL = {"preprocessing.labels": {"gphi": {"transform": "log"}, "gomega": {"relative_to": "gphi", "transform": "log"}}}


@pytest.mark.parametrize(
    "extra",
    [{}, RATIO_LABEL, {"training.conditioning_l2": 0.01},
     {"model.spline_blocks": 1, "training.spline_label_jitter": {"gphi": 0.2}}],
    ids=["log-labels", "mass-ratio-label", "conditioning-l2", "spline-label-jitter"],
)
def test_resume_equals_uninterrupted(tmp_path: Path, extra: dict) -> None:
    fs = toy_featureset()
    full = tmp_path / "full"
    train(fs, toy_config(**extra), full, progress=False)
    part = tmp_path / "part"
    train(fs, toy_config(**extra, **{"training.epochs": 2}), part, progress=False)
    train(fs, toy_config(**extra), part, resume=True, progress=False)
    assert (full / "history.csv").read_bytes() == (part / "history.csv").read_bytes()
    assert _same(_final_weights(full), _final_weights(part))
    assert _same(_ckpt_weights(full, "last"), _ckpt_weights(part, "last"))
    assert _same(_ckpt_weights(full, "epoch-0004"), _ckpt_weights(part, "epoch-0004"))


def test_resume_refuses_changed_config_and_fresh_run_refuses_existing_model(tmp_path: Path) -> None:
    fs = toy_featureset()
    train(fs, toy_config(**{"training.epochs": 1}), tmp_path / "m", progress=False)
    with pytest.raises(TrainingError, match="'model.n_blocks' differs"):
        train(fs, toy_config(**{"model.n_blocks": 3}), tmp_path / "m", resume=True, progress=False)
    with pytest.raises(OutputError, match="already holds a model"):
        train(fs, toy_config(), tmp_path / "m", progress=False)
    with pytest.raises(ModelDirError, match="missing config.toml"):
        train(fs, toy_config(), tmp_path / "empty", resume=True, progress=False)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    model = train(fs, toy_config(**{"training.epochs": 1, "model.n_blocks": 1}), tmp_path / "m", progress=False,
                  overwrite=True)
    assert model.config.model.n_blocks == 1 and (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_early_stopping_restores_best_weights(tmp_path: Path) -> None:
    # 90 events, a big step size and a wide net: validation loss stops improving quickly
    fs = toy_featureset(n=90, seed=1)
    cfg = toy_config(
        **{
            "training.epochs": 80,
            "training.decay_epochs": 80,
            "training.patience": 3,
            "training.batch_size": 32,
            "training.learning_rate": 0.02,
            "training.final_learning_rate": 0.02,
            "training.checkpoint_every": 100,
            "training.validation_fraction": 0.3,
            "model.hidden_units": [64, 64],
        }
    )
    model = train(fs, cfg, tmp_path / "m", progress=False)
    info = model.info
    assert info["stopped_early"] is True
    assert info["epochs_run"] < 80
    assert info["best_epoch"] == info["epochs_run"] - 3
    rows = (tmp_path / "m" / "history.csv").read_text().splitlines()[1:]
    val = [float(r.split(",")[2]) for r in rows]
    assert int(np.argmin(val)) + 1 == info["best_epoch"]
    best, last, final = (_ckpt_weights(tmp_path / "m", "best"), _ckpt_weights(tmp_path / "m", "last"),
                         _final_weights(tmp_path / "m"))
    assert _same(final, best) and not _same(final, last)
    assert _same([v.numpy() for v in model.flow.trainable_variables], load_model(tmp_path / "m").flow.get_weights())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import fedhex_hep.model.training as train_module

    fs = toy_featureset(n=1000)
    cfg = toy_config(**{"training.epochs": 5, "training.batch_size": 200, "training.checkpoint_every": 1})
    steps_per_epoch = 800 // 200
    counter = tf.Variable(0, dtype=tf.int64)
    original = train_module._batch_loss

    def poisoned(flow, z, c, w, member_w=None, spline_c=None):  # the loss turns NaN during epoch 3
        counter.assign_add(1)
        loss = original(flow, z, c, w, member_w, spline_c)
        return tf.where(counter > 2 * steps_per_epoch + 1, tf.constant(np.nan, tf.float32), loss)

    monkeypatch.setattr(train_module, "_batch_loss", poisoned)
    with caplog.at_level("ERROR"), pytest.raises(TrainingError, match="NaN/inf at epoch 3.*last good checkpoint.*epoch 2"):
        train(fs, cfg, tmp_path / "m", progress=False)
    assert "NaN/inf at epoch 3" in caplog.text
    ckpts = sorted(p.name for p in (tmp_path / "m" / "checkpoints").iterdir())
    assert ckpts == ["best", "epoch-0001", "epoch-0002", "last"]
    assert json.loads((tmp_path / "m" / "checkpoints" / "last" / "state.json").read_text())["epoch"] == 2
    assert all(np.all(np.isfinite(w)) for w in _ckpt_weights(tmp_path / "m", "last"))
    assert len((tmp_path / "m" / "history.csv").read_text().splitlines()) == 3
    good = load_model(tmp_path / "m", checkpoint="last") if (tmp_path / "m" / "weights").exists() else None
    assert good is None  # no final weights were written from a diverged run


ARCHITECTURES = [
    pytest.param("maf", 1, [8], id="maf-1x8"),
    pytest.param("maf", 3, [16, 16], id="maf-3x16x16"),
    pytest.param("maf", 6, [8, 12, 8], id="maf-6x8x12x8"),
    pytest.param("spline", 2, [16], id="spline-2x16"),
    pytest.param("hybrid", 4, [16, 16], id="maf-4x16x16-2-spline-blocks"),
    pytest.param("mixbase", 3, [16, 16], id="maf-3x16x16-mixture-base"),
]


@pytest.mark.parametrize("kind,blocks,hidden", ARCHITECTURES)
def test_save_load_identity(tmp_path: Path, kind: str, blocks: int, hidden: list[int]) -> None:
    fs = toy_featureset(n=1200)
    spline_blocks = 2 if kind == "hybrid" else 0
    cfg = toy_config(**{"model.kind": "spline" if kind == "spline" else "maf", "model.spline_blocks": spline_blocks,
                        "model.base_components": 4 if kind == "mixbase" else 1,
                        "model.n_blocks": blocks, "model.hidden_units": hidden,
                        "training.epochs": 2, "training.checkpoint_every": 1,
                        **(RATIO_LABEL if kind == "hybrid" else {})})  # hybrid: the packaged model
    model = train(fs, cfg, tmp_path / "m", progress=False)
    loaded = load_model(tmp_path / "m")
    x, y = fs.features[:200], fs.labels[:200]
    assert np.array_equal(model.log_prob(x, y), loaded.log_prob(x, y))
    c = np.repeat(model.preprocessor.transform_labels(np.array([[1250.0, 4.0]])), 500, axis=0)
    assert np.array_equal(model.flow.sample(c, seed=11), loaded.flow.sample(c, seed=11))
    assert loaded.config.to_dict() == cfg.to_dict()
    # checkpoints load too, and differ from each other where training moved the weights
    first = load_model(tmp_path / "m", checkpoint="epoch-0001")
    last = load_model(tmp_path / "m", checkpoint="last")
    assert not np.array_equal(first.log_prob(x, y), last.log_prob(x, y))


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    train(toy_featureset(n=500), toy_config(**{"training.epochs": 1}), tmp_path / "m", progress=False)
    (tmp_path / "m" / "weights" / "weights.index").unlink()
    with pytest.raises(ModelDirError, match=r"missing weights/weights\.index"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelDirError, match="no checkpoint epoch-0007"):
        load_model(tmp_path / "m", checkpoint=7)
    (tmp_path / "m" / "preprocessing.json").unlink()
    with pytest.raises(ModelDirError, match="missing preprocessing.json"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "nothing")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    fs = toy_featureset(n=20000)
    cfg = toy_config(**{"training.epochs": 12, "training.decay_epochs": 12, "training.checkpoint_every": 2})
    fs.save(tmp_path / "fs.parquet")
    cfg.write(tmp_path / "config.toml")
    model_dir = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        from fedhex_hep.config import load_config
        from fedhex_hep.io.featureset import FeatureSet
        from fedhex_hep.model.training import train
        train(FeatureSet.load({str(tmp_path / 'fs.parquet')!r}), load_config({str(tmp_path / 'config.toml')!r}),
              {str(model_dir)!r}, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (model_dir / "checkpoints" / "epoch-0002").exists():
            assert proc.poll() is None, "training subprocess ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # killed mid-run: no final files; `last` is at epoch >= 1 (it is written just after
    # epoch-0002, so the kill may land in between: at most one checkpoint interval is lost)
    assert not (model_dir / "training.json").exists() and not (model_dir / "weights").exists()
    states = list((model_dir / "checkpoints").glob("*last*/state.json"))
    assert states and 1 <= json.loads(states[0].read_text())["epoch"] < 12

    train(fs, cfg, model_dir, resume=True, progress=False)
    clean = tmp_path / "clean"
    train(fs, cfg, clean, progress=False)
    assert (clean / "history.csv").read_bytes() == (model_dir / "history.csv").read_bytes()
    assert _same(_final_weights(clean), _final_weights(model_dir))
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (clean / "checkpoints").iterdir()
    )


def test_ensemble_members_train_exactly_as_if_alone(tmp_path: Path) -> None:
    """An ensemble of 2 trained together (without bootstrap replicas): member 0 ends with the
    weights of a single flow trained alone with the same seed (its gradient, clipping included,
    is its own), and the model dir saves and reloads the whole mixture."""
    fs = toy_featureset(n=1500)
    common = {"training.epochs": 3, "training.patience": 0, "training.clip_norm": 0.5, "model.bootstrap": False}
    single = train(fs, toy_config(**common), tmp_path / "single", progress=False)
    ens = train(fs, toy_config(**common, **{"model.ensemble": 2}), tmp_path / "ens", progress=False)
    for a, b in zip(ens.flow.members[0].get_weights(), single.flow.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(ens.flow.members[1].get_weights()[0], single.flow.get_weights()[0])
    loaded = load_model(tmp_path / "ens")
    x, y = fs.features[:300], fs.labels[:300]
    assert np.array_equal(ens.log_prob(x, y), loaded.log_prob(x, y))
    c = np.repeat(ens.preprocessor.transform_labels(np.array([[1250.0, 4.0]])), 400, axis=0)
    assert np.array_equal(ens.flow.sample(c, seed=2), loaded.flow.sample(c, seed=2))
    best = load_model(tmp_path / "ens", checkpoint="best")
    assert np.all(np.isfinite(best.log_prob(x, y)))


def test_bootstrap_loss_weights_each_member_by_its_own_replica() -> None:
    from fedhex_hep.model.training import _batch_loss, bootstrap_weights

    rng = np.random.default_rng(0)
    log_probs = rng.normal(size=(3, 50)).astype(np.float32)  # (K, n)

    class _Members:
        def member_log_probs(self, z, c, spline_c=None):
            return tf.constant(log_probs)

    w = rng.uniform(0.5, 2.0, size=50).astype(np.float32)
    member_w = bootstrap_weights(50, 3, seed=4)
    got = float(_batch_loss(_Members(), None, None, tf.constant(w), tf.constant(member_w)))
    want = np.mean([np.sum(w * member_w[:, k] * -log_probs[k]) / np.sum(w * member_w[:, k]) for k in range(3)])
    assert got == pytest.approx(want, rel=1e-5)
    # replicas: reproducible from the seed, mean weight 1, different per member
    big = bootstrap_weights(20000, 3, seed=4)
    assert np.array_equal(big, bootstrap_weights(20000, 3, seed=4))
    assert big.mean(axis=0) == pytest.approx([1, 1, 1], abs=0.03)
    assert not np.array_equal(big[:, 0], big[:, 1])


def test_bootstrap_ensemble_resume_equals_uninterrupted(tmp_path: Path) -> None:
    fs = toy_featureset(n=1500)
    ens = {"model.ensemble": 2, "training.patience": 0}
    full = train(fs, toy_config(**ens), tmp_path / "full", progress=False)
    train(fs, toy_config(**ens, **{"training.epochs": 2}), tmp_path / "part", progress=False)
    part = train(fs, toy_config(**ens), tmp_path / "part", resume=True, progress=False)
    assert _same(_final_weights(tmp_path / "full"), _final_weights(tmp_path / "part"))
    alone = train(fs, toy_config(**ens, **{"model.bootstrap": False}), tmp_path / "alone", progress=False)
    # the replicas change what the members fit
    assert not np.allclose(full.flow.members[0].get_weights()[0], alone.flow.members[0].get_weights()[0])
    assert np.array_equal(full.log_prob(fs.features[:100], fs.labels[:100]), part.log_prob(fs.features[:100], fs.labels[:100]))


def test_far_outliers_in_validation_do_not_end_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two mis-paired events (reco mass 5x its generator mass, ~50 sigma) in the validation
    split: the plain mean NLL rises as the flow sharpens (early stopping would keep epoch 1,
    as seen on the demo grid), the capped validation loss falls with the bulk."""
    import fedhex_hep.model.training as train_mod

    fs = toy_featureset(n=3000)
    x = fs.features.copy()
    x[:2, 0] *= 5.0
    bad = FeatureSet.from_numpy(x, fs.labels, fs.feature_names, fs.label_names)
    cfg = toy_config(**{"training.epochs": 6, "training.decay_epochs": 6, "training.patience": 0})

    def val_losses(name: str) -> list[float]:
        train(bad, cfg, tmp_path / name, progress=False)
        lines = (tmp_path / name / "history.csv").read_text().splitlines()[1:]
        return [float(line.split(",")[2]) for line in lines]

    capped = val_losses("capped")
    monkeypatch.setattr(train_mod, "VAL_NLL_CAP", np.float32(np.inf))
    plain = val_losses("plain")
    assert plain[-1] > plain[0], plain  # the outliers are in the validation split
    assert capped[-1] < capped[0], capped
    assert min(plain) > max(capped) + 0.3


def test_warns_when_features_lie_outside_the_data_side_spline_range(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # 1% of the Phi masses far below the core (mis-paired candidates): beyond +-5 standardised
    # units, where a spline block at the data side is the identity.
    fs = toy_featureset()
    features = fs.features.copy()
    features[::100, 0] *= 0.2
    fs = FeatureSet.from_numpy(features, fs.labels, fs.feature_names, fs.label_names)
    spline = {"model.kind": "spline", "model.spline_range": 5.0, "training.epochs": 1, "training.decay_epochs": 1}
    with caplog.at_level("WARNING"):
        train(fs, toy_config(**spline), tmp_path / "narrow", progress=False)
    warned = [r.getMessage() for r in caplog.records if "model.spline_range" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("feature 'mphi': ") and "model.spline_range = 5 " in warned[0]

    data = prepare(fs, toy_config(**spline))
    assert outside_spline_range(data, toy_config(**spline))["mphi"] == pytest.approx(0.01, abs=0.002)
    assert outside_spline_range(data, toy_config(**spline))["momega"] == 0.0
    assert max(outside_spline_range(data, toy_config(**{**spline, "model.spline_range": 20.0})).values()) == 0.0
    # affine blocks at the data side (splines only nearest the base): nothing to check
    assert outside_spline_range(data, toy_config(**{"model.spline_blocks": 1})) == {}
    assert outside_spline_range(data, toy_config(**{"model.spline_blocks": 2}))["mphi"] > 0.005


def test_label_jitter_smears_only_the_named_label_by_the_asked_sd(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Spy on the conditioning input each training batch sees. gphi is a log label: 0.05 means a
    # 5% Gaussian smearing of the generator mass, i.e. 0.05 / std(log gphi) in standardised units.
    import fedhex_hep.model.training as train_module

    seen: list[np.ndarray] = []
    original = train_module._batch_loss

    def spy(flow, z, c, w, member_w=None, spline_c=None):
        tf.py_function(lambda x: seen.append(x.numpy()) or 0, [c], tf.int32)
        return original(flow, z, c, w, member_w, spline_c)

    monkeypatch.setattr(train_module, "_batch_loss", spy)
    fs = toy_featureset()
    cfg = toy_config(**{"training.epochs": 2, "training.decay_epochs": 2, "training.label_jitter": {"gphi": 0.05}})
    train(fs, cfg, tmp_path / "jitter", progress=False)
    c = np.concatenate(seen)
    pre = prepare(fs, cfg).preprocessor
    grid = pre.transform_labels(np.array([[m, 2.0] for m in (1000.0, 1500.0, 2000.0)]))[:, 0]
    offset = c[:, 0, None] - grid[None, :]
    nearest = offset[np.arange(len(c)), np.argmin(np.abs(offset), axis=1)]
    assert np.std(nearest) == pytest.approx(0.05 / pre.label_params[0].std, rel=0.1)
    assert abs(np.mean(nearest)) < 0.01
    grid_omega = pre.transform_labels(np.array([[1000.0, 2.0], [1000.0, 6.0]]))[:, 1]
    assert np.min(np.abs(c[:, 1, None] - grid_omega[None, :]), axis=1).max() < 1e-6  # gomega untouched

    # no jitter: every batch sees the grid's labels exactly; jitter is seeded: reruns are identical
    seen.clear()
    train(fs, toy_config(**{"training.epochs": 1, "training.decay_epochs": 1}), tmp_path / "plain", progress=False)
    assert np.min(np.abs(np.concatenate(seen)[:, 0, None] - grid[None, :]), axis=1).max() < 1e-6
    train(fs, cfg, tmp_path / "again", progress=False)
    for a, b in zip(_final_weights(tmp_path / "jitter"), _final_weights(tmp_path / "again")):
        np.testing.assert_array_equal(a, b)


def test_spline_label_jitter_smears_the_spline_blocks_labels_only(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The spline blocks see gphi smeared by 5% (log label), gomega as it is; the other blocks
    # and the base see the grid's labels (the toy config has no label jitter).
    import fedhex_hep.model.training as train_module

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    original = train_module._batch_loss

    def spy(flow, z, c, w, member_w=None, spline_c=None):
        tf.py_function(lambda a, b: seen.append((a.numpy(), b.numpy())) or 0, [c, spline_c], tf.int32)
        return original(flow, z, c, w, member_w, spline_c)

    monkeypatch.setattr(train_module, "_batch_loss", spy)
    fs = toy_featureset()
    cfg = toy_config(**{"model.spline_blocks": 1, "training.epochs": 2, "training.decay_epochs": 2,
                        "training.spline_label_jitter": {"gphi": 0.05}})
    train(fs, cfg, tmp_path / "m", progress=False)
    c = np.concatenate([a for a, _ in seen])
    spline_c = np.concatenate([b for _, b in seen])
    pre = prepare(fs, cfg).preprocessor
    grid = pre.transform_labels(np.array([[m, 2.0] for m in (1000.0, 1500.0, 2000.0)]))[:, 0]
    assert np.min(np.abs(c[:, 0, None] - grid[None, :]), axis=1).max() < 1e-6
    offset = spline_c - c
    assert np.std(offset[:, 0]) == pytest.approx(0.05 / pre.label_params[0].std, rel=0.1)
    assert abs(np.mean(offset[:, 0])) < 0.01
    assert np.all(offset[:, 1] == 0)
    assert train_module._spline_jitter_scale(prepare(fs, toy_config()), toy_config().training).tolist() == [0.0, 0.0]


def test_label_jitter_spacing_follows_each_labels_grid_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # label_jitter_spacing = 0.2: each label smeared by 0.2 x its median neighbour gap in the
    # flow's conditioning units; an explicit label_jitter entry wins for its label.
    import fedhex_hep.model.training as train_module

    fs = toy_featureset()
    cfg = toy_config(**{"training.label_jitter_spacing": 0.2, "training.label_jitter": {"gomega": 0.05}})
    data = prepare(fs, cfg)
    pre = data.preprocessor
    phis = pre.transform_labels(np.array([[m, 2.0] for m in (1000.0, 1500.0, 2000.0)]))[:, 0]
    expected_phi = 0.2 * np.median(np.diff(phis))
    sd = train_module._label_jitter_scale(data, cfg.training)
    assert sd[0] == pytest.approx(expected_phi, rel=1e-5)
    assert sd[1] == pytest.approx(0.05 / pre.label_params[1].std, rel=1e-6)
    assert np.all(train_module._label_jitter_scale(data, toy_config().training) == 0)


def test_conditioning_kernels_are_the_weights_that_take_the_labels_into_each_block() -> None:
    from fedhex_hep.model.flow import build_flow

    cfg = toy_config(**{"model.base_components": 2, "model.hidden_units": [16, 8]})
    flow = build_flow(cfg.model, n_features=3, n_labels=2)
    kernels = flow.conditioning_kernels()
    # one per MADE layer (two hidden, one output) and block; the base network is not among them
    assert [tuple(k.shape) for k in kernels] == [(2, 16), (2, 8), (2, 2 * 3)] * cfg.model.n_blocks
    base = {id(v) for v in flow.base_net.trainable_variables}
    assert not any(id(k) in base for k in kernels)
    # with the labels' kernels zeroed, the flow no longer depends on the labels
    for k in kernels:
        k.assign(tf.zeros_like(k))
    flow.base_net.layers[0].kernel.assign(tf.zeros_like(flow.base_net.layers[0].kernel))
    z = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    c1, c2 = np.zeros((5, 2), np.float32), np.full((5, 2), 3.0, np.float32)
    assert np.allclose(flow.log_prob(z, c1).numpy(), flow.log_prob(z, c2).numpy(), atol=1e-5)
    pair = toy_config(**{"model.base_components": 2, "model.hidden_units": [16, 8], "model.ensemble": 2})
    assert len(build_flow(pair.model, n_features=3, n_labels=2).conditioning_kernels()) == 2 * len(kernels)


def test_conditioning_l2_shrinks_the_label_weights(tmp_path: Path) -> None:
    fs = toy_featureset()

    def label_weight_norm(l2: float) -> float:
        cfg = toy_config(**{"training.conditioning_l2": l2, "training.patience": 0, "training.epochs": 20,
                            "training.decay_epochs": 20, "training.checkpoint_every": 20})
        model = train(fs, cfg, tmp_path / f"m{l2}", progress=False)
        return float(sum(np.sum(k.numpy() ** 2) for k in model.flow.conditioning_kernels()))

    assert label_weight_norm(1.0) < 0.2 * label_weight_norm(0.0)


def test_small_data_sets_get_smaller_batches() -> None:
    from fedhex_hep.model.training import effective_batch_size

    tc = toy_config(**{"training.batch_size": 4096, "training.min_steps_per_epoch": 100}).training
    assert effective_batch_size(tc, 1_000_000) == 4096
    assert effective_batch_size(tc, 80_000) == 800
    assert effective_batch_size(tc, 10_000) == 256  # never below 256
    assert effective_batch_size(tc, 100) == 100  # nor above the data
    off = toy_config(**{"training.batch_size": 4096, "training.min_steps_per_epoch": 0}).training
    assert effective_batch_size(off, 80_000) == 4096


def test_resume_with_residual_standardisation_equals_uninterrupted(tmp_path: Path) -> None:
    fs = toy_featureset()
    over = {"preprocessing.residual": True, "preprocessing.residual_max_degree": 1}
    full, part = tmp_path / "full", tmp_path / "part"
    train(fs, toy_config(**over), full, progress=False)
    train(fs, toy_config(**over, **{"training.epochs": 2}), part, progress=False)
    train(fs, toy_config(**over), part, resume=True, progress=False)
    assert (full / "history.csv").read_bytes() == (part / "history.csv").read_bytes()
    assert _same(_final_weights(full), _final_weights(part))
    saved = json.loads((full / "preprocessing.json").read_text())
    assert all(f["residual"] is not None for f in saved["features"])
    # the loaded model's density integrates the residual step's Jacobian: compare with the flow
    # density in z plus an independently computed log |dz/dx| (numerical derivative)
    model = load_model(full)
    x = fs.features[:50]
    labels = fs.labels[:50]
    pre = model.preprocessor
    z, c = pre.transform(x, labels)
    log_pz = model.flow.log_prob(z.astype(np.float32), c.astype(np.float32)).numpy().astype(np.float64)
    h = 1e-4
    jac = np.ones(len(x))
    for i in range(2):
        step = np.zeros_like(x)
        step[:, i] = h * x[:, i]
        dz = (pre.transform_features(x + step, labels)[:, i] - pre.transform_features(x - step, labels)[:, i]) / (2 * step[:, i])
        jac *= dz
    np.testing.assert_allclose(model.log_prob(x, labels), log_pz + np.log(np.abs(jac)), rtol=0, atol=1e-5)


def test_epoch_log_shows_the_validation_loss_only_when_there_is_a_split(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    fs = toy_featureset(n=600)
    for fraction, name in ((0.2, "split"), (0.0, "nosplit")):
        caplog.clear()
        with caplog.at_level("INFO", logger="fedhex_hep.model.training"):
            train(fs, toy_config(**{"training.validation_fraction": fraction, "training.epochs": 2,
                                    "training.decay_epochs": 2}), tmp_path / name, progress=False)
        epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
        assert len(epochs) == 2
        assert all(("  val " in m) == (fraction > 0) for m in epochs), epochs
        assert not any("nan" in m for m in epochs), epochs
