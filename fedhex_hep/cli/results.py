"""Commands that write results: export, compare, validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep.cli.common import ConfigOpt, SetOpt, OverwriteOpt, BinsOpt, CLIError, _load, _parse_point, _parse_floats


def export_cmd(
    features: Annotated[Path, typer.Argument(help="FeatureSet parquet (generated or MC).")],
    to: Annotated[str, typer.Option("--to", help="root (TTree + TH1D/TH2D) or parquet.")] = "root",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Output file (default: input name with .root/.export.parquet)."),
    ] = None,
    bins: BinsOpt = None,
    overflow: Annotated[
        str,
        typer.Option(
            "--overflow",
            help="Events outside the binning: keep (under/overflow bins), fold into the edge bins, or drop; the fraction is in meta/overflow.",
        ),
    ] = "keep",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write ROOT TTrees and hist histograms (or parquet) for downstream fits."""
    from fedhex_hep.binning import parse_bins_options
    from fedhex_hep.io.export import export_parquet, export_root
    from fedhex_hep.io.featureset import FeatureSet

    data = FeatureSet.load(features)
    spec = parse_bins_options(bins) or 40
    kwargs = {"bins": spec, "overwrite": overwrite, "overflow": overflow}
    if to == "root":
        path = export_root(data, output or features.with_suffix(".root"), **kwargs)
    elif to == "parquet":
        path = export_parquet(data, output or features.with_suffix(".export.parquet"), **kwargs)
    else:
        raise CLIError(f"--to {to!r}: expected root or parquet")
    typer.echo(f"wrote {path}")


def compare_cmd(
    generated: Annotated[Path, typer.Argument(help="Generated FeatureSet parquet.")],
    mc: Annotated[Path, typer.Argument(help="MC FeatureSet parquet (from `fedhex-hep extract`).")],
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="Folder for plots and metrics.")] = Path(
        "output/compare"
    ),
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory, to plot its loss curve.")] = None,
    bins: Annotated[int, typer.Option(min=1, help="Histogram bins per feature.")] = 40,
    formats: Annotated[
        Optional[list[str]], typer.Option("--format", help="png (default), pdf or svg; repeatable.")
    ] = None,
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


_FeaturesOpt = Annotated[Path, typer.Argument(help="MC FeatureSet parquet of the full grid.")]

_OutdirOpt = Annotated[Path, typer.Option("--outdir", "-o", help="Folder for the report.")]

_LabelsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--label",
        "-l",
        help="Held-out mass point (repeatable); default: the mass points of --reference, else every interior grid point.",
    ),
]

_SeedsOpt = Annotated[str, typer.Option(help="Training seeds, comma-separated (scored over all of them).")]

_ReferenceEventsOpt = Annotated[
    Optional[int],
    typer.Option(help="Generate this many fresh MC events per held-out point as reference (via make-samples)."),
]

_ReferenceOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Independent reference MC FeatureSet (parquet) at the held-out points; default: the held-out MC itself."
    ),
]

_HoldoutOpt = Annotated[
    str,
    typer.Option(
        help="single (leave one out: one training per point and seed), checkerboard (two trainings per seed: "
        "interior points of one colour held out together, then the other) or all (every point held out at once)."
    ),
]

_MaxEventsOpt = Annotated[
    Optional[int], typer.Option(min=1, help="Cap the compared sample size per point (faster classifier test).")
]

_PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="Write per-point overlays and the AUC map.")]

_FlowEventsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Flow events generated per point and seed; its median shifts and widths are measured on all of them.",
    ),
]


def validate_cmd(
    features: _FeaturesOpt,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    outdir: _OutdirOpt = Path("output/validate"),
    labels: _LabelsOpt = None,
    seeds: _SeedsOpt = "1,2,3",
    reference_events: _ReferenceEventsOpt = None,
    reference: _ReferenceOpt = None,
    holdout: _HoldoutOpt = "single",
    max_events: _MaxEventsOpt = None,
    plots: _PlotsOpt = True,
    flow_events: _FlowEventsOpt = 200_000,
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
