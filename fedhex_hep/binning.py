"""Bin edges (GeV): automatic choices from a sample, the analysis' own binning, and overflow.

Automatic edges (equal-width bins over a range chosen from a sample):

* :func:`quantile_edges` -- the range between two quantiles (the bulk, not min/max),
* :func:`core_edges` -- median +- ``width`` robust standard deviations, clipped to quantiles,
* :func:`plane_edges` -- a padded range for 2D maps of mass points, logarithmic over a decade.

The analysis' binning (:func:`parse_bins_option`, :func:`edges_from_spec`)::

    phi=60:500:3500        60 equal bins from 500 to 3500 GeV
    phi=0,10,20,50,100     explicit edges
    phi=edges.txt          edges from a file (numbers separated by spaces, commas or newlines,
                           or a JSON list)
    phi=40                 40 automatic bins

Under/overflow (:data:`OVERFLOW_POLICIES`): ``drop`` keeps only events inside the edges (the
fraction outside is reported), ``fold`` adds the events below the first / above the last edge
to the first / last bin. Combine ignores flow bins, so one of the two is always applied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.errors import FedhexError

__all__ = [
    "BinningError",
    "OVERFLOW_POLICIES",
    "quantile_edges",
    "core_edges",
    "plane_edges",
    "edges_from_spec",
    "parse_bins_option",
    "parse_bins_options",
    "read_edges_file",
    "make_axis",
    "check_overflow",
    "fold_flow",
    "drop_flow",
    "apply_overflow",
    "outside_fraction",
]

OVERFLOW_POLICIES = ("drop", "fold")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class BinningError(FedhexError, ValueError):
    """A binning that cannot be used; the message names the feature, option or file."""


# -- automatic edges ---------------------------------------------------------------------------
def _finite(values: Any, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise BinningError(f"{what} has no finite values to choose a binning from")
    return values


def _linear(lo: float, hi: float, bins: int) -> np.ndarray:
    if int(bins) < 1:
        raise BinningError(f"number of bins must be >= 1, got {bins}")
    if not hi > lo:
        # a constant sample: widen around the value so the histogram exists
        half = max(abs(lo) * 1e-6, 1e-12)
        lo, hi = lo - half, hi + half
    return np.linspace(lo, hi, int(bins) + 1)


def quantile_edges(values: Any, bins: int = 40, lo: float = 0.005, hi: float = 0.995, what: str = "sample") -> np.ndarray:
    """``bins`` equal-width bins spanning the ``lo``-``hi`` quantiles of ``values``.

    Spanning the bulk (not min/max) keeps single far-tail events from stretching the binning.
    """
    q_lo, q_hi = np.quantile(_finite(values, what), [lo, hi])
    return _linear(float(q_lo), float(q_hi), bins)


def core_edges(values: Any, bins: int = 40, width: float = 6.0, what: str = "sample") -> np.ndarray:
    """``bins`` equal bins over median +- ``width`` robust sigmas (IQR / 1.349), within the 0.5-99.5% quantiles.

    Long low-side tails (mis-pairing, acceptance) would otherwise squeeze the peak into a few bins.
    """
    q_lo, q25, med, q75, q_hi = np.quantile(_finite(values, what), [0.005, 0.25, 0.5, 0.75, 0.995])
    sigma = (q75 - q25) / 1.349
    lo, hi = max(q_lo, med - width * sigma), min(q_hi, med + width * sigma)
    if not hi > lo:
        lo = hi = med
    return _linear(float(lo), float(hi), bins)


def plane_edges(values: Any, bins: int) -> np.ndarray:
    """Edges for a map of mass points: 1-99.9% quantiles padded by 5%, or log bins over a decade."""
    lo, hi = np.quantile(_finite(values, "mass points"), [0.01, 0.999])  # 1%: sparse low tails
    if lo > 0 and hi / lo > 5:
        # a grid over an order of magnitude: log bins, with a margin so edge points show whole
        return np.geomspace(lo / 1.15, hi * 1.15, int(bins) + 1)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, int(bins) + 1)


# -- the analysis' binning -----------------------------------------------------------------------
def _checked_edges(edges: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError):
        raise BinningError(f"{where}: bin edges must be numbers") from None
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
        raise BinningError(f"{where} must be a strictly increasing list of >= 2 finite numbers")
    return arr


def read_edges_file(path: str | Path, feature: str | None = None) -> np.ndarray:
    """Edges from a text file (numbers separated by spaces, commas, newlines; ``#`` comments) or JSON.

    A JSON file may hold a list of edges or a table ``{feature: [edges]}`` (then ``feature`` picks one).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BinningError(f"bin edges file {path}: cannot be read ({exc.strerror or exc})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BinningError(f"bin edges file {path} is not valid JSON ({exc})") from None
        if isinstance(data, Mapping):
            if feature not in data:
                raise BinningError(f"bin edges file {path} has no entry for feature {feature!r}")
            data = data[feature]
        return _checked_edges(data, str(path))
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    tokens = [tok for tok in re.split(r"[\s,]+", body) if tok]
    try:
        return _checked_edges([float(tok) for tok in tokens], str(path))
    except ValueError:
        raise BinningError(f"bin edges file {path}: expected numbers separated by spaces, commas or newlines") from None


def edges_from_spec(spec: Any, feature: str) -> np.ndarray:
    """Explicit edges (GeV) from ``(n, lo, hi)``, a list of edges or ``"n:lo:hi"`` / ``"e0,e1,..."`` / a file."""
    where = f"bin edges for feature {feature!r}"
    if isinstance(spec, str):
        spec = _parse_value(spec, feature)
    if isinstance(spec, tuple):
        if len(spec) != 3 or not float(spec[0]).is_integer() or int(spec[0]) < 1:
            raise BinningError(f"{where} = {spec}: a tuple must be (n, lo, hi) with n >= 1")
        n, lo, hi = int(spec[0]), float(spec[1]), float(spec[2])
        if not (np.isfinite([lo, hi]).all() and hi > lo):
            raise BinningError(f"{where} = {spec}: need finite hi > lo")
        return np.linspace(lo, hi, n + 1)
    if np.ndim(spec) == 0:
        raise BinningError(f"{where}: {spec!r} bins need a sample to choose the range from; give n:lo:hi or edges")
    return _checked_edges(spec, where)


def _parse_value(text: str, feature: str) -> Any:
    """``"60:500:3500"`` -> (60, 500.0, 3500.0); ``"0,10,20"`` -> [0, 10, 20]; ``"40"`` -> 40; else a file."""
    text = text.strip()
    if re.fullmatch(rf"{_NUMBER}:{_NUMBER}:{_NUMBER}", text):
        n, lo, hi = text.split(":")
        if not float(n).is_integer():
            raise BinningError(f"--bins {feature}={text}: the number of bins {n!r} must be an integer")
        return (int(float(n)), float(lo), float(hi))
    if re.fullmatch(rf"{_NUMBER}(?:,{_NUMBER})+", text):
        return [float(x) for x in text.split(",")]
    if re.fullmatch(r"\d+", text):
        if int(text) < 1:
            raise BinningError(f"--bins {feature}={text}: need at least one bin")
        return int(text)
    if Path(text).is_file():
        return read_edges_file(text, feature).tolist()
    raise BinningError(
        f"--bins {feature}={text}: expected n:lo:hi (e.g. 60:500:3500), edges e0,e1,... or an existing edges file"
    )


def parse_bins_option(text: str) -> tuple[str, Any]:
    """``"phi=60:500:3500"`` -> ``("phi", (60, 500.0, 3500.0))``; see the module docstring."""
    feature, sep, value = text.partition("=")
    if not sep or not feature.strip() or not value.strip():
        raise BinningError(f"--bins {text!r}: expected feature=n:lo:hi, feature=e0,e1,... or feature=FILE")
    return feature.strip(), _parse_value(value, feature.strip())


def parse_bins_options(texts: list[str] | None) -> dict[str, Any] | int | None:
    """Several ``--bins`` values: ``feature=...`` entries, or one plain bin count for every feature."""
    if not texts:
        return None
    if len(texts) == 1 and re.fullmatch(r"\d+", texts[0].strip()):
        count = int(texts[0])
        if count < 1:
            raise BinningError("--bins: need at least one bin")
        return count
    out: dict[str, Any] = {}
    for text in texts:
        feature, spec = parse_bins_option(text)
        if feature in out:
            raise BinningError(f"--bins gives feature {feature!r} twice")
        out[feature] = spec
    return out


def make_axis(feature: str, edges: Any) -> Any:
    """A ``hist`` axis over ``edges`` (GeV): Regular when the widths are equal, else Variable."""
    import hist

    edges = _checked_edges(edges, f"bin edges for feature {feature!r}")
    label = f"{feature} [GeV]"
    widths = np.diff(edges)
    if np.allclose(widths, widths[0], rtol=1e-9, atol=0):
        return hist.axis.Regular(len(widths), float(edges[0]), float(edges[-1]), name=feature, label=label)
    return hist.axis.Variable(edges, name=feature, label=label)


# -- under/overflow ------------------------------------------------------------------------------
def check_overflow(policy: str) -> str:
    """``policy`` if it is one of :data:`OVERFLOW_POLICIES`, else a BinningError."""
    if policy not in OVERFLOW_POLICIES:
        raise BinningError(f"overflow policy {policy!r} is not one of {', '.join(OVERFLOW_POLICIES)}")
    return policy


def outside_fraction(h: Any) -> float:
    """Fraction of a Weight histogram's sum of weights in its under/overflow bins."""
    total = float(h.sum(flow=True).value)
    inside = float(h.sum().value)
    return (total - inside) / total if total else 0.0


def fold_flow(h: Any) -> Any:
    """A copy of a Weight histogram with each axis' under/overflow added to its first/last bin (variances too)."""
    out = h.copy()
    view = out.view(flow=True)
    for field in ("value", "variance"):
        arr = np.array(view[field], dtype=np.float64)
        for axis in range(arr.ndim):
            moved = np.moveaxis(arr, axis, 0)
            moved[1] += moved[0]
            moved[-2] += moved[-1]
            moved[0] = moved[-1] = 0.0
        view[field] = arr
    return out


def drop_flow(h: Any) -> Any:
    """A copy of a Weight histogram with empty under/overflow bins."""
    out = h.copy()
    view = out.view(flow=True)
    inner = tuple(slice(1, -1) for _ in range(view.ndim))
    for field in ("value", "variance"):
        arr = np.zeros(view[field].shape)
        arr[inner] = np.asarray(view[field])[inner]
        view[field] = arr
    return out


def apply_overflow(h: Any, policy: str) -> tuple[Any, float]:
    """(histogram after ``policy``, fraction of its sum of weights outside the edges before it).

    ``keep`` leaves the flow bins as they are; ``fold`` and ``drop`` as :func:`fold_flow` / :func:`drop_flow`.
    """
    fraction = outside_fraction(h)
    if policy == "fold":
        return fold_flow(h), fraction
    if policy == "drop":
        return drop_flow(h), fraction
    if policy == "keep":
        return h, fraction
    raise BinningError(f"overflow policy {policy!r} is not one of keep, {', '.join(OVERFLOW_POLICIES)}")
