"""Loader benchmark: decoded training images per second, next to a plain one-process baseline.

    python -m minimlp.bench.loaders /data/imagenet
    python -m minimlp.bench.loaders --synthetic 256         # photo-like 500x375 JPEGs in a temp dir

Every repeat measures, one after the other so they share the machine's load:

* ``baseline``: the plain pipeline in this process: open -> convert RGB -> RandomResizedCrop
  (crop, then bicubic resize) -> flip -> to array, image by image;
* ``workers=k``: minimlp's loader with k worker processes (k = 0 is the loader run in this
  process), batches copied out of shared memory as the trainer gets them;
* ``cache``: the same images prepared once at ``floor(cache_px / 0.875)`` px (short side) and
  read back with RandomResizedCrop to ``cache_px`` (and, as ``cache-crop``, a plain random window).

Rates are medians over the repeats; ratios are medians of the per-repeat ratios to the
baseline of the same repeat, so load from other processes cancels as far as it can.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from minimlp.data.cache import open_prepared
from minimlp.data.cache_writer import prepare
from minimlp.data.folders import open_folder_dataset
from minimlp.data.loader import default_workers
from minimlp.data.synthetic import make_image_tree
from minimlp.data.transforms import random_resized_crop_box

__all__ = ["main", "baseline_rate", "loader_rate"]


def baseline_rate(paths: list[str], size: int, seed: int = 0) -> tuple[float, float]:
    """(images/s, images per CPU-second) of the plain one-process pipeline over ``paths``."""
    rng = np.random.default_rng(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    for path in paths:
        img = Image.open(path).convert("RGB")
        left, top, w, h = random_resized_crop_box(img.size[0], img.size[1], rng)
        img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        np.asarray(img)
    return len(paths) / (time.perf_counter() - start), len(paths) / (time.process_time() - cpu_start)


def _cpu_seconds(pids: list[int]) -> float | None:
    """CPU time (user + system) used so far by other processes, from /proc (None where unavailable)."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def loader_rate(dataset, batch_size: int, seed: int = 0) -> tuple[float, float | None]:
    """(images/s, images per CPU-second of this process and its workers) of one training pass."""
    indices = np.random.default_rng(seed).permutation(len(dataset))
    pool = dataset.loader._holder.get("pool")
    pids = [p.pid for p in pool.procs] if pool is not None else []
    cpu_before, workers_before = time.process_time(), _cpu_seconds(pids)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in dataset.batches(indices, batch_size, True, seed))
    wall = time.perf_counter() - start
    workers_after = _cpu_seconds(pids)
    cpu = time.process_time() - cpu_before
    if workers_before is None or workers_after is None:
        return count / wall, None
    return count / wall, count / max(cpu + workers_after - workers_before, 1e-9)


def draft_rates(directory: Path, repeats: int, count: int = 48) -> list[tuple[str, int, float, float]]:
    """(original size, target px, img/s without draft, img/s with draft) of decode + RandomResizedCrop + flip."""
    from minimlp.data.synthetic import photo_like
    from minimlp.data.transforms import train_image

    rows = []
    rng = np.random.default_rng(0)
    for width, height in ((500, 375), (1600, 1200)):
        paths = []
        for i in range(count if width < 1000 else count // 4):
            path = directory / f"draft_{width}_{i}.JPEG"
            photo_like(width, height, rng).save(path, quality=90)
            paths.append(path)
        for size in (64, 128, 224):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for r in range(repeats):
                for draft in (False, True):
                    crop_rng = np.random.default_rng(r)
                    start = time.process_time()
                    for path in paths:
                        train_image(path, size, crop_rng, draft=draft)
                    rates[draft].append(len(paths) / (time.process_time() - start))
            rows.append((f"{width}x{height}", size, statistics.median(rates[False]), statistics.median(rates[True])))
    return rows


def _warm(dataset, batch_size: int) -> None:
    """Start the workers and touch the files once, outside the timing."""
    for _ in dataset.batches(
        np.arange(min(len(dataset), batch_size * max(1, dataset.loader.workers))), batch_size, True, 0
    ):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimlp.bench.loaders", description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=None, help="image folders (ROOT/train/<class>/*)")
    parser.add_argument("--synthetic", type=int, default=256, help="without ROOT: this many photo-like JPEGs")
    parser.add_argument("--images", type=int, default=512, help="images per measurement (from the train split)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--cache-px", type=int, default=64, help="training size for the prepared-cache reading")
    parser.add_argument("--workers", default=None, help="comma list (default: 0,1,2,... up to 2x the cores)")
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--draft", action="store_true", help="only compare decoding with and without Image.draft")
    args = parser.parse_args(argv)
    if args.draft:
        with tempfile.TemporaryDirectory(prefix="minimlp-draft-") as tmp:
            print(f"decode + RandomResizedCrop + flip, images per CPU-second, medians of {args.repeats}")
            print(f"{'original':>10}{'px':>6}{'no draft':>10}{'draft':>10}{'gain':>7}")
            for original, size, plain, drafted in draft_rates(Path(tmp), args.repeats):
                print(f"{original:>10}{size:>6}{plain:>10.0f}{drafted:>10.0f}{drafted / plain:>7.2f}")
        return 0

    cores = default_workers()
    worker_counts = [int(w) for w in args.workers.split(",")] if args.workers else sorted({0, *range(1, 2 * cores + 1)})
    with tempfile.TemporaryDirectory(prefix="minimlp-bench-") as tmp:
        root = Path(args.root) if args.root else None
        if root is None:
            root = Path(tmp) / "images"
            classes = [f"n{i:08d}" for i in range(8)]
            make_image_tree(root, classes, math.ceil(args.synthetic / len(classes)), splits=("train",))

        def open_images(workers: int):  # the same seeded choice of images every time
            return open_folder_dataset(root, "train", args.img_size, workers=workers, train_num_samples=args.images)

        paths = open_images(0).paths
        print(
            f"{len(paths)} images from {root}; {platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"CPUs visible, load average {os.getloadavg()[0]:.1f}; {args.repeats} repeats, medians"
        )

        datasets = {k: open_images(k) for k in worker_counts}
        cache_dir = Path(tmp) / "cache"
        prepare(
            root,
            cache_dir,
            math.floor(args.cache_px / 0.875),
            splits=("train",),
            workers=cores,
            train_num_samples=args.images,
            log=lambda s: None,
        )
        cache = open_prepared(cache_dir, "train", args.cache_px, workers=0)
        cache_crop = open_prepared(cache_dir, "train", args.cache_px, workers=0, train_crop="crop")
        for ds in (*datasets.values(), cache, cache_crop):
            _warm(ds, args.batch_size)

        rates: dict[str, list[float]] = {}  # name -> images/s per repeat
        ratios: dict[str, list[float]] = {}  # name -> images/s / baseline's, per repeat
        per_cpu: dict[str, list[float]] = {}  # name -> images per CPU-second, per repeat

        def record(name: str, rate: float, cpu_rate: float | None, base: float) -> None:
            rates.setdefault(name, []).append(rate)
            ratios.setdefault(name, []).append(rate / base)
            if cpu_rate is not None:
                per_cpu.setdefault(name, []).append(cpu_rate)

        small = f"baseline {args.cache_px}px"
        for r in range(args.repeats):
            base, base_cpu = baseline_rate(paths, args.img_size, seed=r)
            record("baseline", base, base_cpu, base)
            for k, ds in datasets.items():
                record(f"workers={k}", *loader_rate(ds, args.batch_size, seed=r), base)
            base_small, base_small_cpu = baseline_rate(paths, args.cache_px, seed=r)
            record(small, base_small, base_small_cpu, base)
            for name, ds in (("cache", cache), ("cache-crop", cache_crop)):
                rate, cpu_rate = loader_rate(ds, args.batch_size, seed=r)
                record(name, rate, cpu_rate, base)
                ratios.setdefault(f"{name} vs {small}", []).append(rate / base_small)

        print(f"\n{'pipeline':<24}{'px':>5}{'img/s':>9}{'x baseline':>12}{'img/CPU-s':>11}   img/s of each repeat")
        for name, values in rates.items():
            size = args.cache_px if name.startswith("cache") or name == small else args.img_size
            cpu = f"{statistics.median(per_cpu[name]):.0f}" if name in per_cpu else "-"
            shown = " ".join(f"{v:.0f}" for v in values)
            print(
                f"{name:<24}{size:>5}{statistics.median(values):>9.0f}{statistics.median(ratios[name]):>12.2f}"
                f"{cpu:>11}   {shown}"
            )
        for name in ("cache", "cache-crop"):
            key = f"{name} vs {small}"
            print(f"{key:<38}{statistics.median(ratios[key]):>12.2f}")
        print(f"load average now {os.getloadavg()[0]:.1f}")
        for ds in (*datasets.values(), cache, cache_crop):
            ds.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
