"""Training speed: our compiled epoch loop vs the old approach (Keras ``model.fit`` on a
functional model wrapping the same TFP flow's ``log_prob``), same architecture, batch size,
learning-rate schedule and data, in the same process.

    python benchmarks/bench_train.py [--events 50000] [--epochs 5] [--blocks 5] [--units 64]

``run(...) -> dict`` is used by the benchmark driver.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def toy_featureset(n: int, seed: int = 0) -> Any:
    """A 2-feature / 2-label toy like the reference analysis (masses in GeV)."""
    from fedhex_hep.featureset import FeatureSet

    rng = np.random.default_rng(seed)
    labels = np.stack([rng.choice([1000.0, 1500.0, 2000.0, 2500.0], n), rng.choice([2.0, 4.0, 6.0, 8.0], n)], axis=1)
    tail = rng.random(n) < 0.1
    features = np.stack(
        [
            labels[:, 0] * np.exp(0.03 * rng.standard_normal(n) - tail * rng.exponential(0.1, n)),
            labels[:, 1] * np.exp(0.08 * rng.standard_normal(n) - 0.02),
        ],
        axis=1,
    )
    return FeatureSet.from_numpy(features, labels, ["mphi", "momega"], ["gphi", "gomega"])


def toy_config(epochs: int, blocks: int, units: int, batch_size: int, kind: str = "maf") -> Any:
    from fedhex_hep.config import load_config

    return load_config(
        overrides={
            "input.features": {"mphi": "a", "momega": "b"},
            "input.labels": {"gphi": "c", "gomega": "d"},
            "preprocessing.features": {
                "mphi": {"relative_to": "gphi", "transform": "log"},
                "momega": {"relative_to": "gomega", "transform": "log"},
            },
            "preprocessing.labels": {"gphi": {"transform": "log"}, "gomega": {"transform": "log"}},
            "input.min_events_per_label": 0,
            "model.kind": kind,
            "model.n_blocks": blocks,
            "model.hidden_units": [units, units],
            "training.epochs": epochs,
            "training.decay_epochs": epochs,
            "training.batch_size": batch_size,
            "training.patience": 0,
            "training.checkpoint_every": epochs,
            "generation.labels": [[1500.0, 4.0]],
        }
    )


def _ours(fs: Any, cfg: Any, workdir: Path) -> dict[str, Any]:
    import csv

    from fedhex_hep.train import train

    t0 = time.perf_counter()
    train(fs, cfg, workdir / "ours", progress=False)
    total = time.perf_counter() - t0
    rows = list(csv.DictReader(open(workdir / "ours" / "history.csv")))
    info = json.loads((workdir / "ours" / "training.json").read_text())
    return {"total_s": total, "val_loss": float(rows[-1]["val_loss"]), "epoch_times": info["epoch_seconds"]}


def _keras_fit(fs: Any, cfg: Any) -> dict[str, Any]:
    """The old code's approach: a Keras functional model whose output is -log_prob, model.fit."""
    import tensorflow as tf
    import tf_keras

    from fedhex_hep.dataset import prepare
    from fedhex_hep.flow import build_flow

    data = prepare(fs, cfg)
    tc = cfg.training
    flow = build_flow(cfg.model, data.z_train.shape[1], data.c_train.shape[1], seed=tc.seed)

    class FlowNLL(tf_keras.layers.Layer):
        def __init__(self, flow: Any) -> None:
            super().__init__()
            self.flow = flow
            self.made = list(flow.module.networks)  # tracked -> trainable weights of the model

        def call(self, inputs: Any) -> Any:
            z, c = inputs
            return -self.flow.log_prob(z, c)[:, None]

    z_in = tf_keras.Input(shape=(data.z_train.shape[1],))
    c_in = tf_keras.Input(shape=(data.c_train.shape[1],))
    model = tf_keras.Model([z_in, c_in], FlowNLL(flow)([z_in, c_in]))
    steps = int(np.ceil(data.n_train / tc.batch_size))
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(
        tc.learning_rate, tc.decay_epochs * steps, tc.final_learning_rate, power=1.0
    )
    model.compile(optimizer=tf_keras.optimizers.Adam(schedule), loss=lambda _, nll: tf.reduce_mean(nll))

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t0)

    times: list[float] = []
    tf.random.set_seed(tc.seed)
    t0 = time.perf_counter()
    hist = model.fit(
        x=[data.z_train, data.c_train],
        y=np.zeros((data.n_train, 0), dtype=np.float32),
        validation_data=([data.z_val, data.c_val], np.zeros((data.n_val, 0), dtype=np.float32)),
        batch_size=tc.batch_size,
        epochs=tc.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[Timer()],
    )
    total = time.perf_counter() - t0
    return {"total_s": total, "val_loss": float(hist.history["val_loss"][-1]), "epoch_times": times,
            "n_train": data.n_train}


def run(events: int = 50000, epochs: int = 5, blocks: int = 5, units: int = 64, batch_size: int = 1024,
        kind: str = "maf") -> dict[str, Any]:
    """Train both ways on the same data; events/s = training events x epochs / wall time
    (first epoch included for both: it holds the compilation)."""
    fs = toy_featureset(events)
    cfg = toy_config(epochs, blocks, units, batch_size, kind)
    # model.fit first: our train() enables op determinism process-wide, which must not slow
    # down the comparison run.
    keras = _keras_fit(fs, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _ours(fs, cfg, Path(tmp))
    n_train = keras["n_train"]
    ours_rate = n_train * epochs / ours["total_s"]
    keras_rate = n_train * epochs / keras["total_s"]
    # per-epoch rate after the first epoch (which holds graph tracing for both)
    keras_steady = n_train / float(np.median(keras["epoch_times"][1:] or keras["epoch_times"]))
    ours_steady = n_train / float(np.median(ours["epoch_times"][1:] or ours["epoch_times"]))
    return {
        "events_train": n_train,
        "epochs": epochs,
        "architecture": f"{kind} {blocks} blocks x [{units}, {units}], batch {batch_size}",
        "ours_events_per_s_per_epoch": ours_steady,
        "keras_fit_events_per_s_per_epoch": keras_steady,
        "ratio": ours_steady / keras_steady,
        "ours_events_per_s_incl_first_epoch_and_io": ours_rate,
        "keras_fit_events_per_s_incl_first_epoch": keras_rate,
        "ratio_incl_first_epoch": ours_rate / keras_rate,
        "ours_val_loss": ours["val_loss"],
        "keras_fit_val_loss": keras["val_loss"],
        "ours_total_s": ours["total_s"],
        "keras_fit_total_s": keras["total_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--kind", default="maf")
    args = parser.parse_args()
    result = run(args.events, args.epochs, args.blocks, args.units, args.batch_size, args.kind)
    print(json.dumps(result, indent=2))
    print(f"training speed per epoch, ours / keras model.fit: {result['ratio']:.2f}x "
          f"(including first epoch, tracing and our checkpoint files: {result['ratio_incl_first_epoch']:.2f}x)")


if __name__ == "__main__":
    main()
