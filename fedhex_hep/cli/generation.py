"""Commands that generate events and templates: generate, datacard."""

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
    BinsOpt,
    OverflowOpt,
    LabelsOpt,
    RangesOpt,
    ScanOpt,
    YieldOpt,
    XsecOpt,
    LumiOpt,
    VariationsOpt,
    CLIError,
    _load,
    _parse_point,
    _parse_ranges,
)


def _generate_config(model: Path, method: str, config: Path | None, overrides: list[str] | None, extra: dict):
    """The model's configuration (or --config) with --set overrides; morph: the default one."""
    if method == "flow" and config is None and (model / "config.toml").is_file():
        config = model / "config.toml"
    return _load(config, overrides, extra)


def generate_cmd(
    model: Annotated[Path, typer.Argument(help="Model directory (flow) or MC FeatureSet parquet (--method morph).")],
    labels: LabelsOpt = None,
    n_events: Annotated[Optional[int], typer.Option("-n", "--events", min=1, help="Events per mass point.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: generation.seed).")] = None,
    method: Annotated[str, typer.Option(help="flow (the trained model) or morph (moment morphing of MC).")] = "flow",
    ranges: RangesOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Events sampled per batch (bounds memory).")] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Generated FeatureSet parquet (default output/generated.parquet; output/scan.root with --scan).",
        ),
    ] = None,
    scan: ScanOpt = None,
    bins: BinsOpt = None,
    overflow: OverflowOpt = None,
    yield_normalised: YieldOpt = False,
    xsec: XsecOpt = None,
    lumi: LumiOpt = None,
    variations: VariationsOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    executor: ExecutorOpt = "iterative",
    workers: WorkersOpt = 2,
    scheduler: SchedulerOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Sample events at any mass point(s), inside or between the training grid, or scan a mass grid."""
    from fedhex_hep.binning import parse_bins_options
    from fedhex_hep.io.atomic import check_writable

    extra = {
        "generation.n_events": n_events,
        "generation.seed": seed,
        "generation.batch_size": batch_size,
        "generation.xsec": xsec,
        "generation.lumi": lumi,
        "output.overflow": overflow,
    }
    cfg = _generate_config(model, method, config, overrides, extra)
    parsed_ranges = _parse_ranges(ranges)
    if scan is not None:
        if method != "flow":
            raise CLIError("--scan needs --method flow (a trained model directory)")
        path = _scan(model, scan, cfg, check_writable(output or Path("output/scan.root"), overwrite=overwrite),
                     bins=parse_bins_options(bins), executor=executor, workers=workers, scheduler=scheduler,
                     yield_normalised=yield_normalised, overwrite=overwrite, progress=progress,
                     ranges=parsed_ranges, variations=variations)
        typer.echo(f"wrote scan templates to {path}")
        return
    output = check_writable(output or Path("output/generated.parquet"), overwrite=overwrite)
    n_written, n_points = _sample(model, method, cfg, [_parse_point(t) for t in labels or []], parsed_ranges,
                                  output, overwrite)
    typer.echo(f"wrote {n_written} events at {n_points} mass points to {output}")


def _scan(model: Path, scan: str, cfg, output: Path, **options) -> Path:
    """Templates over the mass grid ``scan`` (``options``: keywords of :func:`run_scan`)."""
    from fedhex_hep.generation.scan import run_scan

    return run_scan(model, scan, cfg.generation.n_events, output, seed=cfg.generation.seed, config=cfg, **options)


def _sample(model: Path, method: str, cfg, points: list[list[float]], ranges: dict | None, output: Path,
            overwrite: bool) -> tuple[int, int]:
    """Write events at ``points`` from the flow in ``model`` (streamed to disk when the output does
    not fit in memory) or by moment morphing of the MC in ``model``; (events, mass points)."""
    if method == "flow":
        from fedhex_hep.generation.streaming import write_generated

        return write_generated(model, cfg, output, points or None, ranges=ranges, overwrite=overwrite)
    if method == "morph":
        from fedhex_hep.generation.morphing import morph_generate
        from fedhex_hep.io.featureset import FeatureSet
        from fedhex_hep.limits import check_generation

        if not points:
            raise CLIError("--method morph needs at least one --label")
        mc = FeatureSet.load(model)
        check_generation(None, len(mc.feature_names), len(mc.label_names), len(points), cfg.generation.n_events,
                         cfg.generation.n_events)
        result = morph_generate(mc, points, cfg.generation.n_events, seed=cfg.generation.seed)
        result.save(output, overwrite=overwrite)
        return len(result), len(result.label_points())
    raise CLIError(f"--method {method!r}: expected flow or morph")


def datacard_cmd(
    scan_file: Annotated[Path, typer.Argument(help="Scan ROOT file written by `fedhex-hep generate --scan`.")],
    point: Annotated[
        str, typer.Option("--point", "-p", help="Mass point, comma-separated in label order, e.g. 1870,9.025.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Datacard to write.")] = Path("output/datacard.txt"),
    feature: Annotated[
        Optional[str], typer.Option(help="Feature whose template is fitted (the channel; default: the first).")
    ] = None,
    backgrounds: Annotated[
        Optional[list[str]], typer.Option("--background", "-b", help="Background NAME=FILE:HIST (repeatable).")
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(help="Observed data FILE:HIST (default: Asimov signal + backgrounds beside the card)."),
    ] = None,
    process: Annotated[str, typer.Option(help="Signal process name.")] = "sig",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a CMS combine datacard for one mass point: signal shape, interpolation shape nuisance, efficiency lnN."""
    from fedhex_hep.generation.datacard import parse_source, write_datacard

    path = write_datacard(
        scan_file,
        _parse_point(point),
        output,
        feature=feature,
        backgrounds=[parse_source(b) for b in backgrounds or []],
        data=parse_source(data, name="data_obs") if data else None,
        process=process,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")
