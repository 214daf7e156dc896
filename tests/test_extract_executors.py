"""Iterative, futures and dask executors give identical results; a dask worker killed mid-run
loses nothing (retries) or the run fails loudly -- never a silently smaller dataset."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from fedhex_hep.config import load_config
from fedhex_hep.extraction.runner import ExtractionError, extract
from fedhex_hep.processors.extraction import FeatureProcessor

# Workers are separate processes that cannot import this test module: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])



def nano_config(nanoaod_dir: Path, tmp_path: Path):
    fileset = tmp_path / "fileset.json"
    fileset.write_text(
        json.dumps(
            {
                "dy": {"files": [str(nanoaod_dir / "nano_dy.root")], "metadata": {"refmass": 91.0}},
                "ttbar": {
                    "files": [str(nanoaod_dir / "nanoAOD_2015_CMS_Open_Data_ttbar.root")],
                    "metadata": {"refmass": 172.5},
                },
            }
        )
    )
    return load_config(
        overrides={
            "input.paths": [str(fileset)],
            "input.features": {"pt1": "Muon_pt[0]", "eta1": "Muon_eta[0]"},
            "input.labels": {"refmass": "refmass", "nmu": "nMuon"},
            "input.selection": "nMuon >= 1",
            "input.min_events_per_label": 0,
            "input.chunksize": 40,  # several chunks per file, so merge order can differ
        }
    )


def assert_same(a, b):
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.metadata["cutflow"] == b.metadata["cutflow"]


@pytest.mark.slow
def test_iterative_futures_dask_identical(nanoaod_dir, tmp_path):
    from dask.distributed import LocalCluster

    cfg = nano_config(nanoaod_dir, tmp_path)
    iterative = extract(cfg, executor="iterative", progress=False)
    futures = extract(cfg, executor="futures", workers=2, progress=False)
    assert len(iterative) > 10
    assert_same(iterative, futures)
    # a real LocalCluster started here, reached through its scheduler address
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dask = extract(cfg, executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert_same(iterative, dask)
    assert dask.metadata["executor"] == "dask"


class KillOnceProcessor(FeatureProcessor):
    """Kills the worker process running it (SIGKILL) the first time it sees a chunk > 0."""

    def __init__(self, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker

    def process(self, events):
        if events.metadata["entrystart"] > 0 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(events)


class AlwaysKillProcessor(FeatureProcessor):
    def process(self, events):
        if events.metadata["entrystart"] == 120:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(events)


def processor_kwargs(cfg):
    inp = cfg.input
    return dict(features=inp.features, labels=inp.labels, selection=inp.selection, schema=inp.schema)


@pytest.mark.slow
def test_dask_worker_killed_mid_run_result_complete(nanoaod_dir, tmp_path):
    cfg = nano_config(nanoaod_dir, tmp_path)
    clean = extract(cfg, executor="iterative", progress=False)
    marker = tmp_path / "killed"
    proc = KillOnceProcessor(str(marker), **processor_kwargs(cfg))
    result = extract(cfg, executor="dask", workers=2, progress=False, processor=proc)
    assert marker.exists(), "the worker was never killed: the test did not test anything"
    assert int(marker.read_text()) != os.getpid()
    assert_same(clean, result)


@pytest.mark.slow
def test_dask_chunk_that_always_kills_fails_loudly(nanoaod_dir, tmp_path):
    cfg = nano_config(nanoaod_dir, tmp_path)
    proc = AlwaysKillProcessor(**processor_kwargs(cfg))
    with pytest.raises(ExtractionError, match=r"extraction failed: .*nanoAOD_2015_CMS_Open_Data_ttbar\.root.*KilledWorker"):
        extract(cfg, executor="dask", workers=2, progress=False, processor=proc)
