"""Compare generated events with MC at every mass point that has both: plots and metrics.

For each mass point present in the MC and in the generated FeatureSet (labels equal within a
relative 1e-6):

- per feature: generated vs MC overlaid (generated scaled to the MC yield, statistical error
  bars of both), ratio panel, and chi2/ndf (``metrics.chi2_ndf``: normalised shapes, errors of
  both samples, over the plotted bins: ``bins`` equal bins over the core of the MC at that point,
  see :func:`core_edges`, or the edges given) and the KS p-value (``metrics.ks_test``, all
  events) computed and printed on the plot with the fraction of events outside the bins;
- per feature pair: the 2D distribution, generated | MC side by side;

plus an overview of all mass points in the label plane (reconstructed masses of all points,
markers at the generator masses) and, with ``history_csv``, the training loss curve.

Files in ``outdir`` (one per format): ``<feature>__<point>``, ``2d_<fx>_vs_<fy>__<point>``,
``label_plane``, ``loss``, and ``metrics.json``; ``<point>`` is the export tag, e.g.
``labelphi_1870__labelomega_9p025``. Existing files are refused unless ``overwrite``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.io.atomic import OutputError, atomic_write_text, check_writable, output_lock
from fedhex_hep.naming import point_tag, point_title
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.errors import FedhexError

__all__ = ["CompareError", "compare", "core_edges", "plot_loss", "point_metrics"]

log = logging.getLogger(__name__)


class CompareError(FedhexError, ValueError):
    """Inputs that cannot be compared (different features or labels); the message says which."""


def _axis_label(name: str, units: Mapping[str, str]) -> str:
    unit = units.get(name, "")
    return f"{name} [{unit}]" if unit else name


def _unless_unit(weights: np.ndarray) -> np.ndarray | None:
    """None for unit weights (then the KS p-value is scipy's exact two-sample one), else the weights."""
    return None if np.all(weights == 1.0) else weights


def core_edges(ref: np.ndarray, bins: int = 40, width: float = 6.0) -> np.ndarray:
    """``bins`` equal bins over the core of the reference (MC) sample, GeV (:func:`fedhex_hep.binning.core_edges`).

    The fraction of events outside the range is reported separately (``outside_generated`` / ``outside_mc``).
    """
    from fedhex_hep.binning import core_edges as edges

    ref = np.asarray(ref, dtype=np.float64)
    if not np.isfinite(ref).any():
        raise CompareError("cannot choose a binning from an empty MC sample")
    return edges(ref, bins, width, what="MC sample")


def _edges(feature: str, mc_values: np.ndarray, bins: int | Mapping[str, Any]) -> np.ndarray:
    spec = bins.get(feature, 40) if isinstance(bins, Mapping) else bins
    if np.ndim(spec) == 0:
        if int(spec) < 1:
            raise CompareError(f"bins for feature {feature!r} must be >= 1, got {spec!r}")
        return core_edges(mc_values, int(spec))
    edges = np.asarray(spec, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise CompareError(f"bin edges for feature {feature!r} must be a strictly increasing list of >= 2 numbers")
    return edges


def _outside(values: np.ndarray, weights: np.ndarray, edges: np.ndarray) -> float:
    out = (values < edges[0]) | (values >= edges[-1])
    return float(weights[out].sum() / weights.sum())


def point_metrics(
    gen: FeatureSet, mc: FeatureSet, bins: int | Mapping[str, Any] = 40
) -> dict[str, dict[str, float]]:
    """chi2/ndf and KS per feature between two FeatureSets at ONE mass point (shapes).

    chi2 over the plotted bins (:func:`core_edges` of the MC, or the edges given), KS over all
    events, both with the event weights (sums of squared weights for the chi2 errors, weighted
    CDFs and effective sample sizes for KS); ``outside_*`` is the weighted fraction of each
    sample outside the bins.
    """
    from fedhex_hep.validation.metrics import chi2_ndf, ks_test_weighted

    out: dict[str, dict[str, float]] = {}
    for name in mc.feature_names:
        a, b = gen.column(name), mc.column(name)
        edges = _edges(name, b, bins)
        chi2 = chi2_ndf(a, b, edges, weights_a=gen.weights, weights_b=mc.weights)
        ks = ks_test_weighted(a, b, _unless_unit(gen.weights), _unless_unit(mc.weights))
        out[name] = {
            "chi2": float(chi2.chi2),
            "ndf": int(chi2.ndf),
            "chi2_ndf": float(chi2.chi2_per_ndf),
            "chi2_pvalue": float(chi2.pvalue),
            "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue),
            "n_generated": int(len(a)),
            "n_mc": int(len(b)),
            "range": [float(edges[0]), float(edges[-1])],
            "bins": int(len(edges) - 1),
            "outside_generated": _outside(a, gen.weights, edges),
            "outside_mc": _outside(b, mc.weights, edges),
        }
    return out


def plot_loss(
    history_csv: str | Path, out: str | Path, formats: Sequence[str] = ("png",), overwrite: bool = False
) -> list[Path]:
    """Plot the training loss curve of ``history_csv`` to ``out.<fmt>``; returns the files."""
    from fedhex_hep.validation.plotting import plot_loss_curve, read_history, save_figure

    history = read_history(history_csv)
    out = Path(out)
    if out.suffix.lower() in (".png", ".pdf", ".svg"):
        formats, out = (out.suffix[1:],), out.with_suffix("")
    fig = plot_loss_curve(history, title=f"Training: {Path(history_csv).parent.name or 'model'}")
    return save_figure(fig, out, formats, overwrite=overwrite)


def _common_points(generated: FeatureSet, mc: FeatureSet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Generated points that have MC (labels equal within 1e-6 relative), and those that have none."""
    mc_points = mc.label_points()
    common, without = [], []
    for p in generated.label_points():
        (common if np.any(np.all(np.isclose(mc_points, p, rtol=1e-6, atol=0), axis=1)) else without).append(p)
    return common, without


def _planned_files(outdir: Path, features: list[str], labels: list[str], common: list[np.ndarray], formats: tuple[str, ...], history: bool) -> list[Path]:
    """Every file compare writes, so that an existing output is refused before anything is written."""
    stems: list[Path] = []
    for p in common:
        tag = point_tag(labels, p)
        stems += [outdir / f"{f}__{tag}" for f in features]
        stems += [outdir / f"2d_{fx}_vs_{fy}__{tag}" for fx, fy in itertools.combinations(features, 2)]
    if len(features) >= 2 and len(labels) >= 2:
        stems.append(outdir / "label_plane")
    if history:
        stems.append(outdir / "loss")
    targets = [s.with_name(s.name + f".{fmt.lower().lstrip('.')}") for s in stems for fmt in formats]
    return [*targets, outdir / "metrics.json"]


def _overlay_text(res: Mapping[str, Any]) -> str:
    return (
        f"χ²/ndf = {res['chi2']:.1f}/{res['ndf']} = {res['chi2_ndf']:.2f}\n"
        f"KS p-value = {res['ks_pvalue']:.3g}\n"
        f"outside: gen {100 * res['outside_generated']:.1f}%, MC {100 * res['outside_mc']:.1f}%"
    )


def _plot_point(g: FeatureSet, m: FeatureSet, point: np.ndarray, per_feature: Mapping[str, Any], outdir: Path, options: Mapping[str, Any]) -> list[Path]:
    """Overlay per feature and side-by-side 2D per feature pair at one mass point."""
    from fedhex_hep.validation.plotting import plot_2d_side_by_side, plot_overlay, save_figure

    features, labels, units, bins = m.feature_names, m.label_names, options["units"], options["bins"]
    tag, title = point_tag(labels, point), point_title(labels, point, units or {})
    formats, overwrite = options["formats"], options["overwrite"]
    plots: list[Path] = []
    for f in features:
        fig = plot_overlay(
            g.column(f), m.column(f), _edges(f, m.column(f), bins), _axis_label(f, units), title,
            gen_weights=g.weights, mc_weights=m.weights, normalize=options["normalize"], text=_overlay_text(per_feature[f]),
            gen_label=f"Generated ({len(g)} ev.)", mc_label=f"MC ({len(m)} ev.)",
        )
        plots += save_figure(fig, outdir / f"{f}__{tag}", formats, overwrite=overwrite)
    for fx, fy in itertools.combinations(features, 2):
        ix, iy = features.index(fx), features.index(fy)
        ex, ey = _edges(fx, m.column(fx), bins), _edges(fy, m.column(fy), bins)
        names = (_axis_label(fx, units), _axis_label(fy, units))
        fig = plot_2d_side_by_side(g.features[:, [ix, iy]], m.features[:, [ix, iy]], ex, ey, names, title, g.weights, m.weights)
        plots += save_figure(fig, outdir / f"2d_{fx}_vs_{fy}__{tag}", formats, overwrite=overwrite)
    return plots


def _overview_plots(generated: FeatureSet, mc: FeatureSet, outdir: Path, history_csv: str | Path | None, options: Mapping[str, Any]) -> list[Path]:
    """The label-plane overview (two features, two labels) and the loss curve (with ``history_csv``)."""
    from fedhex_hep.validation.plotting import PlotError, plot_label_plane, save_figure

    features, labels, units = mc.feature_names, mc.label_names, options["units"]
    formats, overwrite = options["formats"], options["overwrite"]
    plots: list[Path] = []
    if len(features) >= 2 and len(labels) >= 2:
        fig = plot_label_plane(
            mc.features[:, :2], mc.label_points()[:, :2],
            (_axis_label(features[0], units), _axis_label(features[1], units)), (labels[0], labels[1]),
            gen_features=generated.features[:, :2], gen_points=generated.label_points()[:, :2],
        )
        plots += save_figure(fig, outdir / "label_plane", formats, overwrite=overwrite)
    if history_csv is not None:
        try:
            plots += plot_loss(history_csv, outdir / "loss", formats, overwrite=overwrite)
        except PlotError as exc:
            raise CompareError(str(exc)) from None
    return plots


def compare(
    generated: FeatureSet,
    mc: FeatureSet,
    outdir: str | Path,
    bins: int | Mapping[str, Any] = 40,
    formats: Sequence[str] = ("png",),
    history_csv: str | Path | None = None,
    overwrite: bool = False,
    normalize: str = "mc",
) -> dict[str, Any]:
    """Plots and metrics of ``generated`` against ``mc`` at every common mass point.

    Returns ``{"metrics": {point_tag: {"label": {...}, "features": {feature: {chi2, ndf,
    chi2_ndf, chi2_pvalue, ks_statistic, ks_pvalue, ...}}}}, "plots": [paths],
    "files": [paths incl. metrics.json], "points_without_mc": [[...], ...]}``.
    """
    if (generated.feature_names, generated.label_names) != (mc.feature_names, mc.label_names):
        raise CompareError(
            f"generated columns {generated.feature_names + generated.label_names} differ from "
            f"MC columns {mc.feature_names + mc.label_names}"
        )
    if len(mc) == 0 or len(generated) == 0:
        raise CompareError("nothing to compare: the " + ("MC" if len(mc) == 0 else "generated") + " FeatureSet is empty")
    outdir = Path(outdir)
    options = {"formats": tuple(formats), "overwrite": overwrite, "bins": bins, "normalize": normalize, "units": {**generated.units(), **mc.units()}}
    common, without = _common_points(generated, mc)
    targets = _planned_files(outdir, mc.feature_names, mc.label_names, common, options["formats"], history_csv is not None)
    # one compare per folder at a time: a second run into the same folder is refused at once
    with output_lock(outdir):
        for target in targets:
            check_writable(target, overwrite=overwrite)
        plots: list[Path] = []
        metrics: dict[str, Any] = {}
        for p in common:
            g, m = generated.at_label(p), mc.at_label(p)
            per_feature = point_metrics(g, m, bins)
            metrics[point_tag(mc.label_names, p)] = {"label": dict(zip(mc.label_names, map(float, p))), "features": per_feature}
            plots += _plot_point(g, m, p, per_feature, outdir, options)
        plots += _overview_plots(generated, mc, outdir, history_csv, options)
        if not common:
            log.warning("no generated mass point has MC: only the overview plots were made")
        result = {
            "metrics": metrics,
            "plots": [str(p) for p in plots],
            "points_without_mc": [list(map(float, p)) for p in without],
        }
        metrics_path = atomic_write_text(outdir / "metrics.json", json.dumps(result, indent=2), overwrite=overwrite)
        result["files"] = [*result["plots"], str(metrics_path)]
        return result


__all__ += ["OutputError"]
