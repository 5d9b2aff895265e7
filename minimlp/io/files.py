"""What every file minimlp writes or reads shares: the error it raises, atomic replacement,
and the limits every reader applies to what a file claims.

A file is written to a hidden temporary file next to its destination, flushed to disk,
and only then renamed over the destination (``os.replace`` is atomic on POSIX and on
Windows).  A run killed while writing therefore leaves the previous file intact, at
worst with a stray ``.<name>.tmp-<pid>-<random>`` beside it.  Checkpoints, safetensors
files, the trainer's ``args.json`` and ``metrics.jsonl`` and the Fashion-MNIST download
all go through here.

A reader trusts no number in a file.  A tensor's shape is checked with :func:`check_shape`
before anything is allocated for it, and a value quoted in an error message goes through
:func:`brief`, which looks at a bounded number of elements: a crafted file can make
``repr`` of one small object take gigabytes (a list holding the same list twice, forty
times over), so no message is ever built from a whole ``repr``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import secrets
import struct
import types
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "CheckpointError",
    "CheckpointNotFound",
    "MAX_DIMS",
    "ZIP_ERRORS",
    "atomic_write",
    "brief",
    "check_shape",
    "create_temp_file",
    "open_zip",
    "read_head",
]

MAX_DIMS = 32  # dimensions per tensor; NumPy allows 64, weights use at most 5
MAX_NBYTES = 1 << 62  # no tensor is larger; keeps every size product far from int64 overflow


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
    except OSError as e:  # no permission, a file where a folder should be, an I/O error
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None


def check_shape(shape: Any, itemsize: int) -> int:
    """The byte count of a tensor of ``shape`` (a list or tuple of sizes >= 0); ValueError if
    it is not a shape NumPy can represent (too many dimensions, sizes that overflow).

    Sizes are checked one by one before they are multiplied, so a shape of a million
    huge integers costs one comparison, not a million big-number products.
    """
    if not isinstance(shape, list | tuple) or not all(type(n) is int for n in shape[: MAX_DIMS + 1]):
        raise ValueError(f"shape {brief(shape)} is not a list of integers")
    if len(shape) > MAX_DIMS:
        raise ValueError(f"a shape of {len(shape)} dimensions (at most {MAX_DIMS} are allowed)")
    if any(n < 0 for n in shape):
        raise ValueError(f"shape {brief(shape)} has a negative size")
    span = max(itemsize, 1)  # NumPy multiplies every size but zeros, then the item size
    for n in shape:
        span *= max(n, 1)
        if span > MAX_NBYTES:
            raise ValueError(f"shape {brief(shape)} is too large for any array")
    return itemsize * math.prod(shape)


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, built from a bounded number of elements.

    Containers are walked only as far as the text needs (never their whole ``repr``), so
    the cost is O(limit) whatever the value: deep, huge, or a list shared a billion times.
    """
    parts: list[str] = []
    budget = [limit]

    def emit(text: str) -> None:
        parts.append(text[: max(budget[0], 0)])
        budget[0] -= len(text)

    def walk(v: Any, depth: int) -> None:
        if budget[0] <= 0:
            return
        if isinstance(v, types.SimpleNamespace):  # argparse.Namespace as the .pth reader gives it
            emit("namespace")
            walk(vars(v), depth + 1)
        elif type(v) in (list, tuple, dict) or isinstance(v, dict):
            if depth > 8:
                emit("...")
                return
            items = itertools.islice(v.items(), limit) if isinstance(v, dict) else v[:limit]
            opener, closer = ("{", "}") if isinstance(v, dict) else ("[", "]") if type(v) is list else ("(", ")")
            emit(opener)
            for i, item in enumerate(items):
                if budget[0] <= 0:
                    return
                if i:
                    emit(", ")
                if isinstance(v, dict):
                    walk(item[0], depth + 1)
                    emit(": ")
                    walk(item[1], depth + 1)
                else:
                    walk(item, depth + 1)
            emit(closer)
        elif isinstance(v, str | bytes):
            emit(repr(v[:limit]))
        elif type(v) is int and v.bit_length() > 4 * limit:
            emit(f"<a {v.bit_length()}-bit integer>")
        elif type(v) in (int, float, bool, type(None)):
            emit(repr(v))
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            emit(f"<array {tuple(v.shape)} {v.dtype}>")
        else:
            emit(f"<{type(v).__name__}>" if type(v).__repr__ is object.__repr__ else repr(v)[:limit])

    walk(value, 0)
    text = "".join(parts)
    return text if budget[0] >= 0 else text[:limit] + "..."


# What zipfile raises on a damaged archive: its own errors, and those of the struct,
# seek and decode calls it makes on numbers and names it has not checked.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    OverflowError,
    MemoryError,
    zlib.error,
)


def open_zip(path: str | os.PathLike, file: BinaryIO) -> zipfile.ZipFile:
    """``zipfile.ZipFile(file)``, with any damage to the archive as a :class:`CheckpointError`."""
    try:
        return zipfile.ZipFile(file)
    except ZIP_ERRORS as e:
        raise CheckpointError(
            f"{path}: a truncated or corrupt zip archive ({brief(str(e), 200)}); "
            "the download or save was probably interrupted"
        ) from None
