"""Plots of generated events against MC: hist + mplhep (CMS-like style), written atomically.

Figures are built on matplotlib's object API with an Agg canvas (no pyplot state, no display
needed, nothing left open) inside ``mplhep.style.CMS``. Every save goes to a temporary name
in the target folder and is renamed when complete (:func:`fedhex_hep.io.atomic.atomic_path`).
Axis labels are given by the caller with their units, e.g. ``phi [GeV]`` (compare takes the units
from the configuration in the FeatureSet metadata).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.binning import plane_edges

from fedhex_hep.io.atomic import atomic_path
from fedhex_hep.errors import FedhexError

__all__ = [
    "PlotError",
    "style",
    "new_figure",
    "save_figure",
    "plot_overlay",
    "plot_2d_side_by_side",
    "plot_label_plane",
    "plot_loss_curve",
    "read_history",
]

GEN_COLOR = "#3f90da"
MC_COLOR = "black"


class PlotError(FedhexError, ValueError):
    """Bad plotting input (missing column in history.csv, empty sample); names the file/column."""


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The CMS-like mplhep style, applied only inside the block (no global rcParams change)."""
    import matplotlib
    import mplhep

    with matplotlib.rc_context():
        mplhep.style.use(mplhep.style.CMS)
        # CMS style has large fonts; long mass-point titles and metric boxes need a bit less
        matplotlib.rcParams["axes.titlesize"] = 18
        matplotlib.rcParams["legend.fontsize"] = 16
        # the style's custom mathtext asks for a 'cursive' family that most systems lack;
        # name an always-present fallback so matplotlib does not log a font warning
        matplotlib.rcParams["font.cursive"] = [*matplotlib.rcParams["font.cursive"], "DejaVu Sans"]
        yield


def new_figure(**kwargs: Any):
    """A matplotlib Figure with an Agg canvas (independent of pyplot and the active backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str] = ("png",), overwrite: bool = False) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, atomically; returns the written paths."""
    paths = []
    try:
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            if fmt not in ("png", "pdf", "svg"):
                raise PlotError(f"plot format {fmt!r} not supported (png, pdf or svg)")
            path = Path(stem).with_name(Path(stem).name + f".{fmt}")
            # draw under the same style the figure was built with (some rcParams are read at draw time)
            with style(), atomic_path(path, overwrite=overwrite) as tmp:
                fig.savefig(tmp, format=fmt, dpi=110 if fmt == "png" else None)
            paths.append(path)
    finally:
        fig.clear()  # drop the artists now; the Figure is not registered with pyplot
    return paths


def _hist1d(values: np.ndarray, weights: np.ndarray, edges: np.ndarray):
    import hist

    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    h.fill(values, weight=weights)
    return h


def _scaled(gen: np.ndarray, mc: np.ndarray, gw: np.ndarray, mw: np.ndarray, edges: np.ndarray, normalize: str) -> tuple[Any, Any, str]:
    """(generated hist, MC hist, y label), scaled as ``normalize`` says (Weight storage: variances scale too)."""
    if normalize == "mc":
        s_gen, s_mc, ylabel = mw.sum() / gw.sum(), 1.0, "Events / bin"
    elif normalize == "unit":
        s_gen, s_mc, ylabel = 1.0 / gw.sum(), 1.0 / mw.sum(), "Fraction of events / bin"
    else:
        raise PlotError(f"normalize must be 'mc' or 'unit', got {normalize!r}")
    return _hist1d(gen, gw, edges) * s_gen, _hist1d(mc, mw, edges) * s_mc, ylabel


def _draw_main(ax: Any, hg: Any, hm: Any, labels: tuple[str, str, str], title: str, text: str) -> None:
    """Generated (step) and MC (points) with their statistical errors, legend, title and text box."""
    import mplhep

    gen_label, mc_label, ylabel = labels
    mplhep.histplot(hg, yerr=np.sqrt(hg.variances()), histtype="step", color=GEN_COLOR, lw=2, label=gen_label, ax=ax)
    mplhep.histplot(hm, yerr=np.sqrt(hm.variances()), histtype="errorbar", color=MC_COLOR, markersize=5, label=mc_label, ax=ax)
    top = max(np.max(h.values() + np.sqrt(h.variances())) for h in (hg, hm))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.35 * max(top, 1e-12))
    ax.set_title(title, loc="right")
    ax.legend(loc="upper right")
    if text:
        box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"}
        ax.text(0.04, 0.95, text, transform=ax.transAxes, va="top", ha="left", fontsize=16, bbox=box)
    ax.tick_params(labelbottom=False)
    ax.set_xlabel("")


def _draw_ratio(rax: Any, hg: Any, hm: Any, edges: np.ndarray, xlabel: str) -> None:
    """Generated / MC with the generated statistical error; the MC's relative error as a grey band."""
    g_val, g_err = hg.values(), np.sqrt(hg.variances())
    m_val, m_err = hm.values(), np.sqrt(hm.variances())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio, r_err, mc_band = g_val / m_val, g_err / m_val, m_err / m_val
    centers = 0.5 * (edges[1:] + edges[:-1])
    ok = np.isfinite(ratio) & np.isfinite(r_err)
    band = np.append(np.nan_to_num(mc_band, nan=0.0), 0)
    rax.fill_between(edges, 1 - band, 1 + band, step="post", color="0.8", label="MC stat.")
    rax.axhline(1.0, color="0.3", ls="--", lw=1)
    rax.errorbar(centers[ok], ratio[ok], yerr=r_err[ok], fmt="o", color=GEN_COLOR, markersize=4)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("Gen / MC")
    rax.set_xlabel(xlabel)
    rax.set_xlim(edges[0], edges[-1])


def plot_overlay(
    gen: np.ndarray,
    mc: np.ndarray,
    edges: np.ndarray,
    feature: str,
    title: str,
    gen_weights: np.ndarray | None = None,
    mc_weights: np.ndarray | None = None,
    normalize: str = "mc",
    text: str = "",
    gen_label: str = "Generated (flow)",
    mc_label: str = "MC",
):
    """Generated vs MC histogram of one feature with statistical errors and a ratio panel.

    ``feature`` is the x-axis label (with its unit). ``normalize``: ``"mc"`` scales the
    generated histogram to the MC yield (sum of MC weights), ``"unit"`` scales both to unit
    area. Events outside ``edges`` count in the normalisation (both samples are scaled by their
    totals) but are not drawn.
    """
    gen = np.asarray(gen, dtype=np.float64)
    mc = np.asarray(mc, dtype=np.float64)
    if gen.size == 0 or mc.size == 0:
        raise PlotError(f"feature {feature!r} at {title}: an empty sample cannot be plotted")
    gw = np.ones_like(gen) if gen_weights is None else np.asarray(gen_weights, dtype=np.float64)
    mw = np.ones_like(mc) if mc_weights is None else np.asarray(mc_weights, dtype=np.float64)
    hg, hm, ylabel = _scaled(gen, mc, gw, mw, np.asarray(edges, dtype=np.float64), normalize)
    with style():
        fig = new_figure(figsize=(10, 10))
        grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
        ax = fig.add_subplot(grid[0])
        rax = fig.add_subplot(grid[1], sharex=ax)
        _draw_main(ax, hg, hm, (gen_label, mc_label, ylabel), title, text)
        _draw_ratio(rax, hg, hm, np.asarray(edges, dtype=np.float64), feature)
        fig.align_ylabels([ax, rax])
    return fig


def _plain_log_ticks(axis: Any) -> None:
    """Tick labels like 2, 5, 10 on a log axis (not 2x10^0)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(NullFormatter())


def _rebin_2d(edges: np.ndarray, max_bins: int = 25) -> np.ndarray:
    """Fewer, wider bins for 2D panels (a 40x40 grid is mostly empty at 10^4 events)."""
    if len(edges) - 1 <= max_bins:
        return edges
    return np.linspace(edges[0], edges[-1], max_bins + 1)


def plot_2d_side_by_side(
    gen: np.ndarray,
    mc: np.ndarray,
    edges_x: np.ndarray,
    edges_y: np.ndarray,
    features: tuple[str, str],
    title: str,
    gen_weights: np.ndarray | None = None,
    mc_weights: np.ndarray | None = None,
    max_bins: int = 25,
):
    """2D distributions of a feature pair, generated | MC, both normalised to unit area,
    on one colour scale."""
    import hist
    from matplotlib.colors import Normalize

    edges_x, edges_y = _rebin_2d(np.asarray(edges_x), max_bins), _rebin_2d(np.asarray(edges_y), max_bins)
    panels = []
    for values, weights in ((gen, gen_weights), (mc, mc_weights)):
        values = np.asarray(values, dtype=np.float64)
        w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        h = hist.Hist(hist.axis.Variable(edges_x), hist.axis.Variable(edges_y), storage=hist.storage.Weight())
        h.fill(values[:, 0], values[:, 1], weight=w)
        panels.append(h.values() / max(w.sum(), 1e-300))
    vmax = max(float(np.max(p)) for p in panels) or 1.0
    norm = Normalize(0.0, vmax)

    with style():
        fig = new_figure(figsize=(20, 9), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, values, name in zip(axes, panels, ("Generated (flow)", "MC")):
            shown = np.where(values > 0, values, np.nan).T
            mesh = ax.pcolormesh(edges_x, edges_y, shown, norm=norm, cmap="viridis", shading="flat")
            ax.set_xlabel(features[0])
            ax.set_ylabel(features[1])
            ax.set_title(name, loc="left")
        fig.colorbar(mesh, ax=list(axes), label="Fraction of events / bin", pad=0.02)
        fig.suptitle(title, fontsize=20)
    return fig


def plot_label_plane(
    mc_features: np.ndarray,
    mc_points: np.ndarray,
    features: tuple[str, str],
    labels: tuple[str, str],
    gen_features: np.ndarray | None = None,
    gen_points: np.ndarray | None = None,
    bins: int = 120,
):
    """Overview of all mass points: 2D histogram of the reconstructed masses of all points
    overlaid, with markers at the generator masses (MC | generated side by side)."""
    import hist
    from matplotlib.colors import LogNorm

    mc_features = np.asarray(mc_features, dtype=np.float64)
    both = mc_features if gen_features is None else np.vstack([mc_features, gen_features])
    ex = plane_edges(both[:, 0], bins)
    ey = plane_edges(both[:, 1], bins)
    sets = [("MC", mc_features, mc_points, "x")]
    if gen_features is not None and len(gen_features):
        sets.append(("Generated (flow)", np.asarray(gen_features, dtype=np.float64), gen_points, "*"))

    with style():
        fig = new_figure(figsize=(11 * len(sets), 10), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(sets)))
        for ax, (name, values, points, marker) in zip(axes, sets):
            h = hist.Hist(hist.axis.Variable(ex), hist.axis.Variable(ey))
            h.fill(values[:, 0], values[:, 1])
            counts = h.values()
            positive = counts[counts > 0]
            norm = LogNorm(vmin=0.8, vmax=max(positive.max(), 1.0)) if positive.size else None
            mesh = ax.pcolormesh(ex, ey, np.where(counts > 0, counts, np.nan).T, norm=norm, cmap="viridis")
            fig.colorbar(mesh, ax=ax, label="Events / bin", pad=0.02)
            for axis, edges, setter in ((ax.xaxis, ex, ax.set_xscale), (ax.yaxis, ey, ax.set_yscale)):
                if edges[0] > 0 and edges[-1] / edges[0] > 5:
                    setter("log")
                    _plain_log_ticks(axis)
            if points is not None and len(points):
                pts = np.asarray(points, dtype=np.float64)
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    marker=marker,
                    s=110,
                    color="red",
                    linewidths=2.5,
                    label=f"generator masses ({labels[0]}, {labels[1]})",
                    zorder=5,
                )
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=15, frameon=False)
            ax.set_xlabel(features[0])
            ax.set_ylabel(features[1])
            ax.set_title(f"{name}: all mass points", loc="left")
    return fig


HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr")


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a training ``history.csv`` (epoch, loss, val_loss, lr) as float arrays."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise PlotError(f"cannot read training history {path}: {exc.strerror or exc}") from None
    if not rows:
        raise PlotError(f"training history {path} has no rows")
    out = {}
    for column in HISTORY_COLUMNS:
        if column not in rows[0]:
            raise PlotError(f"training history {path} has no column {column!r} (has {list(rows[0])})")
        try:
            out[column] = np.array([float(r[column]) if r[column] not in ("", None) else np.nan for r in rows])
        except ValueError:
            raise PlotError(f"training history {path}: column {column!r} has a non-numeric value") from None
    return out


def plot_loss_curve(history: dict[str, np.ndarray], title: str = "Training"):
    """Training and validation loss (negative log-likelihood) per epoch, learning rate on the right."""
    with style():
        fig = new_figure(figsize=(11, 8), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(history["epoch"], history["loss"], "-o", color=GEN_COLOR, markersize=3, label="training loss")
        ax.plot(history["epoch"], history["val_loss"], "-s", color="#e42536", markersize=3, label="validation loss")
        best = int(np.nanargmin(history["val_loss"])) if np.isfinite(history["val_loss"]).any() else None
        if best is not None:
            ax.axvline(history["epoch"][best], color="0.5", ls=":", label=f"best epoch {int(history['epoch'][best])}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss (NLL per event)")
        rax = ax.twinx()
        rax.plot(history["epoch"], history["lr"], "--", color="0.4", label="learning rate")
        rax.set_ylabel("Learning rate")
        if np.all(history["lr"] > 0):
            rax.set_yscale("log")
        lines = ax.get_legend_handles_labels()
        rlines = rax.get_legend_handles_labels()
        ax.legend(lines[0] + rlines[0], lines[1] + rlines[1], loc="upper right")
        ax.set_title(title, loc="right")
    return fig
