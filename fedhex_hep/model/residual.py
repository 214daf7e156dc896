"""Residual standardisation: a per-feature location and scale that vary smoothly with the labels.

For each (transformed) feature ``y`` the preprocessing can subtract a location ``m(c)`` and
divide by a scale ``s(c)``, where ``c`` are the standardised transformed labels (the flow's
conditioning input). ``m`` and ``log s`` are low-order polynomials in ``c``, fitted by least
squares to the per-grid-point median and interquartile range of ``y``, so the flow only has to
learn the shape left once the smooth drift of the peak and width across the grid is removed.
The median and IQR are robust to the far tails (mis-paired candidates) that a mean and standard
deviation follow.

The map ``y -> (y - m(c)) / s(c)`` is exactly invertible at any ``c`` (on or off the grid) and
its log-Jacobian is ``-log s(c)`` per feature. Pure numpy, float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Polynomial", "ResidualParams", "fit_residual", "monomials", "point_statistics"]

#: IQR of a unit Gaussian: turns an IQR into a Gaussian-equivalent width
IQR_GAUSS = 1.3489795003921634


def monomials(n_labels: int, degree: int) -> list[tuple[int, ...]]:
    """Exponent tuples of every monomial of total degree <= ``degree`` in ``n_labels`` variables,
    ordered by degree (the constant first)."""
    out = [e for e in itertools.product(range(degree + 1), repeat=n_labels) if sum(e) <= degree]
    return sorted(out, key=lambda e: (sum(e), tuple(-x for x in e)))


def _design(c: np.ndarray, exponents: Sequence[Sequence[int]]) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.stack([np.prod(c ** np.asarray(e, dtype=np.float64), axis=1) for e in exponents], axis=1)


@dataclass
class Polynomial:
    """A polynomial in the labels: sum_k coef[k] * prod_j c_j ** exponents[k][j]."""

    exponents: list[tuple[int, ...]]
    coef: list[float]

    @property
    def degree(self) -> int:
        return max((sum(e) for e in self.exponents), default=0)

    def __call__(self, c: np.ndarray) -> np.ndarray:
        return _design(c, self.exponents) @ np.asarray(self.coef, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"exponents": [list(e) for e in self.exponents], "coef": list(self.coef)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Polynomial":
        return cls([tuple(int(x) for x in e) for e in data["exponents"]], [float(x) for x in data["coef"]])


def _lstsq(c: np.ndarray, values: np.ndarray, degree: int) -> Polynomial:
    exponents = monomials(c.shape[1], degree)
    coef, *_ = np.linalg.lstsq(_design(c, exponents), values, rcond=None)
    return Polynomial(exponents, [float(x) for x in coef])


def _loo_error(c: np.ndarray, values: np.ndarray, degree: int) -> float:
    """Mean squared leave-one-point-out prediction error of a degree-``degree`` fit."""
    errors = []
    for i in range(len(c)):
        keep = np.arange(len(c)) != i
        errors.append(float(_lstsq(c[keep], values[keep], degree)(c[i : i + 1])[0] - values[i]) ** 2)
    return float(np.mean(errors))


def fit_polynomial(c: np.ndarray, values: np.ndarray, max_degree: int) -> Polynomial:
    """Least-squares polynomial of the degree (0..max_degree) with the smallest leave-one-out error.

    A degree is considered only when the grid has at least twice as many points as the
    polynomial has coefficients, so a sparse grid falls back to a lower degree.
    """
    best: tuple[float, int] | None = None
    for degree in range(max_degree + 1):
        if len(c) < 2 * len(monomials(c.shape[1], degree)):
            break
        err = _loo_error(c, values, degree)
        # ties (within rounding) go to the lower degree
        if best is None or err < best[0] * (1 - 1e-9):
            best = (err, degree)
    return _lstsq(c, values, best[1] if best else 0)


def point_statistics(y: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct label row of ``c``: (points (P, L), median of y (P,), log IQR width (P,))."""
    points, inverse = np.unique(c, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    med = np.empty(len(points))
    log_width = np.empty(len(points))
    for k in range(len(points)):
        q25, q50, q75 = np.quantile(y[inverse == k], [0.25, 0.5, 0.75])
        med[k] = q50
        log_width[k] = np.log(max(q75 - q25, 1e-12) / IQR_GAUSS)
    return points, med, log_width


@dataclass
class ResidualParams:
    """Fitted location and log-scale polynomials of one feature."""

    loc: Polynomial
    log_scale: Polynomial

    def forward(self, y: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.loc(c)) * np.exp(-self.log_scale(c))

    def inverse(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.asarray(r, dtype=np.float64) * np.exp(self.log_scale(c)) + self.loc(c)

    def log_det(self, c: np.ndarray) -> np.ndarray:
        """log |dr/dy| per event."""
        return -self.log_scale(c)

    def to_dict(self) -> dict[str, Any]:
        return {"loc": self.loc.to_dict(), "log_scale": self.log_scale.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResidualParams":
        return cls(Polynomial.from_dict(data["loc"]), Polynomial.from_dict(data["log_scale"]))


def fit_residual(y: np.ndarray, c: np.ndarray, max_degree: int) -> ResidualParams:
    """Fit one feature's residual standardisation from its values ``y`` (n,) at labels ``c`` (n, L)."""
    points, med, log_width = point_statistics(np.asarray(y, dtype=np.float64), np.asarray(c, dtype=np.float64))
    return ResidualParams(fit_polynomial(points, med, max_degree), fit_polynomial(points, log_width, max_degree))
