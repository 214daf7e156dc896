"""Preprocessing: exact round trips, fitted on training data only, JSON persistence, bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhex_hep.config import ColumnTransform, PreprocessingConfig
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.model.preprocessing import Preprocessor, PreprocessingError


def _data(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.choice([500.0, 1000.0, 2000.0], n), rng.choice([1.0, 5.0, 9.0], n)], axis=1)
    features = np.stack(
        [
            labels[:, 0] * np.exp(0.03 * rng.standard_normal(n)),
            labels[:, 1] * (1 + 0.1 * rng.standard_normal(n)),
            rng.uniform(0.01, 0.99, n),
            rng.standard_normal(n) * 7 + 3,
        ],
        axis=1,
    )
    return features, labels


CONFIG = PreprocessingConfig(
    features={
        "mphi": ColumnTransform(relative_to="lphi", transform="log"),
        "momega": ColumnTransform(relative_to="lomega", transform="none"),
        "frac": ColumnTransform(transform="logit", bounds=[0.0, 1.0]),
        # "plain" has no entry: standardise only
    },
    labels={"lphi": ColumnTransform(transform="log"), "lomega": ColumnTransform(transform="log", standardise=False)},
)
FEATURES = ["mphi", "momega", "frac", "plain"]
LABELS = ["lphi", "lomega"]


def test_round_trip_is_exact() -> None:
    x, y = _data()
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    z, c = pre.transform(x, y)
    np.testing.assert_allclose(pre.inverse_features(z, y), x, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pre.inverse_labels(c), y, rtol=1e-12, atol=0)


def test_label_relative_to_another_label_round_trips() -> None:
    # the packaged default conditions on log m_Phi and log(m_omega / m_Phi)
    x, y = _data()
    config = PreprocessingConfig(
        features=CONFIG.features,
        labels={"lphi": ColumnTransform(transform="log"), "lomega": ColumnTransform(relative_to="lphi", transform="log")},
    )
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, config)
    z, c = pre.transform(x, y)
    p = pre.label_params[1]
    np.testing.assert_allclose(c[:, 1] * p.std + p.mean, np.log(y[:, 1] / y[:, 0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pre.inverse_labels(c), y, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pre.inverse_features(z, y), x, rtol=1e-12, atol=0)
    again = Preprocessor.from_json(pre.to_json())
    assert np.array_equal(again.transform_labels(y), c)


def test_standardised_on_training_data() -> None:
    x, y = _data()
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    z, c = pre.transform(x, y)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-10)
    # lomega: log only, not standardised
    np.testing.assert_allclose(c[:, 1], np.log(y[:, 1]), rtol=1e-14)
    # the relative-to-label feature really is divided by its label before the log
    p = pre.feature_params[0]
    np.testing.assert_allclose(z[:, 0] * p.std + p.mean, np.log(x[:, 0] / y[:, 0]), rtol=1e-12, atol=1e-14)


def test_fitted_on_given_rows_only() -> None:
    x, y = _data()
    half = len(x) // 2
    x2 = x.copy()
    x2[half:, 3] += 1000.0  # "validation" rows very different
    pre_a = Preprocessor.fit(x[:half], y[:half], FEATURES, LABELS, CONFIG)
    pre_b = Preprocessor.fit(x2[:half], y[:half], FEATURES, LABELS, CONFIG)
    assert pre_a.to_dict() == pre_b.to_dict()


def test_json_round_trip_bit_exact() -> None:
    x, y = _data()
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    again = Preprocessor.from_json(json.dumps(json.loads(pre.to_json())))
    z1, c1 = pre.transform(x, y)
    z2, c2 = again.transform(x, y)
    assert np.array_equal(z1, z2) and np.array_equal(c1, c2)


def test_constant_label_keeps_unit_scale() -> None:
    x, y = _data()
    y[:, 0] = 1000.0
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    assert pre.label_params[0].std == 1.0
    np.testing.assert_allclose(pre.transform_labels(y)[:, 0], 0.0, atol=1e-12)


def test_log_of_negative_names_column() -> None:
    x, y = _data()
    x[3, 0] = -1.0
    with pytest.raises(PreprocessingError, match="feature 'mphi'.*log"):
        Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)


def test_logit_outside_bounds_names_column() -> None:
    x, y = _data()
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    x[0, 2] = 1.5
    with pytest.raises(PreprocessingError, match="feature 'frac'.*logit"):
        pre.transform(x, y)


def test_log_det_jacobian_matches_numerical() -> None:
    x, y = _data(50)
    pre = Preprocessor.fit(x, y, FEATURES, LABELS, CONFIG)
    eps = 1e-6
    expected = np.zeros(len(x))
    for i in range(x.shape[1]):
        dx = np.zeros_like(x)
        dx[:, i] = eps * np.abs(x[:, i])
        dz = (pre.transform_features(x + dx, y)[:, i] - pre.transform_features(x - dx, y)[:, i]) / (2 * dx[:, i])
        expected += np.log(np.abs(dz))
    np.testing.assert_allclose(pre.log_det_jacobian(x, y), expected, rtol=1e-5)


def test_prepare_drops_nonfinite_and_sparse_labels(caplog: pytest.LogCaptureFixture) -> None:
    from fedhex_hep.config import load_config
    from fedhex_hep.model.dataset import DataError, prepare

    x, y = _data(3000)
    x[:7, 1] = np.nan
    x[7, 0] = np.inf
    y = np.concatenate([y, [[3000.0, 9.0]] * 5])  # a label point with only 5 events
    x = np.concatenate([x, np.ones((5, 4)) * 0.5])
    fs = FeatureSet.from_numpy(x, y, FEATURES, LABELS)
    overrides = {
        "input.features": {n: n for n in FEATURES},
        "input.labels": {n: n for n in LABELS},
        "input.min_events_per_label": 50,
        "training.validation_fraction": 0.25,
    }
    cfg = load_config(overrides=overrides)
    with caplog.at_level("WARNING"):
        data = prepare(fs, cfg)
    assert data.report["nonfinite_dropped"] == 8
    assert "dropped 8 events with NaN/inf" in caplog.text
    assert data.report["dropped_labels"] == [{"label": {"lphi": 3000.0, "lomega": 9.0}, "events": 5}]
    assert data.n_train + data.n_val == 3000 - 8
    assert data.n_val == round(0.25 * (3000 - 8))
    assert np.all(np.isfinite(data.z_train))
    # fitted on the training part only: standardised to exactly mean 0 there
    np.testing.assert_allclose(data.z_train.mean(axis=0), 0, atol=1e-5)

    with pytest.raises(DataError, match="NaN/inf.*mphi: 1.*momega: 7.*nonfinite"):
        prepare(fs, cfg.with_overrides({"input.nonfinite": "error"}))
