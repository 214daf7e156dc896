"""Commands that make and read input data: make-samples, extract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep.cli.common import (
    ConfigOpt,
    SetOpt,
    OverwriteOpt,
    ProgressOpt,
    ExecutorOpt,
    WorkersOpt,
    SchedulerOpt,
    _load,
)


def make_samples_cmd(
    kind: Annotated[
        str, typer.Argument(help="signal (NanoAOD-like grid), grid or line (2D Gaussian toys).")
    ] = "signal",
    outdir: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per mass point into.")] = Path(
        "data/demo"
    ),
    phi: Annotated[
        Optional[str], typer.Option(help="Phi masses in GeV, comma-separated (signal; default: demo grid).")
    ] = None,
    omega: Annotated[
        Optional[str], typer.Option(help="omega masses in GeV, comma-separated (signal; default: demo grid).")
    ] = None,
    x: Annotated[Optional[str], typer.Option(help="Means along x, comma-separated (grid/line toys).")] = None,
    y: Annotated[Optional[str], typer.Option(help="Means along y, comma-separated (grid/line toys).")] = None,
    events: Annotated[Optional[int], typer.Option(min=1, help="Generated events per mass point.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    files_per_point: Annotated[int, typer.Option(min=1, help="Files per mass point (signal).")] = 1,
    sigma: Annotated[Optional[str], typer.Option(help="Gaussian widths sigma_x,sigma_y (grid/line toys).")] = None,
    rho: Annotated[float, typer.Option(help="Gaussian x-y correlation (grid/line toys).")] = 0.0,
    compression: Annotated[
        str, typer.Option(help="ROOT compression: lzma (smallest), zlib (fastest) or none.")
    ] = "lzma",
    overwrite: OverwriteOpt = False,
    threshold: Annotated[
        Optional[float],
        typer.Option(help="Prong merging below m_omega = THRESHOLD x m_Phi / 1000 GeV (signal)."),
    ] = None,
) -> None:
    """Write toy inputs: a NanoAOD-like signal grid (default) or the FEDHEX 2D Gaussian toys."""
    from fedhex_hep.io.samples import make_samples

    paths = make_samples(
        kind,
        outdir,
        phi=phi,
        omega=omega,
        x=x,
        y=y,
        events=events,
        seed=seed,
        files_per_point=files_per_point,
        sigma=sigma,
        rho=rho,
        overwrite=overwrite,
        compression=compression,
        threshold=threshold,
    )
    typer.echo(f"wrote {len(paths)} files under {outdir}")


def extract_cmd(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    inputs: Annotated[
        Optional[list[str]],
        typer.Option("--input", "-i", help="Input folder, glob or JSON fileset (repeatable; replaces input.paths)."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="FeatureSet parquet file to write.")] = Path(
        "output/features.parquet"
    ),
    executor: ExecutorOpt = "iterative",
    workers: WorkersOpt = 2,
    scheduler: SchedulerOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Run the extraction processor over the input files and save a FeatureSet (parquet)."""
    from fedhex_hep.io.atomic import check_writable

    cfg = _load(config, overrides, {"input.paths": inputs or None})
    check_writable(output, overwrite=overwrite)
    from fedhex_hep.extraction.runner import extract

    features = extract(cfg, executor=executor, workers=workers, scheduler=scheduler, progress=progress)
    features.save(output, overwrite=overwrite)
    cfg.write(output.with_suffix(".config.toml"))
    typer.echo(f"wrote {len(features)} events at {len(features.label_points())} mass points to {output}")
