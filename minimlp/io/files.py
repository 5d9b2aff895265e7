"""What every file minimlp writes or reads shares: the error it raises and atomic replacement.

A file is written to a hidden temporary file next to its destination, flushed to disk,
and only then renamed over the destination (``os.replace`` is atomic on POSIX and on
Windows).  A run killed while writing therefore leaves the previous file intact, at
worst with a stray ``.<name>.tmp-<pid>-<random>`` beside it.  Checkpoints, safetensors
files, the trainer's ``args.json`` and ``metrics.jsonl`` and the Fashion-MNIST download
all go through here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["CheckpointError", "CheckpointNotFound", "atomic_write", "create_temp_file", "read_head"]


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be read (or written) safely; the message names the file."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The file is not there: a :class:`CheckpointError` that is also a ``FileNotFoundError``."""


def create_temp_file(path: str | os.PathLike) -> tuple[int, str]:
    """Open a new hidden file beside ``path`` for writing; returns (fd, name).

    The name is unique (pid and a random part, created with ``O_EXCL``), so two writers of
    the same file never share a temporary file.  Unlike ``tempfile.mkstemp`` (mode 0600)
    the file gets the usual permissions under the umask, so the renamed result looks like
    any other file the user writes.
    """
    path = Path(path)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; when the body succeeds it replaces ``path`` atomically.

    >>> with atomic_write("model.safetensors") as f:
    ...     f.write(data)

    The bytes are fsync'ed before the rename, and the directory after it.  If the body
    raises (or the process is interrupted) the temporary file is removed and ``path`` is
    untouched.  Missing parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
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
    except OSError:  # some file systems cannot fsync a directory; the data is safe anyway
        pass
    finally:
        os.close(fd)


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter), with a clear error if missing."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise CheckpointNotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a weights file") from None
