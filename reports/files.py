"""Writing report files so that a reader never sees half of one.

Every reporter writes through :func:`write_atomic`: the text goes to a temporary file in the
same folder (so the final rename stays on one file system) and is moved over the target with
:func:`os.replace`, which is atomic on POSIX and Windows. If anything fails on the way, the
temporary file is removed and the previous report, if any, is left untouched.
"""
from __future__ import annotations

import os
import secrets
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _open_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new, exclusively created file next to the target (mode 0o666 minus the umask,
    as a plain ``open(path, "w")`` would give the report)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collide
            continue
    raise FileExistsError(f"could not create a temporary file next to {name!r} in {folder}")


def write_atomic(path: PathLike, text: Union[str, bytes], encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; create the parent folder if it is missing.

    ``str`` is encoded with ``encoding``; characters it cannot encode (e.g. lone surrogates
    from undecodable file names) are replaced rather than failing the whole report.
    """
    path = os.fspath(path)
    data = text if isinstance(text, bytes) else text.encode(encoding, errors="replace")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _open_temporary(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
