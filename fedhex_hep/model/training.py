"""Training loop: one compiled TensorFlow function per epoch, exact checkpoints, resume.

Design choices (why):

* The whole epoch runs inside one ``tf.function`` (a plain graph: see ``JIT_COMPILE``) looping
  over batches of tensors already in memory: no per-batch Python dispatch, which is where
  ``model.fit`` spends most of its time for flows this small.
* Each epoch's shuffle is a permutation drawn from ``numpy.random.default_rng((seed, epoch))``
  and op determinism is enabled, so an interrupted run resumed from ``checkpoints/last`` ends
  bit-identical to an uninterrupted one. Each epoch uses ``n_train // batch_size`` full batches
  (fixed shapes for XLA); the few events left over differ from epoch to epoch.
* Checkpoints are written on epoch boundaries only (``epoch % checkpoint_every == 0``), to a
  temporary folder that is then renamed, so a killed job never leaves a half-written one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.io.atomic import OutputError, atomic_write_text
from fedhex_hep.config import Config, load_config
from fedhex_hep.model.dataset import PreparedData, prepare
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.errors import FedhexError
from fedhex_hep.model.resume import holds_model, restore_for_resume, resume_candidates
from fedhex_hep.model.storage import (
    CKPT_NAME,
    WEIGHTS_PREFIX,
    ModelDirError,
    TrainedModel,
    read_json,
    write_checksums,
)

__all__ = ["TrainingError", "train", "bootstrap_weights", "HISTORY_COLUMNS", "outside_spline_range", "versions"]

log = logging.getLogger(__name__)

# Column names shared with fedhex_hep.validation.plotting (the loss-curve plot reads this file).
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr")
# Validation events per compiled evaluation call (bounds memory for large validation sets).
_EVAL_CHUNK = 65536
# Per-event cap (nats) on the validation NLL used for early stopping and the best checkpoint:
# a density below e^-30 is a > 7 sigma outlier for any sensible fit.
VAL_NLL_CAP = 30.0
# XLA for the training epoch: off. On CPU the compiled loop is far slower than the plain graph,
# XLA for each step alone gains nothing, and the spline's loop takes minutes to compile.
JIT_COMPILE = False
# XLA for the validation pass alone (forward only, no loop): about twice as fast after a
# compilation of a second or less, and as deterministic as the plain graph.
EVAL_JIT_COMPILE = True
# Intra-op threads while training, set when train() is the first TensorFlow user of the process
# (TF_NUM_INTRAOP_THREADS or an earlier tf.config setting wins). The flow's ops (batch x 64
# matrices) are too small to gain from splitting over threads; the inter-op pool still runs
# independent ops side by side, and the weights are the same.
TRAIN_INTRA_OP_THREADS = 1
# Smallest batch effective_batch_size() lowers training.batch_size to.
_MIN_AUTO_BATCH = 256
# Share of a feature's training events outside the spline range above which train() warns
# (a data-side spline block is the identity there, so those events shape nothing).
SPLINE_OUTSIDE_WARN = 1e-3


# What train() writes into a model directory (removed first by overwrite=True).
_MODEL_FILES = (
    "config.toml", "preprocessing.json", "training.json", "versions.json", "history.csv", "loss.png",
    "weights", "checkpoints", "checksums.json",
)


class TrainingError(FedhexError, RuntimeError):
    """Training could not continue (NaN loss, inconsistent resume); the message says why."""


def versions() -> dict[str, str]:
    """Versions of the packages that determine a model's numbers."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    import fedhex_hep

    return {
        "fedhex-hep": fedhex_hep.__version__,
        "tensorflow": tf.__version__,
        "tensorflow-probability": tfp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _batch_loss(flow: Any, z: Any, c: Any, w: Any, member_w: Any = None, spline_c: Any = None) -> Any:
    """Weighted mean negative log-likelihood of one batch (module level so tests can patch it).

    For an ensemble, the mean of its members' NLLs (each member fitted on its own); with
    ``member_w`` (n, K), member k's events are weighted by ``w * member_w[:, k]`` (its bootstrap
    replica). ``spline_c``: the labels the spline blocks see (see ConditionalFlow.log_prob).
    """
    import tensorflow as tf

    if member_w is None:
        nll = -flow.training_log_prob(z, c, spline_c)
        return tf.reduce_sum(w * nll) / tf.reduce_sum(w)
    nll = -flow.member_log_probs(z, c, spline_c)  # (K, n)
    weights = w[None, :] * tf.transpose(member_w)
    per_member = tf.reduce_sum(weights * nll, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-12)
    return tf.reduce_mean(per_member)


def bootstrap_weights(n_events: int, n_members: int, seed: int) -> np.ndarray:
    """Poisson(1) weights (n_events, n_members), float32: member k's bootstrap replica of the
    training events. The same (seed, sizes) always give the same replicas (resume).

    >>> bootstrap_weights(4, 2, seed=1).shape
    (4, 2)
    """
    rng = np.random.default_rng([int(seed), 0xB007])
    return rng.poisson(1.0, size=(int(n_events), int(n_members))).astype(np.float32)


# ------------------------------------------------------------------------------------------
# small file helpers
# ------------------------------------------------------------------------------------------
def _history_csv(history: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        # repr() keeps every bit of a float64, so identical runs give identical files
        writer.writerow([row["epoch"]] + [repr(float(row[k])) for k in HISTORY_COLUMNS[1:]])
    return buf.getvalue()


def _replace_dir(tmp: Path, dst: Path) -> None:
    """Move the finished folder ``tmp`` onto ``dst`` (rename is atomic; a folder needs two)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dst)


def _recover_dir(dst: Path) -> None:
    """After a kill between the two renames of _replace_dir, put the previous folder back."""
    if dst.exists():
        return
    olds = sorted(dst.parent.glob(f".{dst.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], dst)


def _write_checkpoint(ckpt: Any, dst: Path, state: dict[str, Any]) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        ckpt.write(str(tmp / CKPT_NAME))
        atomic_write_text(tmp / "state.json", json.dumps(state))
        _replace_dir(tmp, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(exc.errno, f"cannot write checkpoint {dst}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------------------
# the compiled parts
# ------------------------------------------------------------------------------------------
class _Compiled:
    """The compiled epoch and evaluation functions for one flow + optimizer + dataset."""

    def __init__(
        self,
        flow: Any,
        optimizer: Any,
        data: PreparedData,
        batch_size: int,
        jit: bool,
        clip_norm: float = 0.0,
        label_jitter: np.ndarray | None = None,
        member_weights: np.ndarray | None = None,
        conditioning_l2: float = 0.0,
        spline_jitter: np.ndarray | None = None,
    ) -> None:
        import tensorflow as tf

        self.flow = flow
        # (n_train, K) bootstrap weights of the ensemble's members; None: every member sees w
        self.member_w = None if member_weights is None else tf.constant(member_weights)
        self.clip_norm = float(clip_norm)
        self.conditioning_l2 = float(conditioning_l2)
        self.conditioning_kernels = flow.conditioning_kernels() if self.conditioning_l2 > 0 else []
        # per conditioning column, in standardised units; None: the labels are used as they are
        self.label_jitter = _jitter_tensor(label_jitter)
        # the spline blocks' extra smearing, on top of label_jitter (None: they see the same labels)
        self.spline_jitter = _jitter_tensor(spline_jitter)
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.steps = max(1, data.n_train // batch_size)
        self.z = tf.constant(data.z_train)
        self.c = tf.constant(data.c_train)
        self.w = tf.constant(data.w_train)
        self.zv = [tf.constant(data.z_val[i : i + _EVAL_CHUNK]) for i in range(0, data.n_val, _EVAL_CHUNK)]
        self.cv = [tf.constant(data.c_val[i : i + _EVAL_CHUNK]) for i in range(0, data.n_val, _EVAL_CHUNK)]
        self.wv = [tf.constant(data.w_val[i : i + _EVAL_CHUNK]) for i in range(0, data.n_val, _EVAL_CHUNK)]
        self.train_epoch = tf.function(self._train_epoch, jit_compile=jit)
        self.eval_chunk = tf.function(self._eval_chunk, jit_compile=jit or EVAL_JIT_COMPILE, reduce_retracing=True)

    def _train_epoch(self, perm: Any, noise_seed: Any) -> Any:
        import tensorflow as tf

        variables = self.flow.trainable_variables
        bs = self.batch_size

        def body(i: Any, total: Any) -> tuple[Any, Any]:
            idx = perm[i * bs : (i + 1) * bs]
            z, c, w = tf.gather(self.z, idx), tf.gather(self.c, idx), tf.gather(self.w, idx)
            seed = tf.stack([noise_seed, i])
            if self.label_jitter is not None:
                c = c + tf.random.stateless_normal(tf.shape(c), seed=seed, dtype=c.dtype) * self.label_jitter
            spline_c = None
            if self.spline_jitter is not None:
                extra = tf.random.stateless_normal(tf.shape(c), seed=tf.random.experimental.stateless_fold_in(seed, 1))
                spline_c = c + extra * self.spline_jitter
            member_w = None if self.member_w is None else tf.gather(self.member_w, idx)
            with tf.GradientTape() as tape:
                loss = _batch_loss(self.flow, z, c, w, member_w, spline_c)
                # the loss is the members' mean NLL; times K, each member gets the gradient
                # of its own NLL, exactly as when trained alone
                scaled = loss * float(len(self.flow.variable_groups)) + self._conditioning_penalty()
            grads = tape.gradient(scaled, variables)
            if self.clip_norm > 0:
                # A few far-tail events (mis-pairing) can give huge gradients early on. Each
                # ensemble member is clipped on its own, as if it were trained alone.
                clipped, start = [], 0
                for size in self.flow.variable_groups:
                    part, _ = tf.clip_by_global_norm(grads[start : start + size], self.clip_norm)
                    clipped.extend(part)
                    start += size
                grads = clipped
            self.optimizer.apply_gradients(zip(grads, variables))
            return i + 1, total + loss

        _, total = tf.while_loop(
            lambda i, _: i < self.steps,
            body,
            (tf.constant(0), tf.constant(0.0)),
            maximum_iterations=self.steps,
            parallel_iterations=1,  # each step must see the previous step's weight update
        )
        return total / self.steps

    def _conditioning_penalty(self) -> Any:
        """``training.conditioning_l2`` x the summed squares of the weights that carry the labels
        into the blocks (each ensemble member's own): shapes change with the masses only as much
        as the data demand. Not part of the reported losses."""
        import tensorflow as tf

        if not self.conditioning_kernels:
            return tf.constant(0.0)
        squares = tf.add_n([tf.reduce_sum(tf.square(k)) for k in self.conditioning_kernels])
        return self.conditioning_l2 * squares

    def _eval_chunk(self, z: Any, c: Any, w: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        # capped per event: one far outlier in the validation split (a mis-paired candidate)
        # can otherwise dominate the mean, stop training at epoch 2 and pick that as "best"
        nll = tf.minimum(-self.flow.training_log_prob(z, c), VAL_NLL_CAP)
        return tf.reduce_sum(w * nll), tf.reduce_sum(w)

    def validation_loss(self) -> float:
        if not self.zv:
            return float("nan")
        total, weight = 0.0, 0.0
        for z, c, w in zip(self.zv, self.cv, self.wv):
            s, n = self.eval_chunk(z, c, w)
            total += float(s)
            weight += float(n)
        return total / weight

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed), int(epoch), 0xE90C])
        n = len(self.z)
        return rng.permutation(n)[: self.steps * self.batch_size].astype(np.int32)

    @staticmethod
    def noise_seed(seed: int, epoch: int) -> np.int32:
        """Seed of an epoch's label jitter: the same (seed, epoch) gives the same smearing (resume)."""
        return np.int32(np.random.default_rng([int(seed), int(epoch), 0x3177]).integers(2**31 - 1))


def _member_weights(config: Config, n_train: int) -> np.ndarray | None:
    """The ensemble members' bootstrap weights, or None (a single flow, or ``model.bootstrap`` off)."""
    k = int(config.model.ensemble)
    if k < 2 or not config.model.bootstrap:
        return None
    return bootstrap_weights(n_train, k, config.training.seed)


def _jitter_tensor(sd: np.ndarray | None) -> Any:
    """The per-column smearing sd as a float32 constant, or None where no column is smeared."""
    import tensorflow as tf

    return tf.constant(sd, dtype=tf.float32) if sd is not None and np.any(sd > 0) else None


def _spline_jitter_scale(data: PreparedData, tc: Any) -> np.ndarray:
    """The spline blocks' extra smearing sd per conditioning column, in standardised units.

    ``training.spline_label_jitter[name]`` is in the label's transformed units (for a "log"
    label: relative); labels without an entry get none.
    """
    return np.array(
        [float(tc.spline_label_jitter.get(p.name, 0.0)) / p.std for p in data.preprocessor.label_params],
        dtype=np.float32,
    )


def _label_jitter_scale(data: PreparedData, tc: Any) -> np.ndarray:
    """Gaussian sd of the label smearing per conditioning column, in standardised units.

    ``training.label_jitter[name]`` is in the label's transformed units; a label without an
    entry gets ``training.label_jitter_spacing`` times the median gap between neighbouring
    grid values of that label (in the flow's conditioning units), so the smearing follows the
    grid's own spacing whatever the grid.
    """
    out = []
    for i, p in enumerate(data.preprocessor.label_params):
        if p.name in tc.label_jitter:
            out.append(float(tc.label_jitter[p.name]) / p.std)
            continue
        values = np.unique(data.c_train[:, i].astype(np.float64))
        gap = float(np.median(np.diff(values))) if len(values) > 1 else 0.0
        out.append(float(tc.label_jitter_spacing) * gap)
    return np.array(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# the public entry point
# ------------------------------------------------------------------------------------------
def _progress(enabled: bool, total: int, start: int) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]training[/] epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    progress.start()
    progress.add_task("train", total=total, completed=start, info="")
    return progress


def outside_spline_range(data: PreparedData, config: Config) -> dict[str, float]:
    """Per feature, the share of training events outside +-``model.spline_range`` (standardised
    units) where the block nearest the data is a spline; empty when it is affine."""
    model = config.model
    if not model.is_spline_block(model.n_blocks - 1):
        return {}
    outside = np.mean(np.abs(data.z_train) > model.spline_range, axis=0)
    return dict(zip(data.preprocessor.feature_names, (float(v) for v in outside)))


def _warn_outside_spline_range(data: PreparedData, config: Config) -> None:
    for name, share in outside_spline_range(data, config).items():
        if share > SPLINE_OUTSIDE_WARN:
            column = np.abs(data.z_train[:, data.preprocessor.feature_names.index(name)])
            log.warning(
                "feature %r: %.2f%% of the training events lie outside model.spline_range = %g "
                "(standardised units), where the spline is the identity and cannot shape them; "
                "raise model.spline_range (99.99%% of them lie within %.0f)",
                name, 100.0 * share, config.model.spline_range, np.ceil(np.quantile(column, 0.9999)),
            )


def _configure_threads(tf: Any) -> None:
    """One intra-op thread for training (see TRAIN_INTRA_OP_THREADS), where still possible."""
    if os.environ.get("TF_NUM_INTRAOP_THREADS") or tf.config.threading.get_intra_op_parallelism_threads():
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(TRAIN_INTRA_OP_THREADS)
    except RuntimeError:
        # TensorFlow already started in this process: keep its threads (results do not depend on it).
        log.debug("TensorFlow already initialised; keeping its intra-op thread setting")


def _check_resume_config(model_dir: Path, config: Config) -> None:
    saved = load_config(model_dir / "config.toml").to_dict()
    new = config.to_dict()
    for section in saved:
        for key in sorted(set(saved[section]) | set(new[section])):
            if section == "training" and key == "epochs" or section in ("generation", "output"):
                continue  # more epochs may be asked for on resume; generation/output do not matter
            if saved[section].get(key) != new[section].get(key):
                raise TrainingError(
                    f"cannot resume {model_dir}: config key '{section}.{key}' differs from the interrupted run "
                    f"({saved[section].get(key)!r} there, {new[section].get(key)!r} now)"
                )


def _prepare_model_dir(model_dir: Path, config: Config, data: PreparedData, resume: bool, overwrite: bool) -> None:
    """Check a resume against the interrupted run, or clear / refuse an existing model; then
    write config.toml, preprocessing.json and versions.json."""
    ckpt_dir = model_dir / "checkpoints"
    if resume:
        if not (model_dir / "config.toml").exists():
            raise ModelDirError(f"cannot resume: model directory {model_dir} is missing config.toml")
        _recover_dir(ckpt_dir / "last")
        _recover_dir(ckpt_dir / "best")
        # half-written folders of the interrupted process (never renamed into place)
        for stale in [*ckpt_dir.glob(".*.tmp-*"), *ckpt_dir.glob(".*.old-*"), *model_dir.glob(".weights.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if not resume_candidates(ckpt_dir):
            raise ModelDirError(f"cannot resume: model directory {model_dir} is missing checkpoints/last")
        _check_resume_config(model_dir, config)
        saved_pre = read_json(model_dir / "preprocessing.json")
        if saved_pre != json.loads(data.preprocessor.to_json()):
            raise TrainingError(
                f"cannot resume {model_dir}: the training data differ from the interrupted run "
                "(preprocessing.json would change)"
            )
    else:
        _clear_or_refuse(model_dir, overwrite)
    config.write(model_dir / "config.toml")
    atomic_write_text(model_dir / "preprocessing.json", data.preprocessor.to_json())
    atomic_write_text(model_dir / "versions.json", json.dumps(versions(), indent=2))


def _clear_or_refuse(model_dir: Path, overwrite: bool) -> None:
    """A fresh training: remove an existing model's files (``overwrite``) or refuse to touch it."""
    if overwrite:
        for name in _MODEL_FILES:
            target = model_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if holds_model(model_dir):
        raise OutputError(
            17, f"{model_dir} already holds a model; use --resume to continue it, --overwrite to replace it, or another folder"
        )
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create model directory {model_dir}: {exc.strerror}") from None


def effective_batch_size(tc: Any, n_train: int) -> int:
    """``training.batch_size``, lowered for small data sets so an epoch has at least
    ``training.min_steps_per_epoch`` optimizer steps (never below 256 events, nor above n_train):
    a small grid then gets as many updates as a large one in the same number of epochs."""
    batch = int(tc.batch_size)
    if tc.min_steps_per_epoch > 0:
        batch = min(batch, max(_MIN_AUTO_BATCH, n_train // int(tc.min_steps_per_epoch)))
    return max(1, min(batch, n_train))


def learning_rate_schedule(tc: Any, steps: int) -> Any:
    """Learning rate per optimizer step: linear decay from ``learning_rate`` to
    ``final_learning_rate`` over ``decay_epochs`` epochs of ``steps`` steps, then constant."""
    import tf_keras

    return tf_keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=tc.learning_rate,
        decay_steps=tc.decay_epochs * steps,
        end_learning_rate=tc.final_learning_rate,
        power=1.0,
    )


def _make_optimizer(flow: Any, tc: Any, steps: int) -> tuple[Any, Any]:
    """(schedule, optimizer) with the optimizer's slots created (so a resume can restore them)."""
    import tf_keras

    schedule = learning_rate_schedule(tc, steps)
    # The legacy Adam applies each variable's update with one fused ResourceApplyAdam kernel:
    # the same arithmetic in half the graph ops, so faster epochs with one intra-op thread.
    optimizer = tf_keras.optimizers.legacy.Adam(learning_rate=schedule)
    optimizer._create_all_weights(list(flow.trainable_variables))
    return schedule, optimizer


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "history": [], "best_loss": float("inf"), "best_epoch": 0, "wait": 0, "stopped_early": False}


class _Loop:
    """The epoch loop's moving parts: compiled functions, checkpoint, state, best weights."""

    def __init__(self, compiled: _Compiled, ckpt: Any, schedule: Any, optimizer: Any, model_dir: Path, tc: Any) -> None:
        self.compiled, self.ckpt, self.schedule, self.optimizer = compiled, ckpt, schedule, optimizer
        self.model_dir, self.ckpt_dir, self.tc = model_dir, model_dir / "checkpoints", tc
        self.use_val = compiled.zv != []
        self.early = tc.patience > 0
        self.epoch_seconds: list[float] = []  # wall time per epoch of this process (not in history.csv)
        self.best_weights: list[np.ndarray] | None = None
        self.state: dict[str, Any] = _fresh_state()

    def run_epoch(self, epoch: int) -> str:
        """Train one epoch, record it, write its checkpoints; returns the progress text."""
        import tensorflow as tf

        compiled, tc, state = self.compiled, self.tc, self.state
        perm = compiled.permutation(tc.seed, epoch)
        t0 = time.perf_counter()
        loss = float(compiled.train_epoch(tf.constant(perm), tf.constant(compiled.noise_seed(tc.seed, epoch))))
        val_loss = compiled.validation_loss()
        seconds = time.perf_counter() - t0
        self.epoch_seconds.append(seconds)
        if not np.isfinite(loss) or (self.use_val and not np.isfinite(val_loss)):
            self._fail(epoch, loss, val_loss)
        state["history"].append({"epoch": epoch, "loss": loss, "val_loss": val_loss, "lr": float(self.schedule(self.optimizer.iterations))})
        monitored = val_loss if self.use_val else loss
        improved = monitored < state["best_loss"]
        if improved:
            state["best_loss"], state["best_epoch"], state["wait"] = monitored, epoch, 0
        else:
            state["wait"] += 1
        if self.early and state["wait"] >= tc.patience:
            state["stopped_early"] = True
        state["epoch"] = epoch
        atomic_write_text(self.model_dir / "history.csv", _history_csv(state["history"]))
        if improved:
            self.best_weights = compiled.flow.get_weights()
            _write_checkpoint(self.ckpt, self.ckpt_dir / "best", state)
        if epoch % tc.checkpoint_every == 0:
            _write_checkpoint(self.ckpt, self.ckpt_dir / f"epoch-{epoch:04d}", state)
        # `last` is written after the others: it is the point a resume continues from.
        _write_checkpoint(self.ckpt, self.ckpt_dir / "last", state)
        val_info = f"  val {val_loss:.4f}" if self.use_val else ""
        return f"loss {loss:.4f}{val_info}  {compiled.steps * compiled.batch_size / seconds:,.0f} ev/s"

    def _fail(self, epoch: int, loss: float, val_loss: float) -> None:
        last = self.ckpt_dir / "last"
        where = (
            f"the last good checkpoint is {last} (epoch {self.state['epoch']})"
            if self.state["epoch"] > 0
            else "no checkpoint was written before it"
        )
        msg = f"training loss became NaN/inf at epoch {epoch} (loss {loss}, val_loss {val_loss}); stopped; {where}"
        log.error(msg)
        raise TrainingError(msg)

    def run(self, progress: bool) -> None:
        """Epochs from the state's epoch up to ``training.epochs`` (or early stopping)."""
        tc, state = self.tc, self.state
        bar = _progress(progress, tc.epochs, state["epoch"])
        try:
            epoch = state["epoch"]
            while epoch < tc.epochs and not state["stopped_early"]:
                epoch += 1
                info = self.run_epoch(epoch)
                log.info("epoch %d/%d: %s", epoch, tc.epochs, info)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=epoch, info=info)
                if state["stopped_early"]:
                    log.info(
                        "early stopping at epoch %d: no improvement for %d epochs; best epoch %d",
                        epoch, tc.patience, state["best_epoch"],
                    )
        finally:
            if bar is not None:
                bar.stop()


def train(
    featureset: FeatureSet,
    config: Config,
    model_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainedModel:
    """Train a conditional flow on ``featureset`` and write the model directory ``model_dir``.

    ``resume=True`` continues from ``model_dir/checkpoints/last`` (same config except
    ``training.epochs``); the result equals that of an uninterrupted run with the same seed.
    Raises TrainingError if the loss becomes NaN (the last good checkpoint is kept).
    An existing model in ``model_dir`` is refused unless ``overwrite`` (then its files are
    removed first; other files in the folder are left alone).
    """
    from fedhex_hep._tf import import_tensorflow
    from fedhex_hep.limits import check_training
    from fedhex_hep.model.flow import build_flow

    check_training(config, len(featureset.feature_names), len(featureset.label_names))
    tf = import_tensorflow()
    _configure_threads(tf)
    # Bit-identical resume needs deterministic kernels (CPU reductions, XLA).
    tf.config.experimental.enable_op_determinism()
    model_dir = Path(model_dir)
    tc = config.training
    data = prepare(featureset, config)
    if data.n_train < 1:
        raise TrainingError("no training events left after the validation split")
    _warn_outside_spline_range(data, config)
    _prepare_model_dir(model_dir, config, data, resume, overwrite)

    flow = build_flow(config.model, data.z_train.shape[1], data.c_train.shape[1], seed=tc.seed)
    batch_size = effective_batch_size(tc, data.n_train)
    schedule, optimizer = _make_optimizer(flow, tc, max(1, data.n_train // batch_size))
    ckpt = tf.train.Checkpoint(flow=flow.module, optimizer=optimizer)
    compiled = _Compiled(
        flow, optimizer, data, batch_size, JIT_COMPILE and config.model.kind == "maf", tc.clip_norm,
        _label_jitter_scale(data, tc), _member_weights(config, data.n_train), tc.conditioning_l2,
        _spline_jitter_scale(data, tc),
    )
    loop = _Loop(compiled, ckpt, schedule, optimizer, model_dir, tc)
    if resume:
        loop.state, loop.best_weights = restore_for_resume(ckpt, flow, model_dir / "checkpoints", model_dir)
    atomic_write_text(model_dir / "history.csv", _history_csv(loop.state["history"]))
    loop.run(progress)
    return _finish(loop, data, featureset, config, model_dir)


def _finish(loop: _Loop, data: PreparedData, featureset: FeatureSet, config: Config, model_dir: Path) -> TrainedModel:
    """Write the final weights (the best ones after early stopping) and training.json."""
    import tensorflow as tf

    flow, state = loop.compiled.flow, loop.state
    if loop.early and loop.best_weights is not None:
        flow.set_weights(loop.best_weights)  # restore the best weights (early stopping's promise)
    weights_tmp = model_dir / f".weights.tmp-{os.getpid()}"
    shutil.rmtree(weights_tmp, ignore_errors=True)
    tf.train.Checkpoint(flow=flow.module).write(str(weights_tmp / Path(WEIGHTS_PREFIX).name))
    _replace_dir(weights_tmp, model_dir / Path(WEIGHTS_PREFIX).parent)
    info = {
        **data.report,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_loss": state["best_loss"],
        "stopped_early": state["stopped_early"],
        "final_weights": "best" if loop.early and loop.best_weights is not None else "last",
        "steps_per_epoch": loop.compiled.steps,
        "epoch_seconds": loop.epoch_seconds,
        "batch_size": loop.compiled.batch_size,
        "feature_names": data.preprocessor.feature_names,
        "label_names": data.preprocessor.label_names,
    }
    if "cutflow" in featureset.metadata:
        # The selection efficiency travels with the model, for yield-normalised exports and scans.
        info["cutflow"] = featureset.metadata["cutflow"]
    atomic_write_text(model_dir / "training.json", json.dumps(info, indent=2))
    write_checksums(model_dir, config)
    _maybe_plot_loss(model_dir)
    return TrainedModel(
        config=config,
        preprocessor=data.preprocessor,
        flow=flow,
        path=model_dir,
        training_label_points=np.asarray(info["label_points"], dtype=np.float64),
        label_ranges=info["label_ranges"],
        info=info,
    )


def _maybe_plot_loss(model_dir: Path) -> None:
    """The loss-curve plot belongs to compare (OUTPUT); call it when that module offers it."""
    try:
        from fedhex_hep.validation import compare
    except ImportError:
        return
    plot = getattr(compare, "plot_loss", None)
    if plot is None:
        return
    try:
        plot(model_dir / "history.csv", model_dir / "loss.png", overwrite=True)
    except Exception as exc:  # a plot must never lose a trained model
        log.warning("could not plot the loss curve: %s", exc)

