"""What the checkpoint formats share: the error they raise and atomic replacement.

A checkpoint is written to a temporary file next to its destination, flushed to disk,
and only then renamed over the destination (``os.replace`` is atomic on POSIX and on
Windows).  A run killed while writing therefore leaves the previous file intact, at
worst with a stray ``.<name>.tmp-<pid>`` beside it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be read safely; the message says why."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically.

    >>> with atomic_write("model.safetensors") as f:
    ...     f.write(data)

    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter), with a clear error if missing."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a weights file") from None
