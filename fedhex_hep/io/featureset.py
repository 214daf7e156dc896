"""FeatureSet: the events that flow between the pipeline's stages.

An awkward record array with one field per feature, one per label and ``weight``, plus a
JSON-serialisable metadata dict (resolved config, cutflow, skipped files, package version).
Saved as parquet; the metadata travels in the parquet file's key-value metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from fedhex_hep.io.atomic import atomic_path
from fedhex_hep.errors import FedhexError

__all__ = ["FeatureSet", "FeatureSetError", "METADATA_KEY", "file_metadata"]

METADATA_KEY = b"fedhex_hep"


class FeatureSetError(FedhexError, ValueError):
    """A FeatureSet file or content problem; the message names the file or column."""


def file_metadata(feature_names: Sequence[str], label_names: Sequence[str], metadata: dict[str, Any]) -> dict[bytes, bytes]:
    """The parquet key-value metadata of a FeatureSet file (column roles and the metadata dict)."""
    meta = {"feature_names": list(feature_names), "label_names": list(label_names), "metadata": metadata}
    return {METADATA_KEY: json.dumps(meta).encode()}


def _hist_axis(name: str, edges: np.ndarray, unit: str) -> Any:
    """Regular axis when the edges are equal-width, else Variable; label ``name [unit]``."""
    import hist

    label = f"{name} [{unit}]" if unit else name
    widths = np.diff(edges)
    if np.allclose(widths, widths[0], rtol=1e-9, atol=0):
        return hist.axis.Regular(len(widths), float(edges[0]), float(edges[-1]), name=name, label=label)
    return hist.axis.Variable(edges, name=name, label=label)


@dataclass
class FeatureSet:
    """Events with features, labels and weights (flat, one row per event).

    ``events`` has fields ``feature_names + label_names + ["weight"]`` (float64).
    """

    events: ak.Array
    feature_names: list[str]
    label_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = set(ak.fields(self.events))
        for name in [*self.feature_names, *self.label_names, "weight"]:
            if name not in fields:
                raise FeatureSetError(f"FeatureSet has no column {name!r} (columns: {sorted(fields)})")

    @classmethod
    def from_numpy(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        feature_names: Sequence[str],
        label_names: Sequence[str],
        weights: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> "FeatureSet":
        """Build from 2D arrays of shape (n_events, n_features) and (n_events, n_labels)."""
        # A 1D array is one column; reshape(n, -1) would fail for n = 0 (an empty selection).
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        features = features[:, None] if features.ndim == 1 else features
        labels = labels[:, None] if labels.ndim == 1 else labels
        if features.ndim != 2 or labels.ndim != 2:
            raise FeatureSetError("features and labels must be 2D arrays (n_events, n_columns)")
        if features.shape[1] != len(feature_names) or labels.shape[1] != len(label_names):
            raise FeatureSetError("column count does not match the number of names")
        if weights is None:
            weights = np.ones(len(features))
        columns = {name: np.ascontiguousarray(features[:, i]) for i, name in enumerate(feature_names)}
        columns.update({name: np.ascontiguousarray(labels[:, i]) for i, name in enumerate(label_names)})
        columns["weight"] = np.asarray(weights, dtype=np.float64)
        return cls(ak.zip(columns), list(feature_names), list(label_names), dict(metadata or {}))

    def __len__(self) -> int:
        return len(self.events)

    def column(self, name: str) -> np.ndarray:
        return ak.to_numpy(self.events[name]).astype(np.float64)

    @property
    def features(self) -> np.ndarray:
        """Features, shape (n_events, n_features)."""
        return np.stack([self.column(n) for n in self.feature_names], axis=1)

    @property
    def labels(self) -> np.ndarray:
        """Labels, shape (n_events, n_labels)."""
        return np.stack([self.column(n) for n in self.label_names], axis=1)

    @property
    def weights(self) -> np.ndarray:
        return self.column("weight")

    def label_points(self) -> np.ndarray:
        """Distinct label points (mass points), sorted, shape (n_points, n_labels)."""
        return np.unique(self.labels, axis=0)

    def mask_label(self, point: Sequence[float], rtol: float = 1e-6) -> np.ndarray:
        """Boolean mask of the events at label point ``point``."""
        point = np.asarray(point, dtype=np.float64)
        return np.all(np.isclose(self.labels, point, rtol=rtol, atol=0.0), axis=1)

    def select(self, mask: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.events[mask], self.feature_names, self.label_names, dict(self.metadata))

    def at_label(self, point: Sequence[float]) -> "FeatureSet":
        """The events at one label point."""
        return self.select(self.mask_label(point))

    def counts_per_label(self) -> tuple[np.ndarray, np.ndarray]:
        """(points, counts): distinct label points and the number of events at each."""
        return np.unique(self.labels, axis=0, return_counts=True)

    def units(self) -> dict[str, str]:
        """Unit of each column from the configuration in the metadata (``input.units``); may be empty."""
        config = self.metadata.get("config") or {}
        return dict((config.get("input") or {}).get("units") or {})

    def to_hist(
        self,
        feature: str | Sequence[str],
        bins: int | Sequence[float] | Mapping[str, Any] = 40,
        *,
        point: Sequence[float] | Mapping[str, float] | None = None,
    ) -> Any:
        """A ``hist.Hist`` (Weight storage) of one feature, or of several (one axis each).

        ``bins``: an int (equal bins over the 0.1-99.9% quantiles of all events of this set,
        the binning ``fedhex-hep export`` uses), explicit edges, or a mapping feature -> either.
        ``point``: only the events at this label point (a sequence in label order or a mapping
        label -> value); None: all events. Axis labels carry the configured units.

        >>> fs = FeatureSet.from_numpy([[1.0], [2.0], [2.5]], [[10.0], [10.0], [20.0]], ["x"], ["m"], [1.0, 2.0, 0.5])
        >>> h = fs.to_hist("x", bins=[0.0, 2.0, 3.0], point={"m": 10.0})
        >>> h.values().tolist(), h.variances().tolist()
        ([1.0, 2.0], [1.0, 4.0])
        """
        import hist

        from fedhex_hep.io.export import resolve_binning

        names = [feature] if isinstance(feature, str) else list(feature)
        unknown = [n for n in names if n not in self.feature_names]
        if unknown:
            raise FeatureSetError(f"to_hist: no feature {unknown[0]!r} (features: {self.feature_names})")
        if isinstance(bins, Mapping):
            spec: Any = {n: bins.get(n, 40) for n in self.feature_names}
        elif np.ndim(bins) == 0:
            spec = int(bins)  # type: ignore[arg-type]
        else:
            spec = {n: list(bins) for n in names}  # type: ignore[arg-type]
        edges = resolve_binning([self], spec if isinstance(spec, int) else {n: spec[n] for n in names})
        chosen = self if point is None else self.at_label(self._point_values(point))
        units = self.units()
        axes = [_hist_axis(n, edges[n], units.get(n, "")) for n in names]
        h = hist.Hist(*axes, storage=hist.storage.Weight())
        h.fill(*[chosen.column(n) for n in names], weight=chosen.weights)
        return h

    def _point_values(self, point: Sequence[float] | Mapping[str, float]) -> list[float]:
        if isinstance(point, Mapping):
            missing = [n for n in self.label_names if n not in point]
            if missing:
                raise FeatureSetError(f"point has no value for label {missing[0]!r}")
            return [float(point[n]) for n in self.label_names]
        values = [float(v) for v in np.asarray(point, dtype=np.float64).reshape(-1)]
        if len(values) != len(self.label_names):
            raise FeatureSetError(f"point needs {len(self.label_names)} values ({', '.join(self.label_names)})")
        return values

    def drop_nonfinite(self) -> tuple["FeatureSet", int]:
        """Drop events with NaN/inf in any feature, label or weight; return (kept, n_dropped)."""
        columns = [*self.feature_names, *self.label_names, "weight"]
        good = np.all(np.stack([np.isfinite(self.column(c)) for c in columns], axis=1), axis=1)
        return self.select(good), int((~good).sum())

    def nonfinite_counts(self) -> dict[str, int]:
        """Number of NaN/inf values per column (only columns that have some)."""
        counts = {}
        for name in [*self.feature_names, *self.label_names, "weight"]:
            n = int((~np.isfinite(self.column(name))).sum())
            if n:
                counts[name] = n
        return counts

    def drop_sparse_labels(self, min_events: int) -> tuple["FeatureSet", list[dict[str, Any]]]:
        """Drop label points with fewer than ``min_events`` events.

        Returns (kept, dropped) where dropped lists ``{"label": {...}, "events": n}``.
        """
        # One pass over the labels: each event's point index, instead of a mask per point.
        points, inverse, counts = np.unique(self.labels, axis=0, return_inverse=True, return_counts=True)
        keep = counts[inverse.reshape(-1)] >= min_events
        dropped = [
            {"label": dict(zip(self.label_names, map(float, point))), "events": int(count)}
            for point, count in zip(points, counts)
            if count < min_events
        ]
        return self.select(keep), dropped

    def concatenate(self, other: "FeatureSet") -> "FeatureSet":
        if (other.feature_names, other.label_names) != (self.feature_names, self.label_names):
            raise FeatureSetError("cannot concatenate FeatureSets with different columns")
        columns = [*self.feature_names, *self.label_names, "weight"]
        events = ak.concatenate([self.events[columns], other.events[columns]])
        return FeatureSet(events, self.feature_names, self.label_names, dict(self.metadata))

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write parquet atomically; metadata goes into the file's key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [*self.feature_names, *self.label_names, "weight"]
        table = pa.table({name: self.column(name) for name in columns})
        table = table.replace_schema_metadata(file_metadata(self.feature_names, self.label_names, self.metadata))
        with atomic_path(path, overwrite=overwrite) as tmp:
            pq.write_table(table, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        """Read a FeatureSet written by :meth:`save`."""
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise FeatureSetError(f"FeatureSet file {path} does not exist")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise FeatureSetError(f"{path} is not a readable parquet file: {exc}") from None
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise FeatureSetError(f"{path} has no fedhex_hep metadata (not written by fedhex-hep?)")
        meta = json.loads(raw)
        events = ak.zip({name: table.column(name).to_numpy() for name in table.column_names})
        return cls(events, meta["feature_names"], meta["label_names"], meta.get("metadata", {}))
