"""The dask side of coffea's executors, shared by extraction and mass scans.

``--executor dask`` either connects to an existing scheduler (an analysis facility's cluster,
given by address) or starts a ``dask.distributed.LocalCluster`` of single-threaded worker
processes for the duration of the run and closes it afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any
from fedhex_hep.errors import FedhexError, UsageError

__all__ = ["EXECUTORS", "ExecutorError", "SchedulerError", "check_executor", "dask_client", "bars_unless"]

EXECUTORS = ("iterative", "futures", "dask")


class ExecutorError(UsageError, ValueError):
    """A bad executor choice or an unreachable dask scheduler; one line naming it."""


class SchedulerError(FedhexError):
    """The dask scheduler at the given address cannot be reached or is not one; names the address."""


@contextlib.contextmanager
def bars_unless(progress: bool) -> Iterator[None]:
    """Hide coffea's progress bars unless ``progress``: its executors draw them (on stdout) even
    with ``status=False``."""
    if progress:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def check_executor(kind: str, workers: int, scheduler: str | None = None) -> None:
    """Refuse an unknown executor name, a worker count below one, or a scheduler without dask."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ExecutorError(f"workers must be >= 1, got {workers}")
    if scheduler and kind != "dask":
        raise ExecutorError(f"--scheduler {scheduler} needs --executor dask (got --executor {kind})")


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None, timeout: str = "20s") -> Iterator[Any]:
    """A ``dask.distributed.Client``: to ``scheduler`` (e.g. ``tcp://host:8786``) if given, else
    to a ``LocalCluster`` of ``workers`` single-threaded processes started and closed here.

    An address that refuses the connection, does not answer within ``timeout`` or does not
    speak dask's protocol gives a :class:`SchedulerError` naming it.
    """
    from dask.distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(_connect(Client, scheduler, timeout))
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


def _connect(client_cls: Any, scheduler: str, timeout: str) -> Any:
    """``Client(scheduler)``, every failure one line naming the address."""
    try:
        return client_cls(scheduler, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 -- a non-dask server gives garbage sizes, bad messages
        error = _scheduler_error(scheduler, exc)
    _collect_quietly()
    raise error


def _scheduler_error(scheduler: str, exc: BaseException) -> SchedulerError:
    from fedhex_hep.errors import one_line

    if isinstance(exc, (OSError, TimeoutError)):
        return SchedulerError(f"cannot connect to dask scheduler {scheduler}: {one_line(exc, 200)}")
    if isinstance(exc, ValueError):
        return SchedulerError(f"dask scheduler address {scheduler!r} is not valid: {one_line(exc, 200)}")
    return SchedulerError(f"{scheduler} is not a dask scheduler: its answer is not dask's protocol ({type(exc).__name__})")


def _collect_quietly() -> None:
    """Collect the half-made Client now, without the traceback its ``__del__`` would print at exit."""
    import gc
    import sys

    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
