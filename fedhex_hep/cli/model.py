"""The train command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep.cli.common import ConfigOpt, SetOpt, OverwriteOpt, ProgressOpt, _load


def train_cmd(
    features: Annotated[Path, typer.Argument(help="FeatureSet parquet written by `fedhex-hep extract`.")],
    model_dir: Annotated[Path, typer.Option("--model-dir", "-m", help="Model directory to write.")] = Path(
        "output/model"
    ),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override training.epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override training.seed.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the model's last checkpoint.")] = False,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Train the conditional flow; checkpoints land exactly on the epochs asked for."""
    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.model.training import train

    if resume:
        from fedhex_hep.config import load_config, parse_override

        values = dict(parse_override(t) for t in overrides or [])
        values.update({k: v for k, v in {"training.epochs": epochs, "training.seed": seed}.items() if v is not None})
        # A resumed run continues with the configuration stored in the model directory.
        cfg = load_config(config or model_dir / "config.toml", values)
    else:
        cfg = _load(config, overrides, {"training.epochs": epochs, "training.seed": seed})
    data = FeatureSet.load(features)
    model = train(data, cfg, model_dir, resume=resume, progress=progress, overwrite=overwrite)
    typer.echo(f"model written to {model.path}")
