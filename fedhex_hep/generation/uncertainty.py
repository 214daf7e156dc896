"""The interpolation uncertainty of a template: a band from the ensemble members, and its coverage.

A trained ensemble (``model.ensemble = K >= 2``) holds K flows, each started from its own
initial weights and (``model.bootstrap``, the default) fitted to its own bootstrap replica of the
training events. Each member gives its own template at a mass point; their spread per bin is the
part of the interpolation error that the grid's finite statistics and the fit leave open. The band written next to a
template is a one-sigma prediction interval, ``nominal +- band_scale(K) * std_k(member_k)``
(ddof = 1), as the shape variations ``<template>_<syst>Up`` / ``Down`` that CMS combine reads as
one shape nuisance.

:func:`band_coverage` checks the band against reference MC at held-out points: the fraction of
the bins holding 95% of the reference events in which the band covers the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedhex_hep.errors import FedhexError

__all__ = ["UncertaintyError", "BandWithoutBootstrapWarning", "band_scale", "interpolation_band", "band_coverage"]


class UncertaintyError(FedhexError, ValueError):
    """Templates that cannot be compared (different binning, empty reference); says which."""


class BandWithoutBootstrapWarning(UserWarning):
    """The ensemble's members were fitted to the same events (``model.bootstrap = false``): their
    spread, and so the band, leaves out the statistical uncertainty of the training grid."""


def band_scale(n_members: int) -> float:
    """Half-width of a one-sigma (68.3%) prediction interval, in units of the members' std.

    The true template is treated as one more draw from the distribution the K members sample:
    with the std estimated from K members, ``t_{K-1}(0.8413) * sqrt(1 + 1/K)`` (Student t).
    It is 1.53 for K = 3, 1.25 for K = 5 and tends to 1 as K grows.

    >>> round(band_scale(3), 2)
    1.53
    """
    if n_members < 2:
        raise UncertaintyError(f"an interpolation band needs >= 2 ensemble members, got {n_members}")
    from scipy import stats

    return float(stats.t.ppf(stats.norm.cdf(1.0), n_members - 1) * np.sqrt(1.0 + 1.0 / n_members))


def interpolation_band(nominal: Any, members: Sequence[Any]) -> tuple[Any, Any]:
    """Up/Down templates: ``nominal`` +- ``band_scale(K)`` x the members' std per bin (ddof = 1).

    ``nominal`` and each member are 1D ``hist`` histograms with Weight storage and the same
    number of generated events. The spread includes each member template's own sampling noise
    (as many events as the nominal), which errs on the wide side. Down is clipped at zero; the
    variances stay those of the nominal. Flow bins are varied like the others.
    """
    if len(members) < 2:
        raise UncertaintyError(f"an interpolation band needs >= 2 ensemble members, got {len(members)}")
    counts = np.stack([np.asarray(m.values(flow=True), dtype=np.float64) for m in members])
    sigma = band_scale(len(members)) * counts.std(axis=0, ddof=1)
    value = np.asarray(nominal.values(flow=True), dtype=np.float64)
    up, down = nominal.copy(), nominal.copy()
    up.view(flow=True)["value"] = value + sigma
    down.view(flow=True)["value"] = np.clip(value - sigma, 0.0, None)
    return up, down


def _array(h: Any) -> np.ndarray:
    return np.asarray(h.values() if hasattr(h, "values") and callable(h.values) else h, dtype=np.float64)


def band_coverage(
    nominal: Any, up: Any, down: Any, reference: Any, reference_var: Any = None, fraction: float = 0.95
) -> dict[str, float]:
    """Fraction of the bins holding ``fraction`` of the reference events where the band covers it.

    ``nominal``, ``up``, ``down``: the template and its variations (histograms or arrays of bin
    contents, same binning). ``reference``: reference MC in that binning, compared in shape (scaled
    to the nominal's sum). ``reference_var``: its per-bin variances (Poisson counts if None, or
    taken from a Weight histogram); the band is widened by the reference's own statistical error
    in quadrature, so a band of the right (one-sigma) width covers about 68% of the bins. The bins are the fewest,
    taken in decreasing reference content, that hold ``fraction`` of the reference.
    Returns ``{"coverage", "n_bins", "n_covered"}``.
    """
    nom, hi, lo, ref = (_array(h) for h in (nominal, up, down, reference))
    if not nom.shape == hi.shape == lo.shape == ref.shape:
        raise UncertaintyError(f"templates and reference have different binnings: {nom.shape}, {hi.shape}, {lo.shape}, {ref.shape}")
    if reference_var is None:
        reference_var = reference.variances() if hasattr(reference, "variances") else ref
    var = np.asarray(reference_var, dtype=np.float64)
    total = ref.sum()
    if not total > 0 or not nom.sum() > 0:
        raise UncertaintyError("the reference or the nominal template is empty")
    scale = nom.sum() / total
    ref, var = ref * scale, var * scale**2
    order = np.argsort(ref)[::-1]
    n_bins = int(np.searchsorted(np.cumsum(ref[order]), fraction * ref.sum() * (1 - 1e-12)) + 1)
    core = order[: min(n_bins, len(order))]
    upper = nom[core] + np.hypot(hi[core] - nom[core], np.sqrt(var[core]))
    lower = nom[core] - np.hypot(nom[core] - lo[core], np.sqrt(var[core]))
    covered = int(np.sum((ref[core] >= lower) & (ref[core] <= upper)))
    return {"coverage": covered / len(core), "n_bins": int(len(core)), "n_covered": covered}
