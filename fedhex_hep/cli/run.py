"""The run command: the whole chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep.cli.common import ConfigOpt, SetOpt, ProgressOpt, ExecutorOpt, WorkersOpt, _load


def run_cmd(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Parent folder of the run folder (output.directory).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override training.epochs.")] = None,
    executor: ExecutorOpt = "iterative",
    workers: WorkersOpt = 2,
    progress: ProgressOpt = True,
) -> None:
    """The whole chain on the configured input (default: the demo grid, made into a cache folder outside a clone): a new run folder under output/."""
    from fedhex_hep.demo import with_demo_input
    from fedhex_hep.pipeline import run_chain

    cfg, note = with_demo_input(_load(config, overrides, {"training.epochs": epochs}))
    if note:
        typer.echo(note)
    result = run_chain(cfg, output_dir, executor=executor, workers=workers, progress=progress)
    typer.echo(f"run folder: {result.run_dir}")
    typer.echo(f"ROOT file:  {result.root_file}")
    typer.echo(f"plots:      {len(result.plots)} in {result.run_dir / 'plots'}")
