"""The ``fedhex-hep`` command line: one verb per pipeline step, each a thin layer over a function.

Only typer and the config module are imported at start-up; TensorFlow, coffea and plotting
are imported inside the command that needs them, so ``fedhex-hep --help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep import __version__
from fedhex_hep.errors import FedhexError

app = typer.Typer(
    name="fedhex-hep",
    help="Generate signal MC at any mass point with a conditional normalizing flow "
    "(extract -> train -> generate -> export/compare/validate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML configuration (defaults: the packaged reference analysis)."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value: section.key=value (TOML syntax), repeatable."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output instead of refusing.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
ExecutorOpt = Annotated[
    str, typer.Option("--executor", "-e", help="Coffea executor: iterative, futures (processes) or dask.")
]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", min=1, help="Worker processes for futures/dask.")]
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option("--scheduler", help="Address of an existing dask scheduler (tcp://host:port); default: a LocalCluster."),
]


class CLIError(FedhexError):
    """An error to print as one line and exit with status 1."""


def _load(config: Path | None, overrides: list[str] | None, extra: dict | None = None):
    from fedhex_hep.config import load_config, parse_override

    values = dict(parse_override(text) for text in overrides or [])
    values.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_config(config, values)


def _parse_point(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CLIError(f"--label {text!r}: expected comma-separated numbers, e.g. 2464,5.125") from None


def _parse_floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers of a CLI option."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} {text!r}: expected comma-separated numbers") from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fedhex-hep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("tensorflow", "absl", "distributed", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command("make-samples")
def make_samples_cmd(
    kind: Annotated[str, typer.Argument(help="signal (NanoAOD-like grid), grid or line (2D Gaussian toys).")] = "signal",
    outdir: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per mass point into.")] = Path("data/demo"),
    phi: Annotated[Optional[str], typer.Option(help="Phi masses in GeV, comma-separated (signal; default: demo grid).")] = None,
    omega: Annotated[Optional[str], typer.Option(help="omega masses in GeV, comma-separated (signal; default: demo grid).")] = None,
    x: Annotated[Optional[str], typer.Option(help="Means along x, comma-separated (grid/line toys).")] = None,
    y: Annotated[Optional[str], typer.Option(help="Means along y, comma-separated (grid/line toys).")] = None,
    events: Annotated[Optional[int], typer.Option(min=1, help="Generated events per mass point.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    files_per_point: Annotated[int, typer.Option(min=1, help="Files per mass point (signal).")] = 1,
    sigma: Annotated[Optional[str], typer.Option(help="Gaussian widths sigma_x,sigma_y (grid/line toys).")] = None,
    rho: Annotated[float, typer.Option(help="Gaussian x-y correlation (grid/line toys).")] = 0.0,
    compression: Annotated[str, typer.Option(help="ROOT compression: lzma (smallest), zlib (fastest) or none.")] = "lzma",
    overwrite: OverwriteOpt = False,
    threshold: Annotated[Optional[float], typer.Option(help="Prong merging below m_omega = THRESHOLD x m_Phi / 1000 GeV (signal).")] = None,
) -> None:
    """Write toy inputs: a NanoAOD-like signal grid (default) or the old 2D Gaussian toys."""
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


@app.command("extract")
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


@app.command("train")
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


@app.command("generate")
def generate_cmd(
    model: Annotated[Path, typer.Argument(help="Model directory (flow) or MC FeatureSet parquet (--method morph).")],
    labels: Annotated[
        Optional[list[str]],
        typer.Option("--label", "-l", help="Mass point, comma-separated in label order, e.g. 2464,5.125 (repeatable)."),
    ] = None,
    n_events: Annotated[Optional[int], typer.Option("-n", "--events", min=1, help="Events per mass point.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: generation.seed).")] = None,
    method: Annotated[str, typer.Option(help="flow (the trained model) or morph (moment morphing of MC).")] = "flow",
    ranges: Annotated[
        Optional[list[str]],
        typer.Option("--range", help="Acceptance for a feature: name=min,max (repeatable); resampled until filled."),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Events sampled per batch (bounds memory).")] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Generated FeatureSet parquet (default output/generated.parquet; output/scan.root with --scan)."),
    ] = None,
    scan: Annotated[
        Optional[str],
        typer.Option(
            "--scan",
            help="Mass scan: one ROOT file of template histograms per point, e.g. '1000:3000:250,1:9:1' "
            "(start:stop:step or v1/v2/... per label; ';' joins grids).",
        ),
    ] = None,
    bins: Annotated[Optional[int], typer.Option(min=1, help="Template bins per feature (--scan).")] = None,
    yield_normalised: Annotated[
        bool, typer.Option("--yield-normalised", help="Scale each template to n_events x interpolated efficiency (--scan).")
    ] = False,
    executor: ExecutorOpt = "iterative",
    workers: WorkersOpt = 2,
    scheduler: SchedulerOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Sample events at any mass point(s), inside or between the training grid, or scan a mass grid."""
    import numpy as np

    from fedhex_hep.io.atomic import check_writable

    if scan is not None:
        if method != "flow":
            raise CLIError("--scan needs --method flow (a trained model directory)")
        from fedhex_hep.config import load_config
        from fedhex_hep.generation.scan import run_scan

        scan_output = check_writable(output or Path("output/scan.root"), overwrite=overwrite)
        gen_cfg = load_config(model / "config.toml").generation
        path = run_scan(
            model,
            scan,
            n_events or gen_cfg.n_events,
            scan_output,
            bins=bins,
            executor=executor,
            workers=workers,
            scheduler=scheduler,
            seed=gen_cfg.seed if seed is None else seed,
            yield_normalised=yield_normalised,
            overwrite=overwrite,
            progress=progress,
        )
        typer.echo(f"wrote scan templates to {path}")
        return

    output = check_writable(output or Path("output/generated.parquet"), overwrite=overwrite)
    parsed_ranges = {}
    for text in ranges or []:
        name, _, bounds = text.partition("=")
        values = _parse_floats(bounds, f"--range {name}")
        if len(values) != 2 or values[0] >= values[1]:
            raise CLIError(f"--range {text!r}: expected name=min,max with min < max")
        parsed_ranges[name] = tuple(values)

    if method == "flow":
        from fedhex_hep.generation.sampling import generate
        from fedhex_hep.model.storage import load_model

        trained = load_model(model)
        gen_cfg = trained.config.generation
        points = np.array([_parse_point(t) for t in labels]) if labels else np.array(gen_cfg.labels, dtype=float)
        result = generate(
            trained,
            points,
            n_events or gen_cfg.n_events,
            seed=gen_cfg.seed if seed is None else seed,
            batch_size=batch_size or gen_cfg.batch_size,
            ranges=parsed_ranges or {k: tuple(v) for k, v in gen_cfg.ranges.items()} or None,
            max_tries=gen_cfg.max_tries,
        )
    elif method == "morph":
        from fedhex_hep.config import load_config
        from fedhex_hep.io.featureset import FeatureSet
        from fedhex_hep.generation.morphing import morph_generate

        mc = FeatureSet.load(model)
        gen_cfg = load_config().generation
        if not labels:
            raise CLIError("--method morph needs at least one --label")
        points = np.array([_parse_point(t) for t in labels])
        result = morph_generate(mc, points, n_events or gen_cfg.n_events, seed=gen_cfg.seed if seed is None else seed)
    else:
        raise CLIError(f"--method {method!r}: expected flow or morph")
    result.save(output, overwrite=overwrite)
    typer.echo(f"wrote {len(result)} events at {len(points)} mass points to {output}")


@app.command("export")
def export_cmd(
    features: Annotated[Path, typer.Argument(help="FeatureSet parquet (generated or MC).")],
    to: Annotated[str, typer.Option("--to", help="root (TTree + TH1D/TH2D) or parquet.")] = "root",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: input name with .root/.export.parquet).")] = None,
    bins: Annotated[int, typer.Option(min=1, help="Histogram bins per feature.")] = 40,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write ROOT TTrees and hist histograms (or parquet) for downstream fits."""
    from fedhex_hep.io.export import export_parquet, export_root
    from fedhex_hep.io.featureset import FeatureSet

    data = FeatureSet.load(features)
    if to == "root":
        path = export_root(data, output or features.with_suffix(".root"), bins=bins, overwrite=overwrite)
    elif to == "parquet":
        path = export_parquet(data, output or features.with_suffix(".export.parquet"), bins=bins, overwrite=overwrite)
    else:
        raise CLIError(f"--to {to!r}: expected root or parquet")
    typer.echo(f"wrote {path}")


@app.command("compare")
def compare_cmd(
    generated: Annotated[Path, typer.Argument(help="Generated FeatureSet parquet.")],
    mc: Annotated[Path, typer.Argument(help="MC FeatureSet parquet (from `fedhex-hep extract`).")],
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="Folder for plots and metrics.")] = Path(
        "output/compare"
    ),
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory, to plot its loss curve.")] = None,
    bins: Annotated[int, typer.Option(min=1, help="Histogram bins per feature.")] = 40,
    formats: Annotated[Optional[list[str]], typer.Option("--format", help="png (default), pdf or svg; repeatable.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Plot generated events next to MC (ratio panels, chi2/ndf, KS) at every common mass point."""
    from fedhex_hep.validation.compare import compare
    from fedhex_hep.io.featureset import FeatureSet

    result = compare(
        FeatureSet.load(generated),
        FeatureSet.load(mc),
        outdir,
        bins=bins,
        formats=tuple(formats or ["png"]),
        history_csv=(model / "history.csv") if model else None,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {len(result.get('plots', []))} plots to {outdir}")


@app.command("validate")
def validate_cmd(
    features: Annotated[Path, typer.Argument(help="MC FeatureSet parquet of the full grid.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="Folder for the report.")] = Path("output/validate"),
    labels: Annotated[
        Optional[list[str]],
        typer.Option("--label", "-l", help="Held-out mass point (repeatable); default: the mass points of --reference, else every interior grid point."),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Training seeds, comma-separated (scored over all of them).")] = "1,2,3",
    reference_events: Annotated[
        Optional[int],
        typer.Option(help="Generate this many fresh MC events per held-out point as reference (via make-samples)."),
    ] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option(help="Independent reference MC FeatureSet (parquet) at the held-out points; default: the held-out MC itself."),
    ] = None,
    holdout: Annotated[
        str,
        typer.Option(
            help="single (leave one out: one training per point and seed), checkerboard (two trainings per seed: "
            "interior points of one colour held out together, then the other) or all (every point held out at once)."
        ),
    ] = "single",
    max_events: Annotated[
        Optional[int], typer.Option(min=1, help="Cap the compared sample size per point (faster classifier test).")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write per-point overlays and the AUC map.")] = True,
    flow_events: Annotated[
        int,
        typer.Option(min=1, help="Flow events generated per point and seed; its median shifts and widths are measured on all of them."),
    ] = 200_000,
    overwrite: OverwriteOpt = False,
) -> None:
    """Leave-one-out closure: flow vs moment morphing vs the statistical floor at held-out points."""
    import numpy as np

    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.validation.closure import validate

    cfg = _load(config, overrides)
    points = np.array([_parse_point(t) for t in labels]) if labels else None
    seed_list = tuple(int(s) for s in _parse_floats(seeds, "--seeds"))
    report = validate(
        cfg,
        FeatureSet.load(features),
        outdir,
        points=points,
        seeds=seed_list,
        reference_events=reference_events,
        reference=reference,
        holdout=holdout,
        max_events=max_events,
        plots=plots,
        flow_events=flow_events,
        overwrite=overwrite,
    )
    typer.echo(f"report written to {outdir} ({len(report.get('points', []))} held-out points)")


@app.command("run")
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
    """The whole chain on the configured input (default: the demo grid in data/): a new run folder under output/."""
    from fedhex_hep.pipeline import run_chain

    cfg = _load(config, overrides, {"training.epochs": epochs})
    result = run_chain(cfg, output_dir, executor=executor, workers=workers, progress=progress)
    typer.echo(f"run folder: {result.run_dir}")
    typer.echo(f"ROOT file:  {result.root_file}")
    typer.echo(f"plots:      {len(result.plots)} in {result.run_dir / 'plots'}")


def main() -> None:
    """Console-script entry point: one-line errors for bad input instead of tracebacks."""
    from fedhex_hep.io.atomic import OutputError
    from fedhex_hep.config import ConfigError

    known: tuple[type[BaseException], ...] = (CLIError, ConfigError, OutputError, FileNotFoundError)
    try:
        code = app(standalone_mode=False)
    except known as exc:
        _report(exc)
    except ValueError as exc:
        # Our modules raise ValueError subclasses with one-line messages naming file/branch/key.
        _report(exc)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors of typer's (vendored) click: print its usual message, not a traceback.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc: BaseException) -> None:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
