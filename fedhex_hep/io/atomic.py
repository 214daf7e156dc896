"""Atomic output: write to a temporary name in the target folder, then rename.

A reader never sees a half-written file, a failed write (full disk, killed job) leaves the
previous file untouched, and two runs never write into the same run folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from fedhex_hep.errors import FedhexError

__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "check_writable",
    "new_run_dir",
    "output_lock",
]


class OutputError(FedhexError, OSError):
    """An output could not be written; the message names the path and the reason."""

    def __str__(self) -> str:
        # Only the message: "[Errno 28] ..." prefixes help nobody reading a one-line error.
        return self.strerror or super().__str__()


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only folder?)"
    return exc.strerror or str(exc)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing ``path`` unless ``overwrite``; make its parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(errno.EEXIST, f"{path} already exists (use --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create folder {path.parent}: {_describe(exc)}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = check_writable(path, overwrite=overwrite)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot write {path}: {_describe(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the final file the usual permissions (0666 & ~umask).
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise OutputError(errno.EEXIST, f"{path} appeared while writing; refusing to overwrite it")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(exc.errno, f"cannot write {path}: {_describe(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def new_run_dir(parent: str | Path, prefix: str = "run") -> Path:
    """Create and return a fresh folder ``parent/<prefix>-YYYYmmdd-HHMMSS[-N]``.

    ``mkdir`` without ``exist_ok`` is atomic, so concurrent runs get distinct folders and an
    earlier run is never overwritten.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create folder {parent}: {_describe(exc)}") from None
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = parent / (f"{prefix}-{stamp}" + (f"-{n}" if n else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot create folder {candidate}: {_describe(exc)}") from None
    raise OutputError(errno.EEXIST, f"too many runs started in {parent} within one second")


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the duration; a second holder is refused at once."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create folder {folder}: {_describe(exc)}") from None
    lock = FileLock(str(folder / ".fedhex-hep.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputError(errno.EBUSY, f"{folder} is in use by another fedhex-hep process") from None
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot lock {folder}: {_describe(exc)}") from None
    try:
        yield folder
    finally:
        lock.release()
