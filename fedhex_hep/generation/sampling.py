"""Generate events with a trained flow at any label points: batched, seeded, optional ranges.

Memory: besides the output arrays (N events), at most one batch of ``batch_size`` events is
alive at a time, whatever N is. Randomness: batch ``t`` at point ``k`` uses the stateless seed
pair ``(seed, k * 2**20 + t)``, so the same seed always gives the same events.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.model.storage import TrainedModel
from fedhex_hep.errors import FedhexError

__all__ = ["GenerationError", "generate", "out_of_range_messages"]

log = logging.getLogger(__name__)

_POINT_STRIDE = 2**20  # batch seeds of different points never collide below 1M batches per point


class GenerationError(FedhexError, ValueError):
    """Generation cannot proceed as asked; the message names the label, feature or option."""


def out_of_range_messages(model: TrainedModel, point: Sequence[float]) -> list[str]:
    """One message per label of ``point`` outside the training range, saying by how much."""
    messages = []
    for name, value in zip(model.label_names, point):
        info = model.label_ranges.get(name)
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


def _check_ranges(model: TrainedModel, ranges: Mapping[str, Sequence[float]] | None) -> list[tuple[int, float, float]]:
    out = []
    for name, bounds in (ranges or {}).items():
        if name not in model.feature_names:
            raise GenerationError(f"generation range for {name!r}: no such feature (features: {model.feature_names})")
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise GenerationError(f"generation range for {name!r} must be [min, max] with min < max, got {list(bounds)}")
        out.append((model.feature_names.index(name), float(bounds[0]), float(bounds[1])))
    return out


def generate(
    model: TrainedModel,
    points: np.ndarray,
    n_events: int,
    seed: int,
    batch_size: int = 100000,
    ranges: Mapping[str, Sequence[float]] | None = None,
    max_tries: int = 100,
) -> FeatureSet:
    """Sample ``n_events`` events at each label point (raw units, e.g. GeV).

    ``points``: shape (k, L) (or (L,) for one point). ``ranges``: optional per-feature
    acceptance ``{feature: (min, max)}``; events outside are resampled. Raises GenerationError
    if the acceptance is so small that ``max_tries`` batches would not fill ``n_events``.
    Labels outside the training range give a UserWarning saying how far outside they are.
    """
    import fedhex_hep
    from fedhex_hep.limits import check_generation

    n_labels = len(model.label_names)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points.reshape(1, -1)
    if points.ndim != 2 or points.shape[1] != n_labels:
        raise GenerationError(
            f"label points must have {n_labels} values each ({', '.join(model.label_names)}), got shape {points.shape}"
        )
    if not np.all(np.isfinite(points)):
        raise GenerationError("label points contain NaN/inf")
    if n_events < 0 or batch_size < 1 or max_tries < 1:
        raise GenerationError(
            f"need n_events >= 0, batch_size >= 1 and max_tries >= 1 (got {n_events}, {batch_size}, {max_tries})"
        )
    check_generation(model.config, len(model.feature_names), n_labels, len(points), int(n_events), int(batch_size))
    cuts = _check_ranges(model, ranges)
    for point in points:
        for message in out_of_range_messages(model, point):
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)

    # One fixed batch shape per call (one XLA compilation); with ranges, draw more than asked
    # since part of each batch is rejected.
    wanted = int(n_events) if not cuts else max(4 * int(n_events), 10000)
    m = max(1, min(int(batch_size), wanted))
    # One array per output column, filled batch by batch: the output is the only memory that
    # grows with N (no (N, F) intermediate that would be copied into columns later).
    total = len(points) * n_events
    columns = {name: np.empty(total, dtype=np.float64) for name in model.feature_names}
    acceptance: list[float] = []
    seed = int(seed) % 2**31
    for k, point in enumerate(points):
        c = np.repeat(model.preprocessor.transform_labels(point[None, :]).astype(np.float32), m, axis=0)
        raw_labels = np.broadcast_to(point, (m, n_labels))
        offset = k * n_events
        filled, tries, drawn = 0, 0, 0
        while filled < n_events:
            if tries >= max_tries:
                raise GenerationError(
                    f"generation at {dict(zip(model.label_names, point.tolist()))}: only {filled} of {n_events} events "
                    f"inside the ranges after max_tries = {max_tries} batches of {m}"
                )
            z = model.flow.sample(c, seed=(seed, (k * _POINT_STRIDE + tries) % 2**31))
            x = model.preprocessor.inverse_features(z.astype(np.float64), raw_labels)
            tries += 1
            drawn += m
            if cuts:
                keep = np.all(np.isfinite(x), axis=1)
                for i, lo, hi in cuts:
                    keep &= (x[:, i] >= lo) & (x[:, i] <= hi)
                x = x[keep]
                if tries == 1:
                    _check_acceptance(model, point, cuts, len(x) / m, n_events, m, max_tries)
            take = min(len(x), n_events - filled)
            for i, name in enumerate(model.feature_names):
                columns[name][offset + filled : offset + filled + take] = x[:take, i]
            filled += take
        acceptance.append(n_events / drawn if cuts and drawn else 1.0)

    for i, name in enumerate(model.label_names):
        columns[name] = np.repeat(points[:, i], n_events)
    columns["weight"] = np.ones(total)
    metadata: dict[str, Any] = {
        "source": "generated",
        "model_path": str(model.path) if model.path is not None else None,
        "config": model.config.to_dict(),
        "version": fedhex_hep.__version__,
        "generation": {
            "seed": seed,
            "n_events": int(n_events),
            "batch_size": m,
            "points": points.tolist(),
            "ranges": {model.feature_names[i]: [lo, hi] for i, lo, hi in cuts},
            "acceptance": acceptance,
        },
    }
    import awkward as ak

    return FeatureSet(ak.zip(columns), list(model.feature_names), list(model.label_names), metadata)


def _check_acceptance(
    model: TrainedModel,
    point: np.ndarray,
    cuts: list[tuple[int, float, float]],
    acc: float,
    n_events: int,
    m: int,
    max_tries: int,
) -> None:
    where = ", ".join(f"{n}={v:g}" for n, v in zip(model.label_names, point))
    ranges = ", ".join(f"{model.feature_names[i]} in [{lo:g}, {hi:g}]" for i, lo, hi in cuts)
    if acc == 0:
        raise GenerationError(
            f"generation at {where}: none of the first {m} events fell inside the ranges ({ranges}); "
            "the acceptance is too small to fill the request"
        )
    needed = math.ceil(n_events / (acc * m))
    if needed > max_tries:
        raise GenerationError(
            f"generation at {where}: acceptance of the ranges ({ranges}) is about {100 * acc:.3g}% "
            f"(first batch of {m}); {n_events} events would need about {needed} batches > max_tries = {max_tries}"
        )
