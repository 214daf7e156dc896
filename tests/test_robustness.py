"""Hostile inputs: no silent wrong data, no tracebacks, bounded memory.

Each case is one the failure table of the README lists, with the message the user sees.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from robust_helpers import (
    error_lines,
    run_cli,
    small_config,
    toy_featureset,
    toy_model_config,
    train_tiny_model,
    write_small_root,
)

from fedhex_hep.config import ConfigError, load_config
from fedhex_hep.errors import FedhexError, UsageError
from fedhex_hep.extraction.executors import ExecutorError, SchedulerError, check_executor, dask_client
from fedhex_hep.extraction.expressions import compile_expression
from fedhex_hep.extraction.runner import ExtractionError, extract
from fedhex_hep.io.fileset import FilesetError, build_fileset
from fedhex_hep.limits import MemoryLimitError, check_training, generation_bytes


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return write_small_root(tmp_path_factory.mktemp("root") / "Phi_1000_omega_1" / "nano_0.root")


# ------------------------------------------------------------------ silent wrong data
@pytest.mark.parametrize("section", ["features", "labels"])
@pytest.mark.parametrize("name", ["_entry", "_fileid", "weight"])
def test_reserved_column_names_are_refused(section, name):
    with pytest.raises(ConfigError, match=rf"'input.{section}.{name}': the column name '{name}' is reserved"):
        load_config(overrides={f"input.{section}.{name}": "CBL_RecoPhi_mass*2"})


def test_reserved_name_refused_by_the_processor_too():
    from fedhex_hep.processors.extraction import FeatureProcessor

    with pytest.raises(ConfigError, match="'_entry' is reserved"):
        FeatureProcessor({"_entry": "x"}, {"m": "y"})


def test_integer_division_and_modulo_by_zero_and_overflow_are_not_silent():
    ns = {"i": np.array([3, -3, 0], dtype=np.int64), "big": np.array([2**62, 2**62, 1], dtype=np.int64)}
    floor = compile_expression("i // 0").evaluate(ns)
    assert np.isposinf(floor[0]) and np.isneginf(floor[1]) and np.isnan(floor[2])
    assert np.all(np.isnan(compile_expression("i % 0").evaluate(ns)))
    wrapped = np.array([2**62, 2**62, 1], dtype=np.int64) * 4  # what int64 arithmetic gives: wrapped
    product = compile_expression("big * 4").evaluate(ns)
    assert product[0] == pytest.approx(2.0**64) and product[0] != wrapped[0]
    assert compile_expression("-(-9223372036854775807 - 1)").evaluate({}) == pytest.approx(2.0**63)
    # ordinary integer arithmetic keeps its values (exact in float64 below 2**53)
    np.testing.assert_array_equal(compile_expression("i // 2 + i % 2").evaluate(ns), [2.0, -1.0, 0.0])


def test_division_by_zero_feature_is_counted_and_dropped_not_zero(small_root):
    base = small_config([small_root])
    cfg = base.with_overrides({"input.features": {"phi": "CBL_RecoPhi_mass + 0 * (CBL_Region // (CBL_Region - 1))",
                                                  "omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"}})
    with pytest.raises(ExtractionError, match="every selected event has a non-finite feature or label \\(phi: "):
        extract(cfg, progress=False)
    with pytest.raises(ExtractionError, match="non-finite values .*phi: .*input.nonfinite = 'drop'"):
        extract(cfg.with_overrides({"input.nonfinite": "error"}), progress=False)


@pytest.mark.parametrize("tree", [5, "", ["Events"], None])
def test_json_fileset_treename_must_be_a_string(tmp_path, small_root, tree):
    spec = tmp_path / "fileset.json"
    spec.write_text(json.dumps({"sig": {"files": [str(small_root)], "treename": tree}}))
    with pytest.raises(FilesetError, match=r"fileset .*fileset.json: dataset 'sig': 'treename' must be a non-empty string"):
        build_fileset([spec])


def test_json_fileset_per_file_tree_must_be_a_string(tmp_path, small_root):
    spec = tmp_path / "fileset.json"
    spec.write_text(json.dumps({"sig": {"files": {str(small_root): 7}}}))
    with pytest.raises(FilesetError, match="dataset 'sig': the tree name of .* must be a non-empty string, got 7"):
        build_fileset([spec])


def test_misspelled_branch_is_a_config_error_with_suggestion(small_root, tmp_path):
    other = write_small_root(tmp_path / "Phi_2000_omega_1" / "nano_0.root", n_events=50)
    cfg = small_config([small_root, other], **{"input.features.phi": "CBL_RecoPhi_mas"})
    with pytest.raises(ConfigError, match=r"'input.features.phi' reads branch 'CBL_RecoPhi_mas', which none of the 2 "
                       r"input files has \(first: .*; did you mean 'CBL_RecoPhi_mass'\?\)"):
        extract(cfg, progress=False)


# ------------------------------------------------------------------ configuration
FLOAT_KEYS = [
    "training.learning_rate", "training.final_learning_rate", "training.clip_norm", "model.log_scale_bound",
    "model.spline_range", "training.validation_fraction", "training.conditioning_l2",
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1.0, 1e300])
def test_every_float_is_finite_and_in_range(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}' must be"):
        load_config(overrides={key: value})


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "x.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="x.toml: not UTF-8 text"):
        load_config(binary)


def test_huge_hidden_units_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"'model.hidden_units\[0\]' must be an integer in \[1, 1000000\], got 100000000"):
        load_config(overrides={"model.hidden_units": [100000000]})


def test_model_too_large_for_memory_refused_before_work(tmp_path):
    cfg = load_config(overrides={"model.hidden_units": [1000000, 1000000]})
    with pytest.raises(MemoryLimitError, match=rf"training {cfg.model.ensemble} x 5 blocks of hidden_units \[1000000, 1000000\] .* needs about "
                       r"[0-9.]+ TiB of memory, more than the .* available; reduce model.hidden_units"):
        check_training(cfg)
    from fedhex_hep.model.training import train

    with pytest.raises(MemoryLimitError):
        train(toy_featureset(), toy_model_config(**{"model.hidden_units": [1000000, 1000000]}), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_memory_limit_from_the_environment(monkeypatch):
    cfg = load_config()
    monkeypatch.setenv("FEDHEX_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryLimitError, match="more than the 1.0 MiB available"):
        check_training(cfg)
    monkeypatch.setenv("FEDHEX_MEMORY_LIMIT", "lots")
    with pytest.raises(MemoryLimitError, match="FEDHEX_MEMORY_LIMIT='lots' is not a number"):
        check_training(cfg)


def test_generation_estimate_grows_with_events_not_batches():
    cfg = load_config()
    one = generation_bytes(cfg, 2, 2, 1, 10**6, 10**5)
    assert generation_bytes(cfg, 2, 2, 1, 10**9, 10**5) - one == pytest.approx(2 * (10**9 - 10**6) * 5 * 8)


# ------------------------------------------------------------------ models, checkpoints, resume
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return train_tiny_model(tmp_path_factory)


def _flip(path: Path, offsets: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for k in offsets:
        data[k % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
@pytest.mark.parametrize("damage", ["flip-data", "flip-index", "truncate-data", "truncate-index", "empty-data"])
def test_damaged_weights_give_one_line_naming_the_file(tiny_model, tmp_path, damage, checksums):
    from fedhex_hep.model.storage import ModelDirError, load_model

    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    if not checksums:  # then TensorFlow's own checks find the damage
        (model / "checksums.json").unlink()
    kind, part = damage.split("-")
    target = model / "weights" / ("weights.index" if part == "index" else "weights.data-00000-of-00001")
    if kind == "flip":
        _flip(target, [40, 41, 100])
    else:
        target.write_bytes(target.read_bytes()[: 0 if kind == "empty" else target.stat().st_size // 2])
    expected = f"{target}: damaged \\(its SHA-256 differs from checksums.json\\)" if checksums else (
        f"{model / 'weights' / 'weights'}: damaged or truncated weights")
    with pytest.raises(ModelDirError, match=expected) as info:
        load_model(model)
    assert "\n" not in str(info.value)


def test_damaged_json_of_a_model_names_it(tiny_model, tmp_path):
    from fedhex_hep.model.storage import ModelDirError, load_model

    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    (model / "preprocessing.json").write_text('{"features": 3}')
    with pytest.raises(ModelDirError, match="preprocessing.json: damaged"):
        load_model(model)
    (model / "checksums.json").unlink()
    with pytest.raises(ModelDirError, match="preprocessing.json: "):
        load_model(model)
    (model / "preprocessing.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="preprocessing.json is not readable JSON"):
        load_model(model)


def test_edited_flow_configuration_is_refused_but_generation_defaults_may_change(tiny_model, tmp_path):
    from fedhex_hep.model.storage import ModelDirError, load_model

    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    text = (model / "config.toml").read_text()
    (model / "config.toml").write_text(text.replace("n_events = 20000", "n_events = 500"))
    assert load_model(model).config.generation.n_events == 500
    (model / "config.toml").write_text(text.replace("log_scale_bound = 3.0", "log_scale_bound = 3.5"))
    with pytest.raises(ModelDirError, match="config.toml: the model's configuration differs from the one it was trained with"):
        load_model(model)


def _final(model: Path) -> list[np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model / "weights" / "weights"))
    return [reader.get_tensor(k) for k in sorted(reader.get_variable_to_shape_map()) if k.startswith("flow/")]


def test_resume_falls_back_to_newest_intact_epoch_checkpoint(tiny_model, tmp_path, caplog):
    from fedhex_hep.model.training import train

    intact = Path(shutil.copytree(tiny_model, tmp_path / "intact"))
    damaged = Path(shutil.copytree(tiny_model, tmp_path / "damaged"))
    _flip(damaged / "checkpoints" / "last" / "ckpt.data-00000-of-00001", [30, 31, 32])
    cfg = toy_model_config(**{"training.epochs": 3})
    train(toy_featureset(), cfg, intact, resume=True, progress=False)
    with caplog.at_level(logging.WARNING):
        train(toy_featureset(), cfg, damaged, resume=True, progress=False)
    assert "checkpoints/last: damaged checkpoint" in caplog.text
    assert "resuming from epoch-0002 (epoch 2) instead" in caplog.text
    # epoch-0002 holds the same state as the damaged last: the continued runs agree exactly
    for a, b in zip(_final(intact), _final(damaged)):
        np.testing.assert_array_equal(a, b)


def test_resume_without_any_intact_checkpoint_names_it(tiny_model, tmp_path):
    from fedhex_hep.model.storage import ModelDirError
    from fedhex_hep.model.training import train

    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    for folder in (model / "checkpoints").iterdir():
        (folder / "state.json").write_text("{truncated")
    with pytest.raises(ModelDirError, match=r"cannot resume .*: no intact checkpoint in .*checkpoints: .*state.json: unreadable"):
        train(toy_featureset(), toy_model_config(**{"training.epochs": 3}), model, resume=True, progress=False)


def test_training_that_fails_before_a_checkpoint_does_not_block_a_rerun(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    import fedhex_hep.model.training as training
    from fedhex_hep.model.training import TrainingError, train

    original = training._batch_loss
    monkeypatch.setattr(training, "_batch_loss", lambda *a: tf.constant(np.nan, tf.float32) + 0 * original(*a))
    with pytest.raises(TrainingError, match="NaN/inf at epoch 1"):
        train(toy_featureset(), toy_model_config(), tmp_path / "m", progress=False)
    monkeypatch.setattr(training, "_batch_loss", original)
    train(toy_featureset(), toy_model_config(), tmp_path / "m", progress=False)
    assert (tmp_path / "m" / "weights").is_dir()


# ------------------------------------------------------------------ dask scheduler
@pytest.fixture()
def http_server():
    """A TCP server that answers like an HTTP server: not a dask scheduler."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" * 20)
            time.sleep(0.2)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_scheduler_that_is_not_dask_is_named(http_server):
    with pytest.raises(SchedulerError, match=f"{http_server} is not a dask scheduler"):
        with dask_client(1, http_server, timeout="5s"):
            pass


def test_refused_scheduler_connection_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(SchedulerError, match=f"cannot connect to dask scheduler {address}"):
        with dask_client(1, address, timeout="2s"):
            pass


def test_scheduler_needs_the_dask_executor():
    with pytest.raises(ExecutorError, match="--scheduler tcp://h:1 needs --executor dask"):
        check_executor("iterative", 1, "tcp://h:1")


# ------------------------------------------------------------------ the command line
def test_exit_codes_of_the_error_classes():
    from fedhex_hep.io.atomic import OutputError
    from fedhex_hep.model.storage import ModelDirError

    assert issubclass(ConfigError, UsageError) and ConfigError("x").exit_code == 2
    assert issubclass(FilesetError, UsageError) and issubclass(ExecutorError, UsageError)
    for runtime in (ExtractionError, ModelDirError, OutputError, SchedulerError, MemoryLimitError):
        assert issubclass(runtime, FedhexError) and not issubclass(runtime, UsageError)


def test_cli_reserved_name_is_one_line_exit_2(tmp_path):
    result = run_cli("extract", "--set", 'input.features._entry="CBL_RecoPhi_mass*2"', "-o", str(tmp_path / "f.parquet"))
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: config key 'input.features._entry': the column name '_entry' is reserved "
        "(weight, _entry, _fileid are written by the extraction itself)"
    ]


def test_cli_non_ascii_folder_is_named(tmp_path, small_root):
    folder = tmp_path / "données" / "Phi_1000_omega_1"
    folder.mkdir(parents=True)
    shutil.copy(small_root, folder / "nano_0.root")
    result = run_cli("extract", "-i", str(tmp_path / "données"), "-o", str(tmp_path / "f.parquet"), "--no-progress")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert f"input file '{folder / 'nano_0.root'}' is not ASCII" in line


def test_cli_scheduler_with_iterative_executor_is_refused(tmp_path):
    result = run_cli("extract", "--scheduler", "tcp://127.0.0.1:1", "-o", str(tmp_path / "f.parquet"))
    assert result.returncode == 2
    assert error_lines(result) == ["error: --scheduler tcp://127.0.0.1:1 needs --executor dask (got --executor iterative)"]


def test_cli_config_directory_and_traceback_only_with_verbose(tmp_path):
    result = run_cli("extract", "--config", str(tmp_path), "-o", str(tmp_path / "f.parquet"))
    assert result.returncode == 2
    assert error_lines(result) == [f"error: config file {tmp_path} is a directory, not a TOML file"]
    verbose = run_cli("--verbose", "extract", "--config", str(tmp_path), "-o", str(tmp_path / "f.parquet"))
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_cli_unexpected_error_is_one_line(tmp_path):
    # an OSError with a file name: named, exit 1, no traceback
    (tmp_path / "features.parquet").mkdir()
    result = run_cli("export", str(tmp_path / "features.parquet"))
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith("error: ") and "features.parquet" in line and "Traceback" not in result.stderr


def test_generate_a_billion_events_in_memory_is_refused_with_the_estimate(tiny_model, monkeypatch):
    from fedhex_hep.generation.sampling import generate
    from fedhex_hep.model.storage import load_model

    monkeypatch.setenv("FEDHEX_MEMORY_LIMIT", "8G")
    with pytest.raises(MemoryLimitError) as info:
        generate(load_model(tiny_model), [[1500.0, 4.0]], 1000000000, seed=1)
    line = str(info.value)
    assert "generating 1,000,000,000 events at 1 mass point(s) needs about 74.5 GiB of memory, more than the 8.0 GiB" in line
    assert "generate the events in parts: e.g. 10 runs of '-n 100000000' with a different --seed" in line


def test_cli_generate_is_refused_only_when_one_batch_does_not_fit(tiny_model, tmp_path):
    # A billion events stream to disk in row groups; a batch of 10^8 events does not fit in 1 GiB.
    result = run_cli("generate", str(tiny_model), "-n", "1000000000", "--batch-size", "100000000",
                     "-o", str(tmp_path / "g.parquet"), env={"FEDHEX_MEMORY_LIMIT": "1G"})
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "generating in batches of 100,000,000 events needs about" in line and "more than the 1.0 GiB" in line
    assert "reduce --batch-size (generation.batch_size)" in line
    assert list(tmp_path.iterdir()) == []
