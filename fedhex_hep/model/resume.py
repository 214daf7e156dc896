"""Resuming a training: which checkpoint to continue from when some are damaged.

``checkpoints/last`` is the point a resume continues from. When it is unreadable (a disk fault,
a truncated copy), the newest intact ``checkpoints/epoch-NNNN`` takes its place: each holds the
whole training state at that epoch, so the continued run is the one an uninterrupted run from
that epoch would give. The fallback is logged with the checkpoint it uses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.errors import FedhexError, one_line
from fedhex_hep.model.storage import CKPT_NAME, ModelDirError

__all__ = ["resume_candidates", "restore_for_resume", "holds_model"]

log = logging.getLogger(__name__)


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoint folders to resume from, best first: ``last``, then ``epoch-NNNN`` newest first."""
    epochs = sorted(ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]"), reverse=True)
    folders = [ckpt_dir / "last", *epochs]
    return [f for f in folders if (f / "state.json").is_file()]


def holds_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds something a fresh training would destroy: final weights or a checkpoint.

    A folder left by a training that failed before its first checkpoint (config.toml and
    preprocessing.json only) holds nothing to keep, and a rerun may reuse it.
    """
    return (model_dir / "weights").exists() or bool(resume_candidates(model_dir / "checkpoints"))


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{folder / 'state.json'}: unreadable ({one_line(exc)})") from None
    if not isinstance(state, dict) or not {"epoch", "history", "best_loss", "best_epoch"} <= set(state):
        raise ModelDirError(f"{folder / 'state.json'}: not a training state")
    return state


def _restore(ckpt: Any, folder: Path) -> dict[str, Any]:
    """Restore flow + optimizer from ``folder``; its state. ModelDirError naming the folder if damaged."""
    import tensorflow as tf

    state = _read_state(folder)
    try:
        ckpt.read(str(folder / CKPT_NAME)).assert_consumed()
    except AssertionError as exc:
        raise ModelDirError(
            f"{folder}: does not match this version's model and optimizer (written by another fedhex-hep "
            f"version?): {one_line(exc, 200)}"
        ) from None
    except (tf.errors.OpError, ValueError, OSError) as exc:
        raise ModelDirError(f"{folder}: damaged checkpoint ({type(exc).__name__}: {one_line(exc, 200)})") from None
    return state


def _best_weights(flow: Any, ckpt_dir: Path, state: dict[str, Any]) -> list[np.ndarray] | None:
    """The flow weights of the resumed run's best epoch, or None (with a warning) if not available."""
    import tensorflow as tf

    current = flow.get_weights()
    folders = [ckpt_dir / "best", ckpt_dir / f"epoch-{int(state['best_epoch']):04d}"]
    for folder in folders:
        try:
            if int(_read_state(folder)["epoch"]) != int(state["best_epoch"]):
                continue  # a best of a later epoch than the resumed one
            tf.train.Checkpoint(flow=flow.module).read(str(folder / CKPT_NAME)).expect_partial()
        except (FedhexError, tf.errors.OpError, ValueError, OSError):
            continue
        best = flow.get_weights()
        flow.set_weights(current)
        return best
    if state["best_epoch"]:
        log.warning("no intact checkpoint of the best epoch %d; early stopping keeps the final weights", state["best_epoch"])
    return None


def restore_for_resume(ckpt: Any, flow: Any, ckpt_dir: Path, model_dir: Path) -> tuple[dict[str, Any], Any]:
    """(training state, best weights or None) from the newest intact checkpoint of ``ckpt_dir``.

    Raises ModelDirError naming ``checkpoints/last`` when no checkpoint is intact.
    """
    problems = []
    for folder in resume_candidates(ckpt_dir):
        try:
            state = _restore(ckpt, folder)
        except ModelDirError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.warning("%s; resuming from %s (epoch %d) instead", problems[0], folder.name, state["epoch"])
        return state, _best_weights(flow, ckpt_dir, state)
    first = f": {problems[0]}" if problems else ""
    raise ModelDirError(f"cannot resume {model_dir}: no intact checkpoint in {ckpt_dir}{first}")
