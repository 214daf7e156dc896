"""How well the training grid supports a requested mass point: warnings before sampling.

Two cases make the flow less trustworthy than its closure at ordinary grid cells:

- a label outside the training range (:func:`out_of_range_messages`): the flow extrapolates;
- a point whose grid cell has corners without training MC (:func:`missing_corners`): the flow
  bridges a gap wider than the grid spacing. Where shapes change within one cell (a
  prong-merging threshold, an acceptance turn-on), such a cell is where interpolation is least
  reliable, so the warning names the missing corners.

The grid cell of a point is taken on the lattice of each label's distinct grid values (the
nearest value at or below and at or above, per label). The check applies to grids that are
mostly such a lattice (at least half of its nodes hold MC); a grid laid out otherwise, e.g.
m_omega a fixed fraction of m_Phi, has no rectangular cells to speak of and is not checked.

    >>> import numpy as np
    >>> grid = np.array([[1000, 1], [1000, 2], [2000, 1], [2000, 2], [3000, 1]], dtype=float)
    >>> missing_corners(grid, [2500, 1.5])
    [(3000.0, 2.0)]
    >>> missing_corners(grid, [1500, 1.5])
    []
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "GridSupportWarning", "OutsideGridWarning", "SparseCellWarning",
    "missing_corners", "sparse_cell_message", "out_of_range_messages", "warn_grid_support",
]

#: points named one by one in a sparse-cell warning; the rest are counted
_NAMED_POINTS = 3
#: a grid is checked for missing corners when at least this share of its lattice nodes hold MC
_MIN_LATTICE_FILL = 0.5


class GridSupportWarning(UserWarning):
    """A requested mass point that the training grid supports poorly."""


class OutsideGridWarning(GridSupportWarning):
    """A requested mass point has a label outside the training range."""


class SparseCellWarning(GridSupportWarning):
    """A requested mass point lies in a grid cell with corners that have no training MC."""


def _bracket(ax: np.ndarray, x: float) -> tuple[float, ...] | None:
    """The grid values around ``x`` on one axis: itself if on the grid, else below and above."""
    close = np.isclose(ax, x, rtol=1e-9, atol=0.0)
    if close.any():
        return (float(ax[close][0]),)
    below, above = ax[ax < x], ax[ax > x]
    if not len(below) or not len(above):
        return None
    return float(below.max()), float(above.min())


def _lattice_axes(grid: np.ndarray) -> list[np.ndarray] | None:
    """Each label's distinct grid values, or None when ``grid`` is empty or not mostly a lattice."""
    if grid.ndim != 2 or len(grid) == 0:
        return None
    axes = [np.unique(grid[:, d]) for d in range(grid.shape[1])]
    nodes = float(np.prod([len(ax) for ax in axes]))
    return axes if len(np.unique(grid, axis=0)) >= _MIN_LATTICE_FILL * nodes else None


def _cell_gaps(grid: np.ndarray, axes: list[np.ndarray], point: Sequence[float]) -> list[tuple[float, ...]]:
    """Corners of ``point``'s cell on the lattice ``axes`` that ``grid`` holds no MC at."""
    brackets = [_bracket(ax, float(x)) for ax, x in zip(axes, point)]
    if any(b is None for b in brackets):
        return []
    missing = []
    for corner in itertools.product(*brackets):
        if not np.any(np.all(np.isclose(grid, corner, rtol=1e-9, atol=0.0), axis=1)):
            missing.append(tuple(float(v) for v in corner))
    return missing


def missing_corners(grid: np.ndarray, point: Sequence[float]) -> list[tuple[float, ...]]:
    """Corners of ``point``'s grid cell that hold no MC in ``grid`` (``(n, n_labels)`` points).

    Empty when the cell is complete, when ``point`` lies outside the grid's range (that is
    :func:`out_of_range_messages`'s case), or when the grid is not mostly a lattice.
    """
    grid = np.asarray(grid, dtype=np.float64)
    axes = _lattice_axes(grid)
    return [] if axes is None else _cell_gaps(grid, axes, point)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def sparse_cell_message(grid: np.ndarray, points: np.ndarray, label_names: Sequence[str]) -> str | None:
    """One message for all ``points`` whose grid cell lacks MC at some corners, or None."""
    grid = np.asarray(grid, dtype=np.float64)
    axes = _lattice_axes(grid)
    if axes is None:
        return None
    gaps = [(p, _cell_gaps(grid, axes, p)) for p in np.asarray(points, dtype=np.float64)]
    gaps = [(p, m) for p, m in gaps if m]
    if not gaps:
        return None
    named = "; ".join(f"{_fmt(p)} lacks {', '.join(_fmt(c) for c in m)}" for p, m in gaps[:_NAMED_POINTS])
    more = f"; and {len(gaps) - _NAMED_POINTS} more" if len(gaps) > _NAMED_POINTS else ""
    return (
        f"{len(gaps)} of {len(points)} mass points ({', '.join(label_names)}) lie in grid cells with "
        f"corners that have no training MC: {named}{more}. The flow bridges a gap wider than the grid "
        "spacing there; check its closure nearby (fedhex-hep validate), add MC at those corners, or "
        "train with training.conditioning_l2 = 0.01, which steadies such cells"
    )


def out_of_range_messages(label_ranges: dict[str, Any], label_names: Sequence[str], point: Sequence[float]) -> list[str]:
    """One message per label of ``point`` outside the training range, saying by how much."""
    messages = []
    for name, value in zip(label_names, point):
        info = label_ranges.get(name)
        if not info:
            continue
        lo, hi, spacing = float(info["min"]), float(info["max"]), float(info.get("spacing", 0.0))
        tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
        if lo - tol <= value <= hi + tol:
            continue
        distance = lo - value if value < lo else value - hi
        parts = []
        if spacing > 0:
            parts.append(f"{distance / spacing:.2f} grid spacings of {spacing:g}")
        if hi > lo:
            parts.append(f"{100 * distance / (hi - lo):.1f}% of the training range")
        detail = f" ({'; '.join(parts)})" if parts else ""
        messages.append(
            f"label {name} = {value:g} is outside the training range [{lo:g}, {hi:g}] by {distance:g}{detail}: "
            "the flow extrapolates there"
        )
    return messages


def warn_grid_support(
    grid: np.ndarray, label_ranges: dict[str, Any], label_names: Sequence[str], points: np.ndarray, stacklevel: int = 2
) -> None:
    """Warn once per label outside the training range and once for all points in sparse cells."""
    points = np.asarray(points, dtype=np.float64)
    for point in points:
        for message in out_of_range_messages(label_ranges, label_names, point):
            warnings.warn(message, OutsideGridWarning, stacklevel=stacklevel + 1)
    sparse = sparse_cell_message(grid, points, label_names)
    if sparse:
        warnings.warn(sparse, SparseCellWarning, stacklevel=stacklevel + 1)
