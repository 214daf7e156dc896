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
* Each mass point ``i`` is generated with its own seed derived from ``(seed, i)``
  (:func:`point_seed`), so the histograms do not depend on how points are chunked or which
  worker runs them: the same seed gives identical histograms on any executor.
* Events are sampled inside the histogram range (the flow density truncated to the binning, by
  rejection in :func:`fedhex_hep.generation.sampling.generate`), so every histogram holds exactly
  ``n_events`` entries and no over/underflow: its integral is the requested event count.

Output of ``process`` (and of the Runner)::

    {"templates": {"h_<feature>__<label1>_<v1>__<label2>_<v2>": hist.Hist, ...},
     "n_generated": {"<label1>_<v1>__<label2>_<v2>": int, ...},
     "acceptance": {"<label1>_<v1>__<label2>_<v2>": float, ...},   # fraction of the flow's
                                                                 # events inside the binning
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
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from coffea import processor
from fedhex_hep.errors import FedhexError
from fedhex_hep.naming import format_value, point_tag as point_key, hist_name as template_name

__all__ = [
    "CombinedProcessor",
    "FlowTemplateProcessor",
    "GenerationProcessorError",
    "POINTS_TREE",
    "TEMPLATE_DATASET",
    "format_value",
    "load_model_cached",
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
    """Seed of mass point ``index``: a function of (seed, index) only, never of the chunking."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# worker-side model loading


_MODEL_CACHE: dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def load_model_cached(path: str | os.PathLike) -> Any:
    """Load a trained model from ``path`` once per process (the worker side), then reuse it.

    The cache key is the resolved path plus the modification time of its weights, so a model
    retrained in place is reloaded. Imports TensorFlow (via ``fedhex_hep.model.storage``) here only.
    """
    resolved = Path(path).resolve()
    try:
        files = [resolved / "config.toml", *(resolved / "weights").glob("*")]
        stamp = max((p.stat().st_mtime_ns for p in files if p.is_file()), default=0)
    except OSError:
        stamp = 0
    key = f"{resolved}@{stamp}"
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            from fedhex_hep.model.storage import load_model  # heavy: TensorFlow

            model = load_model(resolved)
            _MODEL_CACHE.clear()  # one model per process is the common case; do not pile up
            _MODEL_CACHE[key] = model
        return model


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


def _read_model_names(model_path: Path) -> tuple[list[str], list[str]]:
    """Feature and label names of a model directory from its files (no TensorFlow)."""
    from fedhex_hep.model.storage import ModelDirError, read_model_files

    try:
        config, _, _ = read_model_files(model_path)
    except ModelDirError as exc:
        raise GenerationProcessorError(str(exc)) from None
    return config.feature_names, config.label_names


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


class FlowTemplateProcessor(processor.ProcessorABC):
    """Generate ``n_events`` per mass point with a trained flow and fill histograms per feature.

    Parameters
    ----------
    model_path : trained model directory (``config.toml``, weights, ...); loaded on the workers.
    points : mass points, shape (k, n_labels), GeV, in the model's label order; distinct.
    n_events : events generated per mass point (all inside the binning).
    bins : ``{feature: edges}`` or ``{feature: (n, lo, hi)}`` (GeV); features not listed get no
        histogram. Events are generated inside these ranges (truncated density).
    seed : base seed; point ``i`` uses :func:`point_seed(seed, i) <point_seed>`.
    return_events : also return the generated events per point (awkward record arrays).
    chunk_points : mass points per coffea chunk (used by :meth:`fileset` / ``run_scan``).
    dataset : dataset name of the points files in the fileset.
    batch_size, max_tries : passed to :func:`fedhex_hep.generation.sampling.generate`.
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
        batch_size: int = 100000,
        max_tries: int = 100,
    ) -> None:
        self.model_path = str(Path(model_path).resolve())
        feature_names, label_names = _read_model_names(Path(self.model_path))
        self.feature_names = feature_names
        self.label_names = label_names
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
        self.points = pts
        if int(n_events) < 1:
            raise GenerationProcessorError(f"n_events must be >= 1, got {n_events}")
        self.n_events = int(n_events)
        if not bins:
            raise GenerationProcessorError("bins: give edges or (n, lo, hi) for at least one feature")
        unknown = [f for f in bins if f not in feature_names]
        if unknown:
            raise GenerationProcessorError(f"bins: unknown feature {unknown[0]!r} (model features: {feature_names})")
        self._axes = {f: _as_axis(f, spec) for f, spec in bins.items()}  # validates
        self.bins = {
            f: (tuple(float(x) for x in v) if isinstance(v, tuple) else [float(x) for x in np.ravel(v)])
            for f, v in bins.items()
        }
        self.seed = int(seed)
        self.return_events = bool(return_events)
        if int(chunk_points) < 1:
            raise GenerationProcessorError(f"chunk_points must be >= 1, got {chunk_points}")
        self.chunk_points = int(chunk_points)
        self.dataset = str(dataset)
        self.batch_size = int(batch_size)
        self.max_tries = int(max_tries)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per-feature acceptance of the generation: the binning's [lo, hi) (GeV).

        ``generate`` keeps ``lo <= x <= hi``; the upper bound is moved one float down so that
        no event can land exactly on the last edge (the overflow bin of a histogram).
        """
        return {f: (float(ax.edges[0]), float(np.nextafter(ax.edges[-1], -np.inf))) for f, ax in self._axes.items()}

    def template_names(self) -> list[str]:
        """All histogram names this processor produces, point-major, features in bins order."""
        return [template_name(f, self.label_names, p) for p in self.points for f in self.bins]

    def empty_histogram(self, feature: str) -> Any:
        import hist

        return hist.Hist(self._axes[feature], storage=hist.storage.Weight(), name=feature)

    def handles(self, events: Any) -> bool:
        """True when ``events`` is a chunk of this processor's mass points (by dataset name)."""
        meta = getattr(events, "metadata", None) or {}
        return meta.get("dataset") == self.dataset

    def fileset(self, folder: str | os.PathLike, chunk_points: int | None = None, overwrite: bool = True) -> dict:
        """Write the points file(s) into ``folder``; return the coffea fileset entry for them.

        With ``chunk_points`` (default: the processor's), one file per group of points is
        written, so a Runner whose ``chunksize`` is tuned for MC still splits the scan into
        groups of ``chunk_points`` mass points.
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

    # -- coffea interface -----------------------------------------------------------------------

    def generate_point(self, index: int) -> tuple[dict[str, Any], Any]:
        """Generate mass point ``index`` (of ``points``); return ({name: hist}, FeatureSet)."""
        from fedhex_hep.generation.sampling import generate

        point = self.points[index]
        model = load_model_cached(self.model_path)
        generated = generate(
            model,
            point[None, :],
            self.n_events,
            seed=point_seed(self.seed, index),
            batch_size=self.batch_size,
            ranges=self.ranges,
            max_tries=self.max_tries,
        )
        hists = {}
        for feature in self.bins:
            h = self.empty_histogram(feature)
            h.fill(generated.column(feature))
            hists[template_name(feature, self.label_names, point)] = h
        return hists, generated

    def process(self, events: Any) -> dict[str, dict[str, Any]]:
        """Generate the mass points of this chunk (``events.point_index``)."""
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
        for index in indices:
            hists, generated = self.generate_point(int(index))
            out["templates"].update(hists)
            key = point_key(self.label_names, self.points[index])
            out["n_generated"][key] = int(len(generated))
            accepted = generated.metadata.get("generation", {}).get("acceptance") or [1.0]
            out["acceptance"][key] = float(accepted[0])
            if self.return_events:
                out["events"][key] = generated.events
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
