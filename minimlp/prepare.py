"""Decode and resize an image dataset once into a memory-mapped cache.

    python -m minimlp.prepare /data/imagenet /data/imagenet-72 --size 72
    python -m minimlp.prepare /data/imagenet /data/imagenette-160 --size 160 --subset imagenette
    python -m minimlp.prepare /data/imagenet /data/imagenet64x64 --size 64 --square -j 8
    python -m minimlp.prepare /data/Imagenet32_npz /data/imagenet32      # Downsampled ImageNet's npz batches

then train with ``--data-dir OUT``.  An interrupted run keeps what it wrote: the same command
continues it.  Format and stored geometry: :mod:`minimlp.data.cache`; writing:
:mod:`minimlp.data.cache_writer`; why and how fast: the README's "A prepared cache for
fast low-resolution training".
"""

from __future__ import annotations

import argparse
import sys

from minimlp.data.cache_writer import prepare

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimlp.prepare",
        description="Decode and resize an image dataset once into a memory-mapped cache for fast training "
        "(train with --data-dir OUT). Interrupted? Run the same command again to continue.",
    )
    parser.add_argument(
        "root",
        help="image folders: ROOT/train/<class>/*, ROOT/val/... (or ImageFolder), or "
        "Downsampled ImageNet's train_data_batch_*.npz and val_data.npz",
    )
    parser.add_argument("out", help="the cache directory to write")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="short side in pixels (with --square: the side of the square); e.g. 73 to train at 64 "
        "(not needed for Downsampled ImageNet npz batches: they keep their size)",
    )
    parser.add_argument(
        "--square", action="store_true", help="squash the whole image to SIZE x SIZE (Downsampled ImageNet style)"
    )
    parser.add_argument("--splits", default="train,val", help="which splits to write (default: train,val)")
    parser.add_argument("--subset", default=None, help="imagenette, imagewoof, imagenet100, wnids or a file")
    parser.add_argument("--num-classes", type=int, default=None, help="keep N classes (the first N sorted)")
    parser.add_argument("--class-seed", type=int, default=None, help="with --num-classes: N random classes")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many train images per class")
    parser.add_argument("--train-num-samples", type=int, default=None, help="at most this many train images")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the caps' random choice")
    parser.add_argument("-j", "--workers", type=int, default=None, help="decoding processes (default: one per core)")
    args = parser.parse_args(argv)
    try:
        prepare(
            args.root,
            args.out,
            args.size,
            square=args.square,
            splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
            subset=args.subset,
            num_classes=args.num_classes,
            class_seed=args.class_seed,
            per_class=args.per_class,
            train_num_samples=args.train_num_samples,
            sample_seed=args.sample_seed,
            workers=args.workers,
        )
    except KeyboardInterrupt:
        print("\ninterrupted; the chunks written so far are kept: run the same command to continue", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
