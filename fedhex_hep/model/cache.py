"""Load a trained model once per process and reuse it (the workers' and the command line's cache).

Kept apart from the coffea processors so that plain generation imports neither coffea nor its
dependencies. Imports TensorFlow (via ``fedhex_hep.model.storage``) only when a model is loaded.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["load_model_cached"]

_MODEL_CACHE: dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def load_model_cached(path: str | os.PathLike) -> Any:
    """Load a trained model from ``path`` once per process (the worker side), then reuse it.

    The cache key is the resolved path plus the modification time of its weights, so a model
    retrained in place is reloaded. Imports TensorFlow (via ``fedhex_hep.model.storage``) here only.
    """
    resolved = Path(path).resolve()
    try:
        files = [resolved / "config.toml", *(resolved / "weights").glob("*")]
        stamp = max((p.stat().st_mtime_ns for p in files if p.is_file()), default=0)
    except OSError:
        stamp = 0
    key = f"{resolved}@{stamp}"
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            from fedhex_hep.model.storage import load_model  # heavy: TensorFlow

            model = load_model(resolved)
            _MODEL_CACHE.clear()  # one model per process is the common case; do not pile up
            _MODEL_CACHE[key] = model
        return model
