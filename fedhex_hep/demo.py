"""The demo signal grid outside a clone: made on first use into a cache folder.

``fedhex-hep run`` with the default input (``data/demo``) works in any directory: when
``data/demo`` is not there, the demo grid (:data:`fedhex_hep.io.samples.DEMO_GRID`, seeded, so
the same bytes as the repository's copy) is written once into :func:`cache_dir` ``/demo`` and
read from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedhex_hep.io.samples import DEMO_GRID, make_samples

__all__ = ["cache_dir", "demo_grid", "with_demo_input"]

log = logging.getLogger(__name__)

#: the folder, relative to the working directory, that the default configuration reads
DEMO_INPUT = DEMO_GRID["outdir"]


def cache_dir() -> Path:
    """``$FEDHEX_HEP_CACHE``, else the user cache folder: ``$XDG_CACHE_HOME/fedhex-hep``,
    ``~/.cache/fedhex-hep`` (Linux), ``~/Library/Caches/fedhex-hep`` (macOS), ``%LOCALAPPDATA%\\fedhex-hep``."""
    if os.environ.get("FEDHEX_HEP_CACHE"):
        return Path(os.environ["FEDHEX_HEP_CACHE"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "fedhex-hep"
    if sys.platform.startswith("win") and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "fedhex-hep"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedhex-hep"


def demo_grid(spec: Mapping[str, Any] = DEMO_GRID, root: Path | None = None) -> tuple[Path, bool]:
    """The demo grid in the cache, written first if absent: (folder, whether it was written now).

    Written into a temporary sibling folder and renamed when complete, so an interrupted run
    never leaves a partial grid behind.
    """
    target = (root or cache_dir()) / "demo"
    if target.is_dir() and any(target.glob("*/*.root")):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".demo-{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        make_samples("signal", partial, phi=spec["phi"], omega=spec["omega"], events=spec["events"], seed=spec["seed"])
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target, True


def with_demo_input(config: Any) -> tuple[Any, str | None]:
    """The config unchanged when its input exists or is not the demo grid; else the config reading
    the cached demo grid, and a sentence saying so."""
    if list(config.input.paths) != [DEMO_INPUT] or Path(DEMO_INPUT).exists():
        return config, None
    folder, made = demo_grid()
    verb = "made the demo grid in" if made else "using the demo grid cached in"
    message = f"{DEMO_INPUT} not found here: {verb} {folder} (set FEDHEX_HEP_CACHE to move it)"
    log.info(message)
    return config.with_overrides({"input.paths": [str(folder)]}), message
