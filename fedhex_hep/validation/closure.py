"""Closure at mass points the model never saw: flow vs classical interpolation vs noise.

For each group of held-out mass points the flow is trained WITHOUT them (once per training
seed), events are generated at the held-out points and compared with reference MC there; the
same is done for linear moment morphing (plain and robust moments) and quantile interpolation,
built from the same reduced MC, and for the statistical floor.

Comparison protocol (so every number can be read against noise):
  the reference sample at a point is split at random into two halves A and B of equal size.
  floor     = metrics(A vs B); ``floor_rms``: the rms of its shifts and width errors over
              random half-splits (their noise level at half the reference's size)
  candidate = per-feature metrics (shifts, widths, W1, 1D chi2, KS) of all the method's events
              against the whole reference; joint metrics (AUC, 2D chi2) of its first n events
              against B, n = |B|, at equal size like the floor (their values depend on n).
  A shift or width error is a property of the candidate's distribution that noise only blurs:
  measured on |B| events against B, its noise alone equals the floor rms, so the goal's
  tolerance of twice the floor rms would fail an exact model at each number with 5% probability;
  against the whole reference with ``flow_events`` flow events (default 200,000) its noise is
  about half the floor rms, well inside the tolerance of twice the floor rms.
  Morphing re-uses MC events when asked for more events than its corners hold; to keep its
  statistical errors honest its sample is capped at the number of distinct events available
  (recorded as ``n_candidate``; the chi2 is unbiased for unequal sizes).
  The flow is scored per seed (mean and spread over seeds) and as an ensemble: the mixture of
  the seeds' flows (``flow_events``/n_seeds events from each).

Hold-out groups: ``holdout="single"`` trains once per held-out point (true leave-one-out);
``"checkerboard"`` holds out the interior points of one colour of a checkerboard at a time
(no two held-out points are grid neighbours, so each keeps its neighbours in training), i.e.
two trainings per seed instead of one per point; ``"all"`` holds out all points at once.

References: the held-out MC itself by default (small on the demo grid); ``reference`` (a
FeatureSet, e.g. ``data/reference`` extracted) or ``reference_events`` (fresh events generated
with :func:`fedhex_hep.io.samples.make_signal_grid` into ``outdir/reference`` and extracted with
the config's processor; signal-grid configs only, labels in (m_Phi, m_omega) order).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.validation import metrics
from fedhex_hep.io.atomic import atomic_path, atomic_write_text
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.errors import FedhexError
from fedhex_hep.naming import point_label, point_short

__all__ = [
    "ValidationError",
    "GOALS",
    "REFERENCE_SEED",
    "interior_points",
    "holdout_groups",
    "evaluate_point",
    "validate",
]

log = logging.getLogger(__name__)

#: closure goals a method must meet at a held-out point (fractions, not percent)
GOALS: dict[str, float] = {
    "auc": 0.52,
    "chi2_2d_ndf": 1.3,
    "median_shift": 0.001,
    "width_error": 0.02,
    "floor_factor": 2.0,
}

#: random half-splits of the reference whose rms shift/width error is the floor's noise level
FLOOR_SPLITS = 50

#: random half-splits of the training grid whose rms is the grid's own noise (grid_noise)
GRID_NOISE_SPLITS = 100

#: seed of freshly generated reference MC: differs from the demo grid's seed (0), so the
#: reference events are independent of the training MC
REFERENCE_SEED = 7919

METHODS_MORPH = {"moment": "moment morphing", "moment_robust": "moment morphing (robust)", "quantile": "quantile interp."}


class ValidationError(FedhexError, ValueError):
    """Bad validation input (unknown point, no reference events, ...); the message says which."""


def _fmt_point(point: Sequence[float], names: Sequence[str]) -> str:
    return point_label(names, point)


def interior_points(grid: np.ndarray) -> np.ndarray:
    """Grid points strictly inside the grid's range on every label axis, shape (k, L)."""
    grid = np.asarray(grid, dtype=np.float64)
    inside = np.ones(len(grid), dtype=bool)
    for d in range(grid.shape[1]):
        inside &= (grid[:, d] > grid[:, d].min()) & (grid[:, d] < grid[:, d].max())
    return grid[inside]


def holdout_groups(points: np.ndarray, grid: np.ndarray, mode: str = "single") -> list[np.ndarray]:
    """Split held-out ``points`` into groups trained without together (see module docstring)."""
    points = np.asarray(points, dtype=np.float64)
    if mode == "single":
        return [points[i : i + 1] for i in range(len(points))]
    if mode == "all":
        return [points]
    if mode == "checkerboard":
        axes = [np.unique(grid[:, d]) for d in range(grid.shape[1])]
        colour = []
        for p in points:
            idx = [int(np.argmin(np.abs(ax - v))) for ax, v in zip(axes, p)]
            colour.append(sum(idx) % 2)
        colour = np.array(colour)
        return [points[colour == c] for c in (0, 1) if np.any(colour == c)]
    raise ValidationError(f"holdout {mode!r}: expected single, checkerboard or all")


def _mask_points(fs: FeatureSet, points: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(fs), dtype=bool)
    for p in points:
        mask |= fs.mask_label(p)
    return mask


def _morph_cap(interp: Any, point: np.ndarray) -> int:
    """Largest sample a morphing method can give without repeating MC events."""
    w = interp.weights(point)
    sizes = np.array([len(s) for s in interp.samples], dtype=np.float64)
    used = w > 0
    if interp.__class__.__name__ == "QuantileInterpolation":
        return int(len(interp.samples[interp.nearest(point, w)]))
    return int(np.floor(np.min(sizes[used] / w[used])))


def evaluate_point(
    point: np.ndarray,
    reference: np.ndarray,
    candidates: dict[str, np.ndarray],
    feature_names: Sequence[str],
    seed: int = 0,
    folds: int = 5,
    classifier: bool = True,
) -> dict[str, Any]:
    """Metrics of each candidate sample against ``reference``, plus the floor.

    ``candidates``: name -> (n, F) array. Per-feature metrics: the whole candidate against the
    whole reference (``n_candidate``, ``n_reference``). Joint metrics (AUC, 2D chi2/ndf): the
    candidate's first |half| events against one half of the reference (``n_joint`` per side at
    most; never padded). ``floor`` is the metrics of one half against the other; ``floor_rms``
    the noise level of the per-feature shifts and width errors at half size (rms over
    FLOOR_SPLITS random half-splits).
    """
    half_a, half_b = metrics.split_halves(reference, seed=seed)
    opts = dict(classifier=classifier, folds=folds, seed=seed)
    out: dict[str, Any] = {
        "floor": metrics.compare_samples(half_a, half_b, feature_names, **opts),
        "floor_rms": metrics.floor_spread(reference, feature_names, n_splits=FLOOR_SPLITS, seed=seed),
    }
    for name, sample in candidates.items():
        joint = sample[: len(half_b)]
        out[name] = {
            "n_candidate": int(len(sample)),
            "n_reference": int(len(reference)),
            "n_joint": int(len(joint)),
            "features": {f: metrics.feature_metrics(sample[:, i], reference[:, i]) for i, f in enumerate(feature_names)},
            "joint": metrics.joint_metrics(joint, half_b, **opts),
        }
    return out


def _generate_default(model: Any, point: np.ndarray, n: int, seed: int) -> np.ndarray:
    from fedhex_hep.generation.grid_support import SparseCellWarning
    from fedhex_hep.generation.sampling import generate

    with warnings.catch_warnings():
        # a held-out point is a grid node without MC by design: its cell "lacks" that corner
        warnings.simplefilter("ignore", SparseCellWarning)
        return generate(model, np.asarray(point, dtype=np.float64)[None, :], n, seed=seed).features


def _train_default(featureset: FeatureSet, config: Any, model_dir: Path, overwrite: bool = False) -> Any:
    from fedhex_hep.model.training import train

    # a model folder left by an earlier validation is replaced only under --overwrite
    return train(featureset, config, model_dir, resume=False, progress=False, overwrite=overwrite)


def _make_references(config: Any, points: np.ndarray, n_events: int, outdir: Path) -> FeatureSet:
    """Fresh MC at ``points`` with make_signal_grid, extracted with the config's processor."""
    from fedhex_hep.extraction.runner import extract
    from fedhex_hep.io.samples import make_signal_grid

    if points.shape[1] != 2:
        raise ValidationError("reference_events needs two labels (m_Phi, m_omega) of the signal grid")
    refdir = outdir / "reference" / "nanoaod"
    for phi, omega in points:
        make_signal_grid(refdir, [phi], [omega], n_events=n_events, seed=REFERENCE_SEED, overwrite=True)
    cfg = config.with_overrides({"input.paths": [str(refdir)], "input.min_events_per_label": 0})
    ref = extract(cfg, progress=False)
    ref.save(outdir / "reference" / "reference.parquet", overwrite=True)
    return ref


def _summarise(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max())}


def _seed_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed metrics -> mean/std/min/max per number (abs() for signed shifts in 'abs_mean')."""
    out: dict[str, Any] = {"features": {}, "joint": {}}
    for name in per_seed[0]["features"]:
        out["features"][name] = {}
        for key in per_seed[0]["features"][name]:
            vals = [s["features"][name][key] for s in per_seed]
            entry = _summarise(vals)
            entry["abs_mean"] = float(np.mean(np.abs(vals)))
            out["features"][name][key] = entry
    for key in per_seed[0]["joint"]:
        out["joint"][key] = _summarise([s["joint"][key] for s in per_seed])
    return out


def _goal_check(
    result: dict[str, Any],
    floor: dict[str, Any],
    floor_rms: dict[str, Any] | None = None,
    grid_rms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The closure goals for one method at one point (shift/width: or within 2x the floor).

    The floor of a shift or width error is its noise level ``floor_rms`` (rms over random
    half-splits) where given; else the single split's own value (reports built by hand).
    With ``grid_rms`` (the training grid's noise, :func:`fedhex_hep.validation.grid_noise.grid_noise`)
    the noise is the quadrature sum of both: not the goal itself, which counts the reference
    floor only, but whether an error is larger than the statistics of both samples explain.
    """
    checks: dict[str, Any] = {}
    joint = result["joint"]
    if "auc" in joint:
        checks["auc"] = bool(joint["auc"] <= GOALS["auc"])
    if "chi2_2d_ndf" in joint:
        checks["chi2_2d_ndf"] = bool(joint["chi2_2d_ndf"] <= GOALS["chi2_2d_ndf"])
    k = GOALS["floor_factor"]
    for name, feat in result["features"].items():
        fl = floor_rms[name] if floor_rms is not None else floor["features"][name]

        def noise(key: str) -> float:
            return math.hypot(fl[key], grid_rms[name][key]) if grid_rms is not None else abs(fl[key])

        checks[f"median_shift:{name}"] = bool(
            abs(feat["median_shift"]) <= max(GOALS["median_shift"], k * noise("median_shift"))
        )
        for key in ("width_error_iqr", "width_error_68"):
            checks[f"{key}:{name}"] = bool(abs(feat[key]) <= max(GOALS["width_error"], k * noise(key)))
    checks["all"] = all(checks.values())
    return checks


def _flow_mean_result(summary: dict[str, Any]) -> dict[str, Any]:
    """Seed-mean metrics in the plain result layout (signed means; used for goals/tables)."""
    return {
        "features": {n: {k: v["mean"] for k, v in f.items()} for n, f in summary["features"].items()},
        "joint": {k: v["mean"] for k, v in summary["joint"].items()},
    }


@dataclass
class _Run:
    """Inputs shared by every hold-out group: the MC, the callables, reference events, options."""

    config: Any
    mc: FeatureSet
    outdir: Path
    seeds: list[int]
    train_fn: Callable[[FeatureSet, Any, Path], Any]
    generate_fn: Callable[[Any, np.ndarray, int, int], np.ndarray]
    references: dict[str, np.ndarray]
    ref_source: dict[str, str]
    folds: int
    max_events: int | None
    flow_events: int


@dataclass
class _Group:
    """One hold-out group: its points, the methods built without them and the flows' events."""

    index: int
    points: np.ndarray
    interps: dict[str, Any]
    noise: list[Any]
    n_half: dict[str, int]
    flow_samples: dict[str, list[np.ndarray]]


def validate(
    config: Any,
    mc: FeatureSet,
    outdir: str | Path,
    points: Any = None,
    seeds: Sequence[int] = (1, 2, 3),
    reference_events: int | None = None,
    train_fn: Callable[[FeatureSet, Any, Path], Any] | None = None,
    overwrite: bool = False,
    generate_fn: Callable[[Any, np.ndarray, int, int], np.ndarray] | None = None,
    reference: FeatureSet | str | Path | None = None,
    holdout: str = "single",
    folds: int = 5,
    max_events: int | None = None,
    plots: bool = True,
    flow_events: int = 200_000,
) -> dict[str, Any]:
    """Leave-out closure of the flow vs moment morphing / quantile interpolation vs the floor.

    ``config``: the run Config (training seed replaced by each of ``seeds``). ``mc``: the full
    grid's MC FeatureSet. ``points``: held-out mass points (k, L) in GeV; default: the mass
    points of ``reference`` if given, else every interior grid point.
    ``train_fn(featureset, config, model_dir) -> model`` and
    ``generate_fn(model, point (L,), n, seed) -> (n, F) array`` default to fedhex_hep.model.training /
    fedhex_hep.generation.sampling. ``max_events`` caps the reference half size per point, hence the
    joint metrics' sample size (speed). ``flow_events``: events generated per point and seed
    (at least the half size): the flow's per-feature metrics are measured on all of them.
    Writes ``report.json``, ``report.md`` and plots into ``outdir``; returns the report dict
    (``report["points"]``: one entry per held-out point).
    """
    outdir = Path(outdir)
    seeds = _check_arguments(outdir, seeds, flow_events, overwrite)
    if train_fn is None:
        def train_fn(featureset: FeatureSet, cfg: Any, model_dir: Path) -> Any:
            return _train_default(featureset, cfg, model_dir, overwrite=overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    grid = mc.label_points()
    if reference is not None and not isinstance(reference, FeatureSet):
        reference = FeatureSet.load(reference)
    held = _held_out_points(points, reference, grid, mc.label_names)
    if reference is None and reference_events:
        reference = _make_references(config, held, int(reference_events), outdir)
    references, ref_source = _reference_samples(held, reference, mc)
    run = _Run(config, mc, outdir, seeds, train_fn, generate_fn or _generate_default, references, ref_source,
               folds, max_events, flow_events)
    results: dict[str, dict[str, Any]] = {}
    samples_for_plots: dict[str, dict[str, Any]] = {}
    groups = holdout_groups(held, grid, holdout)
    for g, group in enumerate(groups):
        for key, (entry, plot_samples) in _validate_group(run, g, len(groups), group).items():
            results[key], samples_for_plots[key] = entry, plot_samples
    ordered = [results[point_short(p)] for p in held]
    report = _report(run, holdout, grid, ordered)
    report["plots"] = (
        _make_plots(samples_for_plots, ordered, grid, mc.feature_names, mc.label_names, outdir) if plots else []
    )
    atomic_write_text(outdir / "report.json", json.dumps(report, indent=1, default=float), overwrite=True)
    atomic_write_text(outdir / "report.md", render_markdown(report), overwrite=True)
    return report


def _check_arguments(outdir: Path, seeds: Sequence[int], flow_events: int, overwrite: bool) -> list[int]:
    """Refuse a non-empty output folder, no seeds or no flow events; the seeds as ints."""
    if outdir.exists() and any(p.name != ".fedhex-hep.lock" for p in outdir.iterdir()) and not overwrite:
        raise ValidationError(f"validation folder {outdir} is not empty (use --overwrite)")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValidationError("validate needs at least one training seed")
    if int(flow_events) < 1:
        raise ValidationError(f"flow_events must be >= 1, got {flow_events}")
    return seeds


def _held_out_points(
    points: Any, reference: FeatureSet | None, grid: np.ndarray, names_l: Sequence[str]
) -> np.ndarray:
    """Held-out points (k, L) in GeV: ``points``, else the reference's, else the grid's interior."""
    if points is None and reference is not None:
        return reference.label_points()
    if points is None:
        held = interior_points(grid)
        if len(held) == 0:
            raise ValidationError("the MC grid has no interior points to hold out; pass points explicitly")
        return held
    held = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if held.shape[1] != len(names_l):
        raise ValidationError(f"held-out points need {len(names_l)} values ({', '.join(names_l)})")
    return held


def _reference_samples(
    held: np.ndarray, reference: FeatureSet | None, mc: FeatureSet
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reference events per held-out point (independent MC if it has the point) and their source."""
    names_l = mc.label_names
    references: dict[str, np.ndarray] = {}
    ref_source: dict[str, str] = {}
    for p in held:
        key = point_short(p)
        if reference is not None and reference.mask_label(p).any():
            references[key], ref_source[key] = reference.at_label(p).features, "independent reference MC"
        elif mc.mask_label(p).any():
            references[key], ref_source[key] = mc.at_label(p).features, "held-out training-grid MC"
        else:
            raise ValidationError(f"no reference MC at held-out point {_fmt_point(p, names_l)}")
        if len(references[key]) < 200:
            raise ValidationError(
                f"only {len(references[key])} reference events at {_fmt_point(p, names_l)}; need >= 200"
            )
    return references, ref_source


def _validate_group(
    run: _Run, g: int, n_groups: int, group: np.ndarray
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Train without hold-out group ``g`` once per seed; per point: report entry, plot samples."""
    from fedhex_hep.generation.morphing import MomentMorphing, QuantileInterpolation

    train_mc = run.mc.select(~_mask_points(run.mc, group))
    if len(train_mc) == 0:
        raise ValidationError("holding out these points leaves no MC to train on")
    log.info("hold-out group %d/%d: %s", g + 1, n_groups, [_fmt_point(p, run.mc.label_names) for p in group])
    interps = {
        "moment": MomentMorphing(train_mc),
        "moment_robust": MomentMorphing(train_mc, robust=True),
        "quantile": QuantileInterpolation(train_mc),
    }
    noise = _group_grid_noise(train_mc, group, g)
    n_half = {point_short(p): _half_size(run.references[point_short(p)], run.max_events) for p in group}
    flow_samples = _flow_samples(run, train_mc, g, group, n_half)
    grp = _Group(g, group, interps, noise, n_half, flow_samples)
    return {point_short(p): _evaluate_held_point(run, grp, i) for i, p in enumerate(group)}


def _group_grid_noise(train_mc: FeatureSet, group: np.ndarray, g: int) -> list[Any]:
    """The training grid's own noise at each point of the group; None where not measurable."""
    from fedhex_hep.generation.morphing import MorphingError
    from fedhex_hep.validation.grid_noise import grid_noise

    try:
        return grid_noise(train_mc, group, n_splits=GRID_NOISE_SPLITS, seed=g)
    except MorphingError as exc:  # a held-out point outside the remaining grid's cells
        log.warning("training-grid noise not measured for hold-out group %d: %s", g + 1, exc)
        return [None] * len(group)


def _half_size(reference: np.ndarray, max_events: int | None) -> int:
    """Events per side of the joint comparison: half the reference, at most ``max_events``."""
    n = len(reference) // 2
    if max_events:
        n = min(n, int(max_events))
    return n


def _flow_samples(
    run: _Run, train_mc: FeatureSet, g: int, group: np.ndarray, n_half: dict[str, int]
) -> dict[str, list[np.ndarray]]:
    """Train one flow per seed on ``train_mc``; its events at each held-out point, per seed."""
    flow_samples: dict[str, list[np.ndarray]] = {point_short(p): [] for p in group}
    for seed in run.seeds:
        cfg = run.config.with_overrides({"training.seed": seed})
        model_dir = run.outdir / "models" / f"group{g}-seed{seed}"
        model = run.train_fn(train_mc, cfg, model_dir)
        for i, p in enumerate(group):
            key = point_short(p)
            n_gen = max(int(run.flow_events), n_half[key])
            sample = run.generate_fn(model, p, n_gen, 1000 * seed + i)
            flow_samples[key].append(np.asarray(sample, dtype=np.float64))
    return flow_samples


def _capped_reference(ref: np.ndarray, max_events: int | None) -> np.ndarray:
    """The reference, or a fixed random subset of 2 * ``max_events`` of it."""
    if max_events and len(ref) > 2 * max_events:
        ref = ref[np.random.default_rng(11).permutation(len(ref))[: 2 * max_events]]
    return ref


def _ensemble(flow_samples: list[np.ndarray]) -> np.ndarray:
    """The mixture of the seeds' flows, as many events in total as one seed's, shuffled."""
    n_flow = len(flow_samples[0])
    per = int(math.ceil(n_flow / len(flow_samples)))
    ens = np.concatenate([smp[:per] for smp in flow_samples])[:n_flow]
    return ens[np.random.default_rng(5).permutation(len(ens))]


def _candidates(run: _Run, grp: _Group, i: int) -> dict[str, np.ndarray]:
    """Every method's events at the group's point ``i``: flow per seed, ensemble, morphing."""
    p = grp.points[i]
    key = point_short(p)
    n = grp.n_half[key]
    candidates: dict[str, np.ndarray] = {}
    for s, sample in zip(run.seeds, grp.flow_samples[key]):
        candidates[f"flow_seed{s}"] = sample
    candidates["flow_ensemble"] = _ensemble(grp.flow_samples[key])
    morph_n: dict[str, int] = {}
    for name, interp in grp.interps.items():
        try:
            cap = min(n, _morph_cap(interp, p))
            candidates[name] = interp.sample(p, cap, seed=17 + i)
            morph_n[name] = cap
        except ValueError as exc:  # MorphingError: outside grid / missing corner
            log.warning("%s at %s: %s", name, _fmt_point(p, run.mc.label_names), exc)
    # chi2 grows with the sample size for a given shape difference, and the classifier
    # learns more from more events: compare the flow with moment morphing at equal size too
    if "moment" in morph_n:
        candidates["flow_ensemble_matched"] = candidates["flow_ensemble"][: morph_n["moment"]]
    return candidates


def _evaluate_held_point(run: _Run, grp: _Group, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report entry of the group's point ``i`` and the samples its overlay plot draws."""
    p = grp.points[i]
    key = point_short(p)
    ref = _capped_reference(run.references[key], run.max_events)
    candidates = _candidates(run, grp, i)
    ev = evaluate_point(p, ref, candidates, run.mc.feature_names, seed=3, folds=run.folds)
    entry = _point_entry(run, grp, i, ref, ev)
    _add_verdict(entry)
    plot_samples = {
        "point": p,
        "reference": ref,
        "flow_seeds": grp.flow_samples[key],
        "flow_ensemble": candidates["flow_ensemble"],
        **{name: candidates[name] for name in grp.interps if name in candidates},
    }
    return entry, plot_samples


def _point_entry(run: _Run, grp: _Group, i: int, ref: np.ndarray, ev: dict[str, Any]) -> dict[str, Any]:
    """One held-out point's report entry from its metrics ``ev`` (morphing's are left in ``ev``)."""
    p, names_l = grp.points[i], run.mc.label_names
    key = point_short(p)
    matched = ev.pop("flow_ensemble_matched", None)
    per_seed = [ev.pop(f"flow_seed{s}") for s in run.seeds]
    return {
        "point": dict(zip(names_l, map(float, p))),
        "group": grp.index,
        "reference": run.ref_source[key],
        "n_reference": int(len(ref)),
        "n_compare": int(grp.n_half[key]),
        "floor": ev.pop("floor"),
        "floor_rms": ev.pop("floor_rms"),
        "grid_noise_rms": grp.noise[i],
        "flow_seeds": {str(s): r for s, r in zip(run.seeds, per_seed)},
        "flow": _seed_summary(per_seed),
        "flow_ensemble": ev.pop("flow_ensemble"),
        "morph": ev,
        "flow_ensemble_matched": matched,
        "morph_weights": _morph_weights(grp.interps, p, names_l, ev),
    }


def _morph_weights(
    interps: dict[str, Any], p: np.ndarray, names_l: Sequence[str], morph: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """The grid points each morphing method in ``morph`` combined at ``p``, with their weights."""
    return {
        name: [
            {"label": dict(zip(names_l, map(float, interp.points[k]))), "weight": float(w)}
            for k, w in enumerate(interp.weights(p)) if w > 0
        ]
        for name, interp in interps.items() if name in morph
    }


def _report(run: _Run, holdout: str, grid: np.ndarray, ordered: list[dict[str, Any]]) -> dict[str, Any]:
    """The report dict (without plots) from the entries of the held-out points, in order."""
    from fedhex_hep import __version__

    config = run.config
    return {
        "version": __version__,
        "config": config.to_dict() if hasattr(config, "to_dict") else {},
        "seeds": run.seeds,
        "holdout": holdout,
        "goals": GOALS,
        "feature_names": list(run.mc.feature_names),
        "label_names": list(run.mc.label_names),
        "training_grid": grid.tolist(),
        "points": ordered,
        "summary": _overall(ordered),
    }


def _add_verdict(entry: dict[str, Any]) -> None:
    floor, rms = entry["floor"], entry.get("floor_rms")
    flow_mean = _flow_mean_result(entry["flow"])
    entry["goals"] = {
        "flow_seed_mean": _goal_check(flow_mean, floor, rms),
        "flow_ensemble": _goal_check(entry["flow_ensemble"], floor, rms),
        "flow_every_seed": all(
            _goal_check(r, floor, rms)["all"] for r in entry["flow_seeds"].values()
        ),
        **{name: _goal_check(r, floor, rms) for name, r in entry["morph"].items()},
    }
    grid = entry.get("grid_noise_rms")
    if grid is not None and rms is not None:
        entry["within_noise"] = {
            "flow_seed_mean": _goal_check(flow_mean, floor, rms, grid)["all"],
            "flow_ensemble": _goal_check(entry["flow_ensemble"], floor, rms, grid)["all"],
            **{name: _goal_check(r, floor, rms, grid)["all"] for name, r in entry["morph"].items()},
        }
    # winner per joint metric among flow (seed mean), flow ensemble and each morphing method
    contenders = {"flow": flow_mean, "flow_ensemble": entry["flow_ensemble"], **entry["morph"]}
    winners = {}
    for key in ("auc", "chi2_2d_ndf"):
        vals = {n: r["joint"][key] for n, r in contenders.items() if key in r["joint"]}
        if vals:
            winners[key] = min(vals, key=vals.get)
    entry["winner"] = winners
    # flow no worse than moment morphing (plain) on AUC and 2D chi2
    if entry.get("flow_ensemble_matched") is None:
        entry["flow_ensemble_matched"] = entry["flow_ensemble"]
    if "moment" in entry["morph"]:
        mm = entry["morph"]["moment"]["joint"]
        # flow_ensemble_matched: the ensemble at moment morphing's sample size (fair comparison)
        entry["flow_vs_moment"] = {
            key: {
                "flow": bool(flow_mean["joint"][key] <= mm[key]),
                "flow_ensemble": bool(entry["flow_ensemble"]["joint"][key] <= mm[key]),
                "flow_ensemble_matched": bool(entry["flow_ensemble_matched"]["joint"][key] <= mm[key]),
            }
            for key in ("auc", "chi2_2d_ndf") if key in mm
        }


def _overall(points: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(points)
    out: dict[str, Any] = {"n_points": n}
    for name in ("flow_seed_mean", "flow_ensemble", "moment", "moment_robust", "quantile"):
        passed = [p["goals"][name]["all"] for p in points if name in p["goals"]]
        out[f"goals_met_{name}"] = f"{sum(passed)}/{len(passed)}"
    out["goals_met_flow_every_seed"] = f"{sum(p['goals']['flow_every_seed'] for p in points)}/{n}"
    for name in ("flow_seed_mean", "flow_ensemble", "moment", "moment_robust", "quantile"):
        within = [p["within_noise"][name] for p in points if name in p.get("within_noise", {})]
        if within:
            out[f"within_noise_{name}"] = f"{sum(within)}/{len(within)}"
    for variant in ("flow", "flow_ensemble", "flow_ensemble_matched"):
        for key in ("auc", "chi2_2d_ndf"):
            wins = [p["flow_vs_moment"][key][variant] for p in points if key in p.get("flow_vs_moment", {})]
            out[f"{variant}_no_worse_than_moment_{key}"] = f"{sum(wins)}/{len(wins)}"
    return out


# ---------------------------------------------------------------------------------------------
# markdown


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _rows(entry: dict[str, Any], names_f: Sequence[str]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    rows.append(("flow (mean over seeds)", _flow_mean_result(entry["flow"]), entry["flow"]))
    rows.append(("flow ensemble", entry["flow_ensemble"], None))
    if entry.get("flow_ensemble_matched") is not entry.get("flow_ensemble"):
        rows.append(("flow ensemble at morphing's size", entry["flow_ensemble_matched"], None))
    for name, label in METHODS_MORPH.items():
        if name in entry["morph"]:
            rows.append((label, entry["morph"][name], None))
    rows.append(("statistical floor", entry["floor"], None))
    return rows


def _noise_row(label: str, n: str, noise: dict[str, dict[str, float]], names_f: Sequence[str]) -> str:
    """A per-point table row of +- noise levels (median shift, widths) per feature."""
    row = f"| {label} | {n} | - | - |"
    for f in names_f:
        m = noise[f]
        row += (
            f" ±{100 * m['median_shift']:.2f}% | ±{100 * m['width_error_68']:.2f}% "
            f"| ±{100 * m['width_error_iqr']:.2f}% | - | - | - |"
        )
    return row


def render_markdown(report: dict[str, Any]) -> str:
    """The validation report as markdown: summary, then one table per held-out point."""
    names_f, names_l = report["feature_names"], report["label_names"]
    lines = _md_intro(report)
    lines += [_md_summary_row(e, names_l) for e in report["points"]]
    lines += ["", "| summary | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["summary"].items()]
    for e in report["points"]:
        lines += _md_point_section(e, names_f, names_l)
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"- `{p}`" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _md_intro(report: dict[str, Any]) -> list[str]:
    """Title, how to read the numbers, the goals, and the head of the summary table."""
    return [
        "# Closure at held-out mass points",
        "",
        f"fedhex-hep {report['version']}; training seeds {report['seeds']}; hold-out `{report['holdout']}`; "
        f"{report['summary']['n_points']} held-out points.",
        "Per-feature numbers (shifts, widths, W1, chi2/ndf, KS) compare all of a method's events (column n) "
        "with the whole reference MC at the point; AUC and 2D chi2/ndf compare at most as many events as one "
        "half of the reference with that half, at equal size, like the statistical floor, which compares the "
        "two halves. Shifts and width errors are relative to the MC; "
        "W1 is divided by the MC's IQR/1.349; AUC 0.5 = indistinguishable.",
        "",
        f"Goals: AUC <= {GOALS['auc']}, 2D chi2/ndf <= {GOALS['chi2_2d_ndf']}, "
        f"|median shift| <= {100 * GOALS['median_shift']:.1f}%, |width error| <= {100 * GOALS['width_error']:.0f}% "
        f"(or <= {GOALS['floor_factor']:g}x the floor: the rms of the same number between two reference halves "
        f"over {FLOOR_SPLITS} random splits).",
        "`within_noise_*` (not part of the goals): the same goals with the floor replaced by the quadrature sum "
        "of the floor and the training grid's own noise (quantile interpolation from random halves of the "
        "training grid; `fedhex_hep.validation.grid_noise`): whether a miss is larger than both samples' statistics explain.",
        "",
        "## Summary",
        "",
        "| held-out point | AUC flow (mean ± sd) | AUC ens. | AUC ens. at morph n | AUC moment | AUC floor | chi2/ndf 2D flow | ens. | ens. at morph n | moment | floor | best AUC | best chi2 2D | goals flow / ens. / moment |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _md_summary_row(e: dict[str, Any], names_l: Sequence[str]) -> str:
    """One held-out point's row of the summary table."""
    fj = e["flow"]["joint"]
    ens, floor = e["flow_ensemble"]["joint"], e["floor"]["joint"]
    ensm = e.get("flow_ensemble_matched", e["flow_ensemble"])["joint"]
    mom = e["morph"].get("moment", {}).get("joint", {})
    g = e["goals"]

    def ok(name: str) -> str:
        return ("yes" if g[name]["all"] else "no") if name in g else "-"

    return (
        f"| {_fmt_point(e['point'].values(), names_l)} "
        f"| {fj['auc']['mean']:.3f} ± {fj['auc']['std']:.3f} | {ens['auc']:.3f} | {ensm['auc']:.3f} | {mom.get('auc', float('nan')):.3f} | {floor['auc']:.3f} "
        f"| {fj['chi2_2d_ndf']['mean']:.2f} | {ens['chi2_2d_ndf']:.2f} | {ensm['chi2_2d_ndf']:.2f} | {mom.get('chi2_2d_ndf', float('nan')):.2f} | {floor['chi2_2d_ndf']:.2f} "
        f"| {e['winner'].get('auc', '-')} | {e['winner'].get('chi2_2d_ndf', '-')} "
        f"| {ok('flow_seed_mean')} / {ok('flow_ensemble')} / {ok('moment')} |"
    )


def _md_point_section(e: dict[str, Any], names_f: Sequence[str], names_l: Sequence[str]) -> list[str]:
    """One held-out point's section: its reference, one row per method, the noise levels."""
    lines = [
        "",
        f"## {_fmt_point(e['point'].values(), names_l)}",
        "",
        f"Reference: {e['reference']} ({e['n_reference']} events; AUC and 2D chi2 at {e['n_compare']} per side, "
        "against one half).",
        "",
    ]
    head = "| method | n | AUC | chi2/ndf 2D |"
    sep = "|---|---|---|---|"
    for f in names_f:
        head += f" {f}: median | {f}: width 68 | {f}: width IQR | {f}: W1/w | {f}: chi2/ndf | {f}: KS p |"
        sep += "---|---|---|---|---|---|"
    lines += [head, sep]
    for label, r, spread in _rows(e, names_f):
        lines.append(_md_method_row(label, r, spread, e["n_compare"], names_f))
    if e.get("floor_rms"):
        label = f"statistical floor: rms over {FLOOR_SPLITS} half-splits"
        lines.append(_noise_row(label, str(e["n_compare"]), e["floor_rms"], names_f))
    if e.get("grid_noise_rms"):
        label = f"training-grid noise: quantile interpolation, rms over {GRID_NOISE_SPLITS} half-grid splits / 2"
        lines.append(_noise_row(label, "-", e["grid_noise_rms"], names_f))
    return lines


def _md_method_row(
    label: str, r: dict[str, Any], spread: dict[str, Any] | None, n_compare: int, names_f: Sequence[str]
) -> str:
    """A per-point table row of one method's numbers (AUC ± the seeds' spread where given)."""
    j = r["joint"]
    n_cand = r.get("n_candidate", n_compare)
    row = f"| {label} | {n_cand} | {j.get('auc', float('nan')):.3f}"
    if spread is not None:
        row += f" ± {spread['joint']['auc']['std']:.3f}"
    row += f" | {j.get('chi2_2d_ndf', float('nan')):.2f} |"
    for f in names_f:
        m = r["features"][f]
        row += (
            f" {_pct(m['median_shift'])} | {_pct(m['width_error_68'])} | {_pct(m['width_error_iqr'])} "
            f"| {m['w1_rel']:.3f} | {m['chi2_ndf']:.2f} | {m['ks_pvalue']:.2g} |"
        )
    return row


# ---------------------------------------------------------------------------------------------
# plots


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=110)
    return str(path)



#: overlay line per method: (legend label, colour, line style)
_OVERLAY_STYLES = {
    "flow_ensemble": ("flow ensemble", "tab:red", "-"),
    "moment": ("moment morphing", "tab:blue", "--"),
    "moment_robust": ("moment morph. (robust)", "tab:cyan", ":"),
    "quantile": ("quantile interp.", "tab:green", "-."),
}


def _make_plots(
    samples: dict[str, dict[str, Any]],
    points: list[dict[str, Any]],
    grid: np.ndarray,
    names_f: Sequence[str],
    names_l: Sequence[str],
    outdir: Path,
) -> list[str]:
    """Overlay plot per held-out point (plots/overlay_<point>.png) and, for two labels, the AUC map."""
    plt = _pyplot()
    paths = []
    plotdir = outdir / "plots"
    for key, smp in samples.items():
        fig = _overlay_figure(plt, smp, names_f, names_l)
        paths.append(_save(fig, plotdir / f"overlay_{key}.png"))
        plt.close(fig)
    if len(names_l) == 2 and points:
        fig = _auc_map_figure(plt, points, grid, names_l)
        paths.append(_save(fig, plotdir / "auc_map.png"))
        plt.close(fig)
    return paths


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend in CMS style, fonts sized for panels side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import mplhep

        plt.style.use(mplhep.style.CMS)
    except Exception:  # style is cosmetic; plots must not fail without it
        pass
    # CMS style fonts are sized for single 10x10 figures: scale down for panels side by side
    plt.rcParams.update({"font.size": 14, "axes.labelsize": 16, "xtick.labelsize": 13,
                         "ytick.labelsize": 13, "legend.fontsize": 11})
    return plt


def _overlay_figure(plt: Any, smp: dict[str, Any], names_f: Sequence[str], names_l: Sequence[str]) -> Any:
    """One point's figure: per feature, densities of MC and each method (top) and their ratio to MC."""
    fig, axes = plt.subplots(
        2, len(names_f), figsize=(8 * len(names_f), 8), sharex="col",
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05}, squeeze=False,
    )
    for f, fname in enumerate(names_f):
        _overlay_panel(axes[0, f], axes[1, f], smp, f)
        axes[1, f].set_xlabel(f"{fname} [GeV]")
        axes[1, f].set_ylabel("method / MC")
        axes[0, f].set_ylabel("normalised density [1/GeV]")
        axes[0, f].set_title(_fmt_point(smp["point"], names_l) + " GeV (held out)", fontsize=13)
        axes[0, f].legend(fontsize=10)
    fig.subplots_adjust(left=0.09, right=0.98, wspace=0.3)
    return fig


def _overlay_panel(top: Any, bot: Any, smp: dict[str, Any], f: int) -> None:
    """Feature ``f``: MC points, the flow seeds' band and each method's line; ratios to MC below."""
    ref = smp["reference"]
    edges = metrics.quantile_edges(ref[:, f], 40)
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    n_ref, _ = np.histogram(ref[:, f], edges)
    dens_ref = n_ref / n_ref.sum() / width
    err_ref = np.sqrt(n_ref) / n_ref.sum() / width
    top.errorbar(centres, dens_ref, yerr=err_ref, fmt="ko", ms=3, label="MC (held out)")
    # flow seed spread as a band: min/max over the seeds' normalised histograms
    seed_h = np.array([_density(sample[:, f], edges, width) for sample in smp["flow_seeds"]])
    top.fill_between(edges[:-1], seed_h.min(0), seed_h.max(0), step="post", color="tab:red",
                     alpha=0.25, label="flow seed spread")
    ratio_ref = np.where(dens_ref > 0, dens_ref, np.nan)
    bot.fill_between(edges[:-1], seed_h.min(0) / ratio_ref, seed_h.max(0) / ratio_ref, step="post",
                     color="tab:red", alpha=0.25)
    for name, (label, colour, ls) in _OVERLAY_STYLES.items():
        if name not in smp:
            continue
        dens = _density(smp[name][:, f], edges, width)
        top.stairs(dens, edges, color=colour, ls=ls, label=label)
        bot.stairs(dens / ratio_ref, edges, color=colour, ls=ls)
    bot.errorbar(centres, np.ones_like(centres), yerr=np.where(n_ref > 0, 1 / np.sqrt(np.maximum(n_ref, 1)), 0),
                 fmt="ko", ms=2)
    bot.axhline(1.0, color="grey", lw=0.8)
    bot.set_ylim(0.7, 1.3)


def _density(values: np.ndarray, edges: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Normalised histogram density of ``values`` in ``edges`` (1/GeV)."""
    h, _ = np.histogram(values, edges)
    return h / max(h.sum(), 1) / width


def _auc_map_figure(plt: Any, points: list[dict[str, Any]], grid: np.ndarray, names_l: Sequence[str]) -> Any:
    """The flow ensemble's and moment morphing's AUC at each held-out point over the MC grid."""
    fig, axes = plt.subplots(1, 2, figsize=(16, 7), squeeze=False)
    held = np.array([list(p["point"].values()) for p in points])
    panels = [
        ("flow ensemble AUC", [p["flow_ensemble"]["joint"]["auc"] for p in points]),
        ("moment morphing AUC", [p["morph"].get("moment", {}).get("joint", {}).get("auc", np.nan) for p in points]),
    ]
    for ax, (title, values) in zip(axes[0], panels):
        ax.scatter(grid[:, 0], grid[:, 1], marker="x", color="grey", label="MC grid")
        sc = ax.scatter(held[:, 0], held[:, 1], c=values, cmap="coolwarm", vmin=0.45, vmax=0.65, s=250,
                        edgecolors="k")
        for (x, y), v in zip(held, values):
            ax.annotate(f"{v:.3f}", (x, y), textcoords="offset points", xytext=(0, 12), ha="center", fontsize=10)
        ax.set_xlabel(f"{names_l[0]} [GeV]")
        ax.set_ylabel(f"{names_l[1]} [GeV]")
        ax.set_title(title, fontsize=13)
        fig.colorbar(sc, ax=ax, label="classifier ROC AUC")
    fig.subplots_adjust(left=0.07, right=0.97, wspace=0.25)
    return fig
