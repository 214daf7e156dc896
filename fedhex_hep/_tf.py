"""Import TensorFlow without its C++ start-up lines on the terminal.

TensorFlow prints a few lines while its shared libraries load (CUDA probing, oneDNN notes),
before its logging honours ``TF_CPP_MIN_LOG_LEVEL``; on a machine without a GPU they look like
errors. While ``TF_CPP_MIN_LOG_LEVEL`` is 3 (the package's default; ``fedhex-hep --verbose``
lowers it) the import runs with the process's stderr pointed at /dev/null; later messages
follow ``TF_CPP_MIN_LOG_LEVEL`` as usual.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def import_tensorflow() -> Any:
    """``import tensorflow`` (and tensorflow_probability), quietly unless verbose logging is asked for."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        import tensorflow

        return tensorflow
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
    return tensorflow
