"""Atomic output: no partial files, no silent overwrite, no two runs in one folder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import pytest

from fedhex_hep.io.atomic import OutputError, atomic_path, atomic_write_text, check_writable, new_run_dir, output_lock


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path):
    target = tmp_path / "big.bin"
    with pytest.raises(OutputError, match=r"big\.bin: no space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot create folder"):
        atomic_write_text(blocker / "sub" / "x.txt", "x")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_read_only_folder_is_a_clear_error(tmp_path, monkeypatch, code):
    # Root (as in CI) ignores folder permissions, so the kernel's refusal is simulated where
    # the temporary file is created.
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"x\.txt: permission denied \(read-only folder\?\)"):
        atomic_write_text(tmp_path / "x.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_without_overwrite(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("keep")
    with pytest.raises(OutputError, match="already exists .*--overwrite"):
        check_writable(target)
    with pytest.raises(OutputError, match="already exists"):
        atomic_write_text(target, "new", overwrite=False)
    assert target.read_text() == "keep"


def test_written_files_get_normal_permissions(tmp_path):
    target = atomic_write_text(tmp_path / "p.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_run_dirs_are_unique_even_when_started_together(tmp_path):
    made: list = []

    def make() -> None:
        made.append(new_run_dir(tmp_path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8
    assert all(p.is_dir() for p in made)


def test_second_process_cannot_lock_the_same_folder(tmp_path):
    code = (
        "import sys\n"
        "from fedhex_hep.io.atomic import output_lock, OutputError\n"
        "try:\n"
        "    with output_lock(sys.argv[1]):\n"
        "        print('locked')\n"
        "except OutputError as exc:\n"
        "    print('refused:', exc)\n"
    )
    with output_lock(tmp_path):
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "refused:" in result.stdout and "in use by another fedhex-hep process" in result.stdout
    after = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert after.stdout.strip() == "locked"
