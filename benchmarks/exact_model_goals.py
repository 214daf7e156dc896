"""Score the truth itself as if it were a model: how often does an exact model meet issue 6's goals?

An independent, large MC sample from the same generator is the exact model of the reference at
each point. Scored the way ``validate`` scores the flow, it should meet the median-shift and
width goals everywhere; where it does not, the check is measuring noise, not the model. This
scores it two ways against the same reference, with the same tolerances (the larger of the
fixed goal and twice the floor rms, ``fedhex_hep.validation.closure._goal_check``):

- now: all of the exact model's events against the whole reference (``validate.evaluate_point``);
- earlier (until the eighth session): as many events as half the reference, against one half
  (split seed 3, as ``validate`` splits), for every disjoint slice of the exact sample.

    fedhex-hep make-samples signal output/exact --phi 1000,1500,2000 --omega 2.5,5,7.5 --events 200000 --seed 4242
    fedhex-hep extract --input output/exact --set input.min_events_per_label=0 -o output/exact.parquet
    python benchmarks/exact_model_goals.py output/exact.parquet --reference output/reference.parquet

(The reference is the one of README's ``validate`` command, made with ``--seed 1``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedhex_hep.validation import metrics  # noqa: E402
from fedhex_hep.io.featureset import FeatureSet  # noqa: E402
from fedhex_hep.validation.closure import _goal_check, evaluate_point  # noqa: E402


def _shift_width_ok(features: dict, floor_rms: dict) -> bool:
    """The median-shift and width goals only (the joint ones need a classifier and equal sizes)."""
    return _goal_check({"features": features, "joint": {}}, None, floor_rms)["all"]


def _earlier_protocol(exact: np.ndarray, reference: np.ndarray, names: list[str], floor_rms: dict) -> list[bool]:
    """Goal verdicts (shifts and widths) of each disjoint |half|-sized slice against half B."""
    _, half_b = metrics.split_halves(reference, seed=3)
    n = len(half_b)
    verdicts = []
    for k in range(len(exact) // n):
        part = exact[k * n : (k + 1) * n]
        features = {f: metrics.feature_metrics(part[:, i], half_b[:, i]) for i, f in enumerate(names)}
        verdicts.append(_shift_width_ok(features, floor_rms))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exact", help="FeatureSet parquet: large independent MC at the reference's points")
    parser.add_argument("--reference", required=True, help="FeatureSet parquet: the validation reference")
    args = parser.parse_args(argv)

    reference, exact = FeatureSet.load(args.reference), FeatureSet.load(args.exact)
    names = reference.feature_names
    now_ok, earlier_rates = [], []
    print("| point | exact events | now: goals met | largest abs width error, now | earlier: slices meeting the goals |")
    print("| --- | --- | --- | --- | --- |")
    for point in reference.label_points():
        ref = reference.at_label(point).features
        sample = exact.at_label(point).features
        if len(sample) == 0:
            raise SystemExit(f"no exact-model events at {tuple(point)} in {args.exact}")
        sample = sample[np.random.default_rng(1).permutation(len(sample))]
        ev = evaluate_point(point, ref, {"exact": sample}, names, seed=3, classifier=False)
        ok = _shift_width_ok(ev["exact"]["features"], ev["floor_rms"])
        worst = max(abs(ev["exact"]["features"][f][k]) for f in names for k in ("width_error_68", "width_error_iqr"))
        earlier = _earlier_protocol(sample, ref, names, ev["floor_rms"])
        now_ok.append(ok)
        earlier_rates.append(float(np.mean(earlier)))
        print(f"| {tuple(float(x) for x in point)} | {len(sample)} | {'yes' if ok else 'no'} | {100 * worst:.1f}% "
              f"| {sum(earlier)} of {len(earlier)} |")
    print()
    print(f"now: the exact model meets the shift and width goals at {sum(now_ok)} of {len(now_ok)} points")
    print(f"earlier: expected {sum(earlier_rates):.1f} of {len(earlier_rates)} points per sample; "
          f"all points at once with probability {np.prod(earlier_rates):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
