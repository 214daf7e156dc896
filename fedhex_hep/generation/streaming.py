"""Generate events straight into a parquet file, in row groups: memory bounded by the batch size.

:func:`generate_to_parquet` draws exactly the events :func:`~fedhex_hep.generation.sampling.generate`
draws for the same arguments (same point groups, same stateless seed pairs ``(seed, g * 2**20 + t)``
for draw ``t`` of point group ``g``, same acceptance bookkeeping), and writes them in the same
order: the file reads back (:meth:`FeatureSet.load`) with the same columns, events and metadata
as the in-memory result saved with :meth:`FeatureSet.save`; only the row-group layout differs.
The file is written under a temporary name and renamed when complete, so an interrupted run
leaves no file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhex_hep.generation.sampling import (
    check_ranges,
    check_request,
    generated_metadata,
    generation_info,
    group_draws,
    points_per_draw,
    rows_per_draw,
)
from fedhex_hep.io.atomic import atomic_path
from fedhex_hep.io.featureset import file_metadata
from fedhex_hep.limits import check_streaming, stream_rows
from fedhex_hep.model.storage import TrainedModel

__all__ = ["generate_to_parquet", "write_generated"]

log = logging.getLogger(__name__)


class _RowGroups:
    """Collect events of one point at a time and write them as row groups of at most ``rows`` events."""

    def __init__(self, writer: Any, names: list[str], n_labels: int, rows: int) -> None:
        self.writer, self.names, self.n_labels, self.rows = writer, names, n_labels, rows
        self.pending: list[np.ndarray] = []  # (n, F + L) blocks
        self.n_pending = 0
        self.row_groups = 0

    def add(self, features: np.ndarray, point: np.ndarray) -> None:
        labels = np.broadcast_to(point, (len(features), self.n_labels))
        self.pending.append(np.concatenate([features, labels], axis=1))
        self.n_pending += len(features)
        if self.n_pending >= self.rows:
            self.flush(full_only=True)

    def flush(self, full_only: bool = False) -> None:
        if not self.pending:
            return
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        stop = len(block) - len(block) % self.rows if full_only else len(block)
        for start in range(0, stop, self.rows):
            self._write(block[start : min(start + self.rows, stop)])
        self.pending = [block[stop:]] if stop < len(block) else []
        self.n_pending = len(block) - stop

    def _write(self, block: np.ndarray) -> None:
        import pyarrow as pa

        arrays = [pa.array(np.ascontiguousarray(block[:, i])) for i in range(block.shape[1])]
        arrays.append(pa.array(np.ones(len(block))))
        self.writer.write_table(pa.Table.from_arrays(arrays, names=self.names), row_group_size=len(block))
        self.row_groups += 1


def _stream_groups(model, points, n_events, seed, batch_size, cuts, max_tries, sink) -> tuple[np.ndarray, np.ndarray]:
    """Draw as :func:`sample_features` does, handing each point's events to ``sink`` in order."""
    m = rows_per_draw(n_events, batch_size, bool(cuts))
    group = points_per_draw(n_events, batch_size, bool(cuts), max(len(points), 1))
    accepted = np.zeros(len(points), dtype=np.int64)
    drawn = np.zeros(len(points), dtype=np.int64)
    n_features = len(model.feature_names)
    for g, start in enumerate(range(0, len(points), group)):
        part = points[start : start + group]
        draws = group_draws(model, part, group, m, (seed, g), cuts, max_tries, model.flow, n_events,
                            accepted[start:], drawn[start:])
        if len(part) == 1:  # one point: its events arrive in order, draw by draw
            for _, _, rows in draws:
                sink.add(rows, part[0])
            continue
        # Several points share a draw (then len(part) * n_events <= batch_size): fill them together.
        out = np.empty((len(part), n_events, n_features))
        for k, first, rows in draws:
            out[k, first : first + len(rows)] = rows
        for k in range(len(part)):
            sink.add(out[k], part[k])
    return accepted, drawn


def generate_to_parquet(
    model: TrainedModel,
    points: np.ndarray,
    n_events: int,
    path: str | Path,
    seed: int,
    batch_size: int = 100000,
    ranges: Mapping[str, Sequence[float]] | None = None,
    max_tries: int = 100,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write ``n_events`` events at each label point to the FeatureSet parquet ``path``; returns
    ``{"path", "events", "row_groups", "rows_per_group", "generation"}``.

    The events and metadata equal :func:`generate`'s for the same arguments. Memory, whatever
    ``n_events`` is: one sampler call of at most ``batch_size`` rows and at most two row groups of
    ``rows_per_group`` events (the rows of one call, fewer when the memory limit,
    :func:`fedhex_hep.limits.available_bytes`, needs it); refused (MemoryLimitError, with the
    estimate) only when one call and its output do not fit.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    points = check_request(model, points, n_events, batch_size, max_tries, in_memory=False)
    cuts = check_ranges(model, ranges)
    seed = int(seed) % 2**31
    names = [*model.feature_names, *model.label_names, "weight"]
    shape = (model.config, len(model.feature_names), len(model.label_names))
    draw = min(int(batch_size), rows_per_draw(n_events, batch_size, bool(cuts)) * points_per_draw(
        n_events, batch_size, bool(cuts), max(len(points), 1)))  # rows per sampler call
    check_streaming(*shape, draw)
    rows = stream_rows(*shape, draw)
    schema = pa.schema([pa.field(name, pa.float64()) for name in names])
    with atomic_path(path, overwrite=overwrite) as tmp:
        # No stored arrow schema: its copy of the metadata would hide the final one added at the end.
        with pq.ParquetWriter(tmp, schema, store_schema=False) as writer:
            sink = _RowGroups(writer, names, len(model.label_names), rows)
            accepted, drawn = _stream_groups(model, points, int(n_events), seed, batch_size, cuts, max_tries, sink)
            sink.flush()
            generation = generation_info(model, points, n_events, seed, batch_size, cuts, accepted, drawn)
            metadata = generated_metadata(model, generation)
            writer.add_key_value_metadata(file_metadata(model.feature_names, model.label_names, metadata))
    return {"path": Path(path), "events": len(points) * int(n_events), "row_groups": sink.row_groups,
            "rows_per_group": rows, "generation": generation}


def write_generated(
    model_dir: str | Path,
    config: Any,
    output: str | Path,
    points: Sequence[Sequence[float]] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
    overwrite: bool = True,
) -> tuple[int, int]:
    """Generate with ``config.generation`` into ``output``: in memory when the whole output fits
    (:func:`fedhex_hep.limits.generation_fits`), else streamed in row groups (one log line says so).
    Returns (events written, mass points)."""
    from fedhex_hep.generation.sampling import GenerationError, generate_from_config
    from fedhex_hep.limits import available_bytes, format_bytes, generation_bytes
    from fedhex_hep.model.cache import load_model_cached

    gen = config.generation
    model = load_model_cached(model_dir)
    chosen = np.asarray(points if points else gen.labels, dtype=np.float64).reshape(-1, len(model.label_names))
    if chosen.size == 0:
        raise GenerationError("no mass point: give --label or set generation.labels in the config")
    shape = (model.config, len(model.feature_names), len(model.label_names), len(chosen), gen.n_events, gen.batch_size)
    needed = generation_bytes(*shape)
    if needed <= available_bytes():
        result = generate_from_config(model_dir, config, chosen.tolist(), ranges=ranges)
        result.save(output, overwrite=overwrite)
        return len(result), len(chosen)
    log.info("generate: the output needs about %s, more than the %s available: streaming it to %s in row groups "
             "of at most %d events", format_bytes(needed), format_bytes(available_bytes()), output, gen.batch_size)
    info = generate_to_parquet(model, chosen, gen.n_events, output, seed=gen.seed, batch_size=gen.batch_size,
                               ranges=ranges or {k: tuple(v) for k, v in gen.ranges.items()} or None,
                               max_tries=gen.max_tries, overwrite=overwrite)
    return info["events"], len(chosen)
