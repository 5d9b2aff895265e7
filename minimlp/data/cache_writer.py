"""Writing the prepared cache; ``python -m minimlp.prepare`` is the command around it.

The format and the stored geometry are described in :mod:`minimlp.data.cache`.  Records are
written in chunks by worker processes; a chunk is marked done only after its pixels are
flushed to disk, so an interrupted run (Ctrl-C, a crash, a full disk) loses at most the
chunks in flight: the same command continues where it stopped.  Files that cannot be
decoded are left out and listed at the end.  Lesson 12.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from minimlp.data.cache import (
    CACHE_HEADER,
    FORMAT,
    VERSION,
    load_record,
    max_long_side,
    read_header,
    split_paths,
)
from minimlp.data.folders import detect, list_split
from minimlp.data.loader import default_workers
from minimlp.data.transforms import BadImageError

__all__ = ["prepare"]

CHUNK = 512  # records per task (and per progress mark)


def _write_header(out: Path, header: dict) -> None:
    tmp = out / (CACHE_HEADER + ".tmp")
    tmp.write_text(json.dumps(header, indent=1))
    os.replace(tmp, out / CACHE_HEADER)  # atomic: a reader never sees half a header


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
        images[index * slot_bytes:index * slot_bytes + h * w * 3] = record.reshape(-1)
        shapes[index] = (h, w)
    images.flush()
    shapes.flush()
    return chunk_id, bad


def _options(root: Path, size: int, square: bool, subset, num_classes, class_seed, per_class, train_num_samples,
             sample_seed) -> dict:
    return {"source": str(root.resolve()), "size": size, "square": square, "subset": subset,
            "num_classes": num_classes, "class_seed": class_seed, "per_class": per_class,
            "train_num_samples": train_num_samples, "sample_seed": sample_seed}


def _start_split(out: Path, header: dict, split: str, paths: list[str], labels: np.ndarray, slot_bytes: int,
                 chunk: int) -> None:
    """Create the split's files (pixels preallocated, sparse) and record the split in the header."""
    files = split_paths(out, split)
    n = len(paths)
    np.memmap(files["images"], dtype=np.uint8, mode="w+", shape=(max(1, n * slot_bytes),)).flush()
    np.lib.format.open_memmap(files["shapes"], mode="w+", dtype=np.int32, shape=(n, 2)).flush()
    np.save(files["labels"], labels.astype(np.int64))
    files["files"].write_text("".join(p + "\n" for p in paths))
    np.save(files["done"], np.zeros(-(-n // chunk), dtype=np.uint8))
    header["splits"][split] = {"count": n, "chunk": chunk, "complete": False}
    _write_header(out, header)


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int,
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

    ``chunk`` records are written per task; a resumed run keeps the chunk size it started with.
    """
    root, out = Path(root), Path(out)
    if size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {size}")
    if detect(root) == "prepared":
        raise ValueError(f"{root} is already a prepared cache; prepare from the image folders")
    options = _options(root, size, square, subset, num_classes, class_seed, per_class, train_num_samples, sample_seed)
    if (out / CACHE_HEADER).exists():
        header = read_header(out)
        if json.dumps(header["options"], sort_keys=True) != json.dumps(options, sort_keys=True):
            raise ValueError(f"{out} holds a cache prepared with other options ({header['options']}); to make this "
                             f"one, choose another OUT or delete {out}")
        log(f"continuing the cache in {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "version": VERSION, "geometry": "square" if square else "short", "size": size,
                  "max_long": max_long_side(size, square), "options": options, "classes": None, "splits": {}}
    slot_bytes = header["max_long"] * size * 3
    workers = default_workers() if workers is None else workers

    for split in splits:
        info = header["splits"].get(split)
        files = split_paths(out, split)
        if info is None:
            try:
                paths, labels, class_map = list_split(root, split, subset, num_classes, class_seed,
                                                      train_num_samples, per_class, sample_seed)
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
        paths = files["files"].read_text().splitlines()
        done = np.load(files["done"], mmap_mode="r+")
        todo = [int(c) for c in np.flatnonzero(done == 0)]
        step = info["chunk"]
        tasks = [(c, c * step, paths[c * step:(c + 1) * step], str(files["images"]), str(files["shapes"]),
                  slot_bytes, size, square) for c in todo]
        log(f"{split}: {len(paths)} images, {len(todo)} of {len(done)} chunks to write with {workers} worker(s)")
        _run_chunks(tasks, done, workers, split, len(paths), log)
        shapes = np.load(files["shapes"], mmap_mode="r")
        bad = [paths[i] for i in np.flatnonzero(shapes[:, 0] == 0)]
        info.update(complete=True, bad=len(bad))
        _write_header(out, header)
        if bad:
            shown = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
            log(f"{split}: {len(bad)} file(s) could not be decoded and are left out:\n  {shown}")
        log(f"{split}: done, {len(paths) - len(bad)} images in {files['images']}")
    return header


def _run_chunks(tasks: list[tuple], done: np.memmap, workers: int, split: str, total: int,
                log: Callable[[str], None]) -> None:
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
            log(f"{split}: {written}/{remaining} written this run, {rate:.0f} img/s, "
                f"{(remaining - written) / max(rate, 1e-9) / 60:.1f} min left")
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
