"""fedhex-hep: conditional normalizing flows that generate signal MC at any mass point.

Heavy dependencies (TensorFlow, coffea) are imported inside the functions that need them, so
that importing the package and ``fedhex-hep --help`` stay instant.
"""

import os as _os

# TensorFlow Probability needs the legacy Keras (tf_keras); must be set before TF is imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
