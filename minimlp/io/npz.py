"""minimlp's checkpoint layout in ``.npz``: reading it, and writing its weights-only form.

A minimlp checkpoint is an uncompressed ``.npz`` (a zip of ``.npy`` arrays) with

    params/<name>      every parameter, by its checkpoint name (``blocks.3.mlp2.fc1.weight``)
    optimizer/<name>   the optimizer's state (training checkpoints only)
    meta               a uint8 array holding UTF-8 JSON: {"format": "minimlp-checkpoint",
                       "version": 1, "model": {... "arch": "ffvit"}, "epoch", "step",
                       "classes", "rng", "args", "optimizer"}

and is always read with ``np.load(allow_pickle=False)``, so it cannot hold code.  This
module mirrors the layout that ``minimlp/io/checkpoint.py`` writes for training; it only
reads parameters and meta, and writes weights-only files (``params/*`` and ``meta``).
A plain ``np.savez(path, **state_dict)`` file is read as a bare state dict.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from minimlp.io.files import CheckpointError, atomic_write

FORMAT = "minimlp-checkpoint"
VERSION = 1
PARAMS = "params/"


def encode_meta(meta: Mapping[str, Any]) -> np.ndarray:
    """JSON -> a (bytes,) uint8 array, so that meta loads without pickle."""
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


def decode_meta(array: np.ndarray, where: Any) -> dict[str, Any]:
    """The ``meta`` array back to a dict, checking format and version."""
    try:
        text = np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: the 'meta' entry is not UTF-8 text: {e}") from None
    return meta_from_json(text, where)


def meta_from_json(text: str, where: Any) -> dict[str, Any]:
    """Parse checkpoint meta JSON (also stored in safetensors metadata), checking format and version."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: checkpoint meta is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: checkpoint meta does not describe a {FORMAT} file")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {version!r}; this minimlp reads versions "
                              f"up to {VERSION} (a newer minimlp wrote it)")
    return meta


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """(parameters by name, meta or None for a plain state-dict ``.npz``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            meta = decode_meta(z["meta"], path) if "meta" in names else None
            if meta is None:
                return {name: z[name] for name in names}, None
            params = {name[len(PARAMS):]: z[name] for name in names if name.startswith(PARAMS)}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({e}); truncated, corrupt, or holding "
                              "Python objects (which minimlp never unpickles)") from None
    if not params:
        raise CheckpointError(f"{path}: a minimlp checkpoint without parameters (no params/* entries)")
    return params, meta


def weights_meta(meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``meta`` with ``format`` and ``version`` filled in."""
    return {**(meta or {}), "format": FORMAT, "version": VERSION}


def save_weights_npz(path: str | os.PathLike, params: Mapping[str, np.ndarray],
                     meta: Mapping[str, Any] | None = None) -> None:
    """Write a weights-only minimlp checkpoint atomically: ``params/*`` and ``meta``.

    ``meta`` may carry ``model`` (the config, with ``arch``), ``classes``, ``epoch`` ...;
    ``format`` and ``version`` are filled in.
    """
    meta = weights_meta(meta)
    arrays = {PARAMS + name: np.ascontiguousarray(value) for name, value in params.items()}
    arrays["meta"] = encode_meta(meta)
    bad = [name for name, a in arrays.items() if a.dtype.hasobject]
    if bad:
        raise CheckpointError(f"cannot save Python objects in a checkpoint: {', '.join(bad)}")
    with atomic_write(path) as f:
        np.savez(f, **arrays)
