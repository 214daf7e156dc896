"""Mass scans: signal templates from a trained flow at many mass points, through coffea.

:func:`run_scan` runs :class:`fedhex_hep.processors.generation.FlowTemplateProcessor` with coffea's
``Runner`` on the same executors as extraction (``iterative``, ``futures``, ``dask`` with a
``LocalCluster`` it starts itself or an existing scheduler address) and writes ONE ROOT file
for a template fit. Each mass point ``i`` is generated with a seed derived from
``(seed, i)``, so the file is identical whichever executor, worker count or chunking is used.

Grid syntax (:func:`grid_points`)
---------------------------------
``SPEC`` = one field per label, in the model's label order, separated by ``,``; the points are
the Cartesian product (first label varies slowest). Each field is

* ``start:stop:step`` -- ``start, start+step, ...`` up to and including ``stop`` (GeV),
* ``v1/v2/v3`` -- explicit values, or a single value ``v``.

Several grids may be joined with ``;`` (their points are concatenated, duplicates dropped).
Example: ``"1000:3000:250,1:9:1"`` -> 9 x 9 = 81 points (1000, 1), (1000, 2), ..., (3000, 9);
``"1870/2464,9.025"`` -> 2 points.

ROOT file layout
----------------
``h_<feature>__<label1>_<v1>__<label2>_<v2>`` (TH1D, Sumw2)
    the template of ``feature`` at one mass point, e.g. ``h_phi__labelphi_1870__labelomega_9p025``
    (values: shortest decimal form, ``.`` -> ``p``, ``-`` -> ``m``; :mod:`fedhex_hep.naming`).
    Every histogram of a feature has the same bin edges (``bins``, ``output.binning``). Events
    outside the edges (``overflow``): ``drop`` -- events are generated inside the binning and
    the ``ranges`` (the flow density truncated there), so a template holds ``n_events`` and no
    under/overflow; ``fold`` -- events are generated inside the ``ranges`` only and those
    outside the edges are added to the first/last bin. Integral: ``n_events``; with
    ``yield_normalised``, ``eff x acceptance x xsec x lumi`` (xsec in pb, lumi in 1/pb), or
    ``n_events x eff`` when no xsec/lumi is given.
``h_<feature>__..._interpUp`` / ``..._interpDown`` (TH1D, with ``variations``)
    the template +- the ensemble members' spread per bin (:mod:`fedhex_hep.generation.uncertainty`),
    combine's ``$PROCESS_$SYSTEMATIC`` convention; scaled like the template.
``scan`` (TTree)
    one entry per mass point: ``point_index``, one branch per label (GeV), ``n_events``
    (generated), ``integral`` (sum of weights of the nominal template), ``eff``, ``eff_err``
    (NaN when no efficiency is known), ``acceptance`` (accepted / drawn: the fraction of the
    flow's events at that point that the template represents -- inside the ranges, and inside
    the binning with ``drop``), ``outside`` (``drop``: 1 - acceptance; ``fold``: the largest
    fraction folded into an edge bin over the point's templates).
``efficiency`` (TTree)
    as in :mod:`fedhex_hep.io.export`: labels, ``eff``, ``eff_err``, ``interpolated`` (0: measured
    at a training point, 1: from the smooth :class:`~fedhex_hep.generation.efficiency.EfficiencyModel`),
    ``in_range``. Absent when no efficiency is known.
``meta/`` (TObjString, JSON text)
    ``config``, ``version``, ``model_path``, ``seed``, ``n_events``, ``yield_normalised``,
    ``normalisation`` (what the integral is), ``feature_names``, ``label_names``, ``binning``
    (edges per feature, GeV), ``ranges``, ``overflow`` (policy, meaning, fraction outside per
    histogram), ``variations``, ``naming``, ``histograms`` (name, feature, point, integral,
    outside), ``efficiency``, ``executor``.

A CMS combine datacard picks the template of one mass point with a ``shapes`` line; name the
datacard channel after the feature and ``$CHANNEL`` selects the feature::

    shapes sig  *  scan.root  h_$CHANNEL__labelphi_1870__labelomega_9p025
    shapes sig  phi  scan.root  h_phi__labelphi_1870__labelomega_9p025

With a single label and integer masses, ``$MASS`` works too (``combine -m 1870``)::

    shapes sig  *  scan.root  h_$CHANNEL__labelphi_$MASS

Python use::

    from fedhex_hep.generation.scan import grid_points, run_scan
    run_scan("output/run-.../model", grid_points("1000:3000:250,1:9:1"), n_events=20000,
             output="output/scan.root", bins={"phi": (60, 500.0, 3500.0)}, executor="dask",
             workers=4, yield_normalised=True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.extraction.executors import EXECUTORS, ExecutorError, bars_unless, check_executor, dask_client
from fedhex_hep.errors import FedhexError
from fedhex_hep.naming import hist_name, point_tag as point_key, variation_name

__all__ = ["ScanError", "grid_points", "run_scan", "resolve_bins", "scan_efficiency", "EXECUTORS", "SCAN_NAMING"]

log = logging.getLogger(__name__)

#: The histogram naming pattern (also stored in the file as ``meta/naming``).
SCAN_NAMING = (
    "h_<feature>__<label1>_<v1>__<label2>_<v2> (TH1D, one per mass point and feature); "
    "<that name>_interpUp/Down (interpolation band); "
    "values: shortest decimal, '.'->'p', '-'->'m' (1870, 9p025); "
    "combine: shapes sig * scan.root h_$CHANNEL__<label1>_<v1>__<label2>_<v2> h_$CHANNEL__<label1>_<v1>__<label2>_<v2>_$SYSTEMATIC"
)
#: What the ``overflow`` policies do to the templates (stored in ``meta/overflow``).
OVERFLOW_MEANING = {
    "drop": "events are generated inside the binning and ranges; fraction = share of the flow's events outside, not in the template",
    "fold": "events outside the binning are added to the first/last bin; fraction = share folded",
}
#: Events per point of the pilot sample that chooses an automatic binning.
PILOT_EVENTS = 2000
#: At most this many mass points (spread over the list) make the pilot sample.
PILOT_POINTS = 9

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class ScanError(FedhexError, ValueError):
    """Bad scan input (grid spec, binning, executor, efficiency); names the key at fault."""


# -- grid ------------------------------------------------------------------------------------
def _parse_field(text: str, where: str) -> list[float]:
    text = text.strip()
    if re.fullmatch(rf"{_NUMBER}:{_NUMBER}:{_NUMBER}", text):
        start, stop, step = (float(x) for x in text.split(":"))
        if not step > 0 or stop < start:
            raise ScanError(f"grid {where} {text!r}: need step > 0 and stop >= start")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > 100000:
            raise ScanError(f"grid {where} {text!r}: {n} values is too many")
        # round away float noise of start + i*step (e.g. 0.1 steps) at 12 significant digits
        return [float(f"{start + i * step:.12g}") for i in range(n)]
    if re.fullmatch(rf"{_NUMBER}(?:/{_NUMBER})*", text):
        return [float(x) for x in text.split("/")]
    raise ScanError(f"grid {where} {text!r} is not 'start:stop:step', 'v1/v2/...' or a number")


def grid_points(spec: str, n_labels: int | None = None) -> np.ndarray:
    """Mass points (k, n_labels) from a grid spec like ``"1000:3000:250,1:9:1"`` (GeV).

    Syntax in the module docstring. ``n_labels``, when given, must match the number of fields.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ScanError("grid spec is empty (expected e.g. '1000:3000:250,1:9:1')")
    blocks = []
    for part in spec.split(";"):
        fields = [f for f in part.split(",")]
        if n_labels is not None and len(fields) != n_labels:
            raise ScanError(f"grid {part.strip()!r} has {len(fields)} fields, the model has {n_labels} labels")
        axes = [_parse_field(f, f"field {i + 1}") for i, f in enumerate(fields)]
        mesh = np.meshgrid(*axes, indexing="ij")
        blocks.append(np.stack([m.ravel() for m in mesh], axis=1))
    if len({b.shape[1] for b in blocks}) != 1:
        raise ScanError(f"grid {spec!r}: the ';'-separated grids have different numbers of fields")
    points = np.concatenate(blocks)
    _, first = np.unique(points, axis=0, return_index=True)
    return points[np.sort(first)]


# -- binning ---------------------------------------------------------------------------------
def resolve_bins(
    model_dir: str | Path,
    points: np.ndarray,
    bins: Any,
    seed: int,
    ranges: Mapping[str, Sequence[float]] | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """Template binning per feature: ``{feature: (n, lo, hi) | [edges]}`` (GeV).

    ``bins``: a mapping feature -> ``(n, lo, hi)``, edges, ``"n:lo:hi"`` / ``"e0,e1,..."`` / an edges
    file (only those features get templates); an int (that many bins for every feature); or None.
    With an int or None, ``output.binning`` of the model's config gives the features it names;
    the others get ``output.bins`` (or the int) equal bins over ``generation.ranges`` of the
    feature if set, else over the 0.1-99.9% quantiles of a pilot sample of the flow (inside
    ``ranges``). ``config``: used instead of the model's configuration.
    """
    from fedhex_hep.binning import BinningError, edges_from_spec

    config = config or _model_config(Path(model_dir))
    features = config.feature_names
    spec = _bins_spec(bins, config)
    unknown = [f for f in spec if f not in features]
    if unknown:
        raise ScanError(f"bins: unknown feature {unknown[0]!r} (model features: {features})")
    out: dict[str, Any] = {}
    missing: dict[str, int] = {}
    for feature, value in spec.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            rng = config.generation.ranges.get(feature)
            if rng:
                out[feature] = (int(value), float(rng[0]), float(rng[1]))
            else:
                missing[feature] = int(value)
            continue
        try:
            edges = edges_from_spec(value, feature)
        except BinningError as exc:
            raise ScanError(str(exc)) from None
        out[feature] = (len(edges) - 1, float(edges[0]), float(edges[-1])) if isinstance(value, tuple) else edges.tolist()
    if missing:
        out.update(_pilot_bins(model_dir, points, missing, seed, ranges))
    return {f: out[f] for f in spec}


def _bins_spec(bins: Any, config: Any) -> dict[str, Any]:
    """Per feature: a bin count (automatic range) or an explicit specification."""
    if isinstance(bins, Mapping):
        return dict(bins)
    if bins is None:
        count = int(config.output.bins)
    elif isinstance(bins, (int, np.integer)) and not isinstance(bins, bool) and bins > 0:
        count = int(bins)
    else:
        raise ScanError(f"bins must be a dict feature -> edges | (n, lo, hi), a positive int or None; got {bins!r}")
    spec: dict[str, Any] = {f: count for f in config.feature_names}
    for feature, value in config.output.binning.items():
        if feature not in spec:
            raise ScanError(f"config key 'output.binning.{feature}': no such feature (features: {config.feature_names})")
        spec[feature] = value
    return spec


def _pilot_bins(
    model_dir: str | Path, points: np.ndarray, counts: Mapping[str, int], seed: int, ranges: Mapping[str, Sequence[float]] | None
) -> dict[str, tuple[int, float, float]]:
    """``(n, lo, hi)`` over the 0.1-99.9% quantiles of a small flow sample at up to PILOT_POINTS points."""
    from fedhex_hep.binning import BinningError, quantile_edges
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.model.cache import load_model_cached

    model = load_model_cached(model_dir)
    pick = np.unique(np.linspace(0, len(points) - 1, min(PILOT_POINTS, len(points))).round().astype(int))
    # the scan's processor warns about the points the grid supports poorly, all at once
    pilot = generate(model, points[pick], PILOT_EVENTS, seed=int(seed) + 7919, ranges=ranges or None, warn_support=False)
    out = {}
    for feature, n in counts.items():
        try:
            edges = quantile_edges(pilot.column(feature), n, 0.001, 0.999, what=f"feature {feature!r} of the pilot sample")
        except BinningError as exc:
            raise ScanError(str(exc)) from None
        out[feature] = (n, float(edges[0]), float(edges[-1]))
    return out


# -- efficiency ------------------------------------------------------------------------------
def scan_efficiency(
    efficiency: Any, model_dir: str | Path, points: np.ndarray, feature_names: Sequence[str], label_names: Sequence[str]
) -> dict[str, Any] | None:
    """Efficiency at the scan points, as :func:`fedhex_hep.io.export.resolve_efficiency` returns it.

    ``efficiency``: a float (the same at every point), an
    :class:`~fedhex_hep.generation.efficiency.EfficiencyModel` / ``EfficiencyTable`` (or their dicts), an
    extraction cutflow, a path to a JSON file holding one of those, or a path to a FeatureSet
    parquet (its ``metadata["efficiency"]`` or ``["cutflow"]``). None: ``<model_dir>/efficiency.json``,
    then ``efficiency`` / ``cutflow`` in the model's ``training.json``; None when nothing is found.
    The ``points`` entry is in the order of ``points``.
    """
    from fedhex_hep.io.export import ExportError, resolve_efficiency
    from fedhex_hep.io.featureset import FeatureSet

    points = np.asarray(points, dtype=np.float64)
    if isinstance(efficiency, bool):
        raise ScanError("efficiency must be a number, an efficiency model/table, a path or None, not a bool")
    if isinstance(efficiency, (int, float, np.floating)):
        return _constant_efficiency(float(efficiency), points, label_names)
    source, where = _efficiency_source(efficiency, Path(model_dir))
    if source is None:
        return None
    # export.resolve_efficiency works on a FeatureSet's label points: give it one row per point.
    stub = FeatureSet.from_numpy(np.zeros((len(points), len(feature_names))), points, feature_names, label_names)
    try:
        resolved = resolve_efficiency(stub, source)
    except ExportError as exc:
        raise ScanError(f"{where}: {exc}") from None
    if resolved is None:
        return None
    got = np.asarray(resolved["points"]["points"], dtype=np.float64).reshape(-1, len(label_names))
    order = [int(np.flatnonzero(np.all(got == p, axis=1))[0]) for p in points]
    resolved["points"] = {
        key: ([value[i] for i in order] if isinstance(value, list) and len(value) == len(got) else value)
        for key, value in resolved["points"].items()
    }
    return resolved


def _constant_efficiency(value: float, points: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    if not 0.0 < value <= 1.0:
        raise ScanError(f"efficiency {value} is outside (0, 1]")
    k = len(points)
    return {
        "model": None,
        "table": None,
        "constant": value,
        "points": {
            "label_names": list(label_names),
            "points": points.tolist(),
            "eff": [value] * k,
            "err": [0.0] * k,
            "interpolated": [1] * k,
            "in_range": [1] * k,
        },
    }


def _efficiency_source(source: Any, model_dir: Path) -> tuple[Any, str]:
    """The efficiency object (dict, model, table or cutflow) and where it came from."""
    from fedhex_hep.io.featureset import FeatureSet, FeatureSetError
    from fedhex_hep.model.storage import read_model_files

    where = "efficiency argument"
    if source is None:
        if (model_dir / "efficiency.json").is_file():
            source = model_dir / "efficiency.json"
        else:
            _, _, info = read_model_files(model_dir)
            for key in ("efficiency", "cutflow"):
                if info.get(key):
                    return info[key], f"{model_dir / 'training.json'}[{key!r}]"
    if not isinstance(source, (str, Path)):
        return source, where
    path = Path(source)
    if not path.is_file():
        raise ScanError(f"efficiency file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            meta = FeatureSet.load(path).metadata
        except FeatureSetError as exc:
            raise ScanError(str(exc)) from None
        found = meta.get("efficiency") or meta.get("cutflow")
        if not found:
            raise ScanError(f"{path}: FeatureSet metadata has no 'efficiency' or 'cutflow'")
        return found, str(path)
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, ValueError) as exc:
        raise ScanError(f"efficiency file {path} is not readable JSON ({exc})") from None


# -- executors -------------------------------------------------------------------------------
@contextlib.contextmanager
def _executor(kind: str, workers: int, scheduler: str | None, progress: bool) -> Iterator[Any]:
    """A coffea executor for ``kind``; dask: a LocalCluster started here or ``scheduler``."""
    from coffea import processor

    if kind == "iterative":
        yield processor.IterativeExecutor(status=progress, desc="Generating", unit="chunks")
    elif kind == "futures":
        yield processor.FuturesExecutor(workers=workers, status=progress, desc="Generating", unit="chunks")
    elif kind == "dask":
        with dask_client(workers, scheduler) as client:
            yield processor.DaskExecutor(client=client, status=progress, desc="Generating", unit="chunks")
    else:
        raise ScanError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")


# -- the scan --------------------------------------------------------------------------------
def run_scan(
    model_dir: str | Path,
    points: np.ndarray | Sequence[Sequence[float]] | str,
    n_events: int,
    output: str | Path,
    bins: Mapping[str, Any] | int | None = None,
    executor: str = "iterative",
    workers: int = 2,
    scheduler: str | None = None,
    seed: int = 1,
    yield_normalised: bool = False,
    efficiency: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    chunk_points: int | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
    overflow: str | None = None,
    xsec: float | None = None,
    lumi: float | None = None,
    variations: bool = False,
    batch_size: int = 2**18,
    config: Any = None,
) -> Path:
    """Generate ``n_events`` per mass point with the flow in ``model_dir``; write one ROOT file.

    ``points``: (k, n_labels) masses in GeV in the model's label order, or a grid spec string
    (:func:`grid_points`). ``bins``: see :func:`resolve_bins`. ``executor``: ``iterative``,
    ``futures`` (``workers`` processes) or ``dask`` (a ``LocalCluster`` of ``workers``
    single-threaded processes, or the existing cluster at ``scheduler``, e.g. ``tcp://host:8786``;
    workers must see ``model_dir`` and the output folder). ``chunk_points``: mass points per
    coffea chunk (default: all points in one chunk for ``iterative``, else whole point groups
    spread over ``4 * workers`` chunks). ``ranges``: per-feature acceptance ``{feature: (lo, hi)}``.
    ``overflow``: ``drop`` or ``fold`` (default: ``output.overflow`` of the model's config).
    ``yield_normalised``: scale each template to ``efficiency x acceptance x xsec x lumi`` events
    (xsec [pb], lumi [1/pb]) when both are given, else to ``n_events x efficiency``.
    ``variations``: also write ``<template>_interpUp/Down`` from the ensemble members.
    ``config``: a :class:`~fedhex_hep.config.Config` whose ``output.bins``/``output.binning``/
    ``output.overflow`` and ``generation.ranges``/``xsec``/``lumi`` fill the arguments left None
    (default: the model's own configuration). Refuses an existing ``output`` unless ``overwrite``. Returns the path written.
    """
    output = _check_output(output, overwrite, executor, int(workers), scheduler)
    model_dir = Path(model_dir).resolve()
    config = config or _model_config(model_dir)
    points = _as_points(points, config.label_names)
    if variations:
        _check_band_source(model_dir)
    eff = scan_efficiency(efficiency, model_dir, points, config.feature_names, config.label_names)
    norm = _Normalisation.check(yield_normalised, eff, xsec, lumi, points, model_dir, config)
    ranges = {k: tuple(v) for k, v in config.generation.ranges.items()} if ranges is None else ranges
    bins_spec = resolve_bins(model_dir, points, bins, seed, ranges, config)
    proc = _processor(model_dir, points, n_events, bins_spec, seed, ranges, overflow or config.output.overflow, variations, batch_size)
    chunk_points = _chunk_points(chunk_points, executor, int(workers), len(points), proc.group_size)
    result = _run_processor(proc, executor, int(workers), scheduler, progress, chunk_points, output)
    collected = _collect(proc, result, eff, norm)
    meta = _scan_meta(config, model_dir, proc, collected, eff, norm, {"kind": executor, "workers": int(workers), "chunk_points": chunk_points})
    _write_scan_file(output, proc, collected, eff, meta, overwrite)
    log.info("wrote %d templates at %d mass points to %s", len(collected["hists"]), len(points), output)
    return output


def _check_output(output: str | Path, overwrite: bool, executor: str, workers: int, scheduler: str | None = None) -> Path:
    from fedhex_hep.io.atomic import check_writable

    output = check_writable(Path(output), overwrite=overwrite)
    try:
        check_executor(executor, int(workers), scheduler)
    except ExecutorError as exc:
        raise ScanError(str(exc)) from None
    return output


def _model_config(model_dir: Path) -> Any:
    from fedhex_hep.model.storage import ModelDirError, read_model_files

    try:
        config, _, _ = read_model_files(model_dir)
    except ModelDirError as exc:
        raise ScanError(str(exc)) from None
    return config


def _as_points(points: Any, label_names: Sequence[str]) -> np.ndarray:
    if isinstance(points, str):
        points = grid_points(points, n_labels=len(label_names))
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1 and len(label_names) == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[1] != len(label_names) or len(points) == 0:
        raise ScanError(f"points must have shape (k, {len(label_names)}) for labels {label_names}, got {points.shape}")
    return points


class _Normalisation:
    """How templates are scaled: 1, efficiency, or efficiency x acceptance x xsec x lumi / n_events."""

    def __init__(self, yield_normalised: bool, xsec: float, lumi: float) -> None:
        self.yield_normalised = yield_normalised
        self.xsec = xsec
        self.lumi = lumi

    @classmethod
    def check(
        cls, yield_normalised: bool, eff: Any, xsec: float | None, lumi: float | None, points: np.ndarray, model_dir: Path, config: Any
    ) -> "_Normalisation":
        """Validated normalisation; xsec and lumi default to ``generation.xsec``/``lumi`` of ``config``."""
        if yield_normalised and xsec is None and lumi is None:
            xsec, lumi = config.generation.xsec, config.generation.lumi
        xsec, lumi = float(xsec or 0.0), float(lumi or 0.0)
        if xsec < 0 or lumi < 0 or (xsec > 0) != (lumi > 0):
            raise ScanError(f"xsec and lumi must both be > 0 (or both unset), got xsec={xsec:g}, lumi={lumi:g}")
        if xsec > 0 and not yield_normalised:
            raise ScanError("xsec and lumi set the template yields only with yield_normalised=True (--yield-normalised)")
        if yield_normalised:
            if eff is None:
                raise ScanError(
                    f"yield_normalised needs an efficiency: none given and none found in {model_dir} "
                    "(efficiency.json or training.json); pass efficiency=..."
                )
            bad = [i for i, e in enumerate(eff["points"]["eff"]) if not (np.isfinite(e) and e > 0)]
            if bad:
                raise ScanError(f"no usable efficiency at mass point {points[bad[0]].tolist()} (eff = {eff['points']['eff'][bad[0]]})")
        return cls(bool(yield_normalised), xsec, lumi)

    def scale(self, eff: float, acceptance: float, n_events: int) -> float:
        """Factor on a template of ``n_events`` generated events."""
        if not self.yield_normalised:
            return 1.0
        if self.xsec > 0:
            return eff * acceptance * self.xsec * self.lumi / n_events
        return eff

    def describe(self) -> dict[str, Any]:
        if not self.yield_normalised:
            return {"kind": "events", "integral": "n_events"}
        if self.xsec > 0:
            return {"kind": "yield", "integral": "eff x acceptance x xsec x lumi", "xsec_pb": self.xsec, "lumi_inv_pb": self.lumi}
        return {"kind": "efficiency", "integral": "n_events x eff"}


def _processor(model_dir, points, n_events, bins_spec, seed, ranges, overflow, variations, batch_size) -> Any:
    from fedhex_hep.processors.generation import FlowTemplateProcessor, GenerationProcessorError

    try:
        return FlowTemplateProcessor(
            model_dir, points, n_events, bins_spec, seed=seed, ranges=ranges, overflow=overflow,
            variations=variations, batch_size=batch_size,
        )
    except GenerationProcessorError as exc:
        raise ScanError(str(exc)) from None


def _chunk_points(chunk_points: int | None, executor: str, workers: int, n_points: int, group: int) -> int:
    """Mass points per coffea chunk: whole point groups (a split group is generated twice)."""
    if chunk_points is not None:
        return int(chunk_points)
    if executor == "iterative":
        return n_points
    groups = math.ceil(n_points / group)
    return group * max(1, math.ceil(groups / (4 * workers)))


def _run_processor(proc: Any, executor: str, workers: int, scheduler: str | None, progress: bool, chunk_points: int, output: Path) -> dict:
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    from fedhex_hep.processors.generation import GenerationProcessorError

    # The points file lives beside the output so that dask workers (which must see the output
    # folder anyway) can read it; removed when the scan ends.
    with tempfile.TemporaryDirectory(prefix=".fedhex-scan-", dir=output.parent) as scratch:
        fileset = proc.fileset(scratch, chunk_points=chunk_points)
        with _executor(executor, workers, scheduler, progress) as exe:
            runner = processor.Runner(executor=exe, schema=BaseSchema, chunksize=chunk_points)
            try:
                with bars_unless(progress):
                    result = runner(fileset, proc, treename="Points")
            except GenerationProcessorError as exc:
                raise ScanError(str(exc)) from None
    missing = [name for name in proc.template_names() if name not in result["templates"]]
    if missing:
        raise ScanError(f"scan output lacks histogram {missing[0]} ({len(missing)} missing): a chunk was lost")
    return result


def _collect(proc: Any, result: dict, eff: Any, norm: _Normalisation) -> dict[str, Any]:
    """Scaled (and, with ``fold``, folded) templates and the per-point table of the ``scan`` tree."""
    from fedhex_hep.binning import apply_overflow

    k = len(proc.points)
    keys = [point_key(proc.label_names, p) for p in proc.points]
    table = {
        "n_events": np.array([result["n_generated"][key] for key in keys], dtype=np.int64),
        "integral": np.zeros(k),
        "eff": np.asarray(eff["points"]["eff"], dtype=np.float64) if eff is not None else np.full(k, np.nan),
        "eff_err": np.asarray(eff["points"]["err"], dtype=np.float64) if eff is not None else np.full(k, np.nan),
        "acceptance": np.array([result["acceptance"][key] for key in keys], dtype=np.float64),
        "outside": np.zeros(k),
    }
    hists, listing = [], []
    for i, point in enumerate(proc.points):
        if table["n_events"][i] != proc.n_events:
            raise ScanError(f"mass point {point.tolist()}: generated {table['n_events'][i]} events, asked for {proc.n_events}")
        scale = norm.scale(float(table["eff"][i]), float(table["acceptance"][i]), proc.n_events)
        where = dict(zip(proc.label_names, map(float, point)))
        for feature in proc.bins:
            nominal = hist_name(feature, proc.label_names, point)
            names = [nominal] + ([variation_name(nominal, proc.syst, d) for d in ("Up", "Down")] if proc.variations else [])
            for name in names:
                h = result["templates"][name]
                if proc.overflow == "fold":
                    h, fraction = apply_overflow(h, "fold")
                else:  # sampled inside the edges: what fell outside was never drawn
                    fraction = 1.0 - float(table["acceptance"][i])
                if scale != 1.0:
                    h = h * scale  # Weight storage: variances scale by scale^2
                h.name = name
                hists.append((name, h))
                integral = float(h.sum(flow=True).value)
                if name == nominal:
                    table["integral"][i] = integral
                    table["outside"][i] = max(table["outside"][i], fraction)
                listing.append({"name": name, "feature": feature, "point": where, "integral": integral, "outside": fraction})
    return {"hists": hists, "listing": listing, "table": table}


def _scan_meta(config, model_dir, proc, collected, eff, norm, executor) -> dict[str, Any]:
    from fedhex_hep import __version__

    return {
        "config": config.to_dict(),
        "version": __version__,
        "model_path": str(model_dir),
        "seed": int(proc.seed),
        "n_events": int(proc.n_events),
        "yield_normalised": bool(norm.yield_normalised),
        "normalisation": norm.describe(),
        "feature_names": list(config.feature_names),
        "label_names": list(config.label_names),
        "binning": {f: proc.empty_histogram(f).axes[0].edges.tolist() for f in proc.bins},
        "ranges": {f: list(v) for f, v in proc.user_ranges.items()},
        "overflow": {
            "policy": proc.overflow,
            "meaning": OVERFLOW_MEANING[proc.overflow],
            "fraction": {e["name"]: e["outside"] for e in collected["listing"]},
        },
        "variations": {"syst": proc.syst, "members": _n_members(model_dir)} if proc.variations else None,
        "naming": SCAN_NAMING,
        "histograms": collected["listing"],
        "efficiency": eff,
        "executor": executor,
    }


def _check_band_source(model_dir: Path) -> None:
    from fedhex_hep.generation.uncertainty import BandWithoutBootstrapWarning

    model = _model_config(model_dir).model
    if model.ensemble >= 2 and not model.bootstrap:
        warnings.warn(
            f"{model_dir}: model.bootstrap = false, so the ensemble members were fitted to the same events and "
            "the interpolation band leaves out the training grid's statistical uncertainty; train with "
            "model.bootstrap = true (and model.ensemble >= 3) for a band that holds it",
            BandWithoutBootstrapWarning, stacklevel=3,
        )


def _n_members(model_dir: Path) -> int:
    return int(_model_config(model_dir).model.ensemble)


def _write_scan_file(output: Path, proc: Any, collected: dict, eff: Any, meta: dict, overwrite: bool) -> None:
    """All templates, the ``scan`` and ``efficiency`` trees and ``meta/`` in one pass over one file."""
    import uproot

    from fedhex_hep.io.atomic import atomic_path

    points, label_names = proc.points, proc.label_names
    labels = {name: np.ascontiguousarray(points[:, j]) for j, name in enumerate(label_names)}
    with atomic_path(output, overwrite=overwrite) as tmp:
        with uproot.recreate(tmp) as out:
            for name, h in collected["hists"]:
                out[name] = h
            scan = {"point_index": np.arange(len(points), dtype=np.int64), **labels, **collected["table"]}
            out.mktree("scan", {k: v.dtype for k, v in scan.items()}, title="fedhex-hep mass scan: one entry per mass point")
            out["scan"].extend(scan)
            if eff is not None:
                branches = dict(labels)
                branches["eff"] = collected["table"]["eff"]
                branches["eff_err"] = collected["table"]["eff_err"]
                branches["interpolated"] = np.asarray(eff["points"]["interpolated"], dtype=np.int32)
                branches["in_range"] = np.asarray(eff["points"]["in_range"], dtype=np.int32)
                out.mktree("efficiency", {k: v.dtype for k, v in branches.items()}, title="selection efficiency at the scan points")
                out["efficiency"].extend(branches)
            out.mkdir("meta")
            for key, value in meta.items():
                out[f"meta/{key}"] = value if isinstance(value, str) else json.dumps(value, default=_jsonable)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return str(x)
