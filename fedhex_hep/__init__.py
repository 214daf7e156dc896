"""fedhex-hep: conditional normalizing flows that generate signal MC at any mass point.

The Python API (each name is documented in :mod:`fedhex_hep.api`)::

    import fedhex_hep

    features = fedhex_hep.extract("analysis.toml")            # a FeatureSet
    model = fedhex_hep.train(features, "output/model")         # a Model
    model = fedhex_hep.load_model("output/model")
    events = model.sample({"labelphi": 1800, "labelomega": 5.3}, 10000, seed=1)  # awkward.Array
    h = fedhex_hep.FeatureSet(events, model.feature_names, model.label_names).to_hist("phi")

Every error the package raises derives from :class:`fedhex_hep.FedhexError`. Names are imported
on first use, so ``import fedhex_hep`` loads neither TensorFlow nor coffea.
"""

from __future__ import annotations

import importlib
import os as _os
from typing import Any

# TensorFlow Probability needs the legacy Keras (tf_keras); must be set before TF is imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up lines (CUDA probing on machines without a GPU) are not ours to show;
# the command line's --verbose turns them back on.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "load_model": "fedhex_hep.api",
    "extract": "fedhex_hep.api",
    "train": "fedhex_hep.api",
    "Model": "fedhex_hep.api",
    "FeatureSet": "fedhex_hep.io.featureset",
    "FedhexError": "fedhex_hep.errors",
    "Config": "fedhex_hep.config",
    "load_config": "fedhex_hep.config",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedhex_hep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
