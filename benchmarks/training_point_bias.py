"""How far a trained flow is from large MC samples at mass points it was trained on.

At a training point the flow saw only the grid's few thousand events, whose own noise hides
errors of the flow of 1% in a cumulative fraction. Against an independent MC sample 10-20x
larger at the same point, such errors show: this prints, per mass point and feature, flow
CDF - MC CDF (in percent of all events) at the MC's quantiles, next to the MC's own
statistical error there.

    fedhex-hep make-samples signal output/big_train --phi 1000,1250,1500 --omega 4,6 --events 60000 --seed 1
    fedhex-hep extract --input output/big_train --set input.min_events_per_label=0 -o output/big_train.parquet
    python benchmarks/training_point_bias.py output/validate/models/group0-seed1 output/big_train.parquet \
        --training output/demo_mc.parquet

``--training`` also prints the same numbers for the training MC itself at those points: the
flow can only be as close to the large sample as the events it was trained on.

Features are shown relative to their generator mass (reco / gen) when the model's
preprocessing divides them by a label.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

QUANTILES = (0.05, 0.10, 0.16, 0.25, 0.50, 0.75, 0.84, 0.95)


def cdf_differences(generated: np.ndarray, reference: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Fraction of ``generated`` below each ``quantiles`` quantile of ``reference``, minus the quantile."""
    at = np.quantile(reference, quantiles)
    return np.searchsorted(np.sort(generated), at, side="right") / len(generated) - quantiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory (fedhex-hep train)")
    parser.add_argument("mc", help="FeatureSet parquet with large MC samples at training points")
    parser.add_argument("--events", type=int, default=200000, help="generated events per point")
    parser.add_argument("--checkpoint", default=None, help='e.g. "best"; default: the final weights')
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--training", default=None, help="the training FeatureSet parquet, to show its own deviation")
    args = parser.parse_args(argv)

    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.model.storage import load_model

    model = load_model(args.model, args.checkpoint)
    mc = FeatureSet.load(args.mc)
    training = FeatureSet.load(args.training) if args.training else None
    if mc.feature_names != model.feature_names or mc.label_names != model.label_names:
        sys.exit(f"{args.mc}: columns {mc.feature_names} / {mc.label_names} differ from the model's")
    trained_on = {tuple(p) for p in np.round(model.training_label_points, 6)}
    qs = np.asarray(QUANTILES)
    relative = {name: model.config.preprocessing.features[name].relative_to
                for name in model.feature_names if name in model.config.preprocessing.features}
    print(f"flow CDF - MC CDF in % of events at the MC quantiles {', '.join(f'{q:g}' for q in qs)}")
    summary: dict[str, list[np.ndarray]] = {name: [] for name in model.feature_names}
    summary_training: dict[str, list[np.ndarray]] = {name: [] for name in model.feature_names}
    for point in mc.label_points():
        ref = mc.at_label(point)
        gen = generate(model, point, args.events, seed=args.seed)
        tag = "training point" if tuple(np.round(point, 6)) in trained_on else "NOT a training point"
        err = 100 * np.sqrt(qs * (1 - qs) / len(ref))
        print(f"\n{dict(zip(mc.label_names, point.tolist()))} ({tag}; {len(ref)} MC events; "
              f"MC error {err.min():.2f}-{err.max():.2f}%)")
        seen = training.at_label(point) if training is not None else None
        for name in model.feature_names:
            label = relative.get(name)
            scale = point[model.label_names.index(label)] if label else 1.0
            shown = f"{name} / {label}" if label else name
            b = ref.column(name) / scale
            d = 100 * cdf_differences(gen.column(name) / scale, b, qs)
            summary[name].append(d)
            print(f"  {shown}, flow: " + " ".join(f"{v:+.2f}" for v in d))
            if seen is not None and len(seen):
                d = 100 * cdf_differences(seen.column(name) / scale, b, qs)
                summary_training[name].append(d)
                print(f"  {shown}, training MC ({len(seen)} events): " + " ".join(f"{v:+.2f}" for v in d))
    print("\nmean over points:")
    for name in model.feature_names:
        print(f"  {name}, flow: " + " ".join(f"{v:+.2f}" for v in np.mean(summary[name], axis=0)))
        if summary_training[name]:
            print(f"  {name}, training MC: " + " ".join(f"{v:+.2f}" for v in np.mean(summary_training[name], axis=0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
