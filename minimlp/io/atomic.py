"""Atomic file writes: a file is either its old self or completely the new one.

The bytes go to a hidden temporary file in the same directory, are flushed to the disk,
and the file is renamed over the target with ``os.replace`` (atomic on POSIX and
Windows).  A crash or an exception mid-write leaves the old file untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "create_temp_file"]


def create_temp_file(path: Path) -> tuple[int, str]:
    """Open a new hidden file beside ``path`` for writing; returns (fd, name).

    Unlike ``tempfile.mkstemp`` (mode 0600) the file gets the usual permissions under
    the umask, so the renamed result looks like any other file the user writes.
    """
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the new file.

    The bytes go to a temporary file in the same directory (a rename across file systems
    would not be atomic), are fsync'ed, and the file is then renamed over ``path``.  If
    ``write`` fails the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems cannot fsync a directory; the data is safe anyway
        pass
    return path
