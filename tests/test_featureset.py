"""FeatureSet: construction, per-label thresholds, parquet round trip."""

from __future__ import annotations

import numpy as np
import pytest

from fedhex_hep.io.featureset import FeatureSet, FeatureSetError


def make(counts, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([[1000.0, 2.5], [1500.0, 5.0], [2000.0, 7.5]][: len(counts)], counts, axis=0)
    rng.shuffle(labels)
    return FeatureSet.from_numpy(rng.normal(size=(len(labels), 2)), labels, ["phi", "omega"], ["mphi", "momega"])


def test_drop_sparse_labels_keeps_exactly_the_dense_points():
    fs = make([5, 2, 7])
    kept, dropped = fs.drop_sparse_labels(5)
    assert dropped == [{"label": {"mphi": 1500.0, "momega": 5.0}, "events": 2}]
    assert len(kept) == 12
    np.testing.assert_array_equal(kept.label_points(), [[1000.0, 2.5], [2000.0, 7.5]])
    # events keep their order and values
    mask = ~np.all(fs.labels == [1500.0, 5.0], axis=1)
    np.testing.assert_array_equal(kept.features, fs.features[mask])


def test_empty_featureset_regression():
    # from_numpy once failed on zero rows (reshape(0, -1)); an empty selection must not crash.
    empty = FeatureSet.from_numpy(np.zeros((0, 2)), np.zeros((0, 2)), ["phi", "omega"], ["mphi", "momega"])
    assert len(empty) == 0
    kept, dropped = empty.drop_sparse_labels(1)
    assert len(kept) == 0 and dropped == []
    assert empty.label_points().shape == (0, 2)


def test_column_count_mismatch_is_refused():
    with pytest.raises(FeatureSetError, match="column count"):
        FeatureSet.from_numpy(np.zeros((3, 3)), np.zeros((3, 2)), ["phi", "omega"], ["mphi", "momega"])


def test_parquet_round_trip_keeps_metadata(tmp_path):
    fs = make([3, 4])
    fs.metadata["cutflow"] = {"read": 10, "selected": 7}
    back = FeatureSet.load(fs.save(tmp_path / "fs.parquet"))
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.labels, fs.labels)
    assert back.metadata == fs.metadata
