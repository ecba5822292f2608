"""Opening files in shared directories (``/tmp``) without being led astray: every file solidx
writes (shapes and tuned files, their locks and temp files, the tuner's log) goes through here.

* A link is never followed (``O_NOFOLLOW``) and a new file is created with ``O_EXCL``.
* In a sticky directory (``/tmp``: anyone may create, only the owner may delete) a file owned by
  another user is refused, whatever its mode: another user could have placed it to catch our
  writes. :class:`UnsafeFileError` says what to do (remove it, or choose another path).
* Modes: a file gets ``0644`` (read by all, written by its owner), except in a team directory
  (group-writable and setgid, e.g. ``chmod 2775``), where it gets ``0664`` so the group shares it.
* Lock waits are bounded (:func:`lock_file`): the error names the lock file and its holder.
* Temp files are unique (``.NAME.PID.XXXX.tmp`` beside the target) and a dead process's are
  removed by the next write of the same owner (:func:`remove_stale_temps`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_TIMEOUT_S = 120.0
_POLL_S = 0.05


class UnsafeFileError(PermissionError, ValueError):
    """A path solidx refuses to open: a link, not a regular file, or another user's file (a
    ValueError too, so that commands report it as bad input)."""


class LockTimeout(TimeoutError, ValueError):
    """A lock that another process held for longer than the wait allowed (a ValueError too)."""


def _is_sticky(folder: Path) -> bool:
    return bool(os.stat(folder).st_mode & stat.S_ISVTX)


def _is_team_dir(folder: Path) -> bool:
    mode = os.stat(folder).st_mode
    return bool(mode & stat.S_ISGID and mode & stat.S_IWGRP)


def file_mode(folder: Path) -> int:
    """The mode new files in ``folder`` get: ``0664`` in a team directory, else ``0644``."""
    return 0o664 if _is_team_dir(folder) else 0o644


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_existing(path: Path, st: os.stat_result) -> None:
    """Refuse what ``st`` (of ``path``, not followed) describes unless it is a regular file and,
    in a sticky directory, ours."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(
            f"{path} is a symbolic link: solidx does not write through links in shared "
            "directories; remove the link or choose another path")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file; choose another path")
    if st.st_uid != os.geteuid() and _is_sticky(path.parent):
        raise UnsafeFileError(
            f"{path} belongs to {_owner(st.st_uid)} and {path.parent} is a shared (sticky) "
            "directory: solidx does not write into another user's file there; ask its owner to "
            "remove it, or choose a path of your own (or a team directory, chmod 2775)")


def open_fd(path: str | os.PathLike, flags: int, create: bool = True) -> int:
    """An fd of ``path`` opened with ``flags`` (``os.O_RDWR``, ``os.O_WRONLY | os.O_APPEND``,
    ...) never through a link: created with ``O_EXCL`` when absent (and ``create``), else opened
    with ``O_NOFOLLOW`` and checked (:func:`check_existing`). Raises UnsafeFileError."""
    path = Path(path)
    flags |= os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        if create:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, file_mode(path.parent))
                os.fchmod(fd, file_mode(path.parent))  # the umask must not narrow a team's mode
                return fd
            except FileExistsError:
                pass
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if create:
                continue  # removed between the two opens: create it
            raise
        except PermissionError:
            owner = _owner(os.lstat(path).st_uid)
            raise UnsafeFileError(
                f"{path} belongs to {owner} and this user may not write it: choose a path of "
                "your own, or share it in a team directory (chmod 2775), where solidx creates "
                "files group-writable") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                check_existing(path, os.lstat(path))
            raise
        try:
            check_existing(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd


def open_append(path: str | os.PathLike) -> IO[str]:
    """A text file open for appending (a log), created if absent, never through a link."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND), "a")


def check_target(path: Path) -> None:
    """Refuse to replace ``path`` if it is a link or another user's file (sticky directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    check_existing(path, st)


def untrusted_reason(path: str | os.PathLike) -> str | None:
    """Why a file found at a default path (ROCm's ``/tmp/tuned_fp8_16.csv``) must not be used
    (a link, another user's file, writable by others), or None when it is this user's own or
    there is none."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to {_owner(st.st_uid)}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files of ``path`` (``.NAME.PID.*.tmp``) that belong to this user and to a
    process no longer running; the removed paths."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        try:
            st = os.lstat(tmp)
        except FileNotFoundError:
            continue
        if not pid.isdigit() or st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
            continue
        if not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def replace_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temp file beside it and a rename (readers see
    the old or the new file, never half of one); fsynced; stale temps of ours removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_target(path)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        os.fchmod(fd, file_mode(path.parent))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    owner = _owner(os.fstat(fd).st_uid)
    return f"process {text}" if text else f"a process of {owner} (file owner)"


@contextmanager
def lock_file(path: str | os.PathLike, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created safely, holding the holder's
    ``pid@host``), waiting at most ``timeout_s``; LockTimeout names the file and the holder.
    Not reentrant: a process must not take the same lock twice."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_fd(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{path}: still locked after {timeout_s:.0f} s by {_holder(fd)}; wait "
                        "for it to finish, or if no such process runs, remove the lock file"
                    ) from None
                time.sleep(_POLL_S)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{os.uname().nodename}".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = [
    "UnsafeFileError", "LockTimeout", "LOCK_TIMEOUT_S", "file_mode", "check_existing",
    "open_fd", "open_append", "check_target", "untrusted_reason", "remove_stale_temps",
    "replace_atomic",
    "lock_file",
]
