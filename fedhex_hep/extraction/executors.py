"""The dask side of coffea's executors, shared by extraction and mass scans.

``--executor dask`` either connects to an existing scheduler (an analysis facility's cluster,
given by address) or starts a ``dask.distributed.LocalCluster`` of single-threaded worker
processes for the duration of the run and closes it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from fedhex_hep.errors import FedhexError

__all__ = ["EXECUTORS", "ExecutorError", "check_executor", "dask_client"]

EXECUTORS = ("iterative", "futures", "dask")


class ExecutorError(FedhexError, ValueError):
    """A bad executor choice or an unreachable dask scheduler; one line naming it."""


def check_executor(kind: str, workers: int) -> None:
    """Refuse an unknown executor name or a worker count below one."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ExecutorError(f"workers must be >= 1, got {workers}")


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: to ``scheduler`` (e.g. ``tcp://host:8786``) if given, else
    to a ``LocalCluster`` of ``workers`` single-threaded processes started and closed here."""
    from dask.distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="20s"))
            except OSError as exc:
                raise ExecutorError(f"cannot connect to dask scheduler {scheduler}: {exc}") from None
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            )
            client = stack.enter_context(Client(cluster))
        yield client
