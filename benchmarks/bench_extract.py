"""Extraction benchmark: events/s of ``fedhex_hep.extraction.runner.extract`` (iterative and futures
executors) versus a plain uproot read of the same branches with the same selection in
numpy/awkward (the raw-read limit), on the same files in the same run; printed as ratios.

    python benchmarks/bench_extract.py --events 1000000          # >= 1M events (goal: >= 0.5x)
    python benchmarks/bench_extract.py --events 200000 --repeats 3

``run(n_events) -> dict`` is the entry point for the benchmark driver. The grid is written with
``fedhex_hep.io.samples.make_signal_grid`` into a temporary folder (removed afterwards unless
``--keep``), with the default configuration's selection, features and labels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

GRID_PHI = (1000.0, 2000.0)
GRID_OMEGA = (2.5, 5.0)
BRANCHES = [
    "CBL_Region",
    "Photon_pt",
    "CBL_RecoPhi_photonindex",
    "CBL_RecoPhi_mass",
    "TwoProng_massPi0",
    "CBL_RecoPhi_twoprongindex",
    "GenPhi_mass",
    "GenOmega_mass",
]


def make_grid(outdir: Path, n_events: int, compression: str = "lzma", seed: int = 7) -> list[Path]:
    """A signal grid of at least ``n_events`` generated events (4 mass points)."""
    from fedhex_hep.io.samples import make_signal_grid

    per_point = math.ceil(n_events / (len(GRID_PHI) * len(GRID_OMEGA)))
    return make_signal_grid(outdir, GRID_PHI, GRID_OMEGA, per_point, seed=seed, compression=compression)


def raw_read(files: list[Path], step_size: int) -> tuple[int, int, float]:
    """Plain uproot + numpy/awkward: the default selection and features. (read, selected, checksum)."""
    import awkward as ak
    import numpy as np
    import uproot

    def pick(jagged, index):
        counts = ak.to_numpy(ak.num(jagged)).astype(np.int64)
        flat = ak.to_numpy(ak.flatten(jagged))
        index = ak.to_numpy(index).astype(np.int64)
        valid = (index >= 0) & (index < counts)
        starts = np.cumsum(counts) - counts
        out = np.full(len(index), np.nan)
        if len(flat):
            out[valid] = flat[(starts + index)[valid]]
        return out

    n_read = n_sel = 0
    checksum = 0.0
    for file in files:
        with uproot.open(file) as f:
            for a in f["Events"].iterate(BRANCHES, step_size=step_size, library="ak"):
                pt = pick(a.Photon_pt, a.CBL_RecoPhi_photonindex)
                with np.errstate(invalid="ignore"):
                    sel = (ak.to_numpy(a.CBL_Region) == 1) & (pt > 220)
                phi = ak.to_numpy(a.CBL_RecoPhi_mass)[sel]
                omega = pick(a.TwoProng_massPi0, a.CBL_RecoPhi_twoprongindex)[sel]
                lphi = pick(a.GenPhi_mass, np.zeros(len(a), np.int64))[sel]
                lomega = pick(a.GenOmega_mass, np.zeros(len(a), np.int64))[sel]
                n_read += len(a)
                n_sel += int(sel.sum())
                checksum += float(np.nansum(phi) + np.nansum(omega) + np.nansum(lphi) + np.nansum(lomega))
    return n_read, n_sel, checksum


def _time_sides(
    files: list[Path], cfg: Any, chunksize: int, repeats: int, workers: int
) -> tuple[dict[str, list[float]], int, int]:
    """Seconds per repeat of the plain uproot read and of ``extract`` on each executor, and the
    events read and selected (the same on every side, or an error)."""
    from fedhex_hep.extraction.runner import extract

    timings: dict[str, list[float]] = {"raw_uproot": [], "iterative": [], "futures": []}
    read = selected = 0
    for _ in range(repeats):
        # interleave, so machine load affects both sides alike
        t0 = time.perf_counter()
        read, selected, _ = raw_read(files, chunksize)
        timings["raw_uproot"].append(time.perf_counter() - t0)
        for executor in ("iterative", "futures"):
            t0 = time.perf_counter()
            fs = extract(cfg, executor=executor, workers=workers, progress=False)
            timings[executor].append(time.perf_counter() - t0)
            if fs.metadata["cutflow"]["read"] != read or len(fs) + fs.metadata["nonfinite"]["dropped_events"] != selected:
                raise RuntimeError(
                    f"{executor}: extract read {fs.metadata['cutflow']['read']} / selected "
                    f"{len(fs)} but the raw read gives {read} / {selected}"
                )
    return timings, read, selected


def run(n_events: int = 1_000_000, repeats: int = 1, workers: int = 2, compression: str = "lzma",
        workdir: str | Path | None = None, keep: bool = False, chunksize: int = 200_000) -> dict[str, Any]:
    """Run the benchmark; returns a dict of events/s (median over ``repeats``) and ratios."""
    import fedhex_hep
    from fedhex_hep.config import load_config

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fedhex_bench_extract_"))
    try:
        t0 = time.perf_counter()
        files = make_grid(tmp / "grid", n_events, compression=compression)
        t_make = time.perf_counter() - t0
        cfg = load_config(
            overrides={
                "input.paths": [str(tmp / "grid")],
                "input.min_events_per_label": 0,
                "input.chunksize": chunksize,
            }
        )
        timings, read, selected = _time_sides(files, cfg, chunksize, repeats, workers)
        median = {k: statistics.median(v) for k, v in timings.items()}
        rate = {k: read / v for k, v in median.items()}
        result = {
            "benchmark": "extract",
            "events": read,
            "selected": selected,
            "files": len(files),
            "repeats": repeats,
            "workers": workers,
            "chunksize": chunksize,
            "compression": compression,
            "seconds": median,
            "events_per_s": rate,
            "ratio_iterative_vs_raw": rate["iterative"] / rate["raw_uproot"],
            "ratio_futures_vs_raw": rate["futures"] / rate["raw_uproot"],
            "goal": 0.5,
            "make_grid_s": t_make,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}",
            "version": fedhex_hep.__version__,
        }
        return result
    finally:
        if not keep and workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the grid (>= 1M for the goal)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the median is reported")
    parser.add_argument("--workers", type=int, default=2, help="futures executor processes")
    parser.add_argument("--chunksize", type=int, default=200_000, help="events per chunk (both sides)")
    parser.add_argument("--compression", default="lzma", help="ROOT compression of the grid (lzma, zlib, none)")
    parser.add_argument("--workdir", default=None, help="write the grid here (kept) instead of a temp folder")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this path")
    args = parser.parse_args(argv)
    result = run(args.events, repeats=args.repeats, workers=args.workers, compression=args.compression,
                 workdir=args.workdir, chunksize=args.chunksize)
    print(f"extraction benchmark: {result['events']} events, {result['files']} files, {result['compression']}, "
          f"chunksize {result['chunksize']}, median of {result['repeats']}")
    for key in ("raw_uproot", "iterative", "futures"):
        print(f"  {key:11s} {result['seconds'][key]:8.2f} s  {result['events_per_s'][key]:12.0f} events/s")
    print(f"  ratio iterative / raw uproot: {result['ratio_iterative_vs_raw']:.2f}x (goal >= {result['goal']}x)")
    print(f"  ratio futures   / raw uproot: {result['ratio_futures_vs_raw']:.2f}x (goal >= {result['goal']}x)")
    if args.json:
        from fedhex_hep.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
