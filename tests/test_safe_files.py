"""Files in shared directories: no write through a link, no write into another user's file in a
sticky directory, bounded lock waits, modes, stale temp files (issue 18, item 1)."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from solidx.gradlib import safe_files
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import (
    LockTimeout,
    UnsafeFileError,
    lock_file,
    open_append,
    remove_stale_temps,
    replace_atomic,
)
from solidx.gradlib.schema import locked
from solidx.gradlib.shapes_file import ShapeRow, add_to_shapes_file, read_shapes, write_shapes

NOBODY = 65534


@pytest.fixture
def sticky(tmp_path: Path) -> Path:
    """A world-writable sticky directory, as /tmp."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    if not os.stat(folder).st_mode & stat.S_ISVTX:
        pytest.skip("this file system cannot make a sticky directory")
    return folder


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "root-only.txt"
    path.write_text("secret\n")
    path.chmod(0o600)
    return path


def _other_users_file(path: Path) -> Path:
    path.write_text("M,N,K\n")
    try:
        os.chown(path, NOBODY, NOBODY)
    except PermissionError:
        pytest.skip("not root: cannot make a file of another user")
    return path


def test_lock_does_not_follow_a_link(sticky: Path, victim: Path) -> None:
    (sticky / "fp8_shapes.csv.lock").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link.*remove the link"):
        with locked(sticky / "fp8_shapes.csv"):
            pass
    assert victim.read_text() == "secret\n"


def test_log_append_does_not_follow_a_link(sticky: Path, victim: Path) -> None:
    (sticky / "tuned.csv.candidates.jsonl").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        open_append(sticky / "tuned.csv.candidates.jsonl")
    assert victim.read_text() == "secret\n"


def test_capture_does_not_replace_a_link(sticky: Path, victim: Path) -> None:
    (sticky / "fp8_shapes.csv").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        add_to_shapes_file(sticky / "fp8_shapes.csv", [ShapeRow(GemmProblem(16, 1, 32))])
    assert victim.read_text() == "secret\n"
    assert (sticky / "fp8_shapes.csv").is_symlink()


def test_another_users_file_in_a_sticky_dir_is_refused(sticky: Path) -> None:
    shapes = _other_users_file(sticky / "fp8_shapes.csv")
    with pytest.raises(UnsafeFileError, match=r"belongs to .*uid 65534.*choose a path"):
        write_shapes(shapes, [ShapeRow(GemmProblem(16, 1, 32))])
    lock = _other_users_file(sticky / "other.csv.lock")
    with pytest.raises(UnsafeFileError, match="belongs to"):
        with locked(sticky / "other.csv"):
            pass
    assert lock.read_text() == "M,N,K\n"


def test_another_users_file_outside_a_sticky_dir_is_ours_to_share(tmp_path: Path) -> None:
    lock = _other_users_file(tmp_path / "team.csv.lock")
    lock.chmod(0o666)
    with locked(tmp_path / "team.csv"):
        pass


def _hold(path: str, seconds: float) -> None:
    with lock_file(path):
        Path(f"{path}.held").touch()
        time.sleep(seconds)


def test_lock_wait_is_bounded_and_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "f.csv.lock"
    holder = mp.get_context("spawn").Process(target=_hold, args=(str(lock), 30))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{lock}.held").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"{lock}: still locked .* process {holder.pid}@"):
            with lock_file(lock, timeout_s=0.5):
                pass
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.join()
    with lock_file(lock, timeout_s=5):  # a dead holder's lock is free
        pass


def test_modes_default_and_team_directory(tmp_path: Path) -> None:
    os.umask(0o022)
    write_shapes(tmp_path / "own.csv", [ShapeRow(GemmProblem(16, 1, 32))])
    assert stat.S_IMODE(os.stat(tmp_path / "own.csv").st_mode) == 0o644
    team = tmp_path / "team"
    team.mkdir()
    team.chmod(0o2775)
    add_to_shapes_file(team / "fp8_shapes.csv", [ShapeRow(GemmProblem(16, 1, 32))])
    for name in ("fp8_shapes.csv", "fp8_shapes.csv.lock"):
        assert stat.S_IMODE(os.stat(team / name).st_mode) == 0o664, name


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "tuned.csv"
    child = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    stale = tmp_path / f".tuned.csv.{child.pid}.abcd.tmp"
    live = tmp_path / f".tuned.csv.{os.getpid()}.efgh.tmp"
    stale.write_text("half")
    live.write_text("mine, being written")
    assert remove_stale_temps(target) == [stale]
    replace_atomic(target, b"M,N,K\n")
    assert not stale.exists() and live.exists()
    assert target.read_text() == "M,N,K\n"


def test_shapes_file_round_trip_after_safe_write(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "fp8_shapes.csv"
    add_to_shapes_file(path, [ShapeRow(GemmProblem(16, 1, 32), 2, ("a",))])
    add_to_shapes_file(path, [ShapeRow(GemmProblem(16, 1, 32), 1, ("b",))])
    (row,) = read_shapes(path)
    assert (row.count, row.layers) == (3, ("a", "b"))
    assert list(tmp_path.glob("deep/.*.tmp")) == []


def test_a_file_this_user_may_not_write_is_a_clear_error() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    folder = Path(tempfile.mkdtemp(prefix="solidx-perm-", dir="/tmp"))
    try:
        folder.chmod(0o777)  # not sticky: only the file's mode keeps another user out
        lock = folder / "f.csv.lock"
        lock.write_text("")
        lock.chmod(0o644)
        module = folder / "safe_files.py"  # stdlib only: a copy any Python of any user runs
        shutil.copy(safe_files.__file__, module)
        code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
                "from safe_files import UnsafeFileError, lock_file\n"
                "try:\n    lock_file(sys.argv[2]).__enter__()\n"
                "except UnsafeFileError as exc:\n    print(exc)\n")
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        try:
            done = subprocess.run([python, "-c", code, str(folder), str(lock)], text=True,
                                  capture_output=True, timeout=120, user=NOBODY, group=NOBODY)
        except PermissionError:
            pytest.skip("another user cannot run a Python here")
        assert f"{lock} belongs to root (uid 0) and this user may not write it" in done.stdout, (
            done.stderr)
    finally:
        shutil.rmtree(folder)
