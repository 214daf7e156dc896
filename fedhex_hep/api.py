"""The Python API: extract features, train a flow, load it and sample events at any mass point.

Everything here is re-exported at the package's face (``fedhex_hep.load_model`` ...). Each
function is the same code the command line runs; TensorFlow and coffea are imported only when
a function needs them.

The examples below run in the test suite with ``model_dir`` (a trained model directory) and
``demo_dir`` (the demo signal grid) defined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from fedhex_hep.config import Config, config_from_dict, load_config
from fedhex_hep.errors import FedhexError
from fedhex_hep.io.featureset import FeatureSet

__all__ = ["Model", "load_model", "extract", "train"]


class APIError(FedhexError, ValueError):
    """Bad argument to a ``fedhex_hep`` function; the message names it."""


class Model:
    """A trained conditional flow: sample events at any mass point, evaluate the density.

    >>> import fedhex_hep
    >>> model = fedhex_hep.load_model(model_dir)
    >>> model.label_names, model.feature_names
    (['labelphi', 'labelomega'], ['phi', 'omega'])
    """

    def __init__(self, trained: Any) -> None:
        self.trained = trained  #: the underlying :class:`fedhex_hep.model.storage.TrainedModel`

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, labels={self.label_names}, features={self.feature_names})"

    @property
    def path(self) -> Path | None:
        """The model directory."""
        return self.trained.path

    @property
    def label_names(self) -> list[str]:
        """Names of the conditioning labels (the masses), in the order ``sample`` expects."""
        return list(self.trained.label_names)

    @property
    def feature_names(self) -> list[str]:
        """Names of the generated features."""
        return list(self.trained.feature_names)

    def points(self, points: Mapping[str, Any] | Sequence[Any] | np.ndarray) -> np.ndarray:
        """Label points as an array (k, L): from a mapping label -> value(s) or an array in label order."""
        if isinstance(points, Mapping):
            missing = [n for n in self.label_names if n not in points]
            extra = [n for n in points if n not in self.label_names]
            if missing or extra:
                what = f"no value for label {missing[0]!r}" if missing else f"unknown label {extra[0]!r}"
                raise APIError(f"points: {what} (labels: {', '.join(self.label_names)})")
            columns = np.broadcast_arrays(*[np.asarray(points[n], dtype=np.float64).reshape(-1) for n in self.label_names])
            return np.stack(columns, axis=1)
        array = np.asarray(points, dtype=np.float64)
        array = array.reshape(1, -1) if array.ndim <= 1 else array
        if array.ndim != 2 or array.shape[1] != len(self.label_names):
            raise APIError(f"points need {len(self.label_names)} values each ({', '.join(self.label_names)}), got shape {array.shape}")
        return array

    def generate(
        self,
        points: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        n: int,
        seed: int = 0,
        *,
        ranges: Mapping[str, Sequence[float]] | None = None,
        batch_size: int = 100000,
    ) -> FeatureSet:
        """Like :meth:`sample`, returned as a :class:`FeatureSet` (histograms, export, saving)."""
        from fedhex_hep.generation.sampling import generate

        max_tries = self.trained.config.generation.max_tries
        return generate(self.trained, self.points(points), int(n), seed=seed, batch_size=batch_size, ranges=ranges, max_tries=max_tries)

    def sample(
        self,
        points: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        n: int,
        seed: int = 0,
        *,
        ranges: Mapping[str, Sequence[float]] | None = None,
        batch_size: int = 100000,
    ) -> ak.Array:
        """``n`` events at each label point: a record array of features, labels and ``weight``.

        ``points``: a mapping label -> value (or values, broadcast together) or an array in label
        order, shape (L,) or (k, L). Same seed, same events (those of ``fedhex-hep generate --seed``).

        >>> events = model.sample({"labelphi": 1800.0, "labelomega": 5.3}, 1000, seed=1)
        >>> len(events), sorted(events.fields)
        (1000, ['labelomega', 'labelphi', 'omega', 'phi', 'weight'])
        """
        return self.generate(points, n, seed, ranges=ranges, batch_size=batch_size).events

    def log_prob(self, events: ak.Array | FeatureSet | Mapping[str, Any]) -> np.ndarray:
        """log p(features | labels) per event, in the raw feature units (events: fields named as the columns).

        >>> lp = model.log_prob(events)
        >>> lp.shape, bool(np.all(np.isfinite(lp)))
        ((1000,), True)
        """
        if isinstance(events, FeatureSet):
            events = events.events
        fields = set(events.fields) if isinstance(events, ak.Array) else set(events)
        missing = [n for n in [*self.feature_names, *self.label_names] if n not in fields]
        if missing:
            raise APIError(f"log_prob: events have no field {missing[0]!r}")

        def stack(names: list[str]) -> np.ndarray:
            return np.stack([np.asarray(ak.to_numpy(ak.Array(events[n])) if isinstance(events, ak.Array) else events[n], dtype=np.float64) for n in names], axis=1)

        return self.trained.log_prob(stack(self.feature_names), stack(self.label_names))


def load_model(path: str | Path, checkpoint: str | int | None = None) -> Model:
    """Load a trained model directory (written by ``fedhex-hep train`` or :func:`train`).

    ``checkpoint``: None for the final weights, or ``"best"``, ``"last"``, an epoch number.

    >>> fedhex_hep.load_model(model_dir).label_names
    ['labelphi', 'labelomega']
    """
    from fedhex_hep.model.storage import load_model as _load

    return Model(_load(path, checkpoint))


def _config(config: Config | str | Path | None, overrides: Mapping[str, Any] | None, base: Mapping[str, Any] | None = None) -> Config:
    """A Config from a Config, a TOML path or the defaults (or ``base``, a resolved config dict), with overrides."""
    if isinstance(config, Config):
        return config.with_overrides(dict(overrides)) if overrides else config
    if config is None and base:
        resolved = config_from_dict(dict(base))
        return resolved.with_overrides(dict(overrides)) if overrides else resolved
    return load_config(config, dict(overrides or {}))


def extract(
    config: Config | str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    executor: str = "iterative",
    workers: int = 2,
    progress: bool = False,
    processor: Any | None = None,
) -> FeatureSet:
    """Run the feature extraction of a configuration (``input.*``) over its files; a FeatureSet.

    ``config``: a Config, a TOML file or None (the packaged defaults); ``overrides``: dotted keys,
    as ``--set`` on the command line. ``executor``: iterative, futures or dask.

    >>> fs = fedhex_hep.extract(overrides={"input.paths": [str(demo_dir / "Phi_1500_omega_5")]})
    >>> fs.label_points().tolist()
    [[1500.0, 5.0]]
    """
    from fedhex_hep.extraction.runner import extract as _extract

    return _extract(_config(config, overrides), executor=executor, workers=workers, progress=progress, processor=processor)


def train(
    features: FeatureSet | str | Path,
    model_dir: str | Path,
    config: Config | str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Model:
    """Train a conditional flow on a FeatureSet (or its parquet file) into ``model_dir``.

    ``config``: a Config, a TOML file, or None: the configuration the features were extracted
    with (their metadata), else the packaged defaults; ``overrides``: dotted keys.

    >>> tiny = {"model.n_blocks": 2, "model.spline_blocks": 0, "model.hidden_units": [8], "model.ensemble": 1, "training.epochs": 1}
    >>> trained = fedhex_hep.train(fs, tmp_dir / "model", overrides=tiny)
    >>> trained.feature_names
    ['phi', 'omega']
    """
    from fedhex_hep.model.training import train as _train

    featureset = features if isinstance(features, FeatureSet) else FeatureSet.load(features)
    cfg = _config(config, overrides, featureset.metadata.get("config"))
    return Model(_train(featureset, cfg, model_dir, resume=resume, progress=progress, overwrite=overwrite))
