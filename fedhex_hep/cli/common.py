"""Options and parsers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedhex_hep.errors import UsageError


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
    typer.Option(
        "--scheduler", help="Address of an existing dask scheduler (tcp://host:port); default: a LocalCluster."
    ),
]


class CLIError(UsageError):
    """A bad command-line option: printed as one line, exit status 2."""


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


def _parse_ranges(ranges: list[str] | None) -> dict[str, tuple[float, float]] | None:
    parsed = {}
    for text in ranges or []:
        name, _, bounds = text.partition("=")
        values = _parse_floats(bounds, f"--range {name}")
        if len(values) != 2 or values[0] >= values[1]:
            raise CLIError(f"--range {text!r}: expected name=min,max with min < max")
        parsed[name] = (values[0], values[1])
    return parsed or None


BinsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--bins",
        help="Template binning: feature=n:lo:hi (e.g. phi=60:500:3500), feature=e0,e1,... (edges, GeV), "
        "feature=FILE (edges file), or one bin count for every feature (repeatable).",
    ),
]

OverflowOpt = Annotated[
    Optional[str],
    typer.Option(
        "--overflow",
        help="Events outside the binning: drop (fraction reported in meta/overflow) or fold into the edge bins (default: output.overflow).",
    ),
]

LabelsOpt = Annotated[
    Optional[list[str]],
    typer.Option("--label", "-l", help="Mass point, comma-separated in label order, e.g. 2464,5.125 (repeatable)."),
]

RangesOpt = Annotated[
    Optional[list[str]],
    typer.Option("--range", help="Acceptance for a feature: name=min,max (repeatable); resampled until filled."),
]

ScanOpt = Annotated[
    Optional[str],
    typer.Option(
        "--scan",
        help="Mass scan: one ROOT file of template histograms per point, e.g. '1000:3000:250,1:9:1' "
        "(start:stop:step or v1/v2/... per label; ';' joins grids).",
    ),
]

YieldOpt = Annotated[
    bool,
    typer.Option(
        "--yield-normalised",
        help="Scale each template to eff x acceptance x xsec x lumi events (n_events x eff without --xsec/--lumi) (--scan).",
    ),
]

XsecOpt = Annotated[
    Optional[float],
    typer.Option(min=0.0, help="Signal cross section in pb (--yield-normalised; default generation.xsec)."),
]

LumiOpt = Annotated[
    Optional[float],
    typer.Option(min=0.0, help="Integrated luminosity in 1/pb (--yield-normalised; default generation.lumi)."),
]

VariationsOpt = Annotated[
    bool,
    typer.Option("--variations", help="Write <template>_interpUp/Down from the ensemble members' spread (--scan)."),
]
