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
    (values: shortest decimal form, ``.`` -> ``p``, ``-`` -> ``m``; the same names as
    :mod:`fedhex_hep.io.export`). Every histogram of a feature has the same bin edges. Events are
    generated inside the histogram range (the flow density truncated to the binning), so there
    is no under/overflow and the integral is exactly ``n_events`` -- or ``n_events * eff`` (the
    interpolated selection efficiency at that point) with ``yield_normalised=True``.
``scan`` (TTree)
    one entry per mass point: ``point_index``, one branch per label (GeV), ``n_events``
    (generated), ``integral`` (sum of weights of each histogram of that point), ``eff``,
    ``eff_err`` (NaN when no efficiency is known), ``acceptance`` (fraction of the flow's events
    inside the binning: the templates are normalised within the binning, multiply by it to
    normalise to the whole feature range).
``efficiency`` (TTree)
    as in :mod:`fedhex_hep.io.export`: labels, ``eff``, ``eff_err``, ``interpolated`` (0: measured
    at a training point, 1: from the smooth :class:`~fedhex_hep.generation.efficiency.EfficiencyModel`),
    ``in_range``. Absent when no efficiency is known.
``meta/`` (TObjString, JSON text)
    ``config``, ``version``, ``model_path``, ``seed``, ``n_events``, ``yield_normalised``,
    ``feature_names``, ``label_names``, ``binning`` (edges per feature, GeV), ``naming``,
    ``histograms`` (name, feature, point, integral), ``efficiency``, ``executor``.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.extraction.executors import EXECUTORS, ExecutorError, check_executor, dask_client
from fedhex_hep.errors import FedhexError

__all__ = ["ScanError", "grid_points", "run_scan", "resolve_bins", "scan_efficiency", "EXECUTORS", "SCAN_NAMING"]

log = logging.getLogger(__name__)

#: The histogram naming pattern (also stored in the file as ``meta/naming``).
SCAN_NAMING = (
    "h_<feature>__<label1>_<v1>__<label2>_<v2> (TH1D, one per mass point and feature); "
    "values: shortest decimal, '.'->'p', '-'->'m' (1870, 9p025); "
    "combine: shapes sig * scan.root h_$CHANNEL__<label1>_<v1>__<label2>_<v2>"
)
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
def resolve_bins(model_dir: str | Path, points: np.ndarray, bins: Any, seed: int) -> dict[str, Any]:
    """``{feature: edges | (n, lo, hi)}`` for the scan.

    ``bins`` may be such a dict, an int (that many equal bins per feature), or None (the model
    config's ``output.bins``). Features without explicit edges get equal bins spanning the
    0.1-99.9% quantiles of a pilot sample (``PILOT_EVENTS`` events at up to ``PILOT_POINTS``
    points spread over the list, seeded from ``seed``), unless the model config has
    ``generation.ranges`` for the feature (then that range is used).
    """
    from fedhex_hep.model.storage import read_model_files

    config, _, _ = read_model_files(Path(model_dir))
    features = config.feature_names
    if isinstance(bins, Mapping):
        unknown = [f for f in bins if f not in features]
        if unknown:
            raise ScanError(f"bins: unknown feature {unknown[0]!r} (model features: {features})")
        return dict(bins)
    if bins is None:
        n_bins = int(config.output.bins)
    elif isinstance(bins, (int, np.integer)) and not isinstance(bins, bool) and bins > 0:
        n_bins = int(bins)
    else:
        raise ScanError(f"bins must be a dict feature -> edges | (n, lo, hi), a positive int or None; got {bins!r}")
    out: dict[str, Any] = {}
    missing = []
    for f in features:
        rng = config.generation.ranges.get(f)
        if rng:
            out[f] = (n_bins, float(rng[0]), float(rng[1]))
        else:
            missing.append(f)
    if missing:
        from fedhex_hep.generation.sampling import generate

        from fedhex_hep.processors.generation import load_model_cached

        model = load_model_cached(model_dir)
        pick = np.unique(np.linspace(0, len(points) - 1, min(PILOT_POINTS, len(points))).round().astype(int))
        pilot = generate(model, points[pick], PILOT_EVENTS, seed=int(seed) + 7919)
        for f in missing:
            values = pilot.column(f)
            values = values[np.isfinite(values)]
            if values.size == 0:
                raise ScanError(f"feature {f!r}: the pilot sample has no finite values to choose a binning from")
            lo, hi = np.quantile(values, [0.001, 0.999])
            if not hi > lo:
                lo, hi = lo - max(abs(lo) * 1e-3, 1e-6), hi + max(abs(hi) * 1e-3, 1e-6)
            out[f] = (n_bins, float(lo), float(hi))
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
    from fedhex_hep.io.featureset import FeatureSet, FeatureSetError
    from fedhex_hep.model.storage import read_model_files

    points = np.asarray(points, dtype=np.float64)
    where = "efficiency argument"
    source = efficiency
    if isinstance(source, bool):
        raise ScanError("efficiency must be a number, an efficiency model/table, a path or None, not a bool")
    if isinstance(source, (int, float, np.floating)):
        value = float(source)
        if not 0.0 < value <= 1.0:
            raise ScanError(f"efficiency {value} is outside (0, 1]")
        return {
            "model": None,
            "table": None,
            "constant": value,
            "points": {
                "label_names": list(label_names),
                "points": points.tolist(),
                "eff": [value] * len(points),
                "err": [0.0] * len(points),
                "interpolated": [1] * len(points),
                "in_range": [1] * len(points),
            },
        }
    if source is None:
        model_dir = Path(model_dir)
        if (model_dir / "efficiency.json").is_file():
            source = model_dir / "efficiency.json"
        else:
            _, _, info = read_model_files(model_dir)
            for key in ("efficiency", "cutflow"):
                if info.get(key):
                    source, where = info[key], f"{model_dir / 'training.json'}[{key!r}]"
                    break
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ScanError(f"efficiency file {path} does not exist")
        if path.suffix == ".parquet":
            try:
                meta = FeatureSet.load(path).metadata
            except FeatureSetError as exc:
                raise ScanError(str(exc)) from None
            source = meta.get("efficiency") or meta.get("cutflow")
            if not source:
                raise ScanError(f"{path}: FeatureSet metadata has no 'efficiency' or 'cutflow'")
        else:
            try:
                source = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ScanError(f"efficiency file {path} is not readable JSON ({exc})") from None
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
) -> Path:
    """Generate ``n_events`` per mass point with the flow in ``model_dir``; write one ROOT file.

    ``points``: (k, n_labels) masses in GeV in the model's label order, or a grid spec string
    (:func:`grid_points`). ``bins``: see :func:`resolve_bins`. ``executor``: ``iterative``,
    ``futures`` (``workers`` processes) or ``dask`` (a ``LocalCluster`` of ``workers``
    single-threaded processes, or the existing cluster at ``scheduler``, e.g. ``tcp://host:8786``;
    workers must see ``model_dir`` and the output folder). ``chunk_points``: mass points per
    coffea chunk (default: spread over ``4 * workers`` chunks). ``yield_normalised``: scale each
    histogram to ``n_events * efficiency`` (requires an efficiency, see :func:`scan_efficiency`).
    Refuses an existing ``output`` unless ``overwrite``. Returns the path written.
    """
    import uproot
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    from fedhex_hep import __version__
    from fedhex_hep.io.atomic import atomic_path, check_writable
    from fedhex_hep.model.storage import ModelDirError, read_model_files
    from fedhex_hep.processors.generation import FlowTemplateProcessor, GenerationProcessorError, point_key

    output = check_writable(Path(output), overwrite=overwrite)
    try:
        check_executor(executor, int(workers), scheduler)
    except ExecutorError as exc:
        raise ScanError(str(exc)) from None
    model_dir = Path(model_dir).resolve()
    try:
        config, _, _ = read_model_files(model_dir)
    except ModelDirError as exc:
        raise ScanError(str(exc)) from None
    feature_names, label_names = config.feature_names, config.label_names
    if isinstance(points, str):
        points = grid_points(points, n_labels=len(label_names))
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1 and len(label_names) == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[1] != len(label_names) or len(points) == 0:
        raise ScanError(f"points must have shape (k, {len(label_names)}) for labels {label_names}, got {points.shape}")

    eff = scan_efficiency(efficiency, model_dir, points, feature_names, label_names)
    if yield_normalised:
        if eff is None:
            raise ScanError(
                f"yield_normalised needs an efficiency: none given and none found in {model_dir} "
                "(efficiency.json or training.json); pass efficiency=..."
            )
        bad = [i for i, e in enumerate(eff["points"]["eff"]) if not (np.isfinite(e) and e > 0)]
        if bad:
            raise ScanError(f"no usable efficiency at mass point {points[bad[0]].tolist()} (eff = {eff['points']['eff'][bad[0]]})")

    bins_spec = resolve_bins(model_dir, points, bins, seed)
    if chunk_points is None:
        chunk_points = max(1, math.ceil(len(points) / (4 * int(workers))))
    try:
        proc = FlowTemplateProcessor(model_dir, points, n_events, bins_spec, seed=seed, chunk_points=chunk_points)
    except GenerationProcessorError as exc:
        raise ScanError(str(exc)) from None

    # The points file lives beside the output so that dask workers (which must see the output
    # folder anyway) can read it; removed when the scan ends.
    with tempfile.TemporaryDirectory(prefix=".fedhex-scan-", dir=output.parent) as scratch:
        fileset = proc.fileset(scratch)
        with _executor(executor, int(workers), scheduler, progress) as exe:
            runner = processor.Runner(executor=exe, schema=BaseSchema, chunksize=chunk_points)
            result = runner(fileset, proc, treename="Points")

    templates = result["templates"]
    expected = proc.template_names()
    missing = [name for name in expected if name not in templates]
    if missing:
        raise ScanError(f"scan output lacks histogram {missing[0]} ({len(missing)} missing): a chunk was lost")

    features = list(bins_spec)
    effs = np.asarray(eff["points"]["eff"], dtype=np.float64) if eff is not None else np.full(len(points), np.nan)
    errs = np.asarray(eff["points"]["err"], dtype=np.float64) if eff is not None else np.full(len(points), np.nan)
    integrals = np.zeros(len(points))
    n_generated = np.zeros(len(points), dtype=np.int64)
    acceptance = np.array([result["acceptance"][point_key(label_names, p)] for p in points], dtype=np.float64)
    hists: list[tuple[str, Any]] = []
    listing = []
    for i, point in enumerate(points):
        n_generated[i] = result["n_generated"][point_key(label_names, point)]
        if n_generated[i] != int(n_events):
            raise ScanError(f"mass point {point.tolist()}: generated {n_generated[i]} events, asked for {n_events}")
        for feature in features:
            name = f"h_{feature}__{point_key(label_names, point)}"
            h = templates[name]
            if yield_normalised:
                h = h * float(effs[i])  # Weight storage: variances scale by eff^2
            integral = float(h.sum(flow=True).value)
            integrals[i] = integral
            h.name = name
            hists.append((name, h))
            listing.append({"name": name, "feature": feature, "point": dict(zip(label_names, map(float, point))), "integral": integral})

    edges = {f: proc.empty_histogram(f).axes[0].edges.tolist() for f in features}
    meta = {
        "config": config.to_dict(),
        "version": __version__,
        "model_path": str(model_dir),
        "seed": int(seed),
        "n_events": int(n_events),
        "yield_normalised": bool(yield_normalised),
        "feature_names": list(feature_names),
        "label_names": list(label_names),
        "binning": edges,
        "naming": SCAN_NAMING,
        "histograms": listing,
        "efficiency": eff,
        "executor": {"kind": executor, "workers": int(workers), "chunk_points": int(chunk_points)},
    }
    with atomic_path(output, overwrite=overwrite) as tmp:
        with uproot.recreate(tmp) as out:
            for name, h in hists:
                out[name] = h
            scan = {"point_index": np.arange(len(points), dtype=np.int64)}
            scan.update({name: np.ascontiguousarray(points[:, j]) for j, name in enumerate(label_names)})
            scan.update(
                {"n_events": n_generated, "integral": integrals, "eff": effs, "eff_err": errs, "acceptance": acceptance}
            )
            out.mktree("scan", {k: v.dtype for k, v in scan.items()}, title="fedhex-hep mass scan: one entry per mass point")
            out["scan"].extend(scan)
            if eff is not None:
                branches = {name: np.ascontiguousarray(points[:, j]) for j, name in enumerate(label_names)}
                branches["eff"] = effs
                branches["eff_err"] = errs
                branches["interpolated"] = np.asarray(eff["points"]["interpolated"], dtype=np.int32)
                branches["in_range"] = np.asarray(eff["points"]["in_range"], dtype=np.int32)
                out.mktree("efficiency", {k: v.dtype for k, v in branches.items()}, title="selection efficiency at the scan points")
                out["efficiency"].extend(branches)
            out.mkdir("meta")
            for key, value in meta.items():
                out[f"meta/{key}"] = value if isinstance(value, str) else json.dumps(value, default=_jsonable)
    log.info("wrote %d templates at %d mass points to %s", len(hists), len(points), output)
    return output


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return str(x)
