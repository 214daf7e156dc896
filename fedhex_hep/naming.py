"""Names of mass points and histograms: the one place the naming convention is written.

Mass values in names use the shortest decimal form with ``.`` -> ``p`` and ``-`` -> ``m``
(``1870.0`` -> ``1870``, ``9.025`` -> ``9p025``, ``-1.5`` -> ``m1p5``), the same convention as
the sample folders (``Phi_1870_omega_9p025``).

* :func:`point_tag` -- ``labelphi_1870__labelomega_9p025`` (ROOT names, dictionary keys)
* :func:`hist_name` -- ``h_<feature>__<point_tag>`` (TH1D of one feature at one mass point)
* :func:`hist2d_name` -- ``h2_<featureX>_vs_<featureY>__<point_tag>`` (TH2D)
* :func:`variation_name` -- ``<nominal>_<syst>Up`` / ``Down`` (CMS combine's ``shapes`` convention)
* :func:`point_category` -- ``labelphi=1870,labelomega=9.025`` (a hist StrCategory bin)
* :func:`point_label` -- ``labelphi=1870, labelomega=9.025`` (log and error messages)
* :func:`point_title` -- ``labelphi = 1870 GeV, labelomega = 9.025 GeV`` (plot titles)
* :func:`point_short` -- ``1870_9.025`` (keys of per-point result tables)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedhex_hep.errors import FedhexError

__all__ = [
    "NamingError",
    "HIST_NAMING",
    "format_value",
    "point_tag",
    "hist_name",
    "hist2d_name",
    "variation_name",
    "point_category",
    "point_label",
    "point_title",
    "point_short",
]

#: The histogram naming pattern (stored in output files as ``meta/naming``).
HIST_NAMING = (
    "h_<feature>__<label1>_<v1>__<label2>_<v2> (TH1D); "
    "h2_<featureX>_vs_<featureY>__<label1>_<v1>__<label2>_<v2> (TH2D); "
    "values: shortest decimal, '.'->'p', '-'->'m' (1870, 9p025)"
)


class NamingError(FedhexError, ValueError):
    """A value or point that cannot be written into a name; the message names it."""


def format_value(value: float) -> str:
    """Mass value for names: ``1870.0`` -> ``1870``, ``9.025`` -> ``9p025``, ``-1.5`` -> ``m1p5``."""
    value = float(value)
    if not math.isfinite(value):
        raise NamingError(f"label value {value} is not finite")
    text = np.format_float_positional(value, trim="-")
    if "e" in text.lower():
        raise NamingError(f"label value {value!r} cannot be written in decimal form")
    return text.replace("-", "m").replace(".", "p")


def _check(label_names: Sequence[str], point: Sequence[float]) -> None:
    if len(label_names) != len(point):
        raise NamingError(f"mass point {list(point)} has {len(point)} values but the labels are {list(label_names)}")


def point_tag(label_names: Sequence[str], point: Sequence[float]) -> str:
    """``labelphi_1870__labelomega_9p025`` for the mass point ``point``."""
    _check(label_names, point)
    return "__".join(f"{name}_{format_value(v)}" for name, v in zip(label_names, point))


def hist_name(feature: str, label_names: Sequence[str], point: Sequence[float]) -> str:
    """Name of the TH1D of ``feature`` at ``point``: ``h_<feature>__<label>_<v>...``."""
    return f"h_{feature}__{point_tag(label_names, point)}"


def hist2d_name(feature_x: str, feature_y: str, label_names: Sequence[str], point: Sequence[float]) -> str:
    """Name of the TH2D of (``feature_x``, ``feature_y``) at ``point``."""
    return f"h2_{feature_x}_vs_{feature_y}__{point_tag(label_names, point)}"


def variation_name(nominal: str, syst: str, direction: str) -> str:
    """``<nominal>_<syst>Up`` / ``Down``: combine's ``$PROCESS_$SYSTEMATIC`` shape convention."""
    if direction not in ("Up", "Down"):
        raise NamingError(f"variation direction {direction!r} is not 'Up' or 'Down'")
    return f"{nominal}_{syst}{direction}"


def point_category(label_names: Sequence[str], point: Sequence[float]) -> str:
    """Histogram category of a label point: ``"labelphi=1870,labelomega=9.025"``."""
    return ",".join(f"{n}={float(v):.10g}" for n, v in zip(label_names, point))


def point_label(label_names: Sequence[str], point: Sequence[float]) -> str:
    """``labelphi=1870, labelomega=9.025`` for messages."""
    return ", ".join(f"{n}={float(v):g}" for n, v in zip(label_names, point))


def point_title(
    label_names: Sequence[str], point: Sequence[float], units: Mapping[str, str] | None = None
) -> str:
    """``labelphi = 1870 GeV, labelomega = 9.025 GeV`` for plot and histogram titles.

    ``units`` maps a label to its unit (default GeV for every label); an empty unit prints none.
    """
    units = {n: "GeV" for n in label_names} if units is None else units
    return ", ".join(f"{n} = {float(v):g} {units.get(n, '')}".rstrip() for n, v in zip(label_names, point))


def point_short(point: Sequence[float]) -> str:
    """``1870_9.025``: a compact key of a point whose label names are implied."""
    return "_".join(f"{float(v):g}" for v in point)
