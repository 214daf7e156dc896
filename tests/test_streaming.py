"""Generation streamed to parquet in row groups: same events as in memory, bounded memory, no partial file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from robust_helpers import REPO, error_lines, run_cli, toy_featureset, train_tiny_model
from test_templates import _gaussian_model

from fedhex_hep.generation.sampling import generate
from fedhex_hep.generation.streaming import generate_to_parquet
from fedhex_hep.io.featureset import FeatureSet
from fedhex_hep.limits import MemoryLimitError

COLUMNS = ["x", "mu", "weight"]


def _row_groups(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


@pytest.mark.parametrize(
    "points, n, batch, ranges",
    [
        ([[0.0], [1.0], [2.0]], 1000, 300, None),  # one point per draw, several draws per point
        ([[0.0], [1.0], [2.0], [3.0], [4.0]], 100, 450, None),  # several points share a draw
        ([[0.0], [0.5]], 2000, 700, {"x": (-0.5, 1.0)}),  # rejection, one point per draw
        ([[0.0], [0.5], [1.0], [2.0]], 50, 100000, {"x": (-0.5, 1.0)}),  # rejection, shared draws
    ],
)
def test_streamed_file_equals_the_in_memory_result(tmp_path, points, n, batch, ranges):
    model = _gaussian_model()
    in_memory = generate(model, np.array(points), n, seed=3, batch_size=batch, ranges=ranges)
    in_memory.save(tmp_path / "memory.parquet")
    info = generate_to_parquet(model, np.array(points), n, tmp_path / "s.parquet", seed=3, batch_size=batch, ranges=ranges)
    expected, streamed = FeatureSet.load(tmp_path / "memory.parquet"), FeatureSet.load(tmp_path / "s.parquet")
    assert len(streamed) == info["events"] == len(points) * n
    for name in COLUMNS:
        assert np.array_equal(streamed.column(name), expected.column(name)), name
    assert streamed.metadata == expected.metadata
    assert (streamed.feature_names, streamed.label_names) == (["x"], ["mu"])
    groups = _row_groups(tmp_path / "s.parquet")
    assert sum(groups) == len(points) * n and max(groups) <= batch and len(groups) == info["row_groups"]
    if ranges:
        assert np.all((streamed.column("x") >= -0.5) & (streamed.column("x") <= 1.0))


def test_streaming_memory_is_bounded_by_the_batch(tmp_path):
    n, batch = 1_500_000, 10_000
    tracemalloc.start()
    try:
        info = generate_to_parquet(_gaussian_model(), np.array([[0.0]]), n, tmp_path / "big.parquet", seed=1, batch_size=batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_output = n * len(COLUMNS) * 8  # 36 MB of float64 columns
    assert peak < full_output / 10, (peak, full_output)
    groups = _row_groups(tmp_path / "big.parquet")
    assert sum(groups) == n == info["events"] and groups == [batch] * (n // batch)
    x = pq.read_table(tmp_path / "big.parquet", columns=["x"]).column("x").to_numpy()
    assert abs(x.mean()) < 5 / np.sqrt(n) and abs(x.std() - 1) < 5 / np.sqrt(n)  # the sampler's N(0, 1)


class _FailingFlow:
    """The Gaussian sampler that fails on its third call (a crash in the middle of a stream)."""

    def __init__(self, error: BaseException) -> None:
        self.calls, self.error, self.inner = 0, error, _gaussian_model().flow

    def sample(self, c, seed):
        self.calls += 1
        if self.calls == 3:
            raise self.error
        return self.inner.sample(c, seed)


@pytest.mark.parametrize("error", [RuntimeError("sampler failed"), KeyboardInterrupt()])
def test_a_failing_stream_leaves_no_file(tmp_path, error):
    model = _gaussian_model()
    model.flow = _FailingFlow(error)
    with pytest.raises(type(error)):
        generate_to_parquet(model, np.array([[0.0]]), 10_000, tmp_path / "g.parquet", seed=1, batch_size=1000)
    assert model.flow.calls == 3 and list(tmp_path.iterdir()) == []


_SLOW_STREAM = """
import sys, time
sys.path.insert(0, {tests!r})
import numpy as np
from test_templates import _gaussian_model
from fedhex_hep.generation.streaming import generate_to_parquet
model = _gaussian_model()
inner = model.flow
class Slow:
    def sample(self, c, seed):
        time.sleep(0.05)
        return inner.sample(c, seed)
model.flow = Slow()
generate_to_parquet(model, np.array([[0.0]]), 10**7, {path!r}, seed=1, batch_size=1000)
"""


def test_a_killed_stream_leaves_no_file(tmp_path):
    target = tmp_path / "g.parquet"
    script = _SLOW_STREAM.format(tests=str(REPO / "tests"), path=str(target))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".g.parquet.*.tmp")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # some row groups written
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not target.exists()
    (tmp,) = tmp_path.glob(".g.parquet.*.tmp")  # only the hidden temporary name remains
    assert tmp.stat().st_size > 0


def test_streaming_is_refused_only_when_one_batch_does_not_fit(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHEX_MEMORY_LIMIT", "800000")
    with pytest.raises(MemoryLimitError, match=r"generating in batches of 100,000 events needs about .* more than the 781\.2 KiB"):
        generate_to_parquet(_gaussian_model(), np.array([[0.0]]), 10**9, tmp_path / "g.parquet", seed=1, batch_size=100_000)
    assert list(tmp_path.iterdir()) == []
    info = generate_to_parquet(_gaussian_model(), np.array([[0.0]]), 50_000, tmp_path / "g.parquet", seed=1, batch_size=10_000)
    # One batch fits, two row groups of 10,000 events beside it do not: row groups of 5,000.
    assert info["rows_per_group"] == 5_000 and _row_groups(tmp_path / "g.parquet") == [5_000] * 10


# ------------------------------------------------------------------ the CLI with a real (tiny) flow
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return train_tiny_model(tmp_path_factory)


def _cli_generate(model: Path, out: Path, limit: str | None):
    args = ["generate", str(model), "-n", "60000", "--batch-size", "4000", "--seed", "7", "--label", "1500,4",
            "--range", "mphi=1400,1600", "-o", str(out)]
    return run_cli(*args, env={"COLUMNS": "400", **({"FEDHEX_MEMORY_LIMIT": limit} if limit else {})})


def test_cli_streams_when_the_output_does_not_fit(tiny_model, tmp_path):
    n, batch = 60_000, 4_000  # in memory: 60,000 x 5 columns x 8 B x 2 = 4.6 MiB > the 2 MiB limit
    streamed_path, memory_path = tmp_path / "s.parquet", tmp_path / "m.parquet"
    result = _cli_generate(tiny_model, streamed_path, "2M")
    assert result.returncode == 0, result.stderr
    assert "streaming it to" in result.stdout + result.stderr
    assert f"wrote {n} events at 1 mass points" in result.stdout
    groups = _row_groups(streamed_path)
    assert sum(groups) == n and max(groups) <= batch
    streamed = FeatureSet.load(streamed_path)
    assert streamed.metadata["generation"]["n_events"] == n and streamed.metadata["generation"]["seed"] == 7
    mphi = streamed.column("mphi")
    assert np.all((mphi >= 1400) & (mphi <= 1600)) and np.all(streamed.labels == [1500.0, 4.0])
    result = _cli_generate(tiny_model, memory_path, None)  # fits: generated in memory, same events
    assert result.returncode == 0, result.stderr
    assert "streaming" not in result.stdout + result.stderr and f"wrote {n} events" in result.stdout
    expected = FeatureSet.load(memory_path)
    for name in ["mphi", "momega", "gphi", "gomega", "weight"]:
        assert np.array_equal(streamed.column(name), expected.column(name)), name
    assert streamed.metadata == expected.metadata


def test_cli_morph_is_checked_against_the_memory_limit(tmp_path):
    mc = toy_featureset().save(tmp_path / "mc.parquet")
    result = run_cli("generate", str(mc), "--method", "morph", "--label", "1500,4", "-n", "10000000",
                     "-o", str(tmp_path / "g.parquet"), env={"FEDHEX_MEMORY_LIMIT": "100M"})
    assert result.returncode == 1
    (line,) = error_lines(result)
    # output 10^7 events x 5 columns x 8 B x 2 copies + work 4 x 10^7 x 2 features x 8 B = 1.44e9 B
    assert f"{1.44e9 / 2**30:.1f} GiB" == "1.3 GiB"
    assert "generating 10,000,000 events at 1 mass point(s) needs about 1.3 GiB of memory, more than the 100.0 MiB" in line
    assert not (tmp_path / "g.parquet").exists()
