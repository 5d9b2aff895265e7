"""minimlp's own checkpoints: one ``.npz`` file, read without pickle, written atomically.  Lesson 10.

A checkpoint is an uncompressed NumPy ``.npz`` (a zip of ``.npy`` arrays) holding

* ``params/<name>``    every parameter, under the released checkpoint's names, PyTorch layout;
* ``optimizer/<name>`` the optimizer's flat state arrays (``momentum_buffer``, ``exp_avg``, ...;
  training checkpoints only);
* ``meta``             a uint8 array of UTF-8 JSON: ``{"format": "minimlp-checkpoint",
  "version": 1, "model": <Model.config_dict()>, "epoch", "step", "classes": [...],
  "rng": {...}, "args": {...}, "optimizer": {"name", "hyperparameters", "step"}}`` and
  whatever else the writer adds (the trainer adds ``data``, the transform its images went
  through, ``class_map``, which wnid each label stands for, ``run``, and ``metrics``, the
  per-epoch records so far).

Nothing in it is a Python object, so it is read without pickle: opening a checkpoint
from anywhere can never run code.  The reader checks every entry against the zip
directory before inflating or allocating anything: each ``.npy`` header's dtype and
shape must account for exactly the entry's size, the entries' bytes must fit in the
file (none read twice), and a deflated file (``np.savez_compressed``) may inflate to at
most :data:`MAX_INFLATION` times its size (weights hardly compress; zeros do, a
thousandfold).  Writing goes through
:func:`minimlp.io.files.atomic_write`, so a crash mid-save leaves the previous checkpoint
whole.  A weights-only file (``python -m minimlp.convert``) is the same layout without
``optimizer/*``; a plain ``np.savez(path, **state_dict)`` file is read as a bare state dict
by :func:`read_npz` (the entry point :mod:`minimlp.io.weights` uses).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from minimlp.backend import to_numpy
from minimlp.io.files import (
    ZIP_ERRORS,
    CheckpointError,
    CheckpointNotFound,
    atomic_write,
    brief,
    check_shape,
    open_zip,
    read_head,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "make_meta",
    "weights_meta",
    "save_checkpoint",
    "load_checkpoint",
    "read_npz",
    "encode_meta",
    "decode_meta",
    "meta_from_json",
]

FORMAT = "minimlp-checkpoint"
VERSION = 1
PARAMS, OPTIMIZER, META = "params/", "optimizer/", "meta"
MAX_INFLATION = 16  # a deflated .npz may hold 16x its size in arrays ...
INFLATION_ALLOWANCE = 64 << 20  # ... plus this much


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# --------------------------------------------------------------------------------------
# The meta record
# --------------------------------------------------------------------------------------
def make_meta(
    model_config: Mapping[str, Any],
    *,
    epoch: int = 0,
    step: int = 0,
    classes: list[str] | None = None,
    rng: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A training checkpoint's ``meta`` record, with the fixed keys first; ``extra`` keys are kept as given."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(model_config),
        "epoch": int(epoch),
        "step": int(step),
        "classes": list(classes or []),
        "rng": dict(rng or {}),
        "args": dict(args or {}),
        "optimizer": dict(optimizer or {}),
        **extra,
    }


def weights_meta(meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A weights-only file's ``meta``: what is known (``model``, ``classes``, ...) plus ``format`` and ``version``."""
    return {**(meta or {}), "format": FORMAT, "version": VERSION}


def encode_meta(meta: Mapping[str, Any]) -> np.ndarray:
    """JSON -> a (bytes,) uint8 array, so that meta loads without pickle.  Strict JSON: no NaN."""
    return np.frombuffer(json.dumps(dict(meta), allow_nan=False).encode("utf-8"), dtype=np.uint8)


def decode_meta(array: np.ndarray, where: Any) -> dict[str, Any]:
    """The ``meta`` array back to a dict, checking format and version."""
    try:
        text = np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: the 'meta' record is not UTF-8 text: {e}") from None
    return meta_from_json(text, where)


def meta_from_json(text: str, where: Any) -> dict[str, Any]:
    """Parse checkpoint meta JSON (an .npz ``meta`` record, or safetensors metadata), checking format and version."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: also an integer of more than 4300 digits
        raise CheckpointError(f"{where}: the 'meta' record is not valid JSON: {brief(str(e), 200)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{where}: not a minimlp checkpoint: its meta does not describe a {FORMAT} file (format {brief(found)})"
        )
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{where}: checkpoint version {brief(version)} is newer than this minimlp reads "
            f"({VERSION}): a newer minimlp wrote it; upgrade minimlp"
        )
    return meta


# --------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    optimizer: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``params`` (name -> array, NumPy or CuPy), ``optimizer`` state and ``meta`` atomically.

    ``meta`` is written as given (build it with :func:`make_meta` or :func:`weights_meta`).
    Arrays of Python objects are refused before anything is written.
    """
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in ((PARAMS, params), (OPTIMIZER, optimizer or {})):
        for name, value in group.items():
            a = np.ascontiguousarray(to_numpy(value))
            if a.dtype.hasobject:
                raise CheckpointError(
                    f"{path}: {prefix}{name}: object arrays (Python objects) cannot be stored "
                    f"without pickle, which minimlp never uses"
                )
            arrays[prefix + name] = a
    arrays[META] = encode_meta(meta)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return Path(path)


def read_npz(
    path: str | os.PathLike, require_meta: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any] | None]:
    """(parameters, optimizer state, meta) of an ``.npz``, never unpickling anything.

    A file without a ``meta`` record is a plain state dict: every array is a parameter and
    meta is None (or, with ``require_meta``, it is refused).  A missing file raises
    :class:`CheckpointNotFound` (a ``FileNotFoundError``); a truncated, corrupt or foreign
    file raises :class:`CheckpointError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: no such checkpoint file")
    read_head(path, 4)  # a file that cannot be opened (no permission) is reported here, in one line
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip file
            what = "a single .npy array" if f.seek(0) == 0 and f.read(6) == b"\x93NUMPY" else "not a zip (.npz) file"
            raise CheckpointError(f"{path}: {what}, so not a minimlp checkpoint")
        zf = open_zip(path, f)
        try:
            arrays = _read_arrays(path, zf, os.fstat(f.fileno()).st_size)
        except CheckpointError:
            raise
        except ZIP_ERRORS as exc:
            raise CheckpointError(
                f"{path}: cannot read the checkpoint ({type(exc).__name__}: {brief(str(exc), 200)}); "
                "the file is truncated or corrupt"
            ) from None
    if META not in arrays:
        if require_meta:
            raise CheckpointError(f"{path}: no 'meta' record; not a minimlp checkpoint")
        return arrays, {}, None
    meta = decode_meta(arrays.pop(META), path)
    params = {k[len(PARAMS) :]: v for k, v in arrays.items() if k.startswith(PARAMS)}
    optimizer = {k[len(OPTIMIZER) :]: v for k, v in arrays.items() if k.startswith(OPTIMIZER)}
    if not params:
        raise CheckpointError(f"{path}: a minimlp checkpoint that holds no parameters (no params/* entries)")
    return params, optimizer, meta


def _read_arrays(path: Path, zf: zipfile.ZipFile, file_size: int) -> dict[str, np.ndarray]:
    """Every ``<name>.npy`` entry of an open .npz, checked against the zip directory first."""
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) < len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(
            f"{path}: the zip archive holds two entries named {brief(duplicate)}; "
            "np.savez never writes that, so the file was repacked or crafted"
        )
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{path}: entry {brief(info.filename)} is not an .npy array; not an .npz file")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                f"{path}: entry {brief(info.filename)} uses compression method "
                f"{info.compress_type}; np.savez stores and np.savez_compressed deflates, "
                "nothing else"
            )
    if sum(info.compress_size for info in infos) > file_size:  # entries that share bytes: each read copies them
        raise CheckpointError(
            f"{path}: the zip entries add up to more bytes than the {file_size}-byte file "
            "holds (entries that overlap); the file was crafted or is corrupt"
        )
    inflated = sum(info.file_size for info in infos)
    if inflated > MAX_INFLATION * file_size + INFLATION_ALLOWANCE:
        raise CheckpointError(
            f"{path}: the arrays would inflate to {inflated} bytes from a {file_size}-byte file; "
            "weights do not compress that well, so this is refused as a zip bomb "
            "(re-save it with np.savez, which does not compress)"
        )
    arrays = {}
    for info in infos:
        with zf.open(info) as member:
            arrays[info.filename[: -len(".npy")]] = _read_npy(path, info, member)
    return arrays


def _read_npy(path: Path, info: zipfile.ZipInfo, member: IO[bytes]) -> np.ndarray:
    """One .npy entry: its header (parsed as a literal, never unpickled) must account for exactly
    the entry's size in the zip directory before the array is allocated and read."""
    where = f"{path}: entry {brief(info.filename)}"
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"format version {version} (np.save writes 1.0 and 2.0)")
    except ValueError as exc:
        raise CheckpointError(f"{where} is not a readable .npy array ({brief(str(exc), 200)})") from None
    if dtype.hasobject:
        raise CheckpointError(
            f"{where} holds Python objects, which minimlp never unpickles (the file was not written by minimlp)"
        )
    if dtype.itemsize == 0:
        raise CheckpointError(f"{where} has the empty dtype {dtype}")
    try:
        nbytes = check_shape(shape, dtype.itemsize)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    header = member.tell()
    if header + nbytes != info.file_size:
        raise CheckpointError(
            f"{where}: its header describes {dtype} {shape} ({nbytes} bytes) but the zip directory "
            f"gives it {info.file_size - header} bytes of data; the file is corrupt or crafted"
        )
    data = np.empty(nbytes, dtype=np.uint8)
    view, done = memoryview(data), 0
    while done < nbytes:  # chunks: a deflated entry never makes more than one chunk at a time
        chunk = member.read(min(nbytes - done, 1 << 24))
        if not chunk:
            raise CheckpointError(f"{where} is truncated; the file is truncated or corrupt")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    member.read(1)  # at the end of the entry: zipfile checks its CRC-32 now
    array = data.view(dtype)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (meta required), never unpickling anything."""
    params, optimizer, meta = read_npz(path, require_meta=True)
    return Checkpoint(params, optimizer, meta, Path(path))
