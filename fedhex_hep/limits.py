"""Memory bounds checked before work starts: refuse a run that cannot fit, with the estimate.

A model of ``hidden_units = [100000000]`` or an in-memory generation of 10^9 events would otherwise
take every byte of the machine until the kernel kills the process; ``fedhex-hep generate`` streams
an output that does not fit to disk instead (:func:`generation_fits`, :func:`check_streaming`). These estimates are deliberately simple
(upper-end counts of float32 parameters, optimizer slots and activations; float64 output
columns) and are compared with the memory the operating system reports as available
(``psutil.virtual_memory().available``), or with ``FEDHEX_MEMORY_LIMIT`` (bytes, or with a
``K``/``M``/``G``/``T`` suffix) when set.

>>> format_bytes(3 * 2**30)
'3.0 GiB'
"""

from __future__ import annotations

import os
from typing import Any

from fedhex_hep.errors import FedhexError

__all__ = [
    "MemoryLimitError",
    "available_bytes",
    "format_bytes",
    "training_bytes",
    "generation_bytes",
    "check_training",
    "check_generation",
    "generation_fits",
    "streaming_bytes",
    "stream_rows",
    "check_streaming",
    "check_config",
]

#: Share of the available memory a run may plan to use (the rest: Python, TensorFlow, the OS).
USABLE_FRACTION = 0.8
_FLOAT32, _FLOAT64 = 4, 8
# Per parameter: the weight, its gradient, Adam's two slots, the masked kernel copy and slack.
_TRAIN_PARAM_COPIES = 8
# Per activation: forward value, pre-activation, gradient, slack (sampling keeps no gradients).
_TRAIN_ACTIVATION_COPIES = 4
_SAMPLE_ACTIVATION_COPIES = 2
# Output columns are held as numpy arrays and once more while they are zipped and written.
_OUTPUT_COPIES = 2


class MemoryLimitError(FedhexError):
    """A run would need more memory than the machine has; the message gives the estimate."""


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps the number >= 1 (``'3.0 GiB'``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def available_bytes() -> int:
    """Memory a run may use: ``FEDHEX_MEMORY_LIMIT`` if set, else the available memory x USABLE_FRACTION."""
    text = os.environ.get("FEDHEX_MEMORY_LIMIT", "").strip()
    if text:
        scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1].upper(), 1)
        digits = text[:-1] if scale > 1 else text
        try:
            return int(float(digits) * scale)
        except ValueError:
            raise MemoryLimitError(f"FEDHEX_MEMORY_LIMIT={text!r} is not a number of bytes (e.g. 8G)") from None
    import psutil

    return int(psutil.virtual_memory().available * USABLE_FRACTION)


def _params_per_block(model: Any, n_features: int, n_labels: int) -> int:
    """Weights of one autoregressive network: each dense layer also sees the labels."""
    spline = model.kind == "spline" or model.spline_blocks > 0
    per_dim = 3 * model.spline_bins - 1 if spline else 2
    sizes = [n_features, *model.hidden_units, n_features * per_dim]
    return sum((a + n_labels + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _activations_per_event(model: Any, n_features: int) -> int:
    spline = model.kind == "spline" or model.spline_blocks > 0
    per_dim = 3 * model.spline_bins - 1 if spline else 2
    return sum(model.hidden_units) + n_features * per_dim


def training_bytes(config: Any, n_features: int, n_labels: int) -> int:
    """Estimated peak bytes to train ``config.model`` with batches of ``config.training.batch_size``."""
    model = config.model
    flows = model.n_blocks * model.ensemble
    params = flows * _params_per_block(model, n_features, n_labels)
    activations = flows * config.training.batch_size * _activations_per_event(model, n_features)
    return _FLOAT32 * (_TRAIN_PARAM_COPIES * params + _TRAIN_ACTIVATION_COPIES * activations)


def generation_bytes(config: Any, n_features: int, n_labels: int, n_points: int, n_events: int, batch_size: int) -> int:
    """Estimated peak bytes to generate ``n_events`` at each of ``n_points`` in batches of ``batch_size``."""
    model = getattr(config, "model", None)  # None: a sampler that is not one of our flows
    batch = min(batch_size, n_events)
    params = activations = 0
    if model is not None:
        flows = model.n_blocks * model.ensemble
        params = flows * _params_per_block(model, n_features, n_labels)
        activations = flows * batch * _activations_per_event(model, n_features)
    output = n_points * n_events * (n_features + n_labels + 1) * _FLOAT64
    work = _FLOAT32 * (2 * params + _SAMPLE_ACTIVATION_COPIES * activations) + 4 * batch * n_features * _FLOAT64
    return work + _OUTPUT_COPIES * output


def _refuse(what: str, needed: int, fix: str) -> None:
    limit = available_bytes()
    if needed > limit:
        raise MemoryLimitError(
            f"{what} needs about {format_bytes(needed)} of memory, more than the {format_bytes(limit)} "
            f"available; {fix}"
        )


def check_training(config: Any, n_features: int | None = None, n_labels: int | None = None) -> None:
    """Refuse (MemoryLimitError) a model/batch size whose training would not fit in memory."""
    n_f = n_features if n_features is not None else len(config.input.features)
    n_l = n_labels if n_labels is not None else len(config.input.labels)
    m = config.model
    _refuse(
        f"training {m.ensemble} x {m.n_blocks} blocks of hidden_units {list(m.hidden_units)} with "
        f"training.batch_size {config.training.batch_size}",
        training_bytes(config, n_f, n_l),
        "reduce model.hidden_units, model.n_blocks, model.ensemble or training.batch_size",
    )


def check_generation(
    config: Any, n_features: int, n_labels: int, n_points: int, n_events: int, batch_size: int
) -> None:
    """Refuse (MemoryLimitError) a generation whose output would not fit in memory; says how to split it."""
    needed = generation_bytes(config, n_features, n_labels, n_points, n_events, batch_size)
    limit = available_bytes()
    if needed <= limit:
        return
    per_event = max(1, needed // max(1, n_points * n_events))
    part = max(1, int(limit // per_event // max(1, n_points)))
    part = 10 ** len(str(part)) // 10 if part >= 10 else part  # a round number of events per part
    _refuse(
        f"generating {n_events:,} events at {n_points} mass point(s)",
        needed,
        f"generate the events in parts: e.g. {-(-n_events // part)} runs of '-n {part}' with a different "
        "--seed and --output each (the seeds make the parts independent)",
    )


def generation_fits(
    config: Any, n_features: int, n_labels: int, n_points: int, n_events: int, batch_size: int
) -> bool:
    """Whether the whole output of a generation fits in memory (else: stream it to disk)."""
    return generation_bytes(config, n_features, n_labels, n_points, n_events, batch_size) <= available_bytes()


def streaming_bytes(config: Any, n_features: int, n_labels: int, batch_size: int) -> int:
    """Estimated peak bytes to stream a generation to disk in draws of ``batch_size`` events:
    the sampler's work and one batch of output (less than this cannot work)."""
    return generation_bytes(config, n_features, n_labels, 1, batch_size, batch_size)


def stream_rows(config: Any, n_features: int, n_labels: int, batch_size: int) -> int:
    """Events per row group when streaming: ``batch_size``, fewer when the events waiting for the
    next row group and the row group being written (two copies each) do not fit beside the work."""
    per_row = _OUTPUT_COPIES * 2 * (n_features + n_labels + 1) * _FLOAT64
    work = generation_bytes(config, n_features, n_labels, 0, batch_size, batch_size)
    return int(max(1, min(batch_size, (available_bytes() - work) // per_row)))


def check_streaming(config: Any, n_features: int, n_labels: int, batch_size: int) -> None:
    """Refuse (MemoryLimitError) a streamed generation when even one batch does not fit in memory."""
    _refuse(
        f"generating in batches of {batch_size:,} events",
        streaming_bytes(config, n_features, n_labels, batch_size),
        "reduce --batch-size (generation.batch_size)",
    )


def check_config(config: Any) -> None:
    """Both checks for a whole run of ``config`` (training, then generation at its points + one grid point)."""
    n_f, n_l = len(config.input.features), len(config.input.labels)
    check_training(config, n_f, n_l)
    gen = config.generation
    check_generation(config, n_f, n_l, len(gen.labels) + 1, gen.n_events, gen.batch_size)
