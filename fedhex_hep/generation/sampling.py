"""Generate events with a trained flow at any label points: batched, seeded, optional ranges.

Memory: besides the output arrays (N events), at most one batch of ``batch_size`` events is
alive at a time, whatever N is; :func:`fedhex_hep.generation.streaming.generate_to_parquet`
writes the same events to disk in row groups instead of holding the output. Several mass points share one sampler call when ``n_events``
is smaller than ``batch_size`` (:func:`points_per_draw`); every call has the same shape, so the
sampler is traced and compiled once per process. Randomness: draw ``t`` of point group ``g``
uses the stateless seed pair ``(seed, g * 2**20 + t)``, so the same seed always gives the same
events.

XLA: the sampler is XLA-compiled only when ``n_events`` per point reaches
:data:`XLA_MIN_EVENTS` (:func:`use_xla`). Compiling costs a long first call (about twice the
plain graph's first call) and pays off only over several million events; below the threshold
the plain graph runs. The rule depends on the events per point alone, never on how points are
grouped, chunked or streamed, so a request gives the same events on every path. XLA draws
its own random stream: the same seed gives different (equally distributed) events below and
above the threshold.

Acceptance: with ``ranges``, the accepted fraction of every event drawn at a point (all the
events examined, also those of a last draw that was larger than needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.model.storage import TrainedModel
from fedhex_hep.errors import FedhexError
from fedhex_hep.generation.grid_support import warn_grid_support
from fedhex_hep.limits import check_generation
from fedhex_hep.naming import point_label

__all__ = ["XLA_MIN_EVENTS", "use_xla", "GenerationError", "generate", "generation_info", "generated_metadata", "group_draws", "check_request", "check_ranges", "sample_features", "rows_per_draw", "points_per_draw"]


_POINT_STRIDE = 2**20  # batch seeds of different points never collide below 1M batches per point
# Events per point from which the sampler is XLA-compiled: compiling costs about twice the plain
# graph's first call and pays off only from ~6M events (benchmarks/bench_scan.py, bench_generate.py).
XLA_MIN_EVENTS = 6_000_000


def use_xla(n_events: int) -> bool:
    """Whether a request of ``n_events`` per mass point samples with the XLA-compiled sampler."""
    return int(n_events) >= XLA_MIN_EVENTS


def _sampler(flow: Any, n_events: int) -> Any:
    """``flow.sample`` for a request of ``n_events`` per point, compiled with XLA per :func:`use_xla`."""
    if use_xla(n_events) and getattr(flow, "supports_xla", False):
        return lambda c, seed: flow.sample(c, seed=seed, xla=True)
    return flow.sample


class GenerationError(FedhexError, ValueError):
    """Generation cannot proceed as asked; the message names the label, feature or option."""


def check_ranges(model: TrainedModel, ranges: Mapping[str, Sequence[float]] | None) -> list[tuple[int, float, float]]:
    """``ranges`` as ``(feature index, min, max)`` after checking names and bounds."""
    out = []
    for name, bounds in (ranges or {}).items():
        if name not in model.feature_names:
            raise GenerationError(f"generation range for {name!r}: no such feature (features: {model.feature_names})")
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise GenerationError(f"generation range for {name!r} must be [min, max] with min < max, got {list(bounds)}")
        out.append((model.feature_names.index(name), float(bounds[0]), float(bounds[1])))
    return out


def rows_per_draw(n_events: int, batch_size: int, cut: bool) -> int:
    """Rows drawn for one point per sampler call: all ``n_events`` (plus a margin when cutting), at most ``batch_size``."""
    # With ranges a part of each draw is rejected: draw a margin more (2% + 4 sigma of the count:
    # one draw fills an acceptance >= ~98%, the common case of a binning around the bulk), and at
    # least enough rows to measure a small acceptance on the first draw.
    wanted = int(n_events) if not cut else max(int(1.02 * n_events + 4 * math.sqrt(n_events)) + 64, 10000)
    return max(1, min(int(batch_size), wanted))


def points_per_draw(n_events: int, batch_size: int, cut: bool, n_points: int | None = None) -> int:
    """Mass points sampled together in one sampler call (one fixed batch shape: one compilation).

    With ``n_points``, the groups are balanced (100 points at 11 per call: 10 calls of 10), so
    the padding of a last, smaller group costs nothing.
    """
    group = max(1, int(batch_size) // rows_per_draw(n_events, batch_size, cut))
    if n_points:
        group = math.ceil(n_points / math.ceil(n_points / group))
    return group


def check_request(
    model: TrainedModel, points: np.ndarray, n_events: int, batch_size: int, max_tries: int, in_memory: bool = True,
    warn_support: bool = True,
) -> np.ndarray:
    """``points`` as a (k, L) array after checking the request (and, ``in_memory``, that the whole
    output fits in memory). With ``warn_support``, labels outside the training range and points
    in grid cells with corners lacking MC warn (:mod:`fedhex_hep.generation.grid_support`)."""
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
    if in_memory:
        check_generation(model.config, len(model.feature_names), n_labels, len(points), int(n_events), int(batch_size))
    if warn_support:
        warn_grid_support(model.training_label_points, model.label_ranges, model.label_names, points, stacklevel=3)
    return points


def generate(
    model: TrainedModel,
    points: np.ndarray,
    n_events: int,
    seed: int,
    batch_size: int = 100000,
    ranges: Mapping[str, Sequence[float]] | None = None,
    max_tries: int = 100,
    flow: Any = None,
    pad_to: int | None = None,
    warn_support: bool = True,
) -> FeatureSet:
    """Sample ``n_events`` events at each label point (raw units, e.g. GeV).

    ``points``: shape (k, L) (or (L,) for one point). ``ranges``: optional per-feature
    acceptance ``{feature: (min, max)}``; events outside are resampled, and
    ``metadata["generation"]["acceptance"]`` holds, per point, the accepted fraction of all the
    events drawn there. Raises GenerationError if the acceptance is so small that ``max_tries``
    draws would not fill ``n_events``. Points that the training grid supports poorly (a label
    outside the training range, a grid cell with corners lacking MC) give a
    :class:`~fedhex_hep.generation.grid_support.GridSupportWarning` unless ``warn_support`` is False.
    ``flow``: another sampler with the model's interface (e.g. one ensemble member).
    ``pad_to``: points per sampler call (see :func:`sample_features`).
    """
    import awkward as ak

    points = check_request(model, points, n_events, batch_size, max_tries, warn_support=warn_support)
    cuts = check_ranges(model, ranges)
    seed = int(seed) % 2**31
    x, accepted, drawn = sample_features(model, points, n_events, seed, batch_size, cuts, max_tries, flow, pad_to)
    columns = {name: x[:, :, i].reshape(-1) for i, name in enumerate(model.feature_names)}
    for i, name in enumerate(model.label_names):
        columns[name] = np.repeat(points[:, i], n_events)
    columns["weight"] = np.ones(len(points) * n_events)
    generation = generation_info(model, points, n_events, seed, batch_size, cuts, accepted, drawn)
    metadata = generated_metadata(model, generation)
    return FeatureSet(ak.zip(columns), list(model.feature_names), list(model.label_names), metadata)


def generation_info(
    model: TrainedModel, points: np.ndarray, n_events: int, seed: int, batch_size: int,
    cuts: list[tuple[int, float, float]], accepted: np.ndarray, drawn: np.ndarray,
) -> dict[str, Any]:
    """The ``metadata["generation"]`` record of a generation (seed, request, acceptance per point)."""
    return {
        "seed": seed,
        "n_events": int(n_events),
        "batch_size": rows_per_draw(n_events, batch_size, bool(cuts)),
        "points": points.tolist(),
        "ranges": {model.feature_names[i]: [lo, hi] for i, lo, hi in cuts},
        "acceptance": (accepted / np.maximum(drawn, 1)).tolist() if cuts else [1.0] * len(points),
        "drawn": drawn.tolist(),
        "accepted": accepted.tolist(),
    }


def generated_metadata(model: TrainedModel, generation: dict[str, Any]) -> dict[str, Any]:
    """FeatureSet metadata of generated events: source, model, its configuration, version, ``generation``."""
    import fedhex_hep

    return {
        "source": "generated",
        "model_path": str(model.path) if model.path is not None else None,
        "config": model.config.to_dict(),
        "version": fedhex_hep.__version__,
        "generation": generation,
    }


def sample_features(
    model: TrainedModel,
    points: np.ndarray,
    n_events: int,
    seed: int,
    batch_size: int,
    cuts: list[tuple[int, float, float]],
    max_tries: int,
    flow: Any = None,
    pad_to: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (k, n_events, F) at ``points`` (k, L), and per point the events accepted and drawn.

    Points go through the sampler in groups of :func:`points_per_draw`, every call with the same
    batch shape (the last group is padded to ``pad_to`` points, default: the first group's), so
    the sampler is compiled once. Group ``g``'s draw ``t`` uses the stateless seed pair
    ``(seed, g * 2**20 + t)``.
    """
    m = rows_per_draw(n_events, batch_size, bool(cuts))
    group = int(pad_to) if pad_to else points_per_draw(n_events, batch_size, bool(cuts), max(len(points), 1))
    out = np.empty((len(points), n_events, len(model.feature_names)), dtype=np.float64)
    accepted = np.zeros(len(points), dtype=np.int64)
    drawn = np.zeros(len(points), dtype=np.int64)
    for g, start in enumerate(range(0, len(points), group)):
        stop = min(start + group, len(points))
        _fill_group(model, points[start:stop], group, m, (seed, g), cuts, max_tries, flow or model.flow,
                    out[start:stop], accepted[start:stop], drawn[start:stop])
    return out, accepted, drawn


def _fill_group(model, points, group, m, seed, cuts, max_tries, flow, out, accepted, drawn) -> None:
    """Draw until every point of the group holds ``out.shape[1]`` events inside ``cuts`` (in place)."""
    draws = group_draws(model, points, group, m, seed, cuts, max_tries, flow, out.shape[1], accepted, drawn)
    for k, start, rows in draws:
        out[k, start : start + len(rows)] = rows


def group_draws(model, points, group, m, seed, cuts, max_tries, flow, n_events, accepted, drawn):
    """Yield ``(k, start, rows)``: the next accepted ``rows`` of point ``k``, its events ``start`` onwards.

    One sampler call of ``group`` x ``m`` rows per draw; ``accepted`` and ``drawn`` are counted in place.
    """
    padded = np.concatenate([points, np.repeat(points[-1:], group - len(points), axis=0)])
    c = np.repeat(model.preprocessor.transform_labels(padded).astype(np.float32), m, axis=0)
    raw_labels = np.repeat(padded, m, axis=0)
    filled = np.zeros(len(points), dtype=np.int64)
    sample = _sampler(flow, n_events)
    tries = 0
    while np.any(filled < n_events):
        if cuts and tries >= max_tries:  # without ranges every draw fills m events: no limit needed
            k = int(np.argmax(filled < n_events))
            raise GenerationError(
                f"generation at {point_label(model.label_names, points[k])}: only {filled[k]} of {n_events} events "
                f"inside the ranges after max_tries = {max_tries} draws of {m}"
            )
        z = sample(c, seed=(seed[0], (seed[1] * _POINT_STRIDE + tries) % 2**31))
        x = model.preprocessor.inverse_features(z.astype(np.float64), raw_labels).reshape(group, m, -1)
        tries += 1
        for k in np.flatnonzero(filled < n_events):
            rows = x[k]
            if cuts:
                keep = np.all(np.isfinite(rows), axis=1)
                for i, lo, hi in cuts:
                    keep &= (rows[:, i] >= lo) & (rows[:, i] <= hi)
                rows = rows[keep]
                if tries == 1:
                    _check_acceptance(model, points[k], cuts, len(rows) / m, n_events, m, max_tries)
            accepted[k] += len(rows)
            drawn[k] += m
            take = min(len(rows), n_events - filled[k])
            yield k, int(filled[k]), rows[:take]
            filled[k] += take


def _check_acceptance(
    model: TrainedModel,
    point: np.ndarray,
    cuts: list[tuple[int, float, float]],
    acc: float,
    n_events: int,
    m: int,
    max_tries: int,
) -> None:
    where = point_label(model.label_names, point)
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


def generate_from_config(
    model_dir: str | Any,
    config: Any,
    points: Sequence[Sequence[float]] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> FeatureSet:
    """:func:`generate` with the ``generation`` section of ``config`` (events, seed, batch size,
    ranges, default points); the model is loaded once per process."""
    from fedhex_hep.model.cache import load_model_cached

    gen = config.generation
    model = load_model_cached(model_dir)
    chosen = np.asarray(points if points else gen.labels, dtype=np.float64)
    if chosen.size == 0:
        raise GenerationError("no mass point: give --label or set generation.labels in the config")
    return generate(
        model,
        chosen,
        gen.n_events,
        seed=gen.seed,
        batch_size=gen.batch_size,
        ranges=ranges or {k: tuple(v) for k, v in gen.ranges.items()} or None,
        max_tries=gen.max_tries,
    )
