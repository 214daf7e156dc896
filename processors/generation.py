"""A coffea processor that generates signal templates with a trained flow, per mass point.

:class:`FlowTemplateProcessor` turns a trained model directory, a list of mass points, the
events per point and the analysis's binning into ``hist`` histograms (one per mass point and
feature, ``Weight`` storage) and, optionally, the generated events as awkward arrays. Its
output is a plain dict merged by coffea's accumulators like any other processor output.

How the work reaches coffea's executors
---------------------------------------
coffea's :class:`coffea.processor.Runner` splits *entries of a ROOT tree* into chunks and
sends each chunk to a worker. The mass points are therefore written as a tiny ROOT tree
(tree ``Points``: ``point_index`` and one branch per label, one entry per mass point) by
:meth:`FlowTemplateProcessor.fileset`; the Runner chunks it with ``chunksize`` = mass points
per chunk, and ``process(events)`` generates the points whose ``point_index`` the chunk holds.
This is the ordinary Runner/executor/accumulator machinery (iterative, futures, dask), so the
scan can share one job with any other processor (see :class:`CombinedProcessor` and the
example below). Workers must see the points file and the model directory (a shared
filesystem), exactly like they must see the input ROOT files.

* The model is loaded lazily on the worker from its path and cached per process
  (:func:`load_model_cached`); only the path travels in the task graph, never the weights.
  TensorFlow is imported there, never at import time of this module.
* Mass points are generated in fixed groups (:attr:`FlowTemplateProcessor.group_size` points
  share one sampler call of one shape, compiled once per process); group ``g`` uses a seed
  derived from ``(seed, g)`` (:func:`point_seed`), and a chunk holding part of a group
  generates the whole group, so the histograms do not depend on how points are chunked or
  which worker runs them: the same seed gives identical histograms on any executor.
* ``overflow="drop"`` (default): events are sampled inside the histogram range (the flow
  density truncated to the binning, by rejection in :func:`fedhex_hep.generation.sampling.generate`),
  so every histogram holds exactly ``n_events`` entries and no over/underflow.
  ``overflow="fold"``: events outside the binning stay in the flow bins (``run_scan`` folds them).
* ``variations=True``: each ensemble member generates the group too; the templates
  ``<name>_<syst>Up/Down`` are the nominal +- the members' spread per bin, scaled to a
  one-sigma prediction interval (:func:`fedhex_hep.generation.uncertainty.band_scale`).

Output of ``process`` (and of the Runner)::

    {"templates": {"h_<feature>__<label1>_<v1>__<label2>_<v2>": hist.Hist, ...},
     "n_generated": {"<label1>_<v1>__<label2>_<v2>": int, ...},
     "acceptance": {"<label1>_<v1>__<label2>_<v2>": float, ...},   # accepted / drawn: the
                                                     # fraction of the flow's events inside
                                                     # the ranges (and, with drop, the binning)
     "events": {"<label1>_<v1>__<label2>_<v2>": ak.Array, ...}}   # only with return_events=True

Values are written like folder names of the samples: ``1870``, ``9p025`` (``p`` = decimal
point, ``m`` = minus sign); see :func:`template_name`.

Example: a user's own processor that calls ours inside its ``process``
---------------------------------------------------------------------
.. code-block:: python

    import hist
    from coffea import processor
    from coffea.nanoevents import BaseSchema
    from fedhex_hep.processors.generation import FlowTemplateProcessor

    class MyAnalysis(processor.ProcessorABC):
        def __init__(self, model_dir, mass_points):
            # Templates from the flow at any mass points, in the analysis's own binning (GeV).
            self.templates = FlowTemplateProcessor(
                model_dir, mass_points, n_events=20000,
                bins={"phi": (60, 500.0, 3500.0), "omega": (50, 0.0, 20.0)}, seed=1,
            )

        def process(self, events):
            if self.templates.handles(events):       # a chunk of mass points
                return {"signal_templates": self.templates.process(events)}
            # ... the analysis's usual work on its MC / data chunks ...
            h = hist.Hist.new.Reg(60, 500.0, 3500.0, name="phi").Weight()
            h.fill(phi=events.CBL_RecoPhi_mass)
            return {"mc": {events.metadata["dataset"]: h}}

        def postprocess(self, accumulator):
            return accumulator

    analysis = MyAnalysis("output/run-.../model", [[1870.0, 9.025], [2464.0, 5.125]])
    fileset = {"signal_mc": {"files": {"data/demo/Phi_2000_omega_5/nano_0.root": "Events"}}}
    fileset.update(analysis.templates.fileset("scratch/"))   # writes scratch/flow_points.root
    run = processor.Runner(executor=processor.IterativeExecutor(), schema=BaseSchema, chunksize=10000)
    out = run(fileset, analysis)
    out["signal_templates"]["templates"]["h_phi__labelphi_1870__labelomega_9p025"]

The runner's ``chunksize`` applies to the points tree too (mass points per chunk); to split
the points more finely than the MC, give the points dataset its own file per group (see
``FlowTemplateProcessor.fileset(..., chunk_points=...)``), which writes one points file per
group of ``chunk_points`` points.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from coffea import processor
from fedhex_hep.errors import FedhexError
from fedhex_hep.model.cache import load_model_cached
from fedhex_hep.generation.uncertainty import interpolation_band
from fedhex_hep.naming import format_value, variation_name, point_tag as point_key, hist_name as template_name

__all__ = [
    "CombinedProcessor",
    "FlowTemplateProcessor",
    "GenerationProcessorError",
    "POINTS_TREE",
    "TEMPLATE_DATASET",
    "format_value",
    "interpolation_band",
    "load_model_cached",
    "member_seed",
    "point_key",
    "point_seed",
    "template_name",
    "write_points_file",
]

#: Tree name of the mass-point files read by the Runner.
POINTS_TREE = "Points"
#: Default dataset name of the mass-point files in a coffea fileset.
TEMPLATE_DATASET = "flow_templates"


class GenerationProcessorError(FedhexError, ValueError):
    """Bad scan input (model directory, points, binning); the message names the key at fault."""


# ---------------------------------------------------------------------------------------------
# naming


def point_seed(seed: int, index: int) -> int:
    """Seed of point group ``index``: a function of (seed, index) only, never of the chunking."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# worker-side model loading


# the per-process model cache lives in fedhex_hep.model.cache (no coffea import on the generate path)


# ---------------------------------------------------------------------------------------------
# points files


def write_points_file(path: str | os.PathLike, points: np.ndarray, label_names: Sequence[str],
                      indices: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write mass points as ROOT tree ``Points`` (``point_index`` + one branch per label, GeV)."""
    import uproot

    from fedhex_hep.io.atomic import atomic_path

    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    indices = np.arange(len(points)) if indices is None else np.asarray(indices, dtype=np.int64)
    branches: dict[str, np.ndarray] = {"point_index": indices.astype(np.int64)}
    for j, name in enumerate(label_names):
        branches[name] = np.ascontiguousarray(points[:, j])
    with atomic_path(path, overwrite=overwrite) as tmp:
        with uproot.recreate(tmp) as out:
            out.mktree(POINTS_TREE, {k: v.dtype for k, v in branches.items()})
            out[POINTS_TREE].extend(branches)
    return Path(path)


def _read_model_files(model_path: Path) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Configuration, training grid points and label ranges of a model directory (no TensorFlow)."""
    from fedhex_hep.model.storage import ModelDirError, read_model_files, training_grid

    try:
        config, _, info = read_model_files(model_path)
        grid, label_ranges = training_grid(model_path, info)
    except ModelDirError as exc:
        raise GenerationProcessorError(str(exc)) from None
    return config, grid, label_ranges


def _as_axis(feature: str, spec: Any) -> Any:
    """A hist axis from ``(n, lo, hi)`` (Regular) or bin edges (Variable, kept exactly), GeV."""
    import hist

    from fedhex_hep.binning import BinningError, edges_from_spec

    try:
        edges = edges_from_spec(spec, feature)
    except BinningError as exc:
        raise GenerationProcessorError(f"bins[{feature!r}] = {spec!r}: {exc}") from None
    label = f"{feature} [GeV]"
    if isinstance(spec, tuple):
        return hist.axis.Regular(len(edges) - 1, float(edges[0]), float(edges[-1]), name=feature, label=label)
    return hist.axis.Variable(edges, name=feature, label=label)


# ---------------------------------------------------------------------------------------------
# the processor


def _check_points(points: Any, label_names: Sequence[str]) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1 and len(label_names) == 1:
        pts = pts[:, None]
    if pts.ndim != 2 or pts.shape[1] != len(label_names) or len(pts) == 0:
        raise GenerationProcessorError(
            f"points must have shape (k, {len(label_names)}) for labels {label_names}, got {pts.shape}"
        )
    if not np.all(np.isfinite(pts)):
        raise GenerationProcessorError("points contain NaN or inf")
    keys = [point_key(label_names, p) for p in pts]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise GenerationProcessorError(f"mass point {dup} is listed twice")
    return pts


def _check_user_ranges(ranges: Mapping[str, Sequence[float]] | None, feature_names: Sequence[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, bounds in (ranges or {}).items():
        if name not in feature_names:
            raise GenerationProcessorError(f"range for {name!r}: no such feature (model features: {list(feature_names)})")
        lo, hi = (float(b) for b in bounds)
        if not hi > lo:
            raise GenerationProcessorError(f"range for {name!r} must be [min, max] with min < max, got {list(bounds)}")
        out[name] = (lo, hi)
    return out


def member_seed(seed: int, group: int, member: int) -> int:
    """Seed of ensemble member ``member`` at point group ``group`` (independent of the nominal's)."""
    return int(np.random.SeedSequence([int(seed), int(group), int(member) + 1]).generate_state(1, dtype=np.uint32)[0] >> 1)


class FlowTemplateProcessor(processor.ProcessorABC):
    """Generate ``n_events`` per mass point with a trained flow and fill histograms per feature.

    Parameters
    ----------
    model_path : trained model directory (``config.toml``, weights, ...); loaded on the workers.
    points : mass points, shape (k, n_labels), GeV, in the model's label order; distinct. Points
        outside the training range or in grid cells with corners lacking MC warn once, here
        (:mod:`fedhex_hep.generation.grid_support`).
    n_events : events generated per mass point.
    bins : ``{feature: edges}`` or ``{feature: (n, lo, hi)}`` (GeV); features not listed get no
        histogram.
    seed : base seed; point group ``g`` uses :func:`point_seed(seed, g) <point_seed>`.
    return_events : also return the generated events per point (awkward record arrays).
    chunk_points : mass points per coffea chunk (used by :meth:`fileset` / ``run_scan``); a chunk
        that holds part of a point group generates the whole group (whole groups are cheaper).
    dataset : dataset name of the points files in the fileset.
    batch_size, max_tries : passed to :func:`fedhex_hep.generation.sampling.generate`.
    ranges : per-feature acceptance ``{feature: (min, max)}`` (GeV); events outside are resampled.
    overflow : ``drop`` -- events are generated inside the binning (the fraction outside is
        ``1 - acceptance``); ``fold`` -- events outside the binning stay in the flow bins of the
        returned histograms (``run_scan`` folds them into the edge bins).
    variations : also return ``<template>_<syst>Up/Down`` from the ensemble members' spread.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        points: np.ndarray | Sequence[Sequence[float]],
        n_events: int,
        bins: Mapping[str, Any],
        seed: int = 1,
        return_events: bool = False,
        chunk_points: int = 4,
        dataset: str = TEMPLATE_DATASET,
        batch_size: int = 2**18,
        max_tries: int = 100,
        ranges: Mapping[str, Sequence[float]] | None = None,
        overflow: str = "drop",
        variations: bool = False,
        syst: str = "interp",
    ) -> None:
        from fedhex_hep.binning import BinningError, check_overflow
        from fedhex_hep.generation.grid_support import warn_grid_support

        self.model_path = str(Path(model_path).resolve())
        config, grid, label_ranges = _read_model_files(Path(self.model_path))
        self.feature_names, self.label_names = config.feature_names, config.label_names
        self.points = _check_points(points, self.label_names)
        # once here, for every point; the chunks then generate without repeating it
        warn_grid_support(grid, label_ranges, self.label_names, self.points, stacklevel=2)
        if int(n_events) < 1:
            raise GenerationProcessorError(f"n_events must be >= 1, got {n_events}")
        self.n_events = int(n_events)
        self._set_bins(bins)
        self.user_ranges = _check_user_ranges(ranges, self.feature_names)
        try:
            self.overflow = check_overflow(overflow)
        except BinningError as exc:
            raise GenerationProcessorError(str(exc)) from None
        self.seed = int(seed)
        self.return_events = bool(return_events)
        if int(chunk_points) < 1:
            raise GenerationProcessorError(f"chunk_points must be >= 1, got {chunk_points}")
        self.dataset = str(dataset)
        self.batch_size = int(batch_size)
        self.max_tries = int(max_tries)
        self.variations = bool(variations)
        self.syst = str(syst)
        self.chunk_points = int(chunk_points)

    def _set_bins(self, bins: Mapping[str, Any]) -> None:
        if not bins:
            raise GenerationProcessorError("bins: give edges or (n, lo, hi) for at least one feature")
        unknown = [f for f in bins if f not in self.feature_names]
        if unknown:
            raise GenerationProcessorError(f"bins: unknown feature {unknown[0]!r} (model features: {self.feature_names})")
        self._axes = {f: _as_axis(f, spec) for f, spec in bins.items()}  # validates
        self.bins = {f: np.asarray(self._axes[f].edges, dtype=np.float64).tolist() for f in bins}

    # -- helpers ------------------------------------------------------------------------------

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per-feature acceptance of the generation (GeV): the user's ranges, and with ``drop`` the binning's [lo, hi).

        ``generate`` keeps ``lo <= x <= hi``; the upper bound of a binning is moved one float down
        so that no event can land exactly on the last edge (the overflow bin of a histogram).
        """
        out = dict(self.user_ranges)
        if self.overflow == "drop":
            for f, ax in self._axes.items():
                lo, hi = float(ax.edges[0]), float(np.nextafter(ax.edges[-1], -np.inf))
                if f in out:
                    lo, hi = max(lo, out[f][0]), min(hi, out[f][1])
                    if not hi > lo:
                        raise GenerationProcessorError(f"range for {f!r} {list(self.user_ranges[f])} lies outside its binning")
                out[f] = (lo, hi)
        return out

    @property
    def group_size(self) -> int:
        """Mass points generated together in one sampler call (see ``sampling.points_per_draw``)."""
        from fedhex_hep.generation.sampling import points_per_draw

        return points_per_draw(self.n_events, self.batch_size, bool(self.ranges), len(self.points))

    def template_names(self) -> list[str]:
        """All histogram names this processor produces, point-major, features in bins order."""
        names = []
        for p in self.points:
            for f in self.bins:
                nominal = template_name(f, self.label_names, p)
                names.append(nominal)
                if self.variations:
                    names += [variation_name(nominal, self.syst, d) for d in ("Up", "Down")]
        return names

    def empty_histogram(self, feature: str) -> Any:
        import hist

        return hist.Hist(self._axes[feature], storage=hist.storage.Weight(), name=feature)

    def handles(self, events: Any) -> bool:
        """True when ``events`` is a chunk of this processor's mass points (by dataset name)."""
        meta = getattr(events, "metadata", None) or {}
        return meta.get("dataset") == self.dataset

    def fileset(self, folder: str | os.PathLike, chunk_points: int | None = None, overwrite: bool = True) -> dict:
        """Write the points file(s) into ``folder``; return the coffea fileset entry for them.

        One file per group of ``chunk_points`` points (default: the processor's), so a Runner whose ``chunksize`` is tuned for MC still splits the scan
        into groups of ``chunk_points`` mass points.
        """
        folder = Path(folder)
        per = self.chunk_points if chunk_points is None else int(chunk_points)
        files = {}
        for start in range(0, len(self.points), per):
            idx = np.arange(start, min(start + per, len(self.points)))
            path = folder / f"{self.dataset}_{start:06d}.root"
            write_points_file(path, self.points[idx], self.label_names, indices=idx, overwrite=overwrite)
            files[str(path.resolve())] = POINTS_TREE
        return {self.dataset: {"files": files, "metadata": {"model_path": self.model_path}}}

    # -- generation -----------------------------------------------------------------------------

    def _sample_group(self, group: int, flow: Any = None, seed: int | None = None) -> Any:
        """A FeatureSet of every point of ``group`` (the same events however the points are chunked)."""
        from fedhex_hep.generation.sampling import generate

        size = self.group_size
        model = load_model_cached(self.model_path)
        return generate(
            model,
            self.points[group * size : (group + 1) * size],
            self.n_events,
            seed=point_seed(self.seed, group) if seed is None else seed,
            batch_size=self.batch_size,
            ranges=self.ranges,
            max_tries=self.max_tries,
            flow=flow,
            pad_to=size,
            warn_support=False,
        )

    def _fill(self, generated: Any, j: int) -> dict[str, Any]:
        """Histograms {feature: hist} of point ``j`` of a group's FeatureSet."""
        rows = slice(j * self.n_events, (j + 1) * self.n_events)
        out = {}
        for feature in self.bins:
            h = self.empty_histogram(feature)
            h.fill(generated.column(feature)[rows])
            out[feature] = h
        return out

    def generate_group(self, group: int) -> dict[int, dict[str, Any]]:
        """Generate point group ``group``: ``{point index: {"hists", "events", "acceptance"}}``."""
        generated = self._sample_group(group)
        members = self._member_hists(group) if self.variations else None
        out = {}
        first = group * self.group_size
        info = generated.metadata["generation"]
        for j in range(len(info["points"])):
            index = first + j
            point = self.points[index]
            hists = {}
            for feature, h in self._fill(generated, j).items():
                name = template_name(feature, self.label_names, point)
                hists[name] = h
                if members is not None:
                    up, down = interpolation_band(h, [m[j][feature] for m in members])
                    hists[variation_name(name, self.syst, "Up")] = up
                    hists[variation_name(name, self.syst, "Down")] = down
            rows = slice(j * self.n_events, (j + 1) * self.n_events)
            events = generated.events[rows] if self.return_events else None
            out[index] = {"hists": hists, "events": events, "acceptance": float(info["acceptance"][j])}
        return out

    def _member_hists(self, group: int) -> list[list[dict[str, Any]]]:
        """Per ensemble member, per point of the group: {feature: hist}."""
        model = load_model_cached(self.model_path)
        flows = list(getattr(model.flow, "members", []))
        if len(flows) < 2:
            raise GenerationProcessorError(
                f"interpolation variations need an ensemble of >= 2 flows; {self.model_path} has model.ensemble = {len(flows) or 1}"
            )
        out = []
        for k, flow in enumerate(flows):
            generated = self._sample_group(group, flow=flow, seed=member_seed(self.seed, group, k))
            out.append([self._fill(generated, j) for j in range(len(generated.metadata["generation"]["points"]))])
        return out

    def generate_point(self, index: int) -> tuple[dict[str, Any], Any]:
        """Generate mass point ``index`` (of ``points``); return ({name: hist}, its events or None)."""
        result = self.generate_group(int(index) // self.group_size)[int(index)]
        return result["hists"], result["events"]

    # -- coffea interface -----------------------------------------------------------------------

    def process(self, events: Any) -> dict[str, dict[str, Any]]:
        """Generate the mass points of this chunk (``events.point_index``), whole point groups at a time."""
        import awkward as ak

        out: dict[str, dict[str, Any]] = {"templates": {}, "n_generated": {}, "acceptance": {}}
        if self.return_events:
            out["events"] = {}
        indices = np.asarray(ak.to_numpy(events["point_index"]), dtype=np.int64)
        if np.any((indices < 0) | (indices >= len(self.points))):
            meta = getattr(events, "metadata", None) or {}
            raise GenerationProcessorError(
                f"{meta.get('filename', 'points file')}: point_index outside 0..{len(self.points) - 1} "
                "(points file written for another point list?)"
            )
        wanted = set(indices.tolist())
        for group in sorted({i // self.group_size for i in wanted}):
            for index, result in self.generate_group(group).items():
                if index not in wanted:
                    continue
                key = point_key(self.label_names, self.points[index])
                out["templates"].update(result["hists"])
                out["n_generated"][key] = self.n_events
                out["acceptance"][key] = result["acceptance"]
                if self.return_events:
                    out["events"][key] = result["events"]
        return out

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class CombinedProcessor(processor.ProcessorABC):
    """Run flow templates and another processor (e.g. ``FeatureProcessor``) in one coffea job.

    Chunks of the template dataset go to ``templates``, every other chunk to ``other``; the
    output is ``{"templates": <FlowTemplateProcessor output>, other_key: <other's output>}``.
    The Runner's ``schema`` must suit the other processor's files (``BaseSchema`` reads the
    points tree too).
    """

    def __init__(self, templates: FlowTemplateProcessor, other: processor.ProcessorABC, other_key: str = "features") -> None:
        if other_key == "templates":
            raise GenerationProcessorError("other_key must not be 'templates' (used by the generated templates)")
        self.templates = templates
        self.other = other
        self.other_key = other_key

    def process(self, events: Any) -> dict[str, Any]:
        if self.templates.handles(events):
            return {"templates": self.templates.process(events)}
        return {self.other_key: self.other.process(events)}

    def postprocess(self, accumulator: Any) -> Any:
        if "templates" in accumulator:
            accumulator["templates"] = self.templates.postprocess(accumulator["templates"])
        if self.other_key in accumulator:
            result = self.other.postprocess(accumulator[self.other_key])
            if result is not None:
                accumulator[self.other_key] = result
        return accumulator
