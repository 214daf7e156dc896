"""A CMS combine datacard for one mass point of a scan file.

:func:`write_datacard` writes a one-channel shape datacard: the signal template of the chosen
feature at the mass point, its interpolation uncertainty as a shape nuisance (the
``<template>_<syst>Up/Down`` histograms written by ``run_scan(..., variations=True)``), the
selection efficiency's error as an ``lnN`` nuisance, and the backgrounds and data the user
gives. Without data, an Asimov ``data_obs`` (signal + backgrounds) is written beside the card.
File paths in the card are relative to the card's folder, as combine resolves them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.errors import FedhexError
from fedhex_hep.naming import hist_name, point_label, variation_name

__all__ = ["DatacardError", "ShapeSource", "write_datacard", "parse_source"]


class DatacardError(FedhexError, ValueError):
    """The card cannot be written (missing template, bad source); the message names it."""


@dataclass
class ShapeSource:
    """A histogram in a ROOT file: ``name`` (process) from ``file``:``hist``."""

    name: str
    file: Path
    hist: str


def parse_source(text: str, name: str | None = None) -> ShapeSource:
    """``NAME=FILE:HIST`` (or ``FILE:HIST`` with ``name`` given) -> ShapeSource."""
    if name is None:
        name, sep, text = text.partition("=")
        if not sep or not name:
            raise DatacardError(f"{text!r}: expected NAME=FILE:HIST")
    path, sep, hist = text.rpartition(":")
    if not sep or not path or not hist:
        raise DatacardError(f"{text!r}: expected FILE:HIST")
    if not Path(path).is_file():
        raise DatacardError(f"{path}: no such ROOT file")
    return ShapeSource(name, Path(path), hist)


def _scan_point(scan: Path, point: Sequence[float], feature: str | None, syst: str) -> dict[str, Any]:
    """Names, efficiency and the nominal template at ``point`` of a scan file."""
    import uproot

    with uproot.open(scan) as f:
        labels = json.loads(f["meta/label_names"])
        features = list(json.loads(f["meta/binning"]))
        feature = feature or features[0]
        if feature not in features:
            raise DatacardError(f"{scan}: no templates of feature {feature!r} (features: {features})")
        if len(point) != len(labels):
            raise DatacardError(f"mass point {list(point)} has {len(point)} values; {scan} has labels {labels}")
        nominal = hist_name(feature, labels, point)
        if nominal not in f:
            raise DatacardError(f"{scan}: no template {nominal} (mass point {point_label(labels, point)} not in the scan)")
        up, down = (variation_name(nominal, syst, d) for d in ("Up", "Down"))
        table = f["scan"].arrays(library="np")
        row = np.flatnonzero(np.all([np.isclose(table[n], v, rtol=1e-12, atol=0) for n, v in zip(labels, point)], axis=0))
        eff, err = (float(table[k][row[0]]) for k in ("eff", "eff_err"))
        h = f[nominal].to_hist()
    return {"feature": feature, "nominal": nominal, "up": up if up in f else None, "down": down, "eff": eff, "eff_err": err, "hist": h}


def _asimov(output: Path, signal: Any, backgrounds: list[ShapeSource]) -> ShapeSource:
    """``data_obs`` = signal + backgrounds, written beside the card."""
    import uproot

    total = signal.copy()
    for b in backgrounds:
        with uproot.open(b.file) as f:
            values = f[b.hist].values()
        if values.shape != total.values().shape:
            raise DatacardError(f"{b.file}:{b.hist} has {values.size} bins, the signal template {total.values().size}")
        total.view()["value"] = total.values() + values
    total.view()["variance"] = total.values()
    path = output.with_name(output.stem + "_asimov.root")
    from fedhex_hep.io.atomic import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        with uproot.recreate(tmp) as out:
            out["data_obs"] = total
    return ShapeSource("data_obs", path, "data_obs")


def write_datacard(
    scan: str | Path,
    point: Sequence[float],
    output: str | Path,
    feature: str | None = None,
    backgrounds: Sequence[ShapeSource] = (),
    data: ShapeSource | None = None,
    process: str = "sig",
    syst: str = "interp",
    overwrite: bool = False,
) -> Path:
    """Write a combine datacard for ``process`` at mass ``point`` (GeV) of the scan file ``scan``.

    The channel is named after ``feature`` (default: the first feature of the scan). Nuisances:
    ``<syst>`` (shape, when the scan holds the variations) and ``eff_<process>`` (lnN
    1 + eff_err / eff, when the scan knows the efficiency's error). Returns the card's path.
    """
    from fedhex_hep.io.atomic import atomic_write_text, check_writable

    scan, output = Path(scan), Path(output)
    check_writable(output, overwrite=overwrite)
    if not scan.is_file():
        raise DatacardError(f"scan file {scan} does not exist")
    info = _scan_point(scan, [float(v) for v in point], feature, syst)
    backgrounds = list(backgrounds)
    data = data or _asimov(output, info["hist"], backgrounds)
    text = _card_text(scan, output, info, backgrounds, data, process, syst)
    atomic_write_text(output, text)
    return output


def _card_text(scan: Path, output: Path, info: dict, backgrounds: list[ShapeSource], data: ShapeSource, process: str, syst: str) -> str:
    where = output.resolve().parent
    rel = lambda p: os.path.relpath(Path(p).resolve(), where)  # noqa: E731
    channel = info["feature"]
    procs = [process] + [b.name for b in backgrounds]
    shapes = [f"shapes {process} {channel} {rel(scan)} {info['nominal']}" + (f" {info['nominal']}_$SYSTEMATIC" if info["up"] else "")]
    shapes += [f"shapes {b.name} {channel} {rel(b.file)} {b.hist}" for b in backgrounds]
    shapes.append(f"shapes data_obs {channel} {rel(data.file)} {data.hist}")
    rule = "-" * 60
    lines = [
        f"# fedhex-hep: {process} at {info['nominal']} from {scan.name}",
        "imax 1 number of channels",
        f"jmax {len(backgrounds)} number of backgrounds",
        "kmax * number of nuisance parameters",
        rule, *shapes, rule,
        f"bin {channel}", "observation -1", rule,
        "bin " + " ".join([channel] * len(procs)),
        "process " + " ".join(procs),
        "process " + " ".join(str(i) for i in range(len(procs))),
        "rate " + " ".join(["-1"] * len(procs)),
        rule,
    ]
    if info["up"]:
        lines.append(f"{syst} shape 1" + " -" * len(backgrounds))
    eff, err = info["eff"], info["eff_err"]
    if np.isfinite(eff) and np.isfinite(err) and eff > 0 and err > 0:
        lines.append(f"eff_{process} lnN {1.0 + err / eff:.6g}" + " -" * len(backgrounds))
    return "\n".join(lines) + "\n"
