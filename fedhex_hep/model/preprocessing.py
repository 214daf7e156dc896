"""Invertible per-column preprocessing of features and labels, fitted on training data only.

Each column ``x`` becomes ``standardise(transform(x / relative_to))``:

* ``relative_to``: divide by a label, e.g. reconstructed / generated mass (the detector
  response), which makes the conditional density nearly label-independent;
* ``transform``: ``none``, ``log`` (x > 0) or ``logit`` within ``bounds`` = [a, b];
* ``residual`` (optional, ``preprocessing.residual``): subtract a location and divide by a scale
  that are smooth functions of the labels (:mod:`fedhex_hep.model.residual`), so the flow
  learns only the shape left once the drift of peak and width across the grid is removed;
* ``standardise``: subtract the training mean and divide by the training standard deviation.

Columns without an entry in the config are standardised only. All arithmetic is float64 and
exactly invertible up to rounding (round trip ~1e-12 relative). Pure numpy: no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhex_hep.config import ColumnTransform, PreprocessingConfig
from fedhex_hep.errors import FedhexError
from fedhex_hep.model.residual import ResidualParams, fit_residual

__all__ = ["PreprocessingError", "ColumnParams", "Preprocessor"]

FORMAT_VERSION = 1


class PreprocessingError(FedhexError, ValueError):
    """Bad data or a bad preprocessing file; the message names the column or key."""


@dataclass
class ColumnParams:
    """Fitted parameters of one column."""

    name: str
    relative_to: str = ""
    transform: str = "none"
    bounds: tuple[float, float] | None = None
    standardise: bool = True
    mean: float = 0.0
    std: float = 1.0
    residual: ResidualParams | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "residual": self.residual.to_dict() if self.residual is not None else None,
            "name": self.name,
            "relative_to": self.relative_to,
            "transform": self.transform,
            "bounds": list(self.bounds) if self.bounds is not None else None,
            "standardise": self.standardise,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ColumnParams":
        try:
            bounds = data["bounds"]
            return cls(
                name=str(data["name"]),
                relative_to=str(data["relative_to"]),
                transform=str(data["transform"]),
                bounds=(float(bounds[0]), float(bounds[1])) if bounds is not None else None,
                standardise=bool(data["standardise"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
                residual=ResidualParams.from_dict(data["residual"]) if data.get("residual") else None,
            )
        except KeyError as exc:
            raise PreprocessingError(f"preprocessing column entry lacks key {exc.args[0]!r}") from None

    # -- the three steps -------------------------------------------------------------------
    def _pre(self, x: np.ndarray, divisor: np.ndarray | None, what: str) -> np.ndarray:
        """relative_to + transform (before standardisation)."""
        x = np.asarray(x, dtype=np.float64)
        if divisor is not None:
            if np.any(divisor == 0):
                raise PreprocessingError(f"{what} {self.name!r}: label {self.relative_to!r} is zero for some events")
            x = x / divisor
        if self.transform == "log":
            if np.any(x <= 0):
                bad = x[x <= 0][0]
                raise PreprocessingError(
                    f"{what} {self.name!r}: log transform needs values > 0, got {bad!r}"
                    + (f" (after dividing by {self.relative_to!r})" if divisor is not None else "")
                )
            x = np.log(x)
        elif self.transform == "logit":
            lo, hi = self.bounds  # type: ignore[misc]
            if np.any((x <= lo) | (x >= hi)):
                bad = x[(x <= lo) | (x >= hi)][0]
                raise PreprocessingError(
                    f"{what} {self.name!r}: logit transform needs values inside ({lo}, {hi}), got {bad!r}"
                )
            u = (x - lo) / (hi - lo)
            x = np.log(u) - np.log1p(-u)
        elif self.transform != "none":
            raise PreprocessingError(f"{what} {self.name!r}: unknown transform {self.transform!r}")
        return x

    def _post_inverse(self, y: np.ndarray, divisor: np.ndarray | None) -> np.ndarray:
        if self.transform == "log":
            y = np.exp(y)
        elif self.transform == "logit":
            lo, hi = self.bounds  # type: ignore[misc]
            # expit written to stay accurate in both tails
            u = np.where(y >= 0, 1.0 / (1.0 + np.exp(-np.abs(y))), np.exp(-np.abs(y)) / (1.0 + np.exp(-np.abs(y))))
            y = lo + (hi - lo) * u
        if divisor is not None:
            y = y * divisor
        return y

    def forward(
        self, x: np.ndarray, divisor: np.ndarray | None, what: str, c: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw column -> flow space; ``c``: the standardised labels (needed with a residual step)."""
        y = self._pre(x, divisor, what)
        if self.residual is not None:
            y = self.residual.forward(y, c)
        if self.standardise:
            y = (y - self.mean) / self.std
        return y

    def inverse(self, z: np.ndarray, divisor: np.ndarray | None, c: np.ndarray | None = None) -> np.ndarray:
        y = np.asarray(z, dtype=np.float64)
        if self.standardise:
            y = y * self.std + self.mean
        if self.residual is not None:
            y = self.residual.inverse(y, c)
        return self._post_inverse(y, divisor)


def _column_params(name: str, spec: ColumnTransform | None) -> ColumnParams:
    if spec is None:
        return ColumnParams(name=name)
    bounds = (float(spec.bounds[0]), float(spec.bounds[1])) if spec.transform == "logit" else None
    return ColumnParams(
        name=name,
        relative_to=spec.relative_to,
        transform=spec.transform,
        bounds=bounds,
        standardise=spec.standardise,
    )


class Preprocessor:
    """Fitted, invertible preprocessing for features (n, F) and labels (n, L)."""

    def __init__(self, features: Sequence[ColumnParams], labels: Sequence[ColumnParams]) -> None:
        self.feature_params = list(features)
        self.label_params = list(labels)
        self.feature_names = [p.name for p in self.feature_params]
        self.label_names = [p.name for p in self.label_params]
        for p in [*self.feature_params, *self.label_params]:
            if p.relative_to and p.relative_to not in self.label_names:
                raise PreprocessingError(f"column {p.name!r}: relative_to {p.relative_to!r} is not a label")

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        feature_names: Sequence[str],
        label_names: Sequence[str],
        config: PreprocessingConfig | None = None,
    ) -> "Preprocessor":
        """Fit means and standard deviations (and the residual step) on (training) data."""
        config = config or PreprocessingConfig()
        features = _as2d(features, len(feature_names), "features")
        labels = _as2d(labels, len(label_names), "labels")
        fparams = [_column_params(n, config.features.get(n)) for n in feature_names]
        lparams = [_column_params(n, config.labels.get(n)) for n in label_names]
        pre = cls(fparams, lparams)
        # labels first: the residual step is a function of the standardised labels
        for i, p in enumerate(lparams):
            pre._fit_column(p, p._pre(labels[:, i], pre._divisor(p, labels), "label"), "label")
        c = pre.transform_labels(labels) if config.residual else None
        for i, p in enumerate(fparams):
            y = p._pre(features[:, i], pre._divisor(p, labels), "feature")
            if config.residual:
                p.residual = fit_residual(y, c, config.residual_max_degree)
                y = p.residual.forward(y, c)
            pre._fit_column(p, y, "feature")
        return pre

    @staticmethod
    def _fit_column(p: ColumnParams, y: np.ndarray, what: str) -> None:
        """Mean and standard deviation of one column's transformed values ``y``."""
        if not np.all(np.isfinite(y)):
            raise PreprocessingError(f"{what} {p.name!r}: non-finite values after preprocessing")
        if p.standardise:
            p.mean = float(np.mean(y))
            std = float(np.std(y))
            # A constant column (e.g. a single training label) keeps unit scale.
            p.std = std if std > 0 and np.isfinite(std) else 1.0

    @property
    def has_residual(self) -> bool:
        return any(p.residual is not None for p in self.feature_params)

    def _residual_c(self, labels: np.ndarray) -> np.ndarray | None:
        """Standardised labels for the residual step (None when no feature has one)."""
        return self.transform_labels(labels) if self.has_residual else None

    def _divisor(self, p: ColumnParams, labels: np.ndarray) -> np.ndarray | None:
        if not p.relative_to:
            return None
        return labels[:, self.label_names.index(p.relative_to)]

    # -- applying ------------------------------------------------------------------------
    def transform_labels(self, labels: np.ndarray) -> np.ndarray:
        """Raw labels (n, L) -> conditioning input c (n, L), float64."""
        labels = _as2d(labels, len(self.label_names), "labels")
        out = np.empty_like(labels)
        for i, p in enumerate(self.label_params):
            out[:, i] = p.forward(labels[:, i], self._divisor(p, labels), "label")
        return out

    def transform_features(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        features = _as2d(features, len(self.feature_names), "features")
        labels = _as2d(labels, len(self.label_names), "labels")
        if len(features) != len(labels):
            raise PreprocessingError(f"{len(features)} feature rows but {len(labels)} label rows")
        out = np.empty_like(features)
        c = self._residual_c(labels)
        for i, p in enumerate(self.feature_params):
            out[:, i] = p.forward(features[:, i], self._divisor(p, labels), "feature", c)
        return out

    def transform(self, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (features, labels) -> (z, c) in the flow's space (float64)."""
        return self.transform_features(features, labels), self.transform_labels(labels)

    def inverse_features(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Flow-space features z (n, F) at raw ``labels`` (n, L) -> raw features (n, F)."""
        z = _as2d(z, len(self.feature_names), "z")
        labels = _as2d(labels, len(self.label_names), "labels")
        out = np.empty_like(z, dtype=np.float64)
        c = self._residual_c(labels)
        for i, p in enumerate(self.feature_params):
            out[:, i] = p.inverse(z[:, i], self._divisor(p, labels), c)
        return out

    def inverse_labels(self, c: np.ndarray) -> np.ndarray:
        """Conditioning input c -> raw labels (labels relative to other labels need those first)."""
        c = _as2d(c, len(self.label_names), "c")
        out = np.full_like(c, np.nan, dtype=np.float64)
        done: set[str] = set()
        for _ in range(len(self.label_params)):
            for i, p in enumerate(self.label_params):
                if p.name in done or (p.relative_to and p.relative_to not in done):
                    continue
                out[:, i] = p.inverse(c[:, i], self._divisor(p, out) if p.relative_to else None)
                done.add(p.name)
        if len(done) != len(self.label_params):
            raise PreprocessingError("labels are defined relative to each other in a cycle")
        return out

    def log_det_jacobian(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """log |dz/dx| per event: turns a density in z into a density in raw features."""
        features = _as2d(features, len(self.feature_names), "features")
        labels = _as2d(labels, len(self.label_names), "labels")
        total = np.zeros(len(features))
        c = self._residual_c(labels)
        for i, p in enumerate(self.feature_params):
            x = features[:, i]
            div = self._divisor(p, labels)
            if div is not None:
                total -= np.log(np.abs(div))
                x = x / div
            if p.transform == "log":
                total -= np.log(x)
            elif p.transform == "logit":
                lo, hi = p.bounds  # type: ignore[misc]
                total += np.log(hi - lo) - np.log(x - lo) - np.log(hi - x)
            if p.residual is not None:
                total += p.residual.log_det(c)
            if p.standardise:
                total -= np.log(p.std)
        return total

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "features": [p.to_dict() for p in self.feature_params],
            "labels": [p.to_dict() for p in self.label_params],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessor":
        for key in ("features", "labels"):
            if key not in data:
                raise PreprocessingError(f"preprocessing data lacks key {key!r}")
        return cls(
            [ColumnParams.from_dict(d) for d in data["features"]],
            [ColumnParams.from_dict(d) for d in data["labels"]],
        )

    def to_json(self) -> str:
        # repr-exact floats: json writes the shortest repr that round-trips float64
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessor":
        return cls.from_dict(json.loads(text))


def _as2d(array: np.ndarray, n_columns: int, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1 and n_columns == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != n_columns:
        raise PreprocessingError(f"{what} must have shape (n, {n_columns}), got {array.shape}")
    return array
