"""Input files -> a coffea-style fileset ``{dataset: {"files": {path: tree}, "metadata": {...}}}``.

Each input path is one of

- a folder, walked recursively up to ``max_depth`` levels of sub-folders
  (``.root`` in any letter case, hidden folders skipped); each file's dataset is the folder it
  sits in (the mass-point folder, e.g. ``Phi_1870_omega_9p025``) and the folder name is parsed
  into metadata (``{"Phi": 1870.0, "omega": 9.025}``) that label expressions can use;
- a glob pattern (``data/*/nano_*.root``, ``**`` allowed), datasets by parent folder as above;
- a single ``.root`` file;
- a coffea-style JSON fileset ``{dataset: {"files": {path: tree} | [paths], "metadata": {...},
  "treename": ...}}`` or ``{dataset: [paths]}``; relative file paths are resolved against the
  JSON file's folder.

Zero-byte files are reported and skipped: appended to ``skipped`` when the caller passes a list
(the extraction records them in the FeatureSet metadata), otherwise a warning names each.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from fedhex_hep.errors import UsageError

__all__ = ["FilesetError", "build_fileset", "folder_metadata", "fileset_files"]

_GLOB_CHARS = re.compile(r"[*?\[]")


class FilesetError(UsageError, ValueError):
    """An input path or fileset problem; the message names the path or key."""


def folder_metadata(name: str) -> dict[str, float]:
    """Metadata parsed from a mass-point folder name, ``{}`` when the name is not one."""
    try:
        from fedhex_hep.io.samples import parse_mass_point_dirname
    except ImportError:
        parse_mass_point_dirname = _parse_dirname_fallback
    try:
        parsed = parse_mass_point_dirname(name)
    except (ValueError, KeyError, TypeError):
        return {}
    return {str(k): float(v) for k, v in dict(parsed or {}).items()}


def _parse_dirname_fallback(name: str) -> dict[str, float]:
    # Same convention as samples.mass_point_dirname: Name_value pairs, 'p' for the decimal point.
    parts = name.split("_")
    if len(parts) < 2 or len(parts) % 2:
        return {}
    out = {}
    for key, value in zip(parts[::2], parts[1::2]):
        if not key.isidentifier() or not re.fullmatch(r"m?\d+(p\d+)?", value):
            return {}
        out[key] = float(value.replace("m", "-").replace("p", "."))
    return out


def fileset_files(fileset: dict[str, Any]) -> list[tuple[str, str, str]]:
    """All ``(dataset, path, treename)`` of a normalised fileset, in order."""
    return [(ds, path, tree) for ds, entry in fileset.items() for path, tree in entry["files"].items()]


def build_fileset(
    paths: Sequence[str | os.PathLike[str]],
    treename: str = "Events",
    max_depth: int = 6,
    skipped: list[dict[str, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Build a normalised coffea fileset from folders, globs, ``.root`` files and JSON filesets.

    Datasets and files are sorted, so the same inputs always give the same fileset. Raises
    :class:`FilesetError` naming the path when a path does not exist or nothing is found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise FilesetError("no input paths given (config key 'input.paths' is empty)")
    fileset: dict[str, dict[str, Any]] = {}
    zero: list[str] = []
    for raw in paths:
        text = os.fspath(raw)
        path = Path(text)
        if path.suffix.lower() == ".json" and path.is_file():
            _merge(fileset, _load_json_fileset(path, treename), text)
        elif path.is_dir():
            files = _walk(path, max_depth)
            if not files:
                raise FilesetError(f"no .root files found under {text} (searched {max_depth} folder levels deep)")
            _add_files(fileset, files, treename, zero)
        elif path.is_file():
            _add_files(fileset, [path], treename, zero)
        elif _GLOB_CHARS.search(text):
            files = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            files = [p for p in files if p.is_file() and p.suffix.lower() == ".root"]
            if not files:
                raise FilesetError(f"glob {text!r} matches no .root files")
            _add_files(fileset, files, treename, zero)
        else:
            raise FilesetError(f"input path {text} does not exist")
    for path in zero:
        if skipped is not None:
            skipped.append({"file": path, "reason": "empty file (0 bytes)"})
        else:
            warnings.warn(f"skipping {path}: empty file (0 bytes)", stacklevel=2)
    fileset = {ds: entry for ds, entry in fileset.items() if entry["files"]}
    if not fileset:
        raise FilesetError(f"no usable .root files in {', '.join(map(os.fspath, paths))}")
    _check_ascii(fileset)
    return {ds: fileset[ds] for ds in sorted(fileset)}


def _check_ascii(fileset: dict[str, dict[str, Any]]) -> None:
    """coffea hashes dataset, file and tree names as ASCII: refuse other names up front, naming them."""
    for dataset, path, tree in fileset_files(fileset):
        for what, text in (("input file", path), ("dataset", dataset), ("tree name", tree)):
            if not text.isascii():
                raise FilesetError(
                    f"{what} {text!r} is not ASCII, which coffea cannot process; rename it or link it "
                    "under an ASCII name (ln -s)"
                )


def _walk(root: Path, max_depth: int) -> list[Path]:
    found = []
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        found.extend(Path(folder) / f for f in files if f.lower().endswith(".root") and not f.startswith("."))
    return sorted(found)


def _add_files(fileset: dict[str, dict[str, Any]], files: list[Path], treename: str, zero: list[str]) -> None:
    for file in files:
        if file.stat().st_size == 0:
            zero.append(str(file))
            continue
        dataset = file.resolve().parent.name
        entry = fileset.setdefault(dataset, {"files": {}, "metadata": folder_metadata(dataset)})
        entry["files"][str(file)] = treename


def _merge(fileset: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], source: str) -> None:
    for dataset, entry in other.items():
        if dataset in fileset and fileset[dataset]["metadata"] != entry["metadata"]:
            raise FilesetError(f"{source}: dataset {dataset!r} appears twice with different metadata")
        target = fileset.setdefault(dataset, {"files": {}, "metadata": entry["metadata"]})
        target["files"].update(entry["files"])


def _load_json_fileset(path: Path, treename: str) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FilesetError(f"fileset {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise FilesetError(f"fileset {path}: expected a non-empty object {{dataset: {{'files': ...}}}}")
    out: dict[str, dict[str, Any]] = {}
    for dataset, entry in data.items():
        where = f"fileset {path}: dataset {dataset!r}"
        metadata: dict[str, Any] = {}
        tree = treename
        if isinstance(entry, list):
            files: Any = entry
        elif isinstance(entry, dict):
            if "files" not in entry:
                raise FilesetError(f"{where} has no 'files' key")
            files = entry["files"]
            metadata = entry.get("metadata") or {}
            tree = entry.get("treename", treename)
            if not isinstance(tree, str) or not tree:
                raise FilesetError(f"{where}: 'treename' must be a non-empty string, got {tree!r}")
            if not isinstance(metadata, dict):
                raise FilesetError(f"{where}: 'metadata' must be an object")
        else:
            raise FilesetError(f"{where} must be a list of files or an object with 'files'")
        if isinstance(files, list):
            files = {f: tree for f in files}
        if not isinstance(files, dict) or not all(isinstance(f, str) for f in files):
            raise FilesetError(f"{where}: 'files' must be a list of paths or an object {{path: tree}}")
        resolved = {}
        for file, file_tree in files.items():
            if "://" not in file and not os.path.isabs(file):
                file = str((path.parent / file))
            if file_tree is not None and not (isinstance(file_tree, str) and file_tree):
                raise FilesetError(f"{where}: the tree name of {file!r} must be a non-empty string, got {file_tree!r}")
            resolved[file] = file_tree or tree
        out[str(dataset)] = {"files": resolved, "metadata": dict(metadata)}
    return out
