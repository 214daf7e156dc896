"""Training speed: our compiled epoch loop vs a reference implementation (Keras ``model.fit`` on
a functional model wrapping the same TFP flow's ``log_prob``), same architecture, batch size,
learning-rate schedule, gradient clipping and data, in the same process.

The reference implementation wraps the TFP distribution's own ``log_prob``, which evaluates each
MADE network twice; ``ConditionalFlow.log_prob`` evaluates it once. ``ratio`` compares with the
reference implementation; ``ratio_vs_keras_same_log_prob`` gives ``model.fit`` our one-pass
density too, so it shows what the training loop alone gains. Validation loss is compared after 20 epochs
by default: after only a few, which run escapes the initial plateau first depends on the shuffle
and differs by up to ~0.15 nats between shuffles of the same run.

    python benchmarks/bench_train.py [--events 50000] [--epochs 20] [--blocks 5] [--units 64]

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
    from fedhex_hep.io.featureset import FeatureSet

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


def architecture(model: Any) -> str:
    """The flow's architecture as the result tables name it, e.g. "maf 5 blocks x [64, 64], 2 of
    them splines, 2-Gaussian base" (the spline note for a maf whose first blocks are splines, the
    base's note for a mixture base)."""
    splines = f", {model.spline_blocks} of them splines" if model.kind == "maf" and model.spline_blocks else ""
    base = f", {model.base_components}-Gaussian base" if model.base_components > 1 else ""
    return f"{model.kind} {model.n_blocks} blocks x {list(model.hidden_units)}{splines}{base}"


def toy_config(
    epochs: int, blocks: int, units: int, batch_size: int, kind: str = "maf", ensemble: int = 1,
    base_components: int = 1,
) -> Any:
    """Config of the benchmark flow; ``ensemble`` = 1: the training comparison is per flow, and
    ``base_components`` = 1 because the reference implementation is TFP's own density of the
    chain on a standard normal base."""
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
            "model.ensemble": ensemble,
            "model.base_components": base_components,
            "training.epochs": epochs,
            "training.decay_epochs": epochs,
            "training.batch_size": batch_size,
            "training.patience": 0,
            "training.conditioning_l2": 0.0,  # the reference implementation minimises the NLL alone
            "training.checkpoint_every": epochs,
            "generation.labels": [[1500.0, 4.0]],
        }
    )


def packaged_toy_config(kind: str = "maf") -> Any:
    """:func:`toy_config` for one epoch with the packaged default architecture: its blocks,
    hidden units, mixture size and base."""
    from fedhex_hep.config import load_config

    d = load_config().model
    return toy_config(1, d.n_blocks, d.hidden_units[0], 1024, kind, d.ensemble, d.base_components)


def _ours(fs: Any, cfg: Any, workdir: Path) -> dict[str, Any]:
    import csv

    from fedhex_hep.model.training import train

    t0 = time.perf_counter()
    train(fs, cfg, workdir / "ours", progress=False)
    total = time.perf_counter() - t0
    rows = list(csv.DictReader(open(workdir / "ours" / "history.csv")))
    info = json.loads((workdir / "ours" / "training.json").read_text())
    return {"total_s": total, "val_loss": float(rows[-1]["val_loss"]), "epoch_times": info["epoch_seconds"]}


def _nll_layer(flow: Any, tfp_log_prob: bool) -> Any:
    """A Keras layer (z, c) -> -log p(z | c), through TFP's density or ``ConditionalFlow.log_prob``."""
    import tf_keras

    class FlowNLL(tf_keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.flow = flow
            self.made = list(flow.module.networks)  # tracked -> trainable weights of the model

        def call(self, inputs: Any) -> Any:
            z, c = inputs
            if tfp_log_prob:
                lp = self.flow.distribution.log_prob(z, bijector_kwargs=self.flow._kwargs(c))
            else:
                lp = self.flow.log_prob(z, c)
            return -lp[:, None]

    return FlowNLL()


def _epoch_timer(times: list[float]) -> Any:
    """A Keras callback appending each epoch's wall time (s) to ``times``."""
    import tf_keras

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t0)

    return Timer()


def _keras_fit(fs: Any, cfg: Any, tfp_log_prob: bool = True) -> dict[str, Any]:
    """The reference implementation: a Keras functional model whose output is -log_prob, model.fit.

    ``tfp_log_prob=True`` wraps the TFP distribution's own log_prob (two MADE passes per block);
    False wraps ``ConditionalFlow.log_prob`` (our one-pass density), which isolates what the
    training loop itself gains."""
    import tensorflow as tf
    import tf_keras

    from fedhex_hep.model.dataset import prepare
    from fedhex_hep.model.flow import build_flow

    data = prepare(fs, cfg)
    tc = cfg.training
    flow = build_flow(cfg.model, data.z_train.shape[1], data.c_train.shape[1], seed=tc.seed)
    z_in = tf_keras.Input(shape=(data.z_train.shape[1],))
    c_in = tf_keras.Input(shape=(data.c_train.shape[1],))
    model = tf_keras.Model([z_in, c_in], _nll_layer(flow, tfp_log_prob)([z_in, c_in]))
    steps = int(np.ceil(data.n_train / tc.batch_size))
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(
        tc.learning_rate, tc.decay_epochs * steps, tc.final_learning_rate, power=1.0
    )
    # The same optimizer settings as train(): Adam, the same schedule, the same global-norm clipping.
    optimizer = tf_keras.optimizers.Adam(schedule, global_clipnorm=tc.clip_norm if tc.clip_norm > 0 else None)
    model.compile(optimizer=optimizer, loss=lambda _, nll: tf.reduce_mean(nll))

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
        callbacks=[_epoch_timer(times)],
    )
    total = time.perf_counter() - t0
    return {"total_s": total, "val_loss": float(hist.history["val_loss"][-1]), "epoch_times": times,
            "n_train": data.n_train}


def run(events: int = 50000, epochs: int = 20, blocks: int = 5, units: int = 64, batch_size: int = 1024,
        kind: str = "maf", threads: int | None = None) -> dict[str, Any]:
    """Train both ways on the same data; events/s per epoch in steady state (the goal's
    measure), over all epochs including the first (graph tracing), and over the whole call."""
    import tensorflow as tf

    from fedhex_hep.model.training import TRAIN_INTRA_OP_THREADS

    # train() asks for TRAIN_INTRA_OP_THREADS intra-op threads when it is the first TensorFlow
    # user of its process; here model.fit runs first, so set it for the whole process: both
    # sides run with the same threads (the reference implementation does not tune them; this is generous).
    # ``threads`` (or TF_NUM_INTRAOP_THREADS) overrides it for both sides, e.g. TensorFlow's
    # default (one per core) to see the baseline at its own default.
    threads = int(threads or os.environ.get("TF_NUM_INTRAOP_THREADS") or TRAIN_INTRA_OP_THREADS)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    fs = toy_featureset(events)
    cfg = toy_config(epochs, blocks, units, batch_size, kind)
    # model.fit first: our train() enables op determinism process-wide, which must not slow
    # down the comparison runs.
    keras = _keras_fit(fs, cfg, tfp_log_prob=True)
    keras_same = _keras_fit(fs, cfg, tfp_log_prob=False)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _ours(fs, cfg, Path(tmp))
    n_train = keras["n_train"]
    # Steady state: median per-epoch rate after the first epoch (which holds graph tracing for
    # both). Each epoch's time covers the training pass and the validation pass on both sides.
    keras_steady = n_train / float(np.median(keras["epoch_times"][1:] or keras["epoch_times"]))
    same_steady = n_train / float(np.median(keras_same["epoch_times"][1:] or keras_same["epoch_times"]))
    ours_steady = n_train / float(np.median(ours["epoch_times"][1:] or ours["epoch_times"]))
    # Including the first epoch: all epochs' time (tracing included) on both sides.
    ours_all = n_train * epochs / float(np.sum(ours["epoch_times"]))
    keras_all = n_train * epochs / float(np.sum(keras["epoch_times"]))
    # Whole call: train() (data preparation, flow construction, checkpoint and history files,
    # loss plot) against model.fit() alone (data adapter; model built and compiled before).
    ours_rate = n_train * epochs / ours["total_s"]
    keras_rate = n_train * epochs / keras["total_s"]
    return {
        "events_train": n_train,
        "epochs": epochs,
        "architecture": f"{architecture(cfg.model)}, batch {batch_size}",
        "intra_op_threads_both_sides": threads,
        "ours_events_per_s_per_epoch": ours_steady,
        "keras_fit_events_per_s_per_epoch": keras_steady,
        "ratio": ours_steady / keras_steady,
        "keras_fit_same_log_prob_events_per_s_per_epoch": same_steady,
        "ratio_vs_keras_same_log_prob": ours_steady / same_steady,
        "ours_events_per_s_incl_first_epoch": ours_all,
        "keras_fit_events_per_s_incl_first_epoch": keras_all,
        "ratio_incl_first_epoch": ours_all / keras_all,
        "ours_events_per_s_whole_call": ours_rate,
        "keras_fit_events_per_s_whole_call": keras_rate,
        "ratio_whole_call": ours_rate / keras_rate,
        "ours_first_epoch_s": float(ours["epoch_times"][0]),
        "keras_fit_first_epoch_s": float(keras["epoch_times"][0]),
        "ours_val_loss": ours["val_loss"],
        "keras_fit_val_loss": keras["val_loss"],
        "keras_fit_same_log_prob_val_loss": keras_same["val_loss"],
        "ours_total_s": ours["total_s"],
        "keras_fit_total_s": keras["total_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--kind", default="maf")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for both sides (default: train()'s)")
    args = parser.parse_args()
    result = run(args.events, args.epochs, args.blocks, args.units, args.batch_size, args.kind, args.threads)
    print(json.dumps(result, indent=2))
    print(f"training speed per epoch, ours / keras model.fit with our one-pass log_prob: "
          f"{result['ratio_vs_keras_same_log_prob']:.2f}x")
    print(f"training speed per epoch, ours / keras model.fit (reference implementation, TFP log_prob): {result['ratio']:.2f}x "
          f"(all epochs including the first with its tracing: {result['ratio_incl_first_epoch']:.2f}x; "
          f"whole train() call with its files vs model.fit(): {result['ratio_whole_call']:.2f}x)")


if __name__ == "__main__":
    main()
