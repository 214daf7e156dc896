"""Export a FeatureSet (generated or MC) for downstream fits: ROOT (uproot) or parquet.

ROOT file layout (``export_root``), identical for generated and MC FeatureSets so downstream
code compares like with like:

``events`` (TTree)
    one entry per event; one ``double`` branch per feature, per label and ``weight``
    (names exactly as in the config, e.g. ``phi``, ``omega``, ``labelphi``, ``labelomega``).
``h_<feature>__<label1>_<v1>__<label2>_<v2>`` (TH1D)
    per mass point, the distribution of one feature, e.g. ``h_phi__labelphi_1870__labelomega_9p025``.
``h2_<featureX>_vs_<featureY>__<label1>_<v1>__<label2>_<v2>`` (TH2D)
    per mass point, each feature pair (X = earlier feature in the config order), e.g.
    ``h2_phi_vs_omega__labelphi_1870__labelomega_9p025``.
``efficiency`` (TTree)
    one entry per mass point in the file: label branches, ``eff``, ``eff_err``,
    ``interpolated`` (0: measured from the cutflow at that point, 1: from the smooth efficiency
    model of :mod:`fedhex_hep.generation.efficiency`), ``in_range`` (1 if inside the measured mass range).
    Absent when neither a cutflow nor an efficiency model is known.
``efficiency_table`` (TTree)
    the measured efficiencies of the training points: labels, ``n_read``, ``n_selected``,
    ``eff``, ``eff_err``, ``eff_lo``, ``eff_hi`` (Clopper-Pearson 68.3%).
``meta/`` (TDirectory of TObjString, JSON text)
    ``config`` (resolved config), ``version`` (fedhex-hep version writing the file),
    ``model_path``, ``source`` ("generated" | "mc"), ``feature_names``, ``label_names``,
    ``binning`` (bin edges per feature, GeV), ``histograms`` (name, features, mass point and
    sum of weights of each histogram), ``naming`` (this pattern), ``efficiency`` (model and
    table), ``metadata`` (the FeatureSet metadata: cutflow, skipped files, ...), ``extra``.

Mass values in names: the shortest decimal form with ``.`` -> ``p`` and ``-`` -> ``m``
(``1870.0`` -> ``1870``, ``9.025`` -> ``9p025``, ``0.5`` -> ``0p5``), the same convention as
the sample folders (``Phi_1870_omega_9p025``). A fit tool addresses a template by pattern, e.g.
a CMS combine shapes line ``shapes sig * gen.root h_phi__labelphi_$MASS__labelomega_9p025``.

Histograms use Weight storage (sum of weights and of squared weights), so ROOT gets correct
bin errors (Sumw2). Every mass point uses the same bin edges per feature: from ``bins`` (an
int, or per feature an int, ``(n, lo, hi)``, explicit edges, ``"n:lo:hi"`` or an edges file,
see :mod:`fedhex_hep.binning`) or automatically ``bins`` equal bins spanning the 0.1-99.9%
quantiles of that feature over all events. Events outside the edges: ``overflow="keep"``
(under/overflow bins; a warning gives the fraction), ``"fold"`` (into the edge bins) or
``"drop"``; ``meta/overflow`` holds the policy and each histogram's fraction outside.

Parquet (``export_parquet``): the events file is a FeatureSet parquet (``FeatureSet.load``
reads it back) whose metadata carries ``export`` (binning, efficiency, naming, extra); the
histograms go to the side table ``<name>.hists.parquet`` (one row per histogram: ``name``,
``dim``, ``x``, ``y``, one column per label, ``edges_x``, ``edges_y``, ``values``,
``variances`` (flattened C order, x outer, without flow bins), ``sumw`` including flow).

All files are written to a temporary name in the target folder and renamed when complete
(:mod:`fedhex_hep.io.atomic`); an existing file is refused unless ``overwrite``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.io.atomic import OutputError, atomic_path, check_writable
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.binning import BinningError, apply_overflow, edges_from_spec, make_axis, quantile_edges
from fedhex_hep.errors import FedhexError
from fedhex_hep.naming import HIST_NAMING, format_value, hist2d_name, hist_name, point_tag, point_title

__all__ = [
    "ExportError",
    "HIST_NAMING",
    "export_root",
    "export_parquet",
    "format_value",
    "point_tag",
    "hist_name",
    "hist2d_name",
    "resolve_binning",
    "build_histograms",
    "resolve_efficiency",
]

log = logging.getLogger(__name__)


# events per TTree.extend call: large chunks make few, large baskets (fast to read back)
_TREE_CHUNK = 1_000_000


class ExportError(FedhexError, ValueError):
    """Bad export input (empty FeatureSet, bad binning); the message names the feature or key."""


# -- binning ---------------------------------------------------------------------------------
def resolve_binning(
    featureset: FeatureSet | Sequence[FeatureSet], bins: int | Mapping[str, Any] = 40
) -> dict[str, np.ndarray]:
    """Bin edges (GeV) per feature, the same for every mass point.

    ``bins``: an int (that many equal bins over the 0.1-99.9% quantiles of the feature over all
    events of all given FeatureSets), or a mapping feature -> int or explicit edges (features
    not in the mapping get 40 automatic bins). Pass several FeatureSets (e.g. generated and MC)
    to get one binning for both.
    """
    sets = [featureset] if isinstance(featureset, FeatureSet) else list(featureset)
    if not sets:
        raise ExportError("no FeatureSet given to choose a binning from")
    names = sets[0].feature_names
    if isinstance(bins, Mapping):
        unknown = [k for k in bins if k not in names]
        if unknown:
            raise ExportError(f"bins given for unknown feature {unknown[0]!r} (features: {names})")
        spec: dict[str, Any] = {name: bins.get(name, 40) for name in names}
    elif isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        spec = {name: int(bins) for name in names}
    else:
        raise ExportError(f"bins must be an int or a mapping feature -> int or edges, got {type(bins).__name__}")
    try:
        return {name: _feature_edges(sets, name, value) for name, value in spec.items()}
    except BinningError as exc:
        raise ExportError(str(exc)) from None


def _feature_edges(sets: Sequence[FeatureSet], name: str, value: Any) -> np.ndarray:
    """Edges of one feature: automatic for a bin count, else :func:`fedhex_hep.binning.edges_from_spec`."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 1:
            raise ExportError(f"bins for feature {name!r} must be a positive integer, got {value!r}")
        values = np.concatenate([s.column(name) for s in sets])
        return quantile_edges(values, int(value), 0.001, 0.999, what=f"feature {name!r}")
    if np.ndim(value) == 0 and not isinstance(value, str):
        raise ExportError(f"bins for feature {name!r} must be a positive integer, got {value!r}")
    return edges_from_spec(value, name)


def _axis(name: str, edges: np.ndarray):
    return make_axis(name, edges)


# -- histograms ------------------------------------------------------------------------------
@dataclass
class HistEntry:
    """One exported histogram: its name, the features on its axes, the mass point, the hist."""

    name: str
    features: tuple[str, ...]
    point: dict[str, float]
    hist: Any  # hist.Hist with Weight storage


def _point_groups(featureset: FeatureSet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(point, event indices) for every distinct label point, without a pass per point."""
    labels = featureset.labels
    points, inverse = np.unique(labels, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(points) + 1))
    return [(points[i], order[bounds[i] : bounds[i + 1]]) for i in range(len(points))]


def build_histograms(featureset: FeatureSet, edges: Mapping[str, np.ndarray]) -> list[HistEntry]:
    """TH1-like histograms of each feature and TH2-like of each feature pair, per mass point."""
    import hist

    feats = featureset.feature_names
    labels = featureset.label_names
    columns = {name: featureset.column(name) for name in feats}
    weights = featureset.weights
    entries: list[HistEntry] = []
    for point, idx in _point_groups(featureset):
        where = dict(zip(labels, map(float, point)))
        title = point_title(labels, point)
        w = weights[idx]
        for name in feats:
            h = hist.Hist(_axis(name, edges[name]), storage=hist.storage.Weight(), name=f"{name} at {title}")
            h.fill(columns[name][idx], weight=w)
            entries.append(HistEntry(hist_name(name, labels, point), (name,), where, h))
        for fx, fy in itertools.combinations(feats, 2):
            h = hist.Hist(
                _axis(fx, edges[fx]),
                _axis(fy, edges[fy]),
                storage=hist.storage.Weight(),
                name=f"{fy} vs {fx} at {title}",
            )
            h.fill(columns[fx][idx], columns[fy][idx], weight=w)
            entries.append(HistEntry(hist2d_name(fx, fy, labels, point), (fx, fy), where, h))
    return entries


# -- efficiency ------------------------------------------------------------------------------
def resolve_efficiency(featureset: FeatureSet, efficiency: Any = None) -> dict[str, Any] | None:
    """Efficiency information to store with the export, or None when nothing is known.

    ``efficiency``: an :class:`~fedhex_hep.generation.efficiency.EfficiencyModel`, an
    :class:`~fedhex_hep.generation.efficiency.EfficiencyTable`, a dict of either (``to_dict``), or an
    extraction cutflow. When None, ``featureset.metadata["efficiency"]``, then
    ``featureset.metadata["cutflow"]``, then (generated sets) ``<model_path>/efficiency.json``
    or ``efficiency``/``cutflow`` in ``<model_path>/training.json`` are used. Returns ``{"model": dict | None, "table":
    dict | None, "points": {label_names, points, eff, err, interpolated, in_range}}``.
    """
    source = efficiency
    where = "efficiency argument"
    if source is None:
        for key in ("efficiency", "cutflow"):
            if featureset.metadata.get(key):
                source, where = featureset.metadata[key], f"FeatureSet metadata[{key!r}]"
                break
    if source is None and featureset.metadata.get("model_path"):
        source, where = _efficiency_from_model_dir(Path(featureset.metadata["model_path"]))
    if source is None:
        return None
    label_names = featureset.label_names
    model, table = _efficiency_objects(source, where, label_names)
    points = featureset.label_points()
    eff, err, interpolated, in_range = _efficiency_at(model, table, points)
    return {
        "model": model.to_dict() if model is not None else None,
        "table": table.to_dict() if table is not None else None,
        "points": {
            "label_names": list(label_names),
            "points": points.tolist(),
            "eff": [float(x) for x in eff],
            "err": [float(x) for x in err],
            "interpolated": interpolated.tolist(),
            "in_range": in_range.tolist(),
        },
    }


def _efficiency_objects(source: Any, where: str, label_names: Sequence[str]) -> tuple[Any, Any]:
    """(EfficiencyModel | None, EfficiencyTable | None) from any accepted efficiency source."""
    from fedhex_hep.generation.efficiency import EfficiencyError, EfficiencyModel, EfficiencyTable, selection_efficiency

    model: EfficiencyModel | None = None
    table: EfficiencyTable | None = None
    try:
        if isinstance(source, EfficiencyModel):
            model, table = source, source.table
        elif isinstance(source, EfficiencyTable):
            table = source
        elif isinstance(source, Mapping) and "coef" in source:
            model = EfficiencyModel.from_dict(source)
            table = model.table
        elif isinstance(source, Mapping) and "n_read" in source and "points" in source:
            table = EfficiencyTable.from_dict(source)
        else:
            table = selection_efficiency(source, label_names)
    except EfficiencyError as exc:
        raise ExportError(f"{where}: {exc}") from None
    if model is None and table is not None:
        try:
            model = EfficiencyModel.from_table(table)
        except EfficiencyError as exc:
            # e.g. labels that are not positive masses (toys): keep the measured table only
            log.warning("no efficiency interpolation model (%s); storing measured efficiencies only", exc)
    if table is not None and list(table.label_names) != list(label_names):
        raise ExportError(f"{where}: efficiency labels {table.label_names} differ from the FeatureSet's {label_names}")
    return model, table


def _efficiency_at(model: Any, table: Any, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """eff, err, interpolated (0: measured), in_range at ``points``: measured where the table has the point."""
    from fedhex_hep.generation.efficiency import EfficiencyError

    eff, err = np.full(len(points), np.nan), np.full(len(points), np.nan)
    if model is not None:
        try:
            eff, err = model.predict_with_error(points)
        except EfficiencyError as exc:
            log.warning("efficiency model cannot predict at these points (%s)", exc)
    interpolated = np.ones(len(points), dtype=np.int32)
    if table is not None:
        for i, p in enumerate(points):
            match = np.all(np.isclose(table.points, p, rtol=1e-6, atol=0), axis=1)
            if match.any():
                j = int(np.argmax(match))
                eff[i], err[i], interpolated[i] = table.eff[j], table.err[j], 0
    in_range = 1 - interpolated
    if model is not None and model.lo is not None and len(model.lo) == points.shape[1]:
        in_range = model.in_range(points).astype(np.int32)
    return eff, err, interpolated, in_range


def _efficiency_from_model_dir(model_dir: Path) -> tuple[Any, str]:
    """``efficiency.json``, else ``efficiency``/``cutflow`` in ``training.json`` of a model dir."""
    candidates = [(model_dir / "efficiency.json", None), (model_dir / "training.json", ("efficiency", "cutflow"))]
    for path, keys in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"{path} is not readable JSON ({exc})") from None
        if keys is None:
            return data, str(path)
        for key in keys:
            if isinstance(data, Mapping) and data.get(key):
                return data[key], f"{path}[{key!r}]"
    return None, ""


# -- shared preparation ----------------------------------------------------------------------
def _json(obj: Any) -> str:
    def default(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, (np.floating, np.integer, np.bool_)):
            return x.item()
        if isinstance(x, Path):
            return str(x)
        return repr(x)

    return json.dumps(obj, default=default, sort_keys=False)


def _apply_overflow(hists: list[HistEntry], policy: str) -> dict[str, Any]:
    """Apply the overflow policy to every histogram (in place); the fractions outside, for ``meta/overflow``."""
    fractions = {}
    for entry in hists:
        try:
            entry.hist, fractions[entry.name] = apply_overflow(entry.hist, policy)
        except BinningError as exc:
            raise ExportError(str(exc)) from None
    meaning = {
        "keep": "events outside the edges are in the under/overflow bins (a combine fit ignores them)",
        "fold": "events outside the edges are added to the first/last bin",
        "drop": "events outside the edges are not in the histogram",
    }[policy]
    worst = max(fractions.values(), default=0.0)
    if policy == "keep" and worst > 0:
        log.warning("up to %.3g%% of a histogram's events lie outside its edges, kept in under/overflow "
                    "(a combine fit ignores them); overflow='fold' or 'drop' makes the choice", 100 * worst)
    return {"policy": policy, "meaning": meaning, "fraction": fractions}


def _prepare(featureset: FeatureSet, bins: Any, extra_meta: Mapping[str, Any] | None, efficiency: Any, overflow: str = "keep"):
    from fedhex_hep import __version__

    if not isinstance(featureset, FeatureSet):
        raise ExportError(f"export needs a FeatureSet, got {type(featureset).__name__}")
    if len(featureset) == 0:
        raise ExportError("FeatureSet is empty: nothing to export")
    if extra_meta is not None and not isinstance(extra_meta, Mapping):
        raise ExportError("extra_meta must be a mapping of name -> JSON-serialisable value")
    edges = resolve_binning(featureset, bins)
    hists = build_histograms(featureset, edges)
    overflow_meta = _apply_overflow(hists, overflow)
    eff = resolve_efficiency(featureset, efficiency)
    md = featureset.metadata
    meta = {
        "config": md.get("config", {}),
        "version": __version__,
        "producer_version": str(md.get("version") or ""),
        "model_path": str(md.get("model_path") or ""),
        "source": str(md.get("source") or ""),
        "feature_names": list(featureset.feature_names),
        "label_names": list(featureset.label_names),
        # the edges of the axes actually written (a Regular axis recomputes them from lo, hi, n)
        "binning": {k: np.asarray(_axis(k, v).edges, dtype=np.float64).tolist() for k, v in edges.items()},
        "histograms": [
            {"name": e.name, "features": list(e.features), "point": e.point, "sumw": float(e.hist.sum(flow=True).value)}
            for e in hists
        ],
        "naming": HIST_NAMING,
        "overflow": overflow_meta,
        "efficiency": eff,
        "metadata": {k: v for k, v in md.items() if k not in ("config", "efficiency")},
        "extra": dict(extra_meta or {}),
    }
    return edges, hists, eff, meta


# -- ROOT ------------------------------------------------------------------------------------
def _write_root(tmp: Path, featureset: FeatureSet, hists: list[HistEntry], eff: dict | None, meta: dict) -> None:
    import uproot

    columns = [*featureset.feature_names, *featureset.label_names, "weight"]
    arrays = {name: featureset.column(name) for name in columns}
    with uproot.recreate(tmp) as out:
        tree = out.mktree(
            "events",
            {name: np.float64 for name in columns},
            title=f"fedhex-hep {meta['source'] or 'events'}: features, labels (GeV) and weight",
        )
        n = len(featureset)
        for start in range(0, n, _TREE_CHUNK):
            tree.extend({name: arr[start : start + _TREE_CHUNK] for name, arr in arrays.items()})
        for entry in hists:
            out[entry.name] = entry.hist
        if eff is not None:
            pts = np.asarray(eff["points"]["points"], dtype=np.float64)
            branches = {name: pts[:, i] for i, name in enumerate(featureset.label_names)}
            branches["eff"] = np.asarray(eff["points"]["eff"], dtype=np.float64)
            branches["eff_err"] = np.asarray(eff["points"]["err"], dtype=np.float64)
            branches["interpolated"] = np.asarray(eff["points"]["interpolated"], dtype=np.int32)
            branches["in_range"] = np.asarray(eff["points"]["in_range"], dtype=np.int32)
            _small_tree(out, "efficiency", branches, "selection efficiency at the mass points of this file")
            if eff["table"] is not None:
                t = eff["table"]
                tpts = np.asarray(t["points"], dtype=np.float64).reshape(len(t["points"]), -1)
                branches = {name: tpts[:, i] for i, name in enumerate(t["label_names"])}
                for key, branch in (
                    ("n_read", "n_read"),
                    ("n_selected", "n_selected"),
                    ("eff", "eff"),
                    ("err", "eff_err"),
                    ("lo", "eff_lo"),
                    ("hi", "eff_hi"),
                ):
                    branches[branch] = np.asarray(t[key], dtype=np.float64)
                _small_tree(out, "efficiency_table", branches, "measured selection efficiency (cutflow)")
        out.mkdir("meta")
        for key, value in meta.items():
            out[f"meta/{key}"] = value if isinstance(value, str) else _json(value)


def _small_tree(out: Any, name: str, branches: dict[str, np.ndarray], title: str) -> None:
    tree = out.mktree(name, {k: v.dtype for k, v in branches.items()}, title=title)
    tree.extend(branches)


def export_root(
    featureset: FeatureSet,
    path: str | Path,
    bins: int | Mapping[str, Any] = 40,
    overwrite: bool = False,
    extra_meta: Mapping[str, Any] | None = None,
    efficiency: Any = None,
    overflow: str = "keep",
) -> Path:
    """Write ``featureset`` as a ROOT file (layout in the module docstring); returns the path.

    ``bins``: see :func:`resolve_binning`. ``efficiency``: see :func:`resolve_efficiency`.
    ``overflow``: ``keep`` (under/overflow bins hold the events outside), ``fold`` (added to the
    edge bins) or ``drop``; the fraction outside is in ``meta/overflow`` either way.
    Raises :class:`~fedhex_hep.io.atomic.OutputError` when the file exists (and not ``overwrite``)
    or cannot be written (read-only folder, full disk: no partial file is left behind).
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)  # refuse before any work is done
    _, hists, eff, meta = _prepare(featureset, bins, extra_meta, efficiency, overflow)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _write_root(tmp, featureset, hists, eff, meta)
    log.info("wrote %s: %d events, %d histograms", path, len(featureset), len(hists))
    return path


# -- parquet ---------------------------------------------------------------------------------
def hists_path(path: str | Path) -> Path:
    """Side table of histograms written by :func:`export_parquet` next to ``path``."""
    path = Path(path)
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return path.with_name(stem + ".hists.parquet")


def _hist_table(featureset: FeatureSet, hists: list[HistEntry]):
    import pyarrow as pa

    rows: dict[str, list] = {
        "name": [],
        "dim": [],
        "x": [],
        "y": [],
        **{n: [] for n in featureset.label_names},
        "edges_x": [],
        "edges_y": [],
        "values": [],
        "variances": [],
        "sumw": [],
    }
    for e in hists:
        h = e.hist
        rows["name"].append(e.name)
        rows["dim"].append(len(e.features))
        rows["x"].append(e.features[0])
        rows["y"].append(e.features[1] if len(e.features) > 1 else "")
        for n in featureset.label_names:
            rows[n].append(e.point[n])
        rows["edges_x"].append(np.asarray(h.axes[0].edges, dtype=np.float64).tolist())
        rows["edges_y"].append(np.asarray(h.axes[1].edges, dtype=np.float64).tolist() if len(e.features) > 1 else [])
        rows["values"].append(np.asarray(h.values(), dtype=np.float64).ravel().tolist())
        rows["variances"].append(np.asarray(h.variances(), dtype=np.float64).ravel().tolist())
        rows["sumw"].append(float(h.sum(flow=True).value))
    return pa.table(rows)


def export_parquet(
    featureset: FeatureSet,
    path: str | Path,
    bins: int | Mapping[str, Any] = 40,
    overwrite: bool = False,
    extra_meta: Mapping[str, Any] | None = None,
    efficiency: Any = None,
    overflow: str = "keep",
) -> Path:
    """Write the events as a FeatureSet parquet at ``path`` and the histograms beside it.

    The histograms go to :func:`hists_path` (``<name>.hists.parquet``); the export metadata
    (binning, efficiency, naming, extra) is in the events file's FeatureSet metadata under
    ``"export"``. Both files are refused if present (unless ``overwrite``) and written atomically.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    side = hists_path(path)
    if side == path:
        raise ExportError(f"{path}: the events file name must not end with .hists.parquet")
    check_writable(path, overwrite=overwrite)
    check_writable(side, overwrite=overwrite)
    _, hists, _, meta = _prepare(featureset, bins, extra_meta, efficiency, overflow)
    table = _hist_table(featureset, hists)
    export_md = {k: v for k, v in meta.items() if k not in ("config", "metadata")}
    md = dict(featureset.metadata)
    md["export"] = json.loads(_json(export_md))
    if meta["efficiency"] is not None:
        md["efficiency"] = meta["efficiency"]["model"]
    existed = side.exists()
    with atomic_path(side, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    try:
        FeatureSet(featureset.events, featureset.feature_names, featureset.label_names, md).save(
            path, overwrite=overwrite
        )
    except BaseException:
        # keep the pair consistent: no side table without its events file
        if not existed:
            side.unlink(missing_ok=True)
        raise
    log.info("wrote %s and %s: %d events, %d histograms", path, side, len(featureset), len(hists))
    return path


__all__ += ["hists_path", "HistEntry", "OutputError"]
