"""Training data: clean a FeatureSet, split it by events, fit the preprocessing on training events.

Pure numpy (no TensorFlow), so it is cheap to import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhex_hep.config import Config
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.model.preprocessing import Preprocessor
from fedhex_hep.errors import FedhexError

__all__ = ["DataError", "PreparedData", "prepare", "split_indices", "label_summary"]

log = logging.getLogger(__name__)


class DataError(FedhexError, ValueError):
    """Unusable training data; the message names the column or the problem."""


@dataclass
class PreparedData:
    """Preprocessed training and validation arrays (float32) plus what was done to get them."""

    preprocessor: Preprocessor
    z_train: np.ndarray
    c_train: np.ndarray
    w_train: np.ndarray
    z_val: np.ndarray
    c_val: np.ndarray
    w_val: np.ndarray
    featureset: FeatureSet
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.z_train)

    @property
    def n_val(self) -> int:
        return len(self.z_val)


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) event indices, sorted; the same (n, fraction, seed) gives the same split."""
    rng = np.random.default_rng([int(seed), 0x5A1])
    perm = rng.permutation(n)
    n_val = int(round(validation_fraction * n))
    if validation_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def label_summary(labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Training label points and, per label, range and typical grid spacing (for warnings)."""
    points = np.unique(labels, axis=0)
    ranges = {}
    for i, name in enumerate(label_names):
        values = np.unique(points[:, i])
        spacing = float(np.median(np.diff(values))) if len(values) > 1 else 0.0
        ranges[name] = {"min": float(values.min()), "max": float(values.max()), "spacing": spacing}
    return {"label_points": points.tolist(), "label_ranges": ranges}


def prepare(featureset: FeatureSet, config: Config) -> PreparedData:
    """Apply the nonfinite policy and ``min_events_per_label``, split by events, fit preprocessing.

    The preprocessing is fitted on the training events only; validation events are transformed
    with the training parameters.
    """
    if featureset.feature_names != config.feature_names or featureset.label_names != config.label_names:
        raise DataError(
            f"FeatureSet columns (features {featureset.feature_names}, labels {featureset.label_names}) do not "
            f"match the config's input.features {config.feature_names} / input.labels {config.label_names}"
        )
    report: dict[str, Any] = {"events_in": len(featureset)}

    counts = featureset.nonfinite_counts()
    if counts:
        summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
        if config.input.nonfinite == "error":
            raise DataError(f"NaN/inf values in the training data ({summary}); config input.nonfinite = 'error'")
        featureset, n_dropped = featureset.drop_nonfinite()
        log.warning("dropped %d events with NaN/inf values (%s)", n_dropped, summary)
        report["nonfinite_dropped"] = n_dropped
        report["nonfinite_counts"] = counts
    else:
        report["nonfinite_dropped"] = 0

    if config.input.min_events_per_label > 0:
        featureset, dropped = featureset.drop_sparse_labels(config.input.min_events_per_label)
        if dropped:
            for entry in dropped:
                log.warning(
                    "dropped label point %s: %d events < input.min_events_per_label = %d",
                    entry["label"], entry["events"], config.input.min_events_per_label,
                )
        report["dropped_labels"] = dropped
    if len(featureset) < 2:
        raise DataError(f"only {len(featureset)} usable training events left after cleaning")

    train_idx, val_idx = split_indices(len(featureset), config.training.validation_fraction, config.training.seed)
    features, labels, weights = featureset.features, featureset.labels, featureset.weights
    pre = Preprocessor.fit(
        features[train_idx], labels[train_idx], featureset.feature_names, featureset.label_names, config.preprocessing
    )
    z, c = pre.transform(features, labels)
    report.update({"events_used": len(featureset), "n_train": len(train_idx), "n_validation": len(val_idx)})
    report.update(label_summary(labels[train_idx], featureset.label_names))
    f32 = np.float32
    return PreparedData(
        preprocessor=pre,
        z_train=z[train_idx].astype(f32),
        c_train=c[train_idx].astype(f32),
        w_train=weights[train_idx].astype(f32),
        z_val=z[val_idx].astype(f32),
        c_val=c[val_idx].astype(f32),
        w_val=weights[val_idx].astype(f32),
        featureset=featureset,
        report=report,
    )
