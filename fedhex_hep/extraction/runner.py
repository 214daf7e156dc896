"""Extraction stage: run the FeatureProcessor over the input fileset and return a FeatureSet.

``extract(config, executor="iterative" | "futures" | "dask")`` builds the fileset
(:mod:`fedhex_hep.io.fileset`), checks every file quickly with uproot *before* coffea runs (opens,
has the TTree, has every branch the expressions read, baskets lie inside the file), runs
``coffea.processor.Runner`` with the chosen executor, puts the merged events back in file order,
verifies that no chunk was lost, applies the non-finite policy and the per-label minimum event
count, and records how it was made in the FeatureSet metadata:

- ``config`` (resolved), ``version``, ``source = "mc"``, ``executor``, ``files`` (processed);
- ``cutflow``: ``{"selection", "read", "selected", "per_label": [{"dataset", "label": {...},
  "read", "selected"}, ...], "unlabelled": {"read", "selected"}}`` (per label point: all events
  read and those passing the selection, for efficiencies);
- ``skipped_files``: ``[{"file", "reason"}, ...]``; ``dropped_labels``: ``[{"label", "events"}]``;
  ``nonfinite``: ``{"dropped_events", "per_column"}``.

Bad input files (empty, truncated/corrupt, without the TTree, missing a branch) give one line
naming the file and the reason: an :class:`ExtractionError`, or -- with
``input.skip_bad_files = true`` -- a warning, and the file is listed in ``skipped_files``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedhex_hep.extraction.executors import bars_unless, check_executor, dask_client
from fedhex_hep.errors import FedhexError, closest_match, suggestion_hint

__all__ = ["ExtractionError", "BadFileWarning", "extract", "check_file", "run_processor"]

log = logging.getLogger(__name__)


class ExtractionError(FedhexError, ValueError):
    """Extraction failed; the one-line message names the file, branch, selection or key."""


class BadFileWarning(UserWarning):
    """An input file was skipped (``input.skip_bad_files = true``); the message names it."""


class MissingBranch(str):
    """A :func:`check_file` reason: the tree lacks ``branch``; ``suggestion`` is its closest match or ''."""

    branch: str
    suggestion: str

    def __new__(cls, branch: str, treename: str, present: set[str]) -> MissingBranch:
        suggestion = closest_match(branch, present)
        reason = super().__new__(cls, f"branch {branch!r} is missing from tree {treename!r}{suggestion_hint(suggestion)}")
        reason.branch, reason.suggestion = branch, suggestion
        return reason


def check_file(path: str, treename: str, branches: list[str]) -> tuple[str | None, int, bytes]:
    """Quick uproot check of one input file: ``(reason it is bad or None, entries, file UUID)``."""
    import uproot

    if "://" not in path:
        if not os.path.exists(path):
            return "file does not exist", 0, b""
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)", 0, b""
    else:
        size = None
    try:
        with uproot.open(path) as file:
            try:
                tree = file[treename]
            except KeyError:
                keys = ", ".join(file.keys(cycle=False)[:5]) or "none"
                return f"no TTree {treename!r} in the file (keys: {keys})", 0, b""
            if not hasattr(tree, "num_entries") or not hasattr(tree, "keys"):
                return f"{treename!r} is not a TTree", 0, b""
            present = set(tree.keys(recursive=True))
            for name in branches:
                if name not in present:
                    return MissingBranch(name, treename, present), 0, b""
            if size is not None:
                for name in branches:
                    branch = tree[name]
                    n = branch._num_normal_baskets if hasattr(branch, "_num_normal_baskets") else branch.num_baskets
                    seeks = branch.member("fBasketSeek")[:n]
                    nbytes = branch.member("fBasketBytes")[:n]
                    if len(seeks) and int(np.max(np.asarray(seeks) + np.asarray(nbytes))) > size:
                        return f"truncated file: data of branch {name!r} lies beyond its end ({size} bytes)", 0, b""
            return None, int(tree.num_entries), bytes(file.file.fUUID)
    except Exception as exc:  # uproot raises many unrelated types for damaged files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"corrupt or truncated ROOT file ({type(exc).__name__}: {text[:200]})", 0, b""


def _process_pool(workers: int) -> Any:
    """Worker processes for the futures executor.

    On Linux the workers are forked: they start in milliseconds with coffea, awkward and uproot
    already imported, where coffea's default (loky, spawned) pays seconds of imports per worker.
    Forking is avoided once TensorFlow is loaded (its thread pools do not survive a fork).
    """
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    if sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    from coffea.processor.executor import loky

    return loky.ProcessPoolExecutor(max_workers=workers)


def _make_executor(kind: str, workers: int, progress: bool, client: Any) -> Any:
    from coffea import processor

    if kind == "iterative":
        # retries=0: a failing chunk is a deterministic problem; retrying only repeats it
        return processor.IterativeExecutor(status=progress, retries=0)
    if kind == "futures":
        return processor.FuturesExecutor(pool=_process_pool(workers), workers=workers, status=progress, retries=0)
    return processor.DaskExecutor(client=client, status=progress, retries=3)


def run_processor(
    fileset: Mapping[str, Any],
    proc: Any,
    treename: str = "Events",
    schema: str = "base",
    executor: str = "iterative",
    workers: int = 2,
    scheduler: str | None = None,
    chunksize: int = 100000,
    progress: bool = True,
    metadata_cache: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """Run ``proc`` over ``fileset`` with coffea's Runner; returns the merged accumulator.

    ``executor="dask"`` connects to ``scheduler`` (an address) or starts a
    ``dask.distributed.LocalCluster`` of ``workers`` single-threaded processes and closes it.
    """
    from coffea import processor
    from coffea.nanoevents import BaseSchema, NanoAODSchema

    check_executor(executor, workers, scheduler)
    schema_cls = NanoAODSchema if schema == "nanoaod" else BaseSchema
    client = None
    with contextlib.ExitStack() as stack:
        if executor == "dask":
            client = stack.enter_context(dask_client(workers, scheduler))
        chosen = _make_executor(executor, workers, progress, client)
        pool = getattr(chosen, "pool", None)
        if pool is not None and not isinstance(pool, type):
            stack.callback(pool.shutdown)
        runner = processor.Runner(
            executor=chosen,
            schema=schema_cls,
            chunksize=chunksize,
            skipbadfiles=False,
            metadata_cache=metadata_cache if metadata_cache is not None else {},
        )
        stack.enter_context(bars_unless(progress))
        with warnings.catch_warnings():
            # NanoAODSchema warns about cross-references to collections a file lacks and about
            # branches it rebuilds (e.g. Photon_mass); harmless here: we read branches by name.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"coffea\.")
            return runner(dict(fileset), proc, treename=treename)


_WORKITEM_FILE = re.compile(r"filename='([^']+)'")
_WORKITEM_RANGE = re.compile(r"entrystart=(\d+), entrystop=(\d+)")


def _is_read_error(exc: BaseException) -> bool:
    """True when an exception (chain) looks like damaged file data rather than a bug or config."""
    from fedhex_hep.processors.extraction import BranchReadError

    import zlib

    node: BaseException | None = exc
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        module = type(node).__module__ or ""
        text = str(node).lower()
        if module.startswith("uproot") or isinstance(node, (OSError, EOFError, zlib.error, BranchReadError)):
            return True
        if any(word in text for word in ("decompress", "deserializ", "basket", "lz4", "zstd", "lzma")):
            return True
        node = node.__cause__ or node.__context__
    return False


def _describe_failure(exc: BaseException) -> tuple[str, str | None]:
    """(one-line message, file at fault if named) for an exception raised through coffea."""
    from fedhex_hep.extraction.expressions import ExpressionError

    chain = []
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    for item in chain:
        if isinstance(item, ExpressionError):
            return str(item), None
    text = " ".join(str(exc).split())
    match = _WORKITEM_FILE.search(text)
    filename = match.group(1) if match else None
    innermost = chain[-1]
    inner = " ".join(str(innermost).split())[:300]
    reason = f"{type(innermost).__name__}: {inner}" if innermost is not exc else inner[:300]
    if "KilledWorker" in text or "KilledWorker" in type(exc).__name__:
        # coffea's message embeds the whole WorkItem repr; name only the file and entry range
        span = _WORKITEM_RANGE.search(text)
        where = f"{filename or 'a chunk'}"
        if span:
            where += f" entries {span.group(1)}-{span.group(2)}"
        reason = f"{where}: KilledWorker: the dask worker died on every retry of this chunk (out of memory or a crash)"
    return reason, filename


class _Rejects:
    """Bad input files: an ExtractionError, or (``input.skip_bad_files``) a warning and a list entry."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.skipped: list[dict[str, str]] = []

    def __call__(self, path: str, reason: str) -> None:
        message = f"{path}: {reason}"
        if not self.skip:
            raise ExtractionError(message + " (set input.skip_bad_files = true to skip bad files)")
        warnings.warn(f"skipping {message}", BadFileWarning, stacklevel=3)
        self.skipped.append({"file": path, "reason": str(reason)})


def _precheck_files(fileset: dict[str, Any], proc: Any, reject: _Rejects) -> tuple[dict[str, int], dict[Any, Any]]:
    """uproot check of every file before coffea starts: (entries per file, coffea metadata cache)."""
    from coffea.processor.executor import FileMeta

    from fedhex_hep.io.fileset import fileset_files

    entries: dict[str, int] = {}
    known_meta: dict[Any, Any] = {}
    checked = [(ds, path, tree, check_file(path, tree, proc.branches(fileset[ds]["metadata"]))) for ds, path, tree in fileset_files(fileset)]
    missing = [(path, result[0]) for _, path, _, result in checked if isinstance(result[0], MissingBranch)]
    if checked and len(missing) == len(checked):
        # no file has the branch: the configuration is at fault, not the files
        _refuse_missing_branch(missing[0][1], proc, [path for path, _ in missing])
    for dataset, path, tree, (reason, n, uuid) in checked:
        user_meta = fileset[dataset]["metadata"]
        if reason is not None:
            reject(path, reason)
            del fileset[dataset]["files"][path]
        else:
            entries[path] = n
            known_meta[FileMeta(dataset, path, tree)] = {**user_meta, "numentries": n, "uuid": uuid}
    return entries, known_meta


def _refuse_missing_branch(reason: MissingBranch, proc: Any, files: list[str]) -> None:
    """A ConfigError naming the config key that reads a branch no input file has."""
    from fedhex_hep.config import ConfigError

    branch = reason.branch
    texts = {"selection": proc.selection, "weight": proc.weight}
    texts.update({f"features.{k}": v for k, v in proc.features.items()})
    texts.update({f"labels.{k}": v for k, v in proc.labels.items()})
    users = [k for k, text in texts.items() if isinstance(text, str) and re.search(rf"\b{re.escape(branch)}\b", text)]
    where = f"config key 'input.{users[0]}'" if users else "the configuration"
    hint = f"; did you mean {reason.suggestion!r}?" if reason.suggestion else ""
    raise ConfigError(
        f"{where} reads branch {branch!r}, which none of the {len(files)} input files has (first: {files[0]}{hint})"
    )


def precheck_processor(fileset: Mapping[str, Any], proc: Any, treename: str, schema: str, entries: int = 200) -> None:
    """Run ``proc.process`` once on the first ``entries`` events of the first file, in this process.

    An expression or callable that fails (unknown name, wrong shape) fails here, once, with its
    one-line message, instead of once per chunk (and per retry) inside the executor.
    """
    from coffea.nanoevents import BaseSchema, NanoAODSchema, NanoEventsFactory

    from fedhex_hep.extraction.expressions import ExpressionError
    from fedhex_hep.io.fileset import fileset_files

    for dataset, path, tree in fileset_files(dict(fileset)):
        meta = {**fileset[dataset]["metadata"], "dataset": dataset, "filename": path, "entrystart": 0}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"coffea\.")
            events = NanoEventsFactory.from_root(
                {path: tree or treename},
                entry_stop=entries,
                schemaclass=NanoAODSchema if schema == "nanoaod" else BaseSchema,
                metadata=meta,
                mode="virtual",
            ).events()
            try:
                proc.process(events)
            except ExpressionError as exc:
                raise ExtractionError(str(exc)) from None
        return


def _run_until_done(fileset: dict[str, Any], proc: Any, inp: Any, options: dict[str, Any], entries: dict[str, int], reject: _Rejects, known_meta: dict[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run coffea; a file damaged inside its baskets is dropped (skip_bad_files) and the run repeated."""
    from fedhex_hep.io.fileset import fileset_files

    while True:
        fileset = {ds: entry for ds, entry in fileset.items() if entry["files"]}
        if not fileset:
            skipped = reject.skipped
            first = f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
            raise ExtractionError(f"no readable input files left: all {len(skipped)} were skipped{first}")
        try:
            out = run_processor(fileset, proc, treename=inp.treename, schema=inp.schema, chunksize=inp.chunksize, metadata_cache=dict(known_meta), **options)
            return out, fileset
        except Exception as exc:
            reason, bad = _describe_failure(exc)
            known = {path for _, path, _ in fileset_files(fileset)}
            if bad is None or bad not in known or "KilledWorker" in reason or not _is_read_error(exc):
                raise ExtractionError(f"extraction failed: {reason}") from exc
            if not inp.skip_bad_files:
                raise ExtractionError(f"{bad}: {reason}") from exc
            reject(bad, f"unreadable while processing ({reason})")
            for entry in fileset.values():
                entry["files"].pop(bad, None)
            entries.pop(bad, None)


def _check_complete(cutflow_raw: Mapping[str, Mapping[Any, Mapping[str, float]]], n_rows: int, entries: dict[str, int], selection: Any) -> None:
    """Never a silently smaller dataset: every entry of every processed file is accounted for."""
    total_read = sum(c["read"] for points in cutflow_raw.values() for c in points.values())
    total_selected = sum(c["selected"] for points in cutflow_raw.values() for c in points.values())
    expected_read = sum(entries.values())
    if total_read != expected_read or total_selected != n_rows:
        raise ExtractionError(
            f"extraction lost events: the files hold {expected_read} events but {total_read} were read "
            f"and {n_rows} of {total_selected} selected rows arrived (a chunk failed or was lost)"
        )
    if n_rows == 0:
        raise ExtractionError(f"selection {selection!r} keeps no events ({total_read} events read from {len(entries)} files)")


def _in_file_order(columns: dict[str, np.ndarray], files: list[str], proc: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, weights) in file order, then entry order, whatever order chunks finished in."""
    from fedhex_hep.processors.extraction import file_id

    ids = np.array([file_id(path) for path in files], dtype=np.int64)
    by_id = np.argsort(ids)
    file_rank = by_id[np.searchsorted(ids, columns["_fileid"], sorter=by_id)]
    order = np.lexsort((columns["_entry"], file_rank))
    features = np.stack([columns[n][order] for n in proc.features], axis=1)
    labels = np.stack([columns[n][order] for n in proc.labels], axis=1)
    return features, labels, columns["weight"][order]


def _apply_nonfinite(fs: Any, policy: str) -> Any:
    counts = fs.nonfinite_counts()
    if not counts:
        return fs
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    if policy == "error":
        raise ExtractionError(
            f"non-finite values (NaN/inf) in the extracted columns ({summary}); set input.nonfinite = 'drop' to drop those events"
        )
    fs, n_dropped = fs.drop_nonfinite()
    log.warning("dropped %d events with non-finite values (%s)", n_dropped, summary)
    fs.metadata["nonfinite"] = {"dropped_events": n_dropped, "per_column": counts}
    if len(fs) == 0:
        raise ExtractionError(f"every selected event has a non-finite feature or label ({summary})")
    return fs


def _apply_min_events(fs: Any, min_events: int) -> Any:
    if min_events <= 0 or not _has_sparse_label(fs.labels, min_events):
        return fs
    fs, dropped = fs.drop_sparse_labels(min_events)
    fs.metadata["dropped_labels"] = dropped
    for item in dropped:
        log.warning(
            "dropped label point %s: %d events < input.min_events_per_label = %d", json.dumps(item["label"]), item["events"], min_events
        )
    if len(fs) == 0:
        raise ExtractionError(
            f"every label point has fewer than input.min_events_per_label = {min_events} selected events ({len(dropped)} points dropped)"
        )
    return fs


def extract(
    config: Any,
    executor: str = "iterative",
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
    *,
    processor: Any | None = None,
) -> Any:
    """Run the extraction of ``config.input`` and return a FeatureSet (see module docstring).

    ``processor`` replaces the ``FeatureProcessor`` built from ``config.input`` (e.g. a
    subclass); it must produce the same output layout.
    """
    import fedhex_hep
    from fedhex_hep.io.featureset import FeatureSet
    from fedhex_hep.io.fileset import build_fileset, fileset_files
    from fedhex_hep.processors.extraction import FeatureProcessor, group_rows

    inp = config.input
    check_executor(executor, workers, scheduler)
    proc = processor if processor is not None else FeatureProcessor.from_config(inp, bins=config.output.bins)
    reject = _Rejects(inp.skip_bad_files)
    empty: list[dict[str, str]] = []
    fileset = build_fileset(inp.paths, inp.treename, inp.max_depth, skipped=empty)
    for item in empty:
        reject(item["file"], item["reason"])
    entries, known_meta = _precheck_files(fileset, proc, reject)
    precheck_processor({ds: e for ds, e in fileset.items() if e["files"]}, proc, inp.treename, inp.schema)
    options = {"executor": executor, "workers": workers, "scheduler": scheduler, "progress": progress}
    out, fileset = _run_until_done(fileset, proc, inp, options, entries, reject, known_meta)

    columns = {name: acc.value for name, acc in out["columns"].items()}
    _check_complete(out["cutflow"], len(columns["weight"]), entries, inp.selection)
    files = [path for _, path, _ in fileset_files(fileset)]
    features, labels, weights = _in_file_order(columns, files, proc)
    metadata: dict[str, Any] = {
        "config": config.to_dict(),
        "version": fedhex_hep.__version__,
        "source": "mc",
        "executor": executor,
        "files": files,
        "cutflow": _cutflow_summary(out["cutflow"], list(proc.labels), inp.selection),
        "skipped_files": reject.skipped,
        "dropped_labels": [],
        "nonfinite": {"dropped_events": 0, "per_column": {}},
    }
    fs = FeatureSet.from_numpy(features, labels, list(proc.features), list(proc.labels), weights, metadata)
    fs = _apply_min_events(_apply_nonfinite(fs, inp.nonfinite), inp.min_events_per_label)
    n_points = len(group_rows(fs.labels)[0])
    log.info("extracted %d events at %d label points from %d files (%d skipped)", len(fs), n_points, len(files), len(reject.skipped))
    return fs


def _has_sparse_label(labels: np.ndarray, min_events: int) -> bool:
    """Fast check (avoids FeatureSet's row-wise np.unique when nothing would be dropped)."""
    from fedhex_hep.processors.extraction import group_rows

    _, inverse = group_rows(labels)
    return bool(len(inverse)) and int(np.bincount(inverse).min()) < min_events


_SUMS = ("sumw_read", "sumw2_read", "sumw", "sumw2")


def _cutflow_summary(raw: Mapping[str, Mapping[Any, Mapping[str, float]]], label_names: list[str], selection: Any) -> dict:
    """The processor's cutflow as JSON-ready metadata: per label point counts and sums of weights."""
    per_label = []
    keys = ("read", "selected", *_SUMS)
    unlabelled = dict.fromkeys(keys, 0.0)
    for dataset in sorted(raw):
        for point in sorted(raw[dataset], key=lambda p: tuple(-np.inf if v is None else v for v in p)):
            counts = raw[dataset][point]
            if any(v is None or not np.isfinite(v) for v in point):
                for k in keys:
                    unlabelled[k] += counts.get(k, 0.0)
                continue
            entry = {"dataset": dataset, "label": dict(zip(label_names, map(float, point)))}
            entry.update({k: (int(counts[k]) if k in ("read", "selected") else float(counts.get(k, 0.0))) for k in keys})
            per_label.append(entry)
    unlabelled["read"], unlabelled["selected"] = int(unlabelled["read"]), int(unlabelled["selected"])
    total = {k: sum(p[k] for p in per_label) + unlabelled[k] for k in keys}
    return {
        "selection": selection if isinstance(selection, str) else getattr(selection, "__qualname__", repr(selection)),
        **total,
        "per_label": per_label,
        "unlabelled": unlabelled,
    }
