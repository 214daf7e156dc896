"""The whole chain on one configuration: extract -> train -> generate -> export -> compare.

``fedhex-hep run`` is a thin layer over :func:`run_chain`; each step is the same plain Python
function the individual CLI verbs call.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep import __version__
from fedhex_hep.io.atomic import atomic_write_text, new_run_dir, output_lock
from fedhex_hep.config import Config

__all__ = ["ChainResult", "run_chain", "central_grid_point"]

log = logging.getLogger(__name__)


@dataclass
class ChainResult:
    """Paths of everything one chain run wrote, and the comparison metrics."""

    run_dir: Path
    features: Path
    model_dir: Path
    generated: Path
    root_file: Path
    mc_root_file: Path
    plots: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def central_grid_point(points: np.ndarray) -> np.ndarray:
    """The training mass point closest to the centre of the grid (in log-label space)."""
    logs = np.log(points)
    centre = 0.5 * (logs.min(axis=0) + logs.max(axis=0))
    scale = np.where(np.ptp(logs, axis=0) > 0, np.ptp(logs, axis=0), 1.0)
    return points[np.argmin((((logs - centre) / scale) ** 2).sum(axis=1))]


def _generate(model: Any, mc: Any, config: Config) -> tuple[Any, np.ndarray, np.ndarray]:
    """Events at the configured points plus the central grid point: (FeatureSet, points, grid point)."""
    from fedhex_hep.generation.sampling import generate

    grid_point = central_grid_point(mc.label_points())
    configured = np.asarray(config.generation.labels, dtype=float).reshape(-1, len(mc.label_names))
    points = np.vstack([configured, grid_point])
    gen = config.generation
    ranges = {k: tuple(v) for k, v in gen.ranges.items()} or None
    generated = generate(model, points, gen.n_events, seed=gen.seed, batch_size=gen.batch_size, ranges=ranges, max_tries=gen.max_tries)
    return generated, points, grid_point


def _summary(result: ChainResult, points: np.ndarray, grid_point: np.ndarray) -> dict[str, Any]:
    return {
        "version": __version__,
        "run_dir": str(result.run_dir),
        "generated_points": points.tolist(),
        "grid_point": grid_point.tolist(),
        "files": {
            "features": str(result.features),
            "model": str(result.model_dir),
            "generated": str(result.generated),
            "root": str(result.root_file),
            "mc_root": str(result.mc_root_file),
            "plots": [str(p) for p in result.plots],
        },
        "metrics": result.metrics,
    }


def run_chain(
    config: Config,
    output_root: str | Path | None = None,
    executor: str = "iterative",
    workers: int = 2,
    progress: bool = True,
) -> ChainResult:
    """Run extract -> train -> generate (off-grid + a grid point) -> export ROOT -> plots.

    Everything goes into a fresh ``<output_root>/run-YYYYmmdd-HHMMSS`` folder (an earlier run is
    never overwritten); the resolved configuration is written there first.
    """
    from fedhex_hep.extraction.runner import extract
    from fedhex_hep.io.export import export_root, resolve_binning
    from fedhex_hep.limits import check_config
    from fedhex_hep.model.training import train
    from fedhex_hep.validation.compare import compare

    check_config(config)  # memory of training and generation, before any work
    run_dir = new_run_dir(output_root or config.output.directory)
    with output_lock(run_dir):
        config.write(run_dir / "config.toml")
        log.info("run folder %s", run_dir)
        mc = extract(config, executor=executor, workers=workers, progress=progress)
        features_path = mc.save(run_dir / "features.parquet", overwrite=False)
        model_dir = run_dir / "model"
        model = train(mc, config, model_dir, progress=progress)
        generated, points, grid_point = _generate(model, mc, config)
        generated_path = generated.save(run_dir / "generated.parquet", overwrite=False)
        # Common bin edges, so generated and MC templates compare bin by bin downstream.
        edges = resolve_binning([generated, mc], config.output.bins)
        efficiency = mc.metadata.get("cutflow")
        root_file = export_root(generated, run_dir / "generated.root", bins=edges, efficiency=efficiency)
        mc_root_file = export_root(mc, run_dir / "mc.root", bins=edges, efficiency=efficiency)
        plots_dir, formats = run_dir / "plots", tuple(config.output.plot_formats)
        comparison = compare(generated, mc, plots_dir, bins=config.output.bins, formats=formats, history_csv=model_dir / "history.csv")
        result = ChainResult(
            run_dir=run_dir,
            features=features_path,
            model_dir=model_dir,
            generated=generated_path,
            root_file=root_file,
            mc_root_file=mc_root_file,
            plots=[Path(p) for p in comparison.get("plots", [])],
            metrics=comparison.get("metrics", {}),
        )
        atomic_write_text(run_dir / "summary.json", json.dumps(_summary(result, points, grid_point), indent=2, default=float))
    return result
