"""The model directory: what a trained model is made of, and loading it back.

Layout written by :func:`fedhex_hep.model.training.train`::

    model_dir/
      config.toml           resolved configuration (rebuilds the flow: any depth / width / kind)
      preprocessing.json    fitted per-column preprocessing
      training.json         training label points, per-label ranges and grid spacing, data report,
                            best epoch, whether early stopping fired
      versions.json         fedhex-hep, tensorflow, tensorflow-probability, numpy, python versions
      history.csv           epoch, loss, val_loss, lr (one row per epoch)
      loss.png              loss curve (when fedhex_hep.validation.compare.plot_loss is available)
      weights/              final weights (tf.train.Checkpoint of the flow's variables)
      checksums.json        SHA-256 of preprocessing.json, training.json, the weights files and of
                            the configuration that defines the flow (model, preprocessing, columns):
                            a flipped byte or a cut file is an error on loading, never other numbers
      checkpoints/epoch-NNNN/, checkpoints/last/, checkpoints/best/
                            tf.train.Checkpoint (flow + optimizer) + state.json

TensorFlow is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.config import Config, ConfigError, load_config
from fedhex_hep.model.preprocessing import Preprocessor
from fedhex_hep.errors import FedhexError, one_line

__all__ = [
    "ModelDirError", "TrainedModel", "load_model", "read_model_files", "read_json", "write_checksums",
    "REQUIRED_FILES", "checkpoint_prefix", "training_grid",
]

# Files every finished model directory holds (weights are checked separately).
REQUIRED_FILES = ("config.toml", "preprocessing.json", "training.json")
WEIGHTS_PREFIX = "weights/weights"
CKPT_NAME = "ckpt"
CHECKSUMS = "checksums.json"
# Files whose bytes the checksums cover; config.toml is covered by its flow-defining content only,
# so that generation and output defaults in it may still be edited by hand.
_CHECKED_FILES = ("preprocessing.json", "training.json")


class ModelDirError(FedhexError, ValueError):
    """A model directory is missing a file or holds an unreadable one; the message names it."""


@dataclass
class TrainedModel:
    """A trained conditional flow with the preprocessing and metadata it needs to generate."""

    config: Config
    preprocessor: Preprocessor
    flow: Any  # fedhex_hep.model.flow.ConditionalFlow or EnsembleFlow
    path: Path | None = None
    training_label_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    label_ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    @property
    def label_names(self) -> list[str]:
        return self.preprocessor.label_names

    def log_prob(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """log density of raw features (n, F) at raw labels (n, L), in the raw feature units."""
        z, c = self.preprocessor.transform(features, labels)
        log_pz = self.flow.log_prob(z.astype(np.float32), c.astype(np.float32)).numpy().astype(np.float64)
        return log_pz + self.preprocessor.log_det_jacobian(features, labels)


def checkpoint_prefix(model_dir: str | Path, checkpoint: str) -> Path:
    """Path prefix of a checkpoint ("best", "last", "epoch-0010" or an int epoch)."""
    if isinstance(checkpoint, int) or str(checkpoint).isdigit():
        checkpoint = f"epoch-{int(checkpoint):04d}"
    return Path(model_dir) / "checkpoints" / str(checkpoint) / CKPT_NAME


def read_json(path: Path) -> Any:
    """A JSON file of a model directory; ModelDirError naming it when missing or unreadable."""
    if not path.exists():
        raise ModelDirError(f"model directory {path.parent} is missing {path.name}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelDirError(f"{path} is not readable JSON: {one_line(exc, 200)}") from None


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flow_digest(config: Config) -> str:
    """SHA-256 of the configuration that defines the flow and its inputs (not generation/output)."""
    import hashlib

    data = config.to_dict()
    defining = {"model": data["model"], "preprocessing": data["preprocessing"],
                "columns": [list(data["input"]["features"]), list(data["input"]["labels"])]}
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()


def _checked_paths(path: Path) -> list[Path]:
    return [path / name for name in _CHECKED_FILES] + sorted((path / "weights").glob("*"))


def write_checksums(path: str | Path, config: Config) -> Path:
    """Write ``checksums.json`` for a finished model directory (see the module docstring)."""
    from fedhex_hep.io.atomic import atomic_write_text

    path = Path(path)
    sums = {str(p.relative_to(path)): _sha256(p) for p in _checked_paths(path) if p.is_file()}
    return atomic_write_text(path / CHECKSUMS, json.dumps({"files": sums, "config": _flow_digest(config)}, indent=2))


def _verify_checksums(path: Path, config: Config, names: tuple[str, ...] | None = None, flow: bool = True) -> None:
    """Compare files (all, or ``names``) and, with ``flow``, the flow's configuration with checksums.json."""
    if not (path / CHECKSUMS).exists():
        return
    recorded = read_json(path / CHECKSUMS)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("files"), dict):
        raise ModelDirError(f"{path / CHECKSUMS}: not a checksum list")
    if flow and recorded.get("config") != _flow_digest(config):
        raise ModelDirError(f"{path / 'config.toml'}: the model's configuration differs from the one it was trained with (damaged or edited)")
    for name, digest in recorded["files"].items():
        if names is not None and name not in names:
            continue
        file = path / str(name)
        if not file.is_file():
            raise ModelDirError(f"model directory {path} is missing {name}")
        if _sha256(file) != digest:
            raise ModelDirError(f"{file}: damaged (its SHA-256 differs from {CHECKSUMS})")


def read_model_files(path: Path) -> tuple[Config, Preprocessor, dict[str, Any]]:
    """config, preprocessing and training info of a model directory (no TensorFlow)."""
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist" if not path.exists() else f"model directory {path} is not a folder")
    for name in REQUIRED_FILES:
        if not (path / name).exists():
            raise ModelDirError(f"model directory {path} is missing {name}")
    try:
        config = load_config(path / "config.toml")
    except ConfigError as exc:
        raise ModelDirError(f"{path / 'config.toml'}: {exc}") from None
    _verify_checksums(path, config, _CHECKED_FILES, flow=False)
    try:
        pre = Preprocessor.from_dict(read_json(path / "preprocessing.json"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, FedhexError):
            raise ModelDirError(f"{path / 'preprocessing.json'}: {one_line(exc, 200)}") from None
        raise ModelDirError(f"{path / 'preprocessing.json'}: not a fitted preprocessing ({type(exc).__name__}: {one_line(exc, 100)})") from None
    info = read_json(path / "training.json")
    if not isinstance(info, dict):
        raise ModelDirError(f"{path / 'training.json'}: expected an object, got {type(info).__name__}")
    return config, pre, info


def training_grid(path: Path, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The training grid's mass points (n, n_labels) and per-label ranges from a model directory's
    ``training.json`` (read as ``info`` by :func:`read_model_files`)."""
    try:
        points = np.asarray(info.get("label_points", []), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"{path / 'training.json'}: bad 'label_points' ({one_line(exc, 100)})") from None
    ranges = info.get("label_ranges", {})
    if not isinstance(ranges, dict):
        raise ModelDirError(f"{path / 'training.json'}: 'label_ranges' must be an object")
    return points, ranges


def restore_flow_weights(flow: Any, prefix: Path) -> None:
    """Restore the flow's variables from a tf.train.Checkpoint prefix; every variable must match."""
    import tensorflow as tf

    index = prefix.with_name(prefix.name + ".index")
    if not index.exists():
        raise ModelDirError(f"model directory {prefix.parent.parent} is missing {index.relative_to(prefix.parent.parent)}")
    try:
        status = tf.train.Checkpoint(flow=flow.module).read(str(prefix))
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as exc:
        raise ModelDirError(f"{prefix}: weights do not match the flow described by config.toml ({one_line(exc, 200)})") from None
    except (tf.errors.OpError, ValueError, IndexError, OSError, UnicodeDecodeError) as exc:
        # a truncated or corrupted checkpoint: TensorFlow names neither the file nor the cause clearly
        raise ModelDirError(f"{prefix}: damaged or truncated weights ({type(exc).__name__}: {one_line(exc, 150)})") from None


def load_model(path: str | Path, checkpoint: str | int | None = None) -> TrainedModel:
    """Rebuild a trained model from its directory (flow from config.toml, then weights).

    ``checkpoint``: None for the final weights, or "best", "last", "epoch-0010" / 10.
    """
    from fedhex_hep.model.flow import build_flow

    path = Path(path)
    config, pre, info = read_model_files(path)
    # a checkpoint is checked by TensorFlow's own checksums; the final weights by checksums.json
    _verify_checksums(path, config, None if checkpoint is None else _CHECKED_FILES)
    flow = build_flow(config.model, len(pre.feature_names), len(pre.label_names), seed=config.training.seed)
    if checkpoint is None:
        prefix = path / WEIGHTS_PREFIX
    else:
        prefix = checkpoint_prefix(path, checkpoint)
        if not prefix.parent.is_dir():
            raise ModelDirError(f"model directory {path} has no checkpoint {prefix.parent.name}")
    restore_flow_weights(flow, prefix)
    points, ranges = training_grid(path, info)
    return TrainedModel(config=config, preprocessor=pre, flow=flow, path=path, training_label_points=points, label_ranges=ranges, info=info)
