"""Import TensorFlow without its C++ start-up lines on the terminal.

TensorFlow prints a few lines while its shared libraries load (CUDA probing, oneDNN notes),
before its logging honours ``TF_CPP_MIN_LOG_LEVEL``; on a machine without a GPU they look like
errors. While ``TF_CPP_MIN_LOG_LEVEL`` is 3 (the package's default; ``fedhex-hep --verbose``
lowers it) the import runs with the process's stderr pointed at /dev/null; later messages
follow ``TF_CPP_MIN_LOG_LEVEL`` as usual. TensorFlow's warning that a function was traced again
is dropped: the sampler is traced once per batch shape on purpose.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


class _PerShapeTracing(logging.Filter):
    """Drops TensorFlow's retracing warning (generation traces one sampler graph per batch shape)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing(tensorflow: Any) -> Any:
    logger = tensorflow.get_logger()
    if not any(isinstance(f, _PerShapeTracing) for f in logger.filters):
        logger.addFilter(_PerShapeTracing())
    return tensorflow


def import_tensorflow() -> Any:
    """``import tensorflow`` (and tensorflow_probability), quietly unless verbose logging is asked for."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        import tensorflow

        return _quiet_retracing(tensorflow)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to quiet
        pass
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
        import tensorflow_probability  # noqa: F401  (prints its own start-up lines)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return _quiet_retracing(tensorflow)
