"""TOML run configuration: load, validate, override and write back.

Every run parameter lives in a TOML file (the packaged
``default.toml`` supplies defaults), options given on the command line override it, and the
fully resolved configuration is written next to every artefact.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from fedhex_hep.errors import UsageError, did_you_mean

__all__ = [
    "ConfigError",
    "ColumnTransform",
    "InputConfig",
    "PreprocessingConfig",
    "ModelConfig",
    "TrainingConfig",
    "GenerationConfig",
    "OutputConfig",
    "Config",
    "default_config_text",
    "load_config",
    "config_from_dict",
    "parse_override",
]


class ConfigError(UsageError, ValueError):
    """A configuration problem; the message is one line naming the offending key."""


# The field defaults below serve code that builds these dataclasses directly (tests, small
# examples: a short single-flow training). Runs take every value from default.toml instead.


@dataclass
class ColumnTransform:
    """Invertible preprocessing of one column: ``standardise(transform(x / relative_to))``."""

    relative_to: str = ""
    transform: str = "none"
    bounds: list[float] = field(default_factory=list)
    standardise: bool = True


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)
    treename: str = "Events"
    schema: str = "base"
    selection: str = ""
    weight: str = ""
    min_events_per_label: int = 0
    skip_bad_files: bool = True
    max_depth: int = 6
    chunksize: int = 100000
    nonfinite: str = "drop"
    features: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # axis labels of features and labels


@dataclass
class PreprocessingConfig:
    features: dict[str, ColumnTransform] = field(default_factory=dict)
    labels: dict[str, ColumnTransform] = field(default_factory=dict)
    residual: bool = False
    residual_max_degree: int = 2


@dataclass
class ModelConfig:
    kind: str = "maf"
    n_blocks: int = 5
    hidden_units: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    log_scale_bound: float = 3.0
    spline_bins: int = 8
    spline_range: float = 5.0
    spline_blocks: int = 0
    base_components: int = 1
    ensemble: int = 1
    bootstrap: bool = True

    def is_spline_block(self, i: int) -> bool:
        """Whether block ``i`` (0 = nearest the Gaussian base, n_blocks - 1 = nearest the data) is a spline."""
        return self.kind == "spline" or i < self.spline_blocks


@dataclass
class TrainingConfig:
    epochs: int = 40
    batch_size: int = 1024
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-4
    decay_epochs: int = 40
    validation_fraction: float = 0.2
    patience: int = 15
    checkpoint_every: int = 10
    clip_norm: float = 0.0
    seed: int = 42
    label_jitter: dict[str, float] = field(default_factory=dict)
    label_jitter_spacing: float = 0.0
    spline_label_jitter: dict[str, float] = field(default_factory=dict)
    min_steps_per_epoch: int = 0
    conditioning_l2: float = 0.0


@dataclass
class GenerationConfig:
    method: str = "flow"
    n_events: int = 20000
    batch_size: int = 100000
    seed: int = 1
    labels: list[list[float]] = field(default_factory=list)
    max_tries: int = 100
    ranges: dict[str, list[float]] = field(default_factory=dict)
    xsec: float = 0.0
    lumi: float = 0.0


@dataclass
class OutputConfig:
    directory: str = "output"
    bins: int = 40
    plot_formats: list[str] = field(default_factory=lambda: ["png"])
    overflow: str = "drop"
    binning: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def feature_names(self) -> list[str]:
        return list(self.input.features)

    @property
    def label_names(self) -> list[str]:
        return list(self.input.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML-serialisable)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The fully resolved configuration as TOML text."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def write(self, path: str | Path) -> Path:
        """Write the resolved configuration atomically to ``path``."""
        from fedhex_hep.io.atomic import atomic_write_text

        return atomic_write_text(path, self.to_toml())

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A new, validated Config with dotted-key overrides applied (``{"training.epochs": 5}``)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return config_from_dict(data, _complete=True)


# Tables whose keys are user-chosen names: a user's table replaces the default one whole
# instead of being merged key by key (otherwise default feature names would leak in).
_FREE_TABLES = {
    ("input", "features"),
    ("input", "labels"),
    ("input", "units"),
    ("preprocessing", "features"),
    ("preprocessing", "labels"),
    ("generation", "ranges"),
    ("training", "label_jitter"),
    ("training", "spline_label_jitter"),
    ("output", "binning"),
}

_CHOICES = {
    "input.schema": ("base", "nanoaod"),
    "input.nonfinite": ("drop", "error"),
    "model.kind": ("maf", "spline"),
    "model.activation": ("relu", "tanh", "elu", "gelu", "silu", "sigmoid"),
    "generation.method": ("flow", "morph"),
    "transform": ("none", "log", "logit"),
    "output.plot_formats": ("png", "pdf", "svg"),
    "output.overflow": ("drop", "fold"),
}

# Documented range of every number in the configuration: key -> (low, high, low is inclusive).
# Numbers must be finite; sizes are capped here so that no estimate overflows, and again against
# the machine's memory before work starts (fedhex_hep.limits).
_SEED_MAX = 2**31 - 1
_RANGES: dict[str, tuple[float, float, bool]] = {
    "input.min_events_per_label": (0, 10**12, True),
    "input.max_depth": (1, 100, True),
    "input.chunksize": (1, 10**8, True),
    "model.n_blocks": (1, 100, True),
    "model.log_scale_bound": (0.0, 20.0, False),
    "model.spline_bins": (1, 1000, True),
    "model.spline_range": (0.0, 1000.0, False),
    "model.spline_blocks": (0, 100, True),
    "model.base_components": (1, 100, True),
    "model.ensemble": (1, 100, True),
    "training.epochs": (1, 10**6, True),
    "training.batch_size": (1, 10**8, True),
    "training.learning_rate": (0.0, 1.0, False),
    "training.final_learning_rate": (0.0, 1.0, False),
    "training.decay_epochs": (1, 10**6, True),
    "training.patience": (0, 10**6, True),
    "training.checkpoint_every": (1, 10**6, True),
    "training.clip_norm": (0.0, 1e6, True),
    "training.seed": (0, _SEED_MAX, True),
    "generation.n_events": (1, 10**12, True),
    "generation.batch_size": (1, 10**8, True),
    "generation.seed": (0, _SEED_MAX, True),
    "generation.max_tries": (1, 10**6, True),
    "output.bins": (1, 10**5, True),
    "generation.xsec": (0.0, 1e15, True),
    "preprocessing.residual_max_degree": (0, 3, True),
    "training.label_jitter_spacing": (0.0, 10.0, True),
    "training.min_steps_per_epoch": (0, 10**6, True),
    "training.conditioning_l2": (0.0, 10.0, True),
    "generation.lumi": (0.0, 1e15, True),
}
_HIDDEN_UNITS_MAX = 10**6
_LABEL_JITTER_MAX = 10.0
#: Column names the extraction writes itself; a feature or label may not use them.
RESERVED_NAMES = ("weight", "_entry", "_fileid")


def check_range(key: str, value: float, low: float, high: float, low_inclusive: bool = True) -> None:
    """Refuse a number that is NaN/inf or outside ``[low, high]`` (``(low, high]`` when not inclusive)."""
    inside = math.isfinite(value) and (value >= low if low_inclusive else value > low) and value <= high
    if not inside:
        integer = isinstance(value, int) and isinstance(low, int) and isinstance(high, int)
        text = str if integer else (lambda v: f"{v:g}")
        interval = f"{'[' if low_inclusive else '('}{text(low)}, {text(high)}]"
        what = "an integer" if integer else "a finite number"
        raise ConfigError(f"config key '{key}' must be {what} in {interval}, got {value!r}")


def default_config_text() -> str:
    """The packaged default configuration (TOML text)."""
    return resources.files("fedhex_hep").joinpath("default.toml").read_text()


def _defaults_dict() -> dict[str, Any]:
    return tomllib.loads(default_config_text())


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``path`` (or only the packaged defaults when None) merged over the defaults.

    ``overrides`` maps dotted keys to values and wins over the file. Raises ConfigError with
    a one-line message naming the offending key.
    """
    user: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            user = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path}: not UTF-8 text (is it a TOML file?)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None
    # A dotted key into one entry of a free table (``preprocessing.features.omega.standardise``)
    # changes that entry of the merged config; only a whole table replaces the default one.
    into_entry = {}
    for key, value in (overrides or {}).items():
        parts = tuple(key.split("."))
        if any(len(parts) > len(table) and parts[: len(table)] == table for table in _FREE_TABLES):
            into_entry[key] = value
        else:
            _set_dotted(user, key, value)
    config = config_from_dict(user)
    return config.with_overrides(into_entry) if into_entry else config


def config_from_dict(data: dict[str, Any], _complete: bool = False) -> Config:
    """Validate a (partial) nested dict, merged over the packaged defaults unless complete."""
    _check_sections(data)
    if _complete:
        merged = copy.deepcopy(data)
    else:
        merged = _merge(_defaults_dict(), data, ())
        names_changed = any(k in data.get("input", {}) for k in ("features", "labels"))
        if names_changed:
            # Every default table keyed by column names (per-column preprocessing, label smearing,
            # ranges) names the reference analysis's columns only: the user's own table, or none.
            for section, table in _FREE_TABLES - {("input", "features"), ("input", "labels")}:
                merged[section][table] = copy.deepcopy(data.get(section, {}).get(table, {}))
        if names_changed and "labels" not in data.get("generation", {}):
            # Default generation points have one value per reference-analysis label.
            merged["generation"]["labels"] = []
    config = _build(Config, merged, "")
    _check_consistency(config)
    return config


def _check_sections(data: Any) -> None:
    """The top level and every section must be tables before they are merged."""
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a table of sections, got {type(data).__name__}")
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{section}' must be a table, got {type(value).__name__} {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.sub=value`` (value in TOML syntax; bare words are strings)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a table")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], user: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in user.items():
        sub = path + (key,)
        if sub in _FREE_TABLES or not (isinstance(value, dict) and isinstance(out.get(key), dict)):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _merge(out[key], value, sub)
    return out


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix}' must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            full = f"{prefix}.{key}" if prefix else key
            hint = did_you_mean(key, known, prefix + "." if prefix else "")
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"config key '{full}': unknown key{hint}; allowed here: {allowed}")
    kwargs = {}
    for name in known:
        if name in data:
            full = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(hints[name], data[name], full)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (list,):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {tp}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)}")


def _get(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigError(f"config key '{key}' = {value!r} is not one of {', '.join(choices)}{hint}")


def _check_named(key: str, name: str, allowed: Any, what: str) -> None:
    """A key of a free table must name an existing column (``what``: feature or label)."""
    if name not in allowed:
        hint = did_you_mean(name, allowed)
        raise ConfigError(f"config key '{key}': no {what} named {name!r}{hint}")


def _check_consistency(config: Config) -> None:
    _check_numbers(config)
    _check_columns(config)
    _check_tables(config)


def _check_numbers(config: Config) -> None:
    """Every number finite and inside its documented range (see ``_RANGES``)."""
    for key, (low, high, inclusive) in _RANGES.items():
        check_range(key, _get(config, key), low, high, inclusive)
    for key in ("input.schema", "input.nonfinite", "model.kind", "model.activation", "generation.method", "output.overflow"):
        _check_choice(key, _get(config, key), _CHOICES[key])
    for fmt in config.output.plot_formats:
        _check_choice("output.plot_formats", fmt, _CHOICES["output.plot_formats"])
    fraction = config.training.validation_fraction
    if not 0.0 <= fraction < 1.0:  # false for NaN as well
        raise ConfigError(f"config key 'training.validation_fraction' must be in [0, 1), got {fraction!r}")
    if config.training.final_learning_rate > config.training.learning_rate:
        raise ConfigError("config key 'training.final_learning_rate' must not exceed 'training.learning_rate'")
    if config.model.spline_blocks > config.model.n_blocks:
        raise ConfigError(
            f"config key 'model.spline_blocks' = {config.model.spline_blocks} exceeds 'model.n_blocks' = "
            f"{config.model.n_blocks}; with fewer blocks, set 'model.spline_blocks' "
            f"(default {_defaults_dict()['model']['spline_blocks']}) as well"
        )
    if not config.model.hidden_units:
        raise ConfigError("config key 'model.hidden_units' must be a non-empty list of positive integers")
    for i, units in enumerate(config.model.hidden_units):
        check_range(f"model.hidden_units[{i}]", units, 1, _HIDDEN_UNITS_MAX)


def _check_columns(config: Config) -> None:
    """Feature and label names: present, distinct, identifiers, not reserved; expressions non-empty."""
    features, labels = config.input.features, config.input.labels
    if not features:
        raise ConfigError("config key 'input.features' is empty: name at least one feature")
    if not labels:
        raise ConfigError("config key 'input.labels' is empty: name at least one label")
    overlap = set(features) & set(labels)
    if overlap:
        raise ConfigError(f"config key 'input.labels': name {sorted(overlap)[0]!r} is also a feature")
    for section, names in (("features", features), ("labels", labels)):
        for name in RESERVED_NAMES:
            if name in names:
                raise ConfigError(
                    f"config key 'input.{section}.{name}': the column name {name!r} is reserved "
                    f"({', '.join(RESERVED_NAMES)} are written by the extraction itself)"
                )
    for section, names in (("features", features), ("labels", labels)):
        for name, expr in names.items():
            if not name.isidentifier():
                raise ConfigError(f"config key 'input.{section}.{name}': column names must be identifiers")
            if not isinstance(expr, str) or not expr.strip():
                raise ConfigError(f"config key 'input.{section}.{name}' must be a non-empty expression")


def _check_tables(config: Config) -> None:
    """Per-column tables (preprocessing, jitter, ranges) and generation points."""
    features, labels = config.input.features, config.input.labels
    for section, allowed in (("features", features), ("labels", labels)):
        for name, column in getattr(config.preprocessing, section).items():
            key = f"preprocessing.{section}.{name}"
            _check_named(key, name, allowed, section[:-1])
            _check_choice(f"{key}.transform", column.transform, _CHOICES["transform"])
            if column.relative_to and column.relative_to not in labels:
                raise ConfigError(f"config key '{key}.relative_to': {column.relative_to!r} is not a label")
            if column.transform == "logit":
                if len(column.bounds) != 2 or not _finite(column.bounds) or not column.bounds[0] < column.bounds[1]:
                    raise ConfigError(f"config key '{key}.bounds' must be [min, max] with min < max for logit")

    for i, point in enumerate(config.generation.labels):
        if len(point) != len(labels):
            raise ConfigError(
                f"config key 'generation.labels[{i}]' has {len(point)} values, expected {len(labels)} "
                f"({', '.join(labels)})"
            )
        if not _finite(point):
            raise ConfigError(f"config key 'generation.labels[{i}]' must be finite numbers, got {point!r}")
    for table in ("label_jitter", "spline_label_jitter"):
        for name, sd in getattr(config.training, table).items():
            key = f"training.{table}.{name}"
            _check_named(key, name, labels, "label")
            check_range(key, sd, 0.0, _LABEL_JITTER_MAX)
    for name, bounds in config.generation.ranges.items():
        key = f"generation.ranges.{name}"
        _check_named(key, name, features, "feature")
        if len(bounds) != 2 or not _finite(bounds) or not bounds[0] < bounds[1]:
            raise ConfigError(f"config key '{key}' must be [min, max] of finite numbers with min < max, got {bounds!r}")


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)
