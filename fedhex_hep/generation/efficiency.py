"""Selection efficiency per mass point, and a smooth model that interpolates it.

The signal yield a fit needs at a mass point is ``sigma * L * efficiency``. The flow only
models the *shapes* of the selected events, so the efficiency travels separately:

1. :func:`selection_efficiency` turns the extraction cutflow (events read and events passing
   the selection, per label point) into a table with binomial uncertainties.
2. :class:`EfficiencyModel` fits a smooth function of the masses to that table and predicts the
   efficiency (with an uncertainty) at any mass point, e.g. the generated ones.

Method of :class:`EfficiencyModel` (a logistic model fitted by weighted least squares)::

    logit(eff(m)) = sum_j beta_j * P_j(x),   x_i = (log m_i - mean_i) / scale_i

where ``P_j`` are all monomials of the standardised log masses ``x`` up to total degree
``degree`` (e.g. 2 for two labels: 1, x1, x2, x1^2, x1 x2, x2^2; by default the degree in
0..3 with the smallest Akaike criterion chi2 + 2 k is chosen). The empirical logit of
each measured point, ``log((k + 1/2) / (n - k + 1/2))``, is fitted with weights equal to the
inverse of its variance ``1/(k + 1/2) + 1/(n - k + 1/2)`` (the continuity-corrected empirical
logit, finite even at 0% or 100%). When only efficiencies and errors are known, the variance
is obtained by error propagation, ``(err / (eff (1 - eff)))^2``. The degree is lowered
automatically when there are too few points to constrain it. Predictions carry the parameter
uncertainty propagated through the logistic function (delta method), scaled up by
``sqrt(chi2/ndf)`` when the fit is worse than its errors say (the model misses some structure).
Logistic keeps every prediction inside (0, 1); log masses make relative mass changes count
equally across a grid spanning an order of magnitude. Extrapolating outside the fitted mass
range works numerically but is flagged by :meth:`EfficiencyModel.in_range`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fedhex_hep.errors import FedhexError

__all__ = [
    "EfficiencyError",
    "EfficiencyTable",
    "EfficiencyModel",
    "selection_efficiency",
    "binomial_interval",
]


class EfficiencyError(FedhexError, ValueError):
    """Bad cutflow or efficiency input; the message names the key or point at fault."""


def binomial_interval(k: np.ndarray, n: np.ndarray, cl: float = 0.682689) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (exact) central interval of ``k`` successes in ``n`` trials."""
    from scipy import stats

    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    alpha = 1.0 - cl
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.nan_to_num(lo), np.nan_to_num(hi, nan=1.0)


@dataclass
class EfficiencyTable:
    """Measured selection efficiency per label (mass) point.

    ``eff = n_selected / n_read``; ``err`` is the binomial standard error
    ``sqrt(p (1 - p) / n)`` evaluated at ``p = (k + 1/2) / (n + 1)`` so it stays non-zero at
    0% and 100%; ``lo``/``hi`` is the Clopper-Pearson 68.3% interval. With weighted events
    ``n_read``/``n_selected`` are sums of weights and the errors use the effective counts.
    """

    label_names: list[str]
    points: np.ndarray  # (k, L) generator masses, GeV
    n_read: np.ndarray
    n_selected: np.ndarray
    eff: np.ndarray = field(init=False)
    err: np.ndarray = field(init=False)
    lo: np.ndarray = field(init=False)
    hi: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(len(self.points), -1)
        self.n_read = np.asarray(self.n_read, dtype=np.float64).reshape(-1)
        self.n_selected = np.asarray(self.n_selected, dtype=np.float64).reshape(-1)
        if self.points.shape[1] != len(self.label_names):
            raise EfficiencyError(
                f"efficiency points have {self.points.shape[1]} columns for labels {self.label_names}"
            )
        if not (len(self.points) == len(self.n_read) == len(self.n_selected)):
            raise EfficiencyError("efficiency table: points, n_read and n_selected differ in length")
        for i, (n, k) in enumerate(zip(self.n_read, self.n_selected)):
            if not (n > 0 and 0 <= k <= n * (1 + 1e-12)):
                raise EfficiencyError(
                    f"cutflow at {dict(zip(self.label_names, self.points[i].tolist()))}: "
                    f"selected={k} read={n} (need 0 <= selected <= read, read > 0)"
                )
        n, k = self.n_read, np.minimum(self.n_selected, self.n_read)
        self.eff = k / n
        p = (k + 0.5) / (n + 1.0)
        self.err = np.sqrt(p * (1 - p) / n)
        self.lo, self.hi = binomial_interval(np.round(k), np.round(n))

    def __len__(self) -> int:
        return len(self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_names": list(self.label_names),
            "points": self.points.tolist(),
            "n_read": self.n_read.tolist(),
            "n_selected": self.n_selected.tolist(),
            "eff": self.eff.tolist(),
            "err": self.err.tolist(),
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EfficiencyTable":
        try:
            return cls(list(data["label_names"]), data["points"], data["n_read"], data["n_selected"])
        except KeyError as exc:
            raise EfficiencyError(f"efficiency table has no key {exc.args[0]!r}") from None


_READ_KEYS = ("read", "n_read", "events", "n_events", "total", "all", "events_read")
_SEL_KEYS = ("selected", "n_selected", "passed", "pass", "n_passed", "events_selected", "selection")


def _pick(entry: Mapping[str, Any], keys: Sequence[str], what: str, where: str) -> float:
    for key in keys:
        if key in entry and np.ndim(entry[key]) == 0:
            return float(entry[key])
    raise EfficiencyError(f"cutflow entry {where} has no {what} count (looked for {', '.join(keys)})")


def _entry_label(entry: Mapping[str, Any], label_names: Sequence[str] | None, where: str) -> dict[str, float]:
    label = entry.get("label", entry.get("labels", entry.get("point")))
    if label is None:
        raise EfficiencyError(f"cutflow entry {where} has no 'label' (the mass point)")
    if isinstance(label, Mapping):
        return {str(k): float(v) for k, v in label.items()}
    values = list(np.asarray(label, dtype=np.float64).reshape(-1))
    if label_names is None or len(label_names) != len(values):
        raise EfficiencyError(f"cutflow entry {where}: label {values} given without matching label names")
    return dict(zip(label_names, values))


def _cutflow_entries(cutflow: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Flatten the accepted cutflow layouts into (where, entry) pairs."""
    if isinstance(cutflow, Mapping):
        for key in ("per_label", "points", "labels", "per_point"):
            if key in cutflow and not isinstance(cutflow[key], (str, bytes)):
                inner = cutflow[key]
                if isinstance(inner, Mapping):
                    return [(f"{key}[{k!r}]", v) for k, v in inner.items() if isinstance(v, Mapping)]
                return [(f"{key}[{i}]", v) for i, v in enumerate(inner)]
        return [(repr(k), v) for k, v in cutflow.items() if isinstance(v, Mapping)]
    if isinstance(cutflow, Iterable) and not isinstance(cutflow, (str, bytes)):
        return [(f"[{i}]", v) for i, v in enumerate(cutflow)]
    raise EfficiencyError(f"cutflow must be a dict or a list of per-point entries, got {type(cutflow).__name__}")


def selection_efficiency(cutflow: Any, label_names: Sequence[str] | None = None) -> EfficiencyTable:
    """Selection efficiency per label point from an extraction cutflow.

    Accepted layouts (entries whose label is the same point are summed, e.g. several datasets
    or chunks of one mass point):

    - ``{"per_label": [{"label": {"labelphi": 1870.0, "labelomega": 9.025}, "read": N, "selected": k}, ...]}``
      (also under ``"points"``; the list may also be given directly, or a dict keyed by dataset);
    - counts may be called ``read``/``events``/``n_read`` and ``selected``/``passed``/``n_selected``;
      ``label`` may be a dict of label name -> value, or a list in ``label_names`` order.
    """
    entries = _cutflow_entries(cutflow)
    if not entries:
        raise EfficiencyError("cutflow has no per-label entries: cannot compute efficiencies")
    sums: dict[tuple[float, ...], list[float]] = {}
    names: list[str] | None = list(label_names) if label_names is not None else None
    for where, entry in entries:
        if not isinstance(entry, Mapping):
            raise EfficiencyError(f"cutflow entry {where} is not a mapping")
        label = _entry_label(entry, names, where)
        if names is None:
            names = list(label)
        missing = [n for n in names if n not in label]
        if missing:
            raise EfficiencyError(f"cutflow entry {where} has no value for label {missing[0]!r}")
        key = tuple(round(label[n], 9) for n in names)
        n_read = _pick(entry, _READ_KEYS, "read", where)
        n_sel = _pick(entry, _SEL_KEYS, "selected", where)
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += n_read
        acc[1] += n_sel
    keys = sorted(sums)
    assert names is not None
    return EfficiencyTable(
        names,
        np.array(keys, dtype=np.float64).reshape(len(keys), len(names)),
        [sums[k][0] for k in keys],
        [sums[k][1] for k in keys],
    )


def _monomials(n_vars: int, degree: int) -> list[tuple[int, ...]]:
    """Exponent tuples of all monomials in ``n_vars`` variables of total degree <= ``degree``."""
    terms = []
    for d in range(degree + 1):
        for combo in itertools.combinations_with_replacement(range(n_vars), d):
            powers = [0] * n_vars
            for v in combo:
                powers[v] += 1
            terms.append(tuple(powers))
    return terms


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(x)


def _logit_inputs(
    points: Any, eff: Any, err: Any, n_read: Any, n_selected: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (k, L), logit efficiencies and their variances, after checking the inputs."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts.reshape(len(pts), -1)
    eff = np.asarray(eff, dtype=np.float64).reshape(-1)
    err = np.asarray(err, dtype=np.float64).reshape(-1)
    k_pts = len(pts)
    if k_pts == 0:
        raise EfficiencyError("efficiency model: no points to fit")
    if eff.shape != (k_pts,) or err.shape != (k_pts,):
        raise EfficiencyError(f"efficiency model: {k_pts} points but {eff.size} efficiencies and {err.size} errors")
    if np.any(~np.isfinite(eff)) or np.any((eff < 0) | (eff > 1)):
        raise EfficiencyError("efficiency model: efficiencies must be finite and within [0, 1]")
    if np.any(~(err > 0)):
        raise EfficiencyError("efficiency model: every error must be > 0")
    if n_read is not None and n_selected is not None:
        n = np.asarray(n_read, dtype=np.float64).reshape(-1)
        k = np.asarray(n_selected, dtype=np.float64).reshape(-1)
        return pts, np.log((k + 0.5) / (n - k + 0.5)), 1.0 / (k + 0.5) + 1.0 / (n - k + 0.5)
    p = np.clip(eff, err / 2, 1 - err / 2)
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return pts, _logit(p), (err / (p * (1 - p))) ** 2


def _terms_for(degree: int, n_labels: int, varying: list[int], distinct: list[int], k_pts: int) -> tuple[int, list[tuple[int, ...]]]:
    """(degree used, monomials): lowered until fewer terms than points remain (>= 1 degree of freedom)."""
    while True:
        terms = [
            t
            for t in _monomials(n_labels, degree)
            if all(t[i] == 0 for i in range(n_labels) if i not in varying)
            # and no power beyond (number of distinct values - 1) of a variable
            and all(t[i] <= distinct[i] - 1 for i in range(n_labels))
        ]
        if len(terms) < k_pts or degree == 0:
            return degree, terms
        degree -= 1


class EfficiencyModel:
    """Smooth efficiency as a function of the masses (logistic polynomial in log masses).

    See the module docstring for the method. ``degree`` is the total degree of the polynomial
    in the (standardised) log masses, or ``"auto"`` (default): the degree in 0..``max_degree``
    with the smallest Akaike criterion ``chi2 + 2 k`` (k parameters). A degree is reduced
    automatically so that at least one degree of freedom remains for the fit.
    """

    def __init__(
        self, degree: int | str = "auto", label_names: Sequence[str] | None = None, max_degree: int = 3
    ) -> None:
        if degree != "auto" and not (isinstance(degree, (int, np.integer)) and degree >= 0):
            raise EfficiencyError(f"efficiency model degree must be 'auto' or an integer >= 0, got {degree!r}")
        self.degree: int | str = degree if degree == "auto" else int(degree)
        self.max_degree = int(max_degree)
        self.label_names = list(label_names) if label_names is not None else None
        self.used_degree: int | None = None
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.terms: list[tuple[int, ...]] = []
        self.coef: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.chi2: float = float("nan")
        self.ndf: int = 0
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.table: EfficiencyTable | None = None

    # -- fitting ---------------------------------------------------------------------------
    def _design(self, points: np.ndarray) -> np.ndarray:
        assert self.center is not None and self.scale is not None
        pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        if pts.shape[1] != len(self.center):
            raise EfficiencyError(f"points have {pts.shape[1]} columns, the model has {len(self.center)} labels")
        if np.any(pts <= 0) or not np.all(np.isfinite(pts)):
            raise EfficiencyError("efficiency model needs positive, finite masses (it works in log mass)")
        x = (np.log(pts) - self.center) / self.scale
        return np.stack([np.prod(x**np.array(t), axis=1) for t in self.terms], axis=1)

    def fit(
        self,
        points: np.ndarray,
        eff: np.ndarray,
        err: np.ndarray,
        n_read: np.ndarray | None = None,
        n_selected: np.ndarray | None = None,
    ) -> "EfficiencyModel":
        """Fit to efficiencies ``eff`` with errors ``err`` at ``points`` (k, L) in GeV.

        With ``n_read``/``n_selected`` (counts) the continuity-corrected empirical logit is
        used; otherwise the logit of ``eff`` with propagated errors (``eff`` clipped away from
        0 and 1 by half an error).
        """
        pts, y, var = _logit_inputs(points, eff, err, n_read, n_selected)
        k_pts, n_labels = pts.shape
        if self.label_names is not None and len(self.label_names) != n_labels:
            raise EfficiencyError(f"efficiency model: {n_labels} label columns for names {self.label_names}")
        logs = np.log(pts) if np.all(pts > 0) else None
        if logs is None:
            raise EfficiencyError("efficiency model needs positive masses (it works in log mass)")
        self.center = logs.mean(axis=0)
        spread = logs.std(axis=0)
        self.scale = np.where(spread > 0, spread, 1.0)
        # a label that never varies cannot be constrained: keep it out of the polynomial
        varying = [i for i in range(n_labels) if spread[i] > 0]
        distinct = [len(np.unique(np.round(logs[:, i], 12))) for i in range(n_labels)]

        def terms_for(degree: int) -> tuple[int, list[tuple[int, ...]]]:
            return _terms_for(degree, n_labels, varying, distinct, k_pts)

        self.lo, self.hi = pts.min(axis=0), pts.max(axis=0)
        w = 1.0 / var
        degree = self._auto_degree(pts, y, w, terms_for) if self.degree == "auto" else int(self.degree)
        self.used_degree, self.terms = terms_for(degree)
        self.coef, self.cov, self.chi2 = self._wls(pts, y, w)
        self.ndf = int(k_pts - len(self.terms))
        if self.label_names is None:
            self.label_names = [f"label{i}" for i in range(n_labels)]
        return self

    def _auto_degree(self, pts: np.ndarray, y: np.ndarray, w: np.ndarray, terms_for: Any) -> int:
        """Degree with the smallest Akaike criterion chi2 + 2 * (number of parameters), 0..max_degree."""
        best = None
        for d in range(self.max_degree + 1):
            used, terms = terms_for(d)
            if used != d:
                break
            self.terms = terms
            chi2 = self._wls(pts, y, w)[2]
            aic = chi2 + 2 * len(terms)
            if best is None or aic < best[0] - 1e-9:
                best = (aic, d)
        assert best is not None
        return best[1]

    def _wls(self, pts: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Weighted least squares of ``y`` on the current terms: (coef, covariance, chi2)."""
        design = self._design(pts)
        a_w = design * np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(a_w, y * np.sqrt(w), rcond=None)
        cov = np.linalg.pinv(a_w.T @ a_w)
        chi2 = float(np.sum((y - design @ coef) ** 2 * w))
        return coef, cov, chi2

    @classmethod
    def from_table(cls, table: EfficiencyTable, degree: int | str = "auto") -> "EfficiencyModel":
        """Fit to a measured :class:`EfficiencyTable` (uses the counts)."""
        model = cls(degree=degree, label_names=table.label_names)
        model.fit(table.points, table.eff, table.err, n_read=table.n_read, n_selected=table.n_selected)
        model.table = table
        return model

    @classmethod
    def from_cutflow(
        cls, cutflow: Any, label_names: Sequence[str] | None = None, degree: int | str = "auto"
    ) -> "EfficiencyModel":
        """Efficiency table from an extraction cutflow, then the fit."""
        return cls.from_table(selection_efficiency(cutflow, label_names), degree=degree)

    # -- prediction ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.coef is None:
            raise EfficiencyError("efficiency model is not fitted (call .fit first)")

    @property
    def error_scale(self) -> float:
        """Factor applied to prediction errors: sqrt(chi2/ndf) when the fit is worse than its errors."""
        if self.ndf > 0 and math.isfinite(self.chi2):
            return max(1.0, math.sqrt(self.chi2 / self.ndf))
        return 1.0

    def predict(self, points: np.ndarray) -> np.ndarray:
        """Efficiency at ``points`` (k, L) in GeV, shape (k,)."""
        self._check_fitted()
        assert self.coef is not None
        return _expit(self._design(points) @ self.coef)

    def predict_with_error(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(efficiency, standard error) at ``points``; error from the fit covariance (delta method)."""
        self._check_fitted()
        assert self.coef is not None and self.cov is not None
        design = self._design(points)
        eta = design @ self.coef
        var_eta = np.einsum("ij,jk,ik->i", design, self.cov, design) * self.error_scale**2
        p = _expit(eta)
        return p, p * (1 - p) * np.sqrt(np.maximum(var_eta, 0.0))

    def in_range(self, points: np.ndarray) -> np.ndarray:
        """True where a point lies within the fitted mass range (per label, inclusive)."""
        self._check_fitted()
        pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        return np.all((pts >= self.lo * (1 - 1e-9)) & (pts <= self.hi * (1 + 1e-9)), axis=1)

    def table_at(self, points: np.ndarray) -> dict[str, Any]:
        """JSON-ready predictions at ``points``: label values, eff, err, inside the fitted range."""
        pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        eff, err = self.predict_with_error(pts)
        return {
            "label_names": list(self.label_names or []),
            "points": pts.tolist(),
            "eff": eff.tolist(),
            "err": err.tolist(),
            "in_range": self.in_range(pts).tolist(),
        }

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        assert self.coef is not None and self.cov is not None
        assert self.center is not None and self.scale is not None and self.lo is not None and self.hi is not None
        return {
            "method": "logistic polynomial in standardised log masses, weighted least squares on empirical logit",
            "degree": self.degree,
            "max_degree": self.max_degree,
            "used_degree": self.used_degree,
            "label_names": list(self.label_names or []),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "terms": [list(t) for t in self.terms],
            "coef": self.coef.tolist(),
            "cov": self.cov.tolist(),
            "chi2": self.chi2,
            "ndf": self.ndf,
            "range_lo": self.lo.tolist(),
            "range_hi": self.hi.tolist(),
            "table": self.table.to_dict() if self.table is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EfficiencyModel":
        try:
            degree = data["degree"]
            model = cls(
                degree=degree if degree == "auto" else int(degree),
                label_names=data["label_names"],
                max_degree=int(data.get("max_degree", 3)),
            )
            model.used_degree = data.get("used_degree")
            model.center = np.asarray(data["center"], dtype=np.float64)
            model.scale = np.asarray(data["scale"], dtype=np.float64)
            model.terms = [tuple(int(p) for p in t) for t in data["terms"]]
            model.coef = np.asarray(data["coef"], dtype=np.float64)
            model.cov = np.asarray(data["cov"], dtype=np.float64).reshape(len(model.coef), len(model.coef))
            model.chi2 = float(data["chi2"])
            model.ndf = int(data["ndf"])
            model.lo = np.asarray(data["range_lo"], dtype=np.float64)
            model.hi = np.asarray(data["range_hi"], dtype=np.float64)
        except KeyError as exc:
            raise EfficiencyError(f"efficiency model dict has no key {exc.args[0]!r}") from None
        if data.get("table"):
            model.table = EfficiencyTable.from_dict(data["table"])
        return model
