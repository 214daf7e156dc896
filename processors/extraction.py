"""FeatureProcessor: a coffea processor that turns events into training features and histograms.

Features, labels, the selection and the weight are either callables on the chunk's events
(Python users; NanoEvents with ``NanoAODSchema``) or expression strings of the safe expression
language (:mod:`fedhex_hep.extraction.expressions`, what configs hold)::

    FeatureProcessor(
        features={"mll": lambda ev: (ev.Muon[:, 0] + ev.Muon[:, 1]).mass, "pt1": "Muon_pt[0]"},
        labels={"mZ": "mZ"},                      # here a number in the fileset's metadata
        selection=lambda ev: ak.num(ev.Muon) >= 2,
        weight="genWeight",
        schema="nanoaod",
        ranges={"mll": (60, 120)},
        units={"mll": "GeV", "pt1": "GeV", "mZ": "GeV"},
    )

Names in expressions resolve first to branches -- flat names such as ``Photon_pt`` work with
``BaseSchema`` and with ``NanoAODSchema`` (``events.Photon.pt``; ``nPhoton`` is the number of
photons) -- then to the dataset's metadata (e.g. ``Phi`` parsed from the folder
``Phi_1870_omega_9p025``), a scalar broadcast to every event. Selection, labels and weight are
evaluated on every event (read counts and generator-level labels are needed for efficiencies),
features on the selected events only (a callable feature receives ``events[selection]``).

``process(events)`` returns a dict of accumulators that merge across chunks; everything is
filled in ``process``, so a processor that embeds this one gets complete output without
forwarding ``postprocess``:

- ``"hists"``: per feature with a range (``ranges``) a ``hist.Hist`` with a ``dataset``
  StrCategory axis, one IntCategory axis per label holding ``round(value * 10**label_decimals)``
  (``label_decimals = 3``: label 9.025 is category 9025) and the feature axis (``bins`` bins),
  Weight storage; axis labels carry ``units``;
- ``"cutflow"``: ``{dataset: {label values (tuple of floats, None where undefined): {"read",
  "selected", "sumw_read", "sumw2_read", "sumw", "sumw2"}}}`` -- event counts and sums of weights
  (and of squared weights) of all events read and of the selected ones (non-finite weights of
  events outside the selection count as 0);
- ``"columns"``: ``column_accumulator`` (float64) per feature, label and ``weight``, plus
  ``_fileid`` and ``_entry`` so that a merged result can be put back in file order.

``postprocess`` adds automatic-range histograms for the features without a range (the
extraction runner's use). The processor holds only the expressions (and callables), so it pickles
and another analysis can instantiate it and call ``process`` from its own processor.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union

import awkward as ak
import numpy as np
from coffea import processor

from fedhex_hep.config import RESERVED_NAMES, ConfigError
from fedhex_hep.errors import FedhexError, did_you_mean, one_line
from fedhex_hep.extraction.expressions import ExpressionError, compile_expression

__all__ = ["FeatureProcessor", "file_id", "resolve_branch", "group_rows", "Source"]

SCHEMAS = ("base", "nanoaod")


class BranchReadError(FedhexError):
    """A branch's data cannot be read (a damaged file); not an expression problem."""


def file_id(filename: str) -> int:
    """Stable non-negative int64 id of a file name (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(filename.encode(), digest_size=8).digest(), "little") >> 1


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
        self._view: Any = None

    def view(self) -> Any:
        """The events themselves (restricted to ``mask``): what a callable source receives."""
        if self._view is None:
            self._view = self.events if self.mask is None else self.events[self.mask]
        return self._view

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


def _per_event(value: Any, n: int, what: str, expr: Any) -> np.ndarray:
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


def _mask(value: Any, n: int, expr: Any) -> np.ndarray:
    """Selection result -> boolean mask; missing values and NaN are False."""
    column = _per_event(value, n, "selection", expr)
    return (column != 0) & ~np.isnan(column)



#: A feature, label, selection or weight: an expression string, or a callable on the events.
Source = Union[str, Callable[[Any], Any]]

_QUOTED = re.compile(r"'([^']+)'")


class _Call:
    """A callable source, evaluated like an :class:`Expression` on a namespace's events."""

    names: frozenset[str] = frozenset()

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.text = getattr(fn, "__qualname__", None) or repr(fn)

    def evaluate(self, namespace: "_Namespace") -> Any:
        events = namespace.view()
        try:
            return self.fn(events)
        except ExpressionError:
            raise
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            text = " ".join(str(exc).split())[:200]
            hint = ""
            if isinstance(exc, (AttributeError, KeyError)) and _QUOTED.search(text):
                hint = did_you_mean(_QUOTED.search(text).group(1), getattr(events, "fields", []))
            raise ExpressionError(f"callable {self.text}: {type(exc).__name__}: {text}{hint}") from None


def _compile(key: str, source: Any) -> Any:
    """Expression for a string, _Call for a callable, None for an empty source."""
    if callable(source):
        return _Call(source)
    if source is None or not str(source).strip():
        return None
    try:
        return compile_expression(str(source))
    except ExpressionError as exc:
        raise ExpressionError(f"{key}: {exc}") from None


def _label_codes(values: np.ndarray, decimals: int) -> np.ndarray:
    """Integer category of each label value: ``round(value * 10**decimals)``."""
    return np.rint(values * 10.0**decimals).astype(np.int64)


def _dataset_id(dataset: str) -> int:
    return file_id("dataset:" + dataset)


def _cutflow(table: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> dict[tuple, dict[str, float]]:
    """Counts and sums of weights per label point, of all events and of the selected ones."""
    out: dict[tuple, dict[str, float]] = {}
    if not len(table):
        return out
    points, inverse = group_rows(table)
    w = np.where(np.isfinite(weights), weights, 0.0)
    size = len(points)
    sums = {
        "read": np.bincount(inverse, minlength=size),
        "selected": np.bincount(inverse[mask], minlength=size),
        "sumw_read": np.bincount(inverse, w, minlength=size),
        "sumw2_read": np.bincount(inverse, w**2, minlength=size),
        "sumw": np.bincount(inverse[mask], w[mask], minlength=size),
        "sumw2": np.bincount(inverse[mask], w[mask] ** 2, minlength=size),
    }
    for i, point in enumerate(points):
        key = tuple(None if v == -np.inf else float(v) for v in point)
        out[key] = {k: (int(v[i]) if k in ("read", "selected") else float(v[i])) for k, v in sums.items()}
    return out


class FeatureProcessor(processor.ProcessorABC):
    """Selection, features, labels and weight from callables or expression strings (see the module docstring).

    ``ranges``: histogram range ``(lo, hi)`` per feature (in its unit); ``units``: unit per column
    for axis labels (none when absent); ``label_decimals``: resolution of the label axes.
    """

    def __init__(
        self,
        features: Mapping[str, Any],
        labels: Mapping[str, Any],
        selection: Any = "",
        weight: Any = "",
        schema: str = "base",
        bins: int = 40,
        ranges: Mapping[str, Sequence[float]] | None = None,
        units: Mapping[str, str] | None = None,
        label_decimals: int = 3,
    ) -> None:
        if not features:
            raise ConfigError("FeatureProcessor needs at least one feature")
        if schema not in SCHEMAS:
            raise ConfigError(f"schema {schema!r} is not one of {', '.join(SCHEMAS)}")
        keep = lambda v: v if callable(v) else str(v).strip()  # noqa: E731
        self.features = {str(k): keep(v) for k, v in features.items()}
        self.labels = {str(k): keep(v) for k, v in labels.items()}
        self.selection = keep(selection) if selection is not None else ""
        self.weight = keep(weight) if weight is not None else ""
        self.schema = schema
        self.bins = int(bins)
        self.ranges = {str(k): (float(v[0]), float(v[1])) for k, v in (ranges or {}).items()}
        self.units = {str(k): str(v) for k, v in (units or {}).items()}
        self.label_decimals = int(label_decimals)
        names = [*self.features, *self.labels]
        if len(set(names)) != len(names):
            raise ConfigError(f"feature and label names must be distinct, got {names}")
        reserved = [n for n in names if n in RESERVED_NAMES]
        if reserved:
            # the processor writes these columns itself: a user column would be overwritten silently
            raise ConfigError(f"column name {reserved[0]!r} is reserved ({', '.join(RESERVED_NAMES)})")
        unknown = [k for k in self.ranges if k not in self.features]
        if unknown:
            raise ConfigError(f"ranges: {unknown[0]!r} is not a feature{did_you_mean(unknown[0], list(self.features))}")
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
            units=getattr(input_config, "units", None),
        )

    def _compiled(self) -> dict[str, Any]:
        return {
            "selection": _compile("selection", self.selection),
            "weight": _compile("weight", self.weight),
            "features": {n: _compile(f"feature {n!r}", t) for n, t in self.features.items()},
            "labels": {n: _compile(f"label {n!r}", t) for n, t in self.labels.items()},
        }

    @property
    def names(self) -> frozenset[str]:
        """Every name the expression strings read (branches or metadata keys); callables read none."""
        compiled = self._compiled()
        exprs = [*compiled["features"].values(), *compiled["labels"].values(), compiled["selection"], compiled["weight"]]
        return frozenset().union(*(e.names for e in exprs if e is not None))

    def branches(self, metadata: Mapping[str, Any] | None = None) -> list[str]:
        """Names that must be branches of the tree: all names except the metadata keys."""
        metadata = metadata or {}
        return sorted(n for n in self.names if n not in metadata)

    @property
    def column_names(self) -> list[str]:
        return [*self.features, *self.labels, "weight"]

    def _label(self, name: str) -> str:
        unit = self.units.get(name, "")
        return f"{name} [{unit}]" if unit else name

    def _new_hist(self, name: str, lo: float, hi: float) -> Any:
        import hist

        axes = [hist.axis.StrCategory([], name="dataset", label="dataset", growth=True)]
        for label in self.labels:
            scale = f" x 10^{self.label_decimals}" if self.label_decimals else ""
            axes.append(hist.axis.IntCategory([], name=label, label=self._label(label) + scale, growth=True))
        axes.append(hist.axis.Regular(self.bins, lo, hi, name=name, label=self._label(name)))
        return hist.Hist(*axes, storage=hist.storage.Weight())

    def _fill(self, h: Any, name: str, datasets: Sequence[str], codes: np.ndarray, table: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Fill ``h`` with the events whose feature and labels are finite; one fill per dataset."""
        good = np.isfinite(values) & np.all(np.isfinite(table), axis=1) & np.isfinite(weights)
        for i, dataset in enumerate(datasets):
            rows = good & (codes == i)
            if rows.any():
                labels = {n: _label_codes(table[rows, j], self.label_decimals) for j, n in enumerate(self.labels)}
                h.fill(dataset=dataset, **labels, **{name: values[rows]}, weight=weights[rows])

    def _evaluate(self, expr: Any, namespace: _Namespace, what: str, n: int, where: str) -> np.ndarray:
        """One float64 per event of ``namespace`` for a compiled source."""
        try:
            value = expr.evaluate(namespace)
        except ExpressionError as exc:
            raise ExpressionError(f"{what}: {exc}{where}") from None
        if what == "selection":
            return _mask(value, n, expr)
        return _per_event(value, n, what, expr)

    def _columns(self, compiled: dict[str, Any], events: Any, metadata: dict[str, Any], where: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """(selected columns, selection mask, label table of all events, weights of all events)."""
        n = len(events)
        everything = _Namespace(events, metadata)
        sel = compiled["selection"]
        mask = np.ones(n, dtype=bool) if sel is None else self._evaluate(sel, everything, "selection", n, where)
        table = np.zeros((n, len(self.labels)))
        for j, (name, expr) in enumerate(compiled["labels"].items()):
            table[:, j] = self._evaluate(expr, everything, f"label {name!r}", n, where)
        w = compiled["weight"]
        weights = np.ones(n) if w is None else self._evaluate(w, everything, "weight", n, where)
        n_sel = int(mask.sum())
        chosen = _Namespace(events, metadata, mask, parent=everything)
        columns = {name: self._evaluate(e, chosen, f"feature {name!r}", n_sel, where) for name, e in compiled["features"].items()}
        columns.update({name: table[mask, j] for j, name in enumerate(self.labels)})
        columns["weight"] = weights[mask]
        return columns, mask, table, weights

    def process(self, events: Any) -> dict[str, Any]:
        metadata = dict(getattr(events, "metadata", None) or {})
        dataset = str(metadata.get("dataset", ""))
        filename = str(metadata.get("filename", ""))
        where = f" (file {filename})" if filename else ""
        columns, mask, table, weights = self._columns(self._compiled(), events, metadata, where)
        n_sel = len(columns["weight"])
        entry_start = int(metadata.get("entrystart", 0) or 0)
        columns["_fileid"] = np.full(n_sel, file_id(filename), dtype=np.int64)
        columns["_entry"] = (np.flatnonzero(mask) + entry_start).astype(np.int64)
        columns["_dataset"] = np.full(n_sel, _dataset_id(dataset), dtype=np.int64)
        hists = {}
        for name, (lo, hi) in self.ranges.items():
            hists[name] = self._new_hist(name, lo, hi)
            codes = np.zeros(n_sel, dtype=np.int64)
            self._fill(hists[name], name, [dataset], codes, table[mask], columns[name], columns["weight"])
        return {
            "columns": {k: processor.column_accumulator(v) for k, v in columns.items()},
            "cutflow": {dataset: _cutflow(table, mask, weights)},
            "datasets": {(_dataset_id(dataset), dataset)},
            "hists": hists,
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Add automatic-range histograms for the features without a range (from the merged columns)."""
        columns = {k: v.value for k, v in accumulator["columns"].items()}
        hists = dict(accumulator.get("hists") or {})
        names = dict(accumulator.get("datasets") or set())
        ids = sorted(names)
        codes = np.searchsorted(ids, columns["_dataset"]) if ids else np.zeros(len(columns["weight"]), dtype=np.int64)
        table = np.stack([columns[k] for k in self.labels], axis=1) if self.labels else np.zeros((len(columns["weight"]), 0))
        for name in self.features:
            if name in hists:
                continue
            values = columns[name]
            finite = np.isfinite(values)
            lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            hists[name] = self._new_hist(name, lo, float(np.nextafter(hi, np.inf)))  # the maximum in the last bin
            self._fill(hists[name], name, [names[i] for i in ids], codes, table, values, columns["weight"])
        accumulator["hists"] = hists
        return accumulator
