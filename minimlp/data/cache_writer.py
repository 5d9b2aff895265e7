"""Writing the prepared cache; ``python -m minimlp.prepare`` is the command around it.

The format and the stored geometry are described in :mod:`minimlp.data.cache`.  Records are
written in chunks by worker processes; a chunk is marked done only after its pixels are
flushed to disk, so an interrupted run (Ctrl-C, a crash, a full disk) loses at most the
chunks in flight: the same command continues where it stopped.  Files that cannot be
decoded are left out and listed at the end.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from minimlp.data.base import shown
from minimlp.data.cache import (
    CACHE_HEADER,
    FORMAT,
    VERSION,
    load_record,
    max_long_side,
    read_header,
    split_paths,
)
from minimlp.data.classes import cap_samples, imagenet_table, select_classes
from minimlp.data.folders import detect, list_split
from minimlp.data.loader import default_workers
from minimlp.data.transforms import BadImageError
from minimlp.io.files import atomic_write

__all__ = ["prepare", "read_manifest", "write_manifest"]

CHUNK = 512  # records per task (and per progress mark)


def write_manifest(path: Path, names: list[str]) -> None:
    """Store source names one per line, as the bytes the file system has (so names that are not
    UTF-8 round-trip), with ``\\`` for a backslash and ``\\n`` for a line break in a name."""
    lines = (os.fsencode(name).replace(b"\\", b"\\\\").replace(b"\n", b"\\n") for name in names)
    with atomic_write(path) as f:
        f.write(b"".join(line + b"\n" for line in lines))


def read_manifest(path: Path) -> list[str]:
    """The names :func:`write_manifest` stored, exactly."""
    data = Path(path).read_bytes()
    if not data:
        return []
    lines = data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")
    return [os.fsdecode(_unescape(line)) for line in lines]


def _unescape(line: bytes) -> bytes:
    if b"\\" not in line:
        return line
    parts = line.split(b"\\\\")  # escaped backslashes first, so "\\\\n" stays a backslash and an n
    return b"\\".join(part.replace(b"\\n", b"\n") for part in parts)


def _write_header(out: Path, header: dict) -> None:
    with atomic_write(out / CACHE_HEADER) as f:  # a reader never sees half a header
        f.write(json.dumps(header, indent=1).encode())


def _prepare_chunk(task: tuple) -> tuple[int, list[tuple[str, str]]]:
    """Decode, resize and store one chunk of records; flush before answering."""
    chunk_id, start, paths, images_path, shapes_path, slot_bytes, size, square = task
    images = np.memmap(images_path, dtype=np.uint8, mode="r+")
    shapes = np.load(shapes_path, mmap_mode="r+")
    bad = []
    for offset, path in enumerate(paths):
        index = start + offset
        try:
            record = load_record(path, size, square)  # (h, w, 3)
        except BadImageError as exc:
            shapes[index] = (0, 0)
            bad.append((path, exc.reason))
            continue
        h, w = record.shape[:2]
        images[index * slot_bytes : index * slot_bytes + h * w * 3] = record.reshape(-1)
        shapes[index] = (h, w)
    images.flush()
    shapes.flush()
    return chunk_id, bad


def _options(
    root: Path, size: int, square: bool, subset, num_classes, class_seed, per_class, train_num_samples, sample_seed
) -> dict:
    return {
        "source": str(root.resolve()),
        "size": size,
        "square": square,
        "subset": subset,
        "num_classes": num_classes,
        "class_seed": class_seed,
        "per_class": per_class,
        "train_num_samples": train_num_samples,
        "sample_seed": sample_seed,
    }


def _start_split(
    out: Path,
    header: dict,
    split: str,
    paths: list[str],
    labels: np.ndarray,
    slot_bytes: int,
    chunk: int | str,
    num_chunks: int | None = None,
) -> None:
    """Create the split's files (pixels preallocated, sparse) and record the split in the header."""
    files = split_paths(out, split)
    n = len(paths)
    np.memmap(files["images"], dtype=np.uint8, mode="w+", shape=(max(1, n * slot_bytes),)).flush()
    np.lib.format.open_memmap(files["shapes"], mode="w+", dtype=np.int32, shape=(n, 2)).flush()
    np.save(files["labels"], labels.astype(np.int64))
    write_manifest(files["files"], paths)
    np.save(files["done"], np.zeros(num_chunks if num_chunks is not None else -(-n // chunk), dtype=np.uint8))
    header["splits"][split] = {"count": n, "chunk": chunk, "complete": False}
    _write_header(out, header)


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int | None,
    *,
    square: bool = False,
    splits: tuple[str, ...] = ("train", "val"),
    subset: str | None = None,
    num_classes: int | None = None,
    class_seed: int | None = None,
    per_class: int | None = None,
    train_num_samples: int | None = None,
    sample_seed: int = 0,
    workers: int | None = None,
    chunk: int = CHUNK,
    log: Callable[[str], None] = print,
) -> dict:
    """Write (or finish writing) the cache of ``root`` in ``out``; returns the header.

    ``root`` holds image folders, or Downsampled ImageNet's npz batches (then ``size`` is theirs).
    ``chunk`` records are written per task; a resumed run keeps the chunk size it started with.
    """
    root, out = Path(root), Path(out)
    kind = detect(root)
    if kind == "prepared":
        raise ValueError(f"{root} is already a prepared cache; prepare from the image folders")
    if kind == "downsampled":
        size, square = downsampled_size(root), True
    elif size is None or size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {size}")
    options = _options(root, size, square, subset, num_classes, class_seed, per_class, train_num_samples, sample_seed)
    options["kind"] = kind
    if (out / CACHE_HEADER).exists():
        header = read_header(out)
        if json.dumps(header["options"], sort_keys=True) != json.dumps(options, sort_keys=True):
            raise ValueError(
                f"{out} holds a cache prepared with other options ({header['options']}); to make this "
                f"one, choose another OUT or delete {out}"
            )
        log(f"continuing the cache in {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "geometry": "square" if square else "short",
            "size": size,
            "max_long": max_long_side(size, square),
            "options": options,
            "classes": None,
            "splits": {},
        }
    slot_bytes = header["max_long"] * size * 3
    workers = default_workers() if workers is None else workers
    if kind == "downsampled":
        return _prepare_downsampled(root, out, header, splits, log)

    for split in splits:
        info = header["splits"].get(split)
        files = split_paths(out, split)
        if info is None:
            try:
                paths, labels, class_map = list_split(
                    root, split, subset, num_classes, class_seed, train_num_samples, per_class, sample_seed
                )
            except FileNotFoundError as exc:
                if split == "val":
                    log(f"no val split: {exc}")
                    continue
                raise
            if header["classes"] is None:
                header["classes"] = class_map.to_dict()
            elif header["classes"]["wnids"] != list(class_map.wnids):
                raise ValueError(f"the {split} split's classes differ from the train split's")
            _start_split(out, header, split, paths, labels, slot_bytes, chunk)
            info = header["splits"][split]
        if info["complete"]:
            log(f"{split}: complete ({info['count']} images)")
            continue
        paths = read_manifest(files["files"])
        if len(paths) != info["count"]:
            raise ValueError(
                f"{files['files']} lists {len(paths)} files where the cache holds {info['count']}; "
                f"it was changed or damaged: delete {out} and prepare again"
            )
        done = np.load(files["done"], mmap_mode="r+")
        todo = [int(c) for c in np.flatnonzero(done == 0)]
        step = info["chunk"]
        tasks = [
            (
                c,
                c * step,
                paths[c * step : (c + 1) * step],
                str(files["images"]),
                str(files["shapes"]),
                slot_bytes,
                size,
                square,
            )
            for c in todo
        ]
        log(f"{split}: {len(paths)} images, {len(todo)} of {len(done)} chunks to write with {workers} worker(s)")
        _run_chunks(tasks, done, workers, split, len(paths), log)
        shapes = np.load(files["shapes"], mmap_mode="r")
        bad = [paths[i] for i in np.flatnonzero(shapes[:, 0] == 0)]
        info.update(complete=True, bad=len(bad))
        _write_header(out, header)
        if bad:
            names = "\n  ".join(shown(p) for p in bad[:50]) + (
                f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
            )
            log(f"{split}: {len(bad)} file(s) could not be decoded and are left out:\n  {names}")
        log(f"{split}: done, {len(paths) - len(bad)} images in {files['images']}")
    return header


def _run_chunks(
    tasks: list[tuple], done: np.memmap, workers: int, split: str, total: int, log: Callable[[str], None]
) -> None:
    start = time.monotonic()
    written = 0
    last_report = start

    def finished(chunk_id: int, bad: list) -> None:
        nonlocal written, last_report
        done[chunk_id] = 1
        done.flush()  # after the chunk's pixels were flushed by whoever wrote them
        written += len(tasks_by_id[chunk_id][2])
        now = time.monotonic()
        if now - last_report > 10 or written == remaining:
            rate = written / max(now - start, 1e-9)
            log(
                f"{split}: {written}/{remaining} written this run, {rate:.0f} img/s, "
                f"{(remaining - written) / max(rate, 1e-9) / 60:.1f} min left"
            )
            last_report = now

    tasks_by_id = {t[0]: t for t in tasks}
    remaining = sum(len(t[2]) for t in tasks)
    if workers <= 0:
        for task in tasks:
            finished(*_prepare_chunk(task))
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(workers)
    try:
        for chunk_id, bad in pool.imap_unordered(_prepare_chunk, tasks):
            finished(chunk_id, bad)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# ------------------------------------------------------------------------------------------------
# Downsampled ImageNet (Chrabaszcz et al. 2017), the npz variant: train_data_batch_<k>.npz and val_data.npz,
# each with "data" (N, 3·s·s) uint8 rows (the R plane, then G, then B) and "labels" (N,) 1-based devkit
# labels.  Read with allow_pickle=False: the pickled variant is refused, never unpickled.


def downsampled_files(root: Path) -> dict[str, list[Path]]:
    """{"train": the batches in batch order, "val": [val_data.npz]} (splits that exist)."""

    def batch_number(path: Path) -> int:
        return int(path.stem.rsplit("_", 1)[1])

    files = {"train": sorted(root.glob("train_data_batch_*.npz"), key=batch_number)}
    if (root / "val_data.npz").is_file():
        files["val"] = [root / "val_data.npz"]
    return {split: paths for split, paths in files.items() if paths}


def _load_npz(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays[key]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a Downsampled ImageNet npz batch with '{key}' ({exc})") from None


def downsampled_size(root: Path) -> int:
    first = next(iter(downsampled_files(root).values()))[0]
    row = _load_npz(first, "data").shape[1]
    side = math.isqrt(row // 3)
    if 3 * side * side != row:
        raise ValueError(f"{first}: rows of {row} values are not 3 square planes")
    return side


def _prepare_downsampled(
    root: Path, out: Path, header: dict, splits: tuple[str, ...], log: Callable[[str], None]
) -> dict:
    """Copy the npz batches into the cache, one source file per chunk (resumable the same way)."""
    options = header["options"]
    size = header["size"]
    slot_bytes = size * size * 3
    table = imagenet_table()
    devkit_to_index = np.zeros(1001, dtype=np.int64)
    devkit_to_index[[c.devkit_label for c in table]] = [c.index for c in table]  # devkit order -> sorted order
    class_map = select_classes(
        [c.wnid for c in table], options["subset"], options["num_classes"], options["class_seed"]
    )
    header["classes"] = class_map.to_dict()
    sources = downsampled_files(root)
    for split in splits:
        if split not in sources:
            log(f"no {split} split in {root}")
            continue
        files = split_paths(out, split)
        info = header["splits"].get(split)
        if info is None:
            per_file = [
                class_map.remap(devkit_to_index[_load_npz(f, "labels").astype(np.int64)]) for f in sources[split]
            ]
            labels = np.concatenate(per_file)
            keep = np.flatnonzero(labels >= 0)
            if split == "train" and (options["per_class"] is not None or options["train_num_samples"] is not None):
                keep = keep[
                    cap_samples(
                        labels[keep], options["per_class"], options["train_num_samples"], options["sample_seed"]
                    )
                ]
            offsets = np.cumsum([0] + [len(f) for f in per_file])
            file_of = np.searchsorted(offsets, keep, "right") - 1  # which source file each kept row is in
            names = [f"{sources[split][f].name}:{row - offsets[f]}" for f, row in zip(file_of, keep, strict=True)]
            _start_split(out, header, split, names, labels[keep], slot_bytes, "file", len(sources[split]))
            np.save(out / f"{split}_rows.npy", keep)
            info = header["splits"][split]
        if info["complete"]:
            log(f"{split}: complete ({info['count']} images)")
            continue
        keep = np.load(out / f"{split}_rows.npy")
        done = np.load(files["done"], mmap_mode="r+")
        images = np.memmap(files["images"], dtype=np.uint8, mode="r+")
        shapes = np.load(files["shapes"], mmap_mode="r+")
        start_row = 0
        for f, path in enumerate(sources[split]):
            data = None
            if not done[f]:
                data = _load_npz(path, "data")  # (N, 3·s·s)
            rows = len(_load_npz(path, "labels")) if data is None else len(data)
            mine = np.flatnonzero((keep >= start_row) & (keep < start_row + rows))  # records from this file
            if data is not None and len(mine):
                block = data[keep[mine] - start_row].reshape(-1, 3, size, size).transpose(0, 2, 3, 1)  # (n, s, s, 3)
                images[mine[0] * slot_bytes : (mine[-1] + 1) * slot_bytes] = block.reshape(-1)
                shapes[mine] = size
                images.flush()
                shapes.flush()
            if data is not None:
                done[f] = 1
                done.flush()
                log(f"{split}: {path.name} done")
            start_row += rows
        info.update(complete=True, bad=0)
        _write_header(out, header)
        log(f"{split}: done, {info['count']} images in {files['images']}")
    return header
