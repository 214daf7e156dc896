"""FeatureProcessor: a configurable coffea processor that turns events into training features.

The selection, the features, the labels and the optional weight are expressions of the safe
expression language (:mod:`fedhex_hep.extraction.expressions`) over branch names, e.g. the reference
analysis::

    FeatureProcessor(
        features={"phi": "CBL_RecoPhi_mass", "omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"},
        labels={"labelphi": "GenPhi_mass[0]", "labelomega": "GenOmega_mass[0]"},
        selection="CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220",
    )

Names resolve first to branches -- flat names such as ``Photon_pt`` work with ``BaseSchema``
and with ``NanoAODSchema`` (``events.Photon.pt``; ``nPhoton`` is the number of photons) --
then to the dataset's metadata (e.g. ``Phi`` parsed from the folder ``Phi_1870_omega_9p025``),
a scalar broadcast to every event.

``process(events)`` returns a dict of coffea accumulators that merge across chunks:

- ``"columns"``: ``column_accumulator`` (float64 numpy) per feature, label and ``weight``, plus
  ``_fileid`` (a stable 63-bit hash of the file name) and ``_entry`` (entry number in the file)
  so a merged result can be put back in file order whatever order chunks finished in;
- ``"cutflow"``: ``{dataset: {label point (JSON list): {"read": n, "selected": k}}}`` -- the
  selection is evaluated on every event, labels too (generator-level labels of unselected
  events are needed for efficiencies), features and weight only on selected events;
- ``"hists"``: per feature a ``hist.Hist`` with a ``point`` category axis (the label point,
  ``"labelphi=1870,labelomega=9.025"``) and the feature axis (``bins`` bins, Weight storage).
  Features with a fixed ``ranges`` entry are filled in ``process``; the others get an automatic
  range from the merged data in ``postprocess`` (which coffea's Runner calls).

The processor is stateless and picklable (it only holds the expression texts), so another
analysis can instantiate it and call ``process`` from its own processor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np
from coffea import processor

from fedhex_hep.config import RESERVED_NAMES, ConfigError
from fedhex_hep.errors import FedhexError, one_line
from fedhex_hep.extraction.expressions import Expression, ExpressionError, compile_expression

__all__ = ["FeatureProcessor", "point_key", "file_id", "resolve_branch"]

SCHEMAS = ("base", "nanoaod")


class BranchReadError(FedhexError):
    """A branch's data cannot be read (a damaged file); not an expression problem."""


def file_id(filename: str) -> int:
    """Stable non-negative int64 id of a file name (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(filename.encode(), digest_size=8).digest(), "little") >> 1


def point_key(names: Sequence[str], values: Sequence[float]) -> str:
    """Histogram category of a label point: ``"labelphi=1870,labelomega=9.025"``."""
    return ",".join(f"{n}={float(v):.10g}" for n, v in zip(names, values))


def group_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``table`` (n, L) and each row's group index; NaN rows group together.

    Same result as ``np.unique(table, axis=0, return_inverse=True)`` (NaN as -inf), but O(n)
    for the common single-point chunk and a per-column sort otherwise (``axis=0`` sorts
    void-typed rows, which is ~20x slower).
    """
    table = np.nan_to_num(np.asarray(table, dtype=np.float64).reshape(len(table), -1), nan=-np.inf)
    n, width = table.shape
    if n == 0:
        return table[:0], np.zeros(0, dtype=np.int64)
    if width == 0 or bool(np.all(table == table[0])):
        return table[:1], np.zeros(n, dtype=np.int64)
    # Events come file by file, so equal labels form long runs: group the runs (few), not rows.
    change = np.flatnonzero(np.any(table[1:] != table[:-1], axis=1)) + 1
    if len(change) < n // 8:
        run_starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([run_starts, [n]]))
        points, run_group = np.unique(table[run_starts], axis=0, return_inverse=True)
        return points, np.repeat(run_group.reshape(-1).astype(np.int64), lengths)
    key = np.zeros(n, dtype=np.int64)
    for column in range(width):
        values, codes = np.unique(table[:, column], return_inverse=True)
        # re-rank after each column: the key stays < n, so it can never overflow int64
        _, key = np.unique(key * len(values) + codes.reshape(-1), return_inverse=True)
        key = key.reshape(-1).astype(np.int64)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return table[first], inverse.reshape(-1).astype(np.int64)


def _fill_per_point(h: Any, name: str, names: Sequence[str], table: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
    """Fill ``h`` point by point: one category string per fill is ~10x faster than a string per event."""
    good = np.isfinite(values)
    if not good.any():
        return
    table, values, weights = table[good], values[good], weights[good]
    points, inverse = group_rows(table)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(points) + 1))
    for i, point in enumerate(points):
        rows = order[bounds[i] : bounds[i + 1]]
        label = [np.nan if v == -np.inf else v for v in point]
        h.fill(point=point_key(names, label), **{name: values[rows]}, weight=weights[rows])


def resolve_branch(events: Any, name: str) -> Any | None:
    """The branch ``name`` of ``events`` under BaseSchema or NanoAODSchema; None if absent.

    Under NanoAODSchema ``Photon_pt`` is ``events.Photon.pt`` (split at the first
    underscore) and ``nPhoton`` is ``ak.num(events.Photon)``.
    """
    fields = events.fields
    if name in fields:
        value = events[name]
        if not value.fields:  # a record (a whole collection) is not a branch
            return value
        return None
    prefix, sep, rest = name.partition("_")
    if sep and prefix in fields:
        collection = events[prefix]
        if rest in collection.fields:
            return collection[rest]
    if name.startswith("n") and name[1:] in fields and events[name[1:]].fields:
        return ak.num(events[name[1:]], axis=1)
    return None


def _selected(value: Any, mask: np.ndarray | None) -> Any:
    """A branch read in full, restricted to ``mask`` (None: all events).

    Flat branches become numpy arrays; jagged lists of numbers become a ``ListArray`` over the
    branch's own content (no copy). Slicing coffea's lazy events instead (``events[mask]``)
    goes through indexed views that cost more than the read itself.
    """
    if isinstance(value, np.ndarray):
        return value if mask is None else value[mask]
    value = ak.materialize(value)
    layout = ak.to_layout(value)
    if isinstance(layout, ak.contents.NumpyArray) and layout.data.ndim == 1:
        data = np.asarray(layout.data)
        return data if mask is None else data[mask]
    if (
        isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.ListArray))
        and isinstance(layout.content, ak.contents.NumpyArray)
        and layout.content.data.ndim == 1
        and layout.parameter("__array__") is None
    ):
        starts, stops = np.asarray(layout.starts.data), np.asarray(layout.stops.data)
        if mask is None and isinstance(layout, ak.contents.ListArray):
            return value
        if mask is not None:
            starts, stops = starts[mask], stops[mask]
        content = ak.contents.NumpyArray(np.asarray(layout.content.data))
        return ak.Array(ak.contents.ListArray(ak.index.Index64(starts), ak.index.Index64(stops), content))
    return value if mask is None else value[mask]


class _Namespace(Mapping[str, Any]):
    """Names of an expression -> branches of ``events`` (restricted to ``mask``), then numeric
    dataset metadata."""

    def __init__(
        self,
        events: Any,
        metadata: Mapping[str, Any],
        mask: np.ndarray | None = None,
        parent: "_Namespace | None" = None,
    ) -> None:
        self.events = events
        self.metadata = metadata
        self.mask = mask
        self.parent = parent  # all-events namespace whose branches were already read
        self.cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.cache:
            if self.parent is not None and name in self.parent.cache:
                full = self.parent.cache[name]
                value = full if isinstance(full, np.floating) else _selected(full, self.mask)
                self.cache[name] = value
                return value
            value = self._read(name)
            if value is None:
                if name not in self.metadata:
                    raise KeyError(name)
                value = self.metadata[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise KeyError(name)
                value = np.float64(value)
            self.cache[name] = value
        return self.cache[name]

    def _read(self, name: str) -> Any | None:
        """The branch ``name`` restricted to the mask, None if the events have no such branch."""
        try:
            value = resolve_branch(self.events, name)
            return None if value is None else _selected(value, self.mask)
        except Exception as exc:  # uproot raises many unrelated types for damaged baskets
            raise BranchReadError(f"branch {name!r}: unreadable ({type(exc).__name__}: {one_line(exc, 200)})") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache)

    def __len__(self) -> int:
        return len(self.cache)


def _per_event(value: Any, n: int, what: str, expr: Expression) -> np.ndarray:
    """One float64 per event (missing -> NaN) from an expression result."""
    if isinstance(value, ak.Array):
        layout = value.layout
        if isinstance(layout, ak.contents.ByteMaskedArray) and isinstance(layout.content, ak.contents.NumpyArray):
            data = np.asarray(layout.content.data)
            if type(data) is np.ndarray and data.ndim == 1 and len(data) == n:
                valid = np.asarray(layout.mask.data).astype(bool) == layout.valid_when
                return np.where(valid, data.astype(np.float64), np.nan)
        if value.ndim != 1:
            raise ExpressionError(
                f"{what} = {expr.text!r} gives a list per event; pick one element, e.g. X[0]"
            )
        if value.fields:
            raise ExpressionError(f"{what} = {expr.text!r} is a record, not a number per event")
        value = ak.fill_none(ak.values_astype(value, np.float64), np.nan)
        array = ak.to_numpy(value)
    elif np.ndim(value) == 0:
        return np.full(n, np.float64(value))
    else:
        array = np.asarray(value)
    array = np.asarray(array, dtype=np.float64)
    if array.shape != (n,):
        raise ExpressionError(f"{what} = {expr.text!r} gives shape {array.shape}, expected ({n},)")
    return array


def _mask(value: Any, n: int, expr: Expression) -> np.ndarray:
    """Selection result -> boolean mask; missing values and NaN are False."""
    column = _per_event(value, n, "selection", expr)
    return (column != 0) & ~np.isnan(column)


class FeatureProcessor(processor.ProcessorABC):
    """Selection + features + labels + weight from expression strings (see module docstring).

    ``ranges`` optionally fixes the histogram range ``(lo, hi)`` (GeV) of some features.
    """

    def __init__(
        self,
        features: Mapping[str, str],
        labels: Mapping[str, str],
        selection: str = "",
        weight: str = "",
        schema: str = "base",
        bins: int = 40,
        ranges: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        if not features:
            raise ConfigError("FeatureProcessor needs at least one feature")
        if schema not in SCHEMAS:
            raise ConfigError(f"schema {schema!r} is not one of {', '.join(SCHEMAS)}")
        self.features = {str(k): str(v) for k, v in features.items()}
        self.labels = {str(k): str(v) for k, v in labels.items()}
        self.selection = selection.strip()
        self.weight = weight.strip()
        self.schema = schema
        self.bins = int(bins)
        self.ranges = {str(k): (float(v[0]), float(v[1])) for k, v in (ranges or {}).items()}
        names = [*self.features, *self.labels]
        if len(set(names)) != len(names):
            raise ConfigError(f"feature and label names must be distinct, got {names}")
        reserved = [n for n in names if n in RESERVED_NAMES]
        if reserved:
            # the processor writes these columns itself: a user column would be overwritten silently
            raise ConfigError(f"column name {reserved[0]!r} is reserved ({', '.join(RESERVED_NAMES)})")
        # Compile now: a bad expression fails at construction, before any file is opened.
        self._compiled()

    @classmethod
    def from_config(cls, input_config: Any, bins: int = 40) -> "FeatureProcessor":
        """Build from ``Config.input`` (an ``InputConfig``)."""
        return cls(
            features=input_config.features,
            labels=input_config.labels,
            selection=input_config.selection,
            weight=input_config.weight,
            schema=input_config.schema,
            bins=bins,
        )

    def _compiled(self) -> dict[str, Any]:
        def compile_one(key: str, text: str) -> Expression:
            try:
                return compile_expression(text)
            except ExpressionError as exc:
                raise ExpressionError(f"{key}: {exc}") from None

        return {
            "selection": compile_one("selection", self.selection) if self.selection else None,
            "weight": compile_one("weight", self.weight) if self.weight else None,
            "features": {n: compile_one(f"feature {n!r}", t) for n, t in self.features.items()},
            "labels": {n: compile_one(f"label {n!r}", t) for n, t in self.labels.items()},
        }

    @property
    def names(self) -> frozenset[str]:
        """Every name the expressions read (branches or metadata keys)."""
        compiled = self._compiled()
        exprs = [*compiled["features"].values(), *compiled["labels"].values()]
        exprs += [e for e in (compiled["selection"], compiled["weight"]) if e is not None]
        return frozenset().union(*(e.names for e in exprs))

    def branches(self, metadata: Mapping[str, Any] | None = None) -> list[str]:
        """Names that must be branches of the tree: all names except the metadata keys."""
        metadata = metadata or {}
        return sorted(n for n in self.names if n not in metadata)

    @property
    def column_names(self) -> list[str]:
        return [*self.features, *self.labels, "weight"]

    def _new_hist(self, name: str, lo: float, hi: float) -> Any:
        import hist

        return (
            hist.Hist.new.StrCat([], name="point", label="label point", growth=True)
            .Reg(self.bins, lo, hi, name=name, label=f"{name} [GeV]")
            .Weight()
        )

    def process(self, events: Any) -> dict[str, Any]:
        compiled = self._compiled()
        metadata = dict(getattr(events, "metadata", None) or {})
        dataset = str(metadata.get("dataset", ""))
        filename = str(metadata.get("filename", ""))
        where = f" (file {filename})" if filename else ""
        n = len(events)

        def evaluate(expr: Expression, namespace: _Namespace, what: str) -> Any:
            try:
                return expr.evaluate(namespace)
            except ExpressionError as exc:
                raise ExpressionError(f"{what}: {exc}{where}") from None

        everything = _Namespace(events, metadata)
        if compiled["selection"] is None:
            mask = np.ones(n, dtype=bool)
        else:
            sel = compiled["selection"]
            mask = _mask(evaluate(sel, everything, "selection"), n, sel)
        label_names = list(self.labels)
        labels_all = {
            name: _per_event(evaluate(e, everything, f"label {name!r}"), n, f"label {name!r}", e)
            for name, e in compiled["labels"].items()
        }
        n_sel = int(mask.sum())
        chosen = _Namespace(events, metadata, mask, parent=everything)
        columns: dict[str, np.ndarray] = {}
        for name, expr in compiled["features"].items():
            value = evaluate(expr, chosen, f"feature {name!r}")
            columns[name] = _per_event(value, n_sel, f"feature {name!r}", expr)
        for name in label_names:
            columns[name] = labels_all[name][mask]
        if compiled["weight"] is None:
            columns["weight"] = np.ones(n_sel)
        else:
            w = compiled["weight"]
            columns["weight"] = _per_event(evaluate(w, chosen, "weight"), n_sel, "weight", w)
        entry_start = int(metadata.get("entrystart", 0) or 0)
        columns["_fileid"] = np.full(n_sel, file_id(filename), dtype=np.int64)
        columns["_entry"] = (np.flatnonzero(mask) + entry_start).astype(np.int64)

        # cutflow per label point: events read and selected
        cutflow: dict[str, dict[str, dict[str, int]]] = {dataset: {}}
        if label_names:
            table = np.stack([labels_all[k] for k in label_names], axis=1)
        else:
            table = np.zeros((n, 0))
        if n:
            points, inverse = group_rows(table)
            read = np.bincount(inverse, minlength=len(points))
            sel_counts = np.bincount(inverse[mask], minlength=len(points))
            for i, point in enumerate(points):
                values = [None if v == -np.inf else float(v) for v in point]
                cutflow[dataset][json.dumps(values)] = {"read": int(read[i]), "selected": int(sel_counts[i])}

        hists = {}
        if self.ranges:
            for name, (lo, hi) in self.ranges.items():
                if name not in self.features:
                    continue
                h = self._new_hist(name, lo, hi)
                _fill_per_point(h, name, label_names, table[mask], columns[name], columns["weight"])
                hists[name] = h

        return {
            "columns": {k: processor.column_accumulator(v) for k, v in columns.items()},
            "cutflow": cutflow,
            "hists": hists,
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Fill automatic-range histograms for the features without a fixed range."""
        columns = {k: v.value for k, v in accumulator["columns"].items()}
        label_names = list(self.labels)
        hists = dict(accumulator.get("hists") or {})
        weight = columns["weight"]
        table = np.stack([columns[k] for k in label_names], axis=1) if label_names else np.zeros((len(weight), 0))
        for name in self.features:
            if name in hists:
                continue
            values = columns[name]
            finite = np.isfinite(values)
            lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            hi = float(np.nextafter(hi, np.inf))  # include the maximum in the last bin
            h = self._new_hist(name, lo, hi)
            _fill_per_point(h, name, label_names, table, values, weight)
            hists[name] = h
        accumulator["hists"] = hists
        return accumulator
