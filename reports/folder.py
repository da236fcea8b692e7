"""The report folder: usable before an audit starts, and held by one audit at a time.

:func:`hold` creates the folder (a file in the way, or a folder that cannot be written, is a
:class:`FolderError` before any training) and takes an exclusive lock on ``.audit.lock`` in
it (``flock``, released by the kernel if the process dies, so a crash leaves no stale lock).
A second audit writing to the same folder is refused at once with one line. On release the
lock file goes, and the folder too if the audit created it and left nothing in it.
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from typing import Iterator, Optional

LOCK_NAME = ".audit.lock"


class FolderError(Exception):
    """The report folder cannot be used: one line saying why and what to do."""


def _create(path: str) -> bool:
    """Make the folder; True when it did not exist before."""
    if os.path.isdir(path):
        return False
    if os.path.exists(path):
        raise FolderError(f"--out {path} is a file, not a folder; give a folder for the reports")
    try:
        os.makedirs(path)
    except OSError as exc:
        raise FolderError(f"--out {path} cannot be created ({exc.strerror or exc}); "
                          "give a folder you can write to") from None
    return True


def _lock(path: str) -> int:
    """An open, exclusively locked descriptor of the folder's lock file."""
    lock = os.path.join(path, LOCK_NAME)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise FolderError(f"--out {path} is not writable ({exc.strerror or exc}); "
                              "give a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise FolderError(f"another audit (process {owner}) is writing its reports to "
                              f"{path}; wait for it to finish or give another --out") from None
        try:  # the holder before us may have removed the file after we opened it: retry
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Held:
    """A report folder this process holds; :meth:`release` gives it back."""

    def __init__(self, path: str):
        self.path = path
        self.created = _create(path)
        try:
            self._fd: Optional[int] = _lock(path)
        except BaseException:
            if self.created:
                _remove_if_empty(path)
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(os.path.join(self.path, LOCK_NAME))  # while still locked: see _lock's retry
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self.created:
            _remove_if_empty(self.path)


@contextmanager
def hold(path: str) -> Iterator[Held]:
    """Create ``path`` if needed and hold its lock for the block (see the module's text)."""
    held = Held(path)
    try:
        yield held
    finally:
        held.release()


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
