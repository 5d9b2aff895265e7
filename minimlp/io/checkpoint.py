"""minimlp's own checkpoints: one ``.npz`` file, read without pickle, written atomically.  Lesson 12.

A checkpoint is a NumPy ``.npz`` (a zip of ``.npy`` arrays) holding

* ``params/<name>``    every parameter, under the released checkpoint's names, PyTorch layout;
* ``optimizer/<name>`` the optimizer's flat state arrays (``momentum_buffer``, ``exp_avg``, ...);
* ``meta``             a uint8 array of UTF-8 JSON: ``{"format": "minimlp-checkpoint",
  "version": 1, "model": <Model.config_dict()>, "epoch", "step", "classes": [...],
  "rng": {...}, "args": {...}, "optimizer": {"name", "hyperparameters", "step"}}`` and
  whatever else the writer adds (the trainer adds ``data`` statistics and ``best_top1``).

Nothing in it is a Python object, so it loads with ``allow_pickle=False``: opening a
checkpoint from anywhere can never run code.  Writing goes to a temporary file in the
same directory, which is flushed to disk and then renamed over the old one
(``os.replace`` is atomic), so a crash mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.backend import to_numpy
from minimlp.io.atomic import atomic_write, create_temp_file

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "atomic_write", "create_temp_file", "make_meta",
           "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

FORMAT = "minimlp-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable minimlp checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def make_meta(model_config: Mapping[str, Any], *, epoch: int = 0, step: int = 0, classes: list[str] | None = None,
              rng: Mapping[str, Any] | None = None, args: Mapping[str, Any] | None = None,
              optimizer: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``meta`` record, with the fixed keys first; ``extra`` keys are kept as given."""
    return {"format": FORMAT, "version": VERSION, "model": dict(model_config), "epoch": int(epoch),
            "step": int(step), "classes": list(classes or []), "rng": dict(rng or {}), "args": dict(args or {}),
            "optimizer": dict(optimizer or {}), **extra}


def save_checkpoint(path: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any],
                    optimizer: Mapping[str, Any] | None = None) -> Path:
    """Write ``params`` (name -> array, NumPy or CuPy), ``optimizer`` state and ``meta`` atomically."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("params", params), ("optimizer", optimizer or {})):
        for name, value in group.items():
            a = np.ascontiguousarray(to_numpy(value))
            if a.dtype.hasobject:
                raise TypeError(f"{prefix}/{name}: object arrays cannot be stored without pickle")
            arrays[f"{prefix}/{name}"] = a
    text = json.dumps(dict(meta), allow_nan=False, sort_keys=False)
    arrays["meta"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, never unpickling anything.

    A missing file raises ``FileNotFoundError``; a truncated, corrupt or foreign file
    raises :class:`CheckpointError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip file
            raise CheckpointError(f"{path}: not a zip (.npz) file, so not a minimlp checkpoint")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: a single .npy array, not a minimlp checkpoint (.npz)")
            if "meta" not in archive.files:
                raise CheckpointError(f"{path}: no 'meta' record; not a minimlp checkpoint")
            arrays = {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); "
                              "the file is truncated or corrupt, or not a minimlp checkpoint") from exc
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the meta record is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: not a minimlp checkpoint (format {found!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta['version']} is newer than this minimlp reads "
                              f"({VERSION}); upgrade minimlp")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    optimizer = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    if not params:
        raise CheckpointError(f"{path}: holds no parameters")
    return Checkpoint(params, optimizer, meta, path)


def model_from_checkpoint(checkpoint: Checkpoint | str | os.PathLike, device: str = "cpu") -> Any:
    """Rebuild the model a checkpoint describes and load its parameters (strictly)."""
    from minimlp.models.registry import model_from_config

    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    if not checkpoint.meta.get("model"):
        raise CheckpointError(f"{checkpoint.path}: the meta record has no model configuration")
    model = model_from_config(checkpoint.meta["model"], device=device)
    try:
        model.load_state_dict(checkpoint.params, strict=True)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    return model
